//! The statements of a query string as the server received it.
//!
//! A DDL event trigger sees only `current_query()`: the whole string the
//! client sent, which may hold several statements (`psql -c "ALTER …;
//! INSERT …"`). To replay one command, the string is cut at its top-level
//! semicolons (not inside quotes, dollar quotes, comments or a `BEGIN
//! ATOMIC … END` body), and each statement's leading keywords are compared
//! with the command tag the trigger reported.

use std::ops::Range;

/// One lexical piece of SQL text, by byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// An unquoted word (keyword or identifier).
    Word,
    /// A quoted identifier, a string (plain, `E''`, dollar-quoted) or a
    /// comment: never a keyword, never a boundary.
    Opaque,
    /// A top-level `;`.
    Semicolon,
    /// Anything else: operators, punctuation, numbers, whitespace.
    Other,
}

/// Cuts `text` into pieces.
fn pieces(text: &str) -> Vec<(Piece, Range<usize>)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let piece = match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                Piece::Opaque
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                Piece::Opaque
            }
            b'\'' => {
                let escapes = escape_string_prefix(bytes, start);
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if escapes => i += 2,
                        b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                Piece::Opaque
            }
            b'"' => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'"' {
                        if bytes.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                Piece::Opaque
            }
            b'$' => match dollar_tag(&text[i..]) {
                Some(tag) => {
                    i += tag.len();
                    match text[i..].find(tag) {
                        Some(end) => i += end + tag.len(),
                        None => i = bytes.len(),
                    }
                    Piece::Opaque
                }
                None => {
                    i += 1;
                    Piece::Other
                }
            },
            b';' => {
                i += 1;
                Piece::Semicolon
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                Piece::Word
            }
            _ => {
                i += 1;
                Piece::Other
            }
        };
        out.push((piece, start..i.min(bytes.len())));
    }
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether the quote at `quote` opens an `E'…'` string (backslash escapes).
fn escape_string_prefix(bytes: &[u8], quote: usize) -> bool {
    quote >= 1
        && matches!(bytes[quote - 1], b'E' | b'e')
        && (quote < 2 || !is_word_byte(bytes[quote - 2]))
}

/// The opening `$tag$` of a dollar-quoted string at the start of `text`.
fn dollar_tag(text: &str) -> Option<&str> {
    let rest = &text[1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid = tag.bytes().enumerate().all(|(n, b)| {
        b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 || (n > 0 && b.is_ascii_digit())
    });
    valid.then(|| &text[..end + 2])
}

/// The statements of `query`, trimmed, without their semicolons; empty
/// ones left out.
pub(crate) fn split(query: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut start = 0;
    // Inside a SQL-standard function body (`BEGIN ATOMIC … END`), whose
    // statements end with semicolons too; CASE … END nests in it.
    let mut atomic_depth = 0usize;
    // The statement's first word, whether it names a routine so far, and
    // the piece before (only whitespace may separate BEGIN and ATOMIC).
    let mut first_word: Option<&str> = None;
    let mut routine = false;
    let mut previous_word: Option<&str> = None;
    for (piece, range) in pieces(query) {
        match piece {
            Piece::Word => {
                let word = &query[range];
                let first = *first_word.get_or_insert(word);
                routine |= first.eq_ignore_ascii_case("create")
                    && (word.eq_ignore_ascii_case("function")
                        || word.eq_ignore_ascii_case("procedure"));
                let opens_body = routine
                    && word.eq_ignore_ascii_case("atomic")
                    && previous_word.is_some_and(|w| w.eq_ignore_ascii_case("begin"));
                let opens_case = atomic_depth > 0 && word.eq_ignore_ascii_case("case");
                if opens_body || opens_case {
                    atomic_depth += 1;
                } else if atomic_depth > 0 && word.eq_ignore_ascii_case("end") {
                    atomic_depth -= 1;
                }
                previous_word = Some(word);
            }
            Piece::Semicolon if atomic_depth == 0 => {
                statements.push(&query[start..range.start]);
                start = range.end;
                previous_word = None;
                first_word = None;
                routine = false;
            }
            Piece::Other if query[range.clone()].trim().is_empty() => {}
            _ => previous_word = None,
        }
    }
    statements.push(&query[start..]);
    statements
        .into_iter()
        .map(str::trim)
        .filter(|s| {
            pieces(s)
                .iter()
                .any(|(p, _)| *p != Piece::Opaque && *p != Piece::Other)
        })
        .collect()
}

/// Words that may stand between a command's verb and its object kind
/// without being part of the command tag (`CREATE OR REPLACE VIEW` is a
/// `CREATE VIEW`, `CREATE UNIQUE INDEX` a `CREATE INDEX`).
const TAG_MODIFIERS: &[&str] = &[
    "or",
    "replace",
    "unique",
    "temp",
    "temporary",
    "unlogged",
    "global",
    "local",
    "recursive",
    "trusted",
    "procedural",
    "constraint",
    "default",
];

/// Whether `statement` is a command with tag `tag` (`ALTER TABLE`, `CREATE
/// INDEX`, `GRANT`…): its leading words, modifiers left out, are the tag's.
pub(crate) fn has_tag(statement: &str, tag: &str) -> bool {
    let mut words = pieces(statement)
        .into_iter()
        .filter(|(p, _)| *p == Piece::Word)
        .map(|(_, r)| &statement[r]);
    let Some(verb) = words.next() else {
        return false;
    };
    let mut tag_words = tag.split_ascii_whitespace();
    if !tag_words
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(verb))
    {
        return false;
    }
    let mut rest = words.filter(|w| !TAG_MODIFIERS.iter().any(|m| m.eq_ignore_ascii_case(w)));
    tag_words.all(|t| rest.next().is_some_and(|w| w.eq_ignore_ascii_case(t)))
}

/// Whether `statement` names an object called `name` (as the catalog
/// holds it): an unquoted word that folds to it, or the quoted identifier.
pub(crate) fn names(statement: &str, name: &str) -> bool {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    pieces(statement).into_iter().any(|(piece, range)| {
        let text = &statement[range];
        match piece {
            Piece::Word => text.to_lowercase() == name,
            Piece::Opaque => text == quoted,
            _ => false,
        }
    })
}

/// The leading words of `statement`, lowercased.
fn leading_words(statement: &str, count: usize) -> Vec<String> {
    pieces(statement)
        .into_iter()
        .filter(|(p, _)| *p == Piece::Word)
        .take(count)
        .map(|(_, r)| statement[r].to_ascii_lowercase())
        .collect()
}

/// Whether `statement` is transaction control (`BEGIN`, `COMMIT`,
/// `SAVEPOINT`…): a query string holding one holds several transactions.
pub(crate) fn controls_transactions(statement: &str) -> bool {
    leading_words(statement, 1).first().is_some_and(|w| {
        matches!(
            w.as_str(),
            "begin"
                | "start"
                | "commit"
                | "end"
                | "rollback"
                | "abort"
                | "savepoint"
                | "release"
                | "prepare"
        )
    })
}

/// Whether `statement` can fire a DDL event trigger at all: commands on
/// shared objects (roles, databases, tablespaces, settings) never do, so
/// a `GRANT role TO user` is not the `GRANT` a trigger reported.
pub(crate) fn fires_ddl_triggers(statement: &str) -> bool {
    let words: Vec<String> = pieces(statement)
        .into_iter()
        .filter(|(p, _)| *p == Piece::Word)
        .map(|(_, r)| statement[r].to_ascii_lowercase())
        .collect();
    let on_shared = words.windows(2).any(|w| {
        w[0] == "on"
            && matches!(
                w[1].as_str(),
                "database" | "tablespace" | "parameter" | "role"
            )
    });
    match words.first().map(String::as_str) {
        Some("grant" | "revoke") => words.iter().any(|w| w == "on") && !on_shared,
        Some("comment") => !on_shared,
        _ => true,
    }
}

/// `statement` without its `CONCURRENTLY` keywords: the target has no
/// application to keep serving, and the command must run inside the
/// batch's transaction, which `CONCURRENTLY` refuses.
pub(crate) fn without_concurrently(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut last = 0;
    for (piece, range) in pieces(statement) {
        if piece == Piece::Word && statement[range.clone()].eq_ignore_ascii_case("concurrently") {
            out.push_str(&statement[last..range.start]);
            last = range.end;
        }
    }
    out.push_str(&statement[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let query = "ALTER TABLE t ADD COLUMN \"a;b\" text DEFAULT 'x;y'; -- c;d\n\
                     INSERT INTO t VALUES (E'\\';', $$;$$, $f$ $$; $f$); /* a; /* b; */ c; */ \
                     CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;\
                     ;  ";
        let statements = split(query);
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[0].ends_with("'x;y'"));
        assert!(statements[1].starts_with("-- c;d\nINSERT"));
        assert!(statements[1].ends_with("$f$)"));
        assert!(statements[2].starts_with("/* a;"));
        assert!(statements[2].ends_with("SELECT 2; END"));
    }

    #[test]
    fn shared_objects_and_transactions_are_told_apart() {
        assert!(!fires_ddl_triggers("GRANT admin TO bob"));
        assert!(!fires_ddl_triggers("GRANT CONNECT ON DATABASE d TO bob"));
        assert!(!fires_ddl_triggers("COMMENT ON ROLE bob IS 'x'"));
        assert!(fires_ddl_triggers("GRANT SELECT ON t TO bob"));
        assert!(fires_ddl_triggers("COMMENT ON TABLE t IS 'x'"));
        assert!(controls_transactions("begin"));
        assert!(controls_transactions("COMMIT"));
        assert!(!controls_transactions("CREATE TABLE t ()"));
    }

    #[test]
    fn only_a_routine_body_holds_semicolons() {
        // A column named `begin` of type `atomic` is no routine body: the
        // statements after it stay statements of their own.
        let statements = split("CREATE TABLE begin (atomic int); RESET ROLE; SELECT 1");
        assert_eq!(statements.len(), 3, "{statements:#?}");
        let statements = split("CREATE TABLE t (begin /* x */ atomic); SELECT 1");
        assert_eq!(statements.len(), 2, "{statements:#?}");
    }

    #[test]
    fn tags_ignore_modifiers_and_comments() {
        assert!(has_tag(
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
            "CREATE INDEX"
        ));
        assert!(has_tag(
            "create or replace view v as select 1",
            "CREATE VIEW"
        ));
        assert!(has_tag(
            "/* deploy 42 */ ALTER TABLE t ADD x int",
            "ALTER TABLE"
        ));
        assert!(has_tag("GRANT SELECT ON t TO r", "GRANT"));
        assert!(has_tag("CREATE TEMP TABLE x (a int)", "CREATE TABLE"));
        assert!(!has_tag("ALTER TABLE t ADD x int", "ALTER INDEX"));
        assert!(!has_tag("INSERT INTO t VALUES (1)", "CREATE TABLE"));
        assert!(!has_tag(
            "DO $$ BEGIN EXECUTE 'CREATE TABLE x ()'; END $$",
            "CREATE TABLE"
        ));
    }

    #[test]
    fn concurrently_goes_but_not_from_quotes() {
        assert_eq!(
            without_concurrently(
                "CREATE INDEX CONCURRENTLY \"concurrently\" ON t (a) WHERE b = 'concurrently'"
            ),
            "CREATE INDEX  \"concurrently\" ON t (a) WHERE b = 'concurrently'"
        );
    }
}
