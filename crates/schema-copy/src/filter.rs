//! Which schemas and tables take part, as `pg_dump` patterns.
//!
//! One [`ObjectFilter`] drives both `pg_dump` (as `--schema`,
//! `--exclude-schema`, `--table`, `--exclude-table`) and the catalog queries
//! (as regular expressions matched by the source server), so the tables the
//! data copy sees are exactly the tables the schema copy created. Patterns
//! follow psql's rules: `*` and `?` are wildcards, unquoted letters are
//! folded to lower case, `"..."` quotes (with `""` for a quote), and a `.`
//! outside quotes separates the schema from the table. A table pattern
//! without a schema matches tables visible on the search path, as in
//! `pg_dump`.
//!
//! As in `pg_dump`, `include_tables` restricts the dump to those tables and
//! nothing they depend on (types, functions); use `include_schemas` to copy
//! whole schemas.

use crate::error::{Error, Result};

/// Schemas and tables to include or exclude, as `pg_dump` patterns. Empty
/// include lists include everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectFilter {
    /// `--schema` patterns: only these schemas.
    pub include_schemas: Vec<String>,
    /// `--exclude-schema` patterns.
    pub exclude_schemas: Vec<String>,
    /// `--table` patterns: only these tables.
    pub include_tables: Vec<String>,
    /// `--exclude-table` patterns.
    pub exclude_tables: Vec<String>,
}

/// A pattern translated to anchored POSIX regular expressions, for the
/// source server's `~` operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamePattern {
    /// The schema part; `None` means "visible on the search path" for
    /// tables.
    pub schema: Option<String>,
    /// The name part.
    pub name: String,
}

impl ObjectFilter {
    /// A filter that includes everything.
    pub fn new() -> ObjectFilter {
        ObjectFilter::default()
    }

    /// Whether the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self.include_schemas.is_empty()
            && self.exclude_schemas.is_empty()
            && self.include_tables.is_empty()
            && self.exclude_tables.is_empty()
    }

    /// The `pg_dump` arguments for this filter.
    pub(crate) fn pg_dump_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, patterns) in [
            ("--schema", &self.include_schemas),
            ("--exclude-schema", &self.exclude_schemas),
            ("--table", &self.include_tables),
            ("--exclude-table", &self.exclude_tables),
        ] {
            for pattern in patterns {
                args.push(format!("{flag}={pattern}"));
            }
        }
        args
    }

    /// Schema patterns as regular expressions: (include, exclude).
    pub(crate) fn schema_regexes(&self) -> Result<(Vec<String>, Vec<String>)> {
        let convert = |patterns: &[String]| -> Result<Vec<String>> {
            patterns
                .iter()
                .map(|p| {
                    let parsed = parse(p)?;
                    if parsed.schema.is_some() {
                        return Err(Error::Pattern {
                            pattern: p.clone(),
                            reason: "a schema pattern cannot contain an unquoted \".\"".into(),
                        });
                    }
                    Ok(parsed.name)
                })
                .collect()
        };
        Ok((
            convert(&self.include_schemas)?,
            convert(&self.exclude_schemas)?,
        ))
    }

    /// Table patterns: (include, exclude).
    pub(crate) fn table_patterns(&self) -> Result<(Vec<NamePattern>, Vec<NamePattern>)> {
        let convert = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| parse(p))
                .collect::<Result<Vec<_>>>()
        };
        Ok((
            convert(&self.include_tables)?,
            convert(&self.exclude_tables)?,
        ))
    }
}

/// A psql pattern that matches exactly `name`: quoted, `"` doubled (inside
/// quotes `*`, `?` and `.` are literal).
pub(crate) fn literal_pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Translates a psql pattern as `processSQLNamePattern` does.
pub(crate) fn parse(pattern: &str) -> Result<NamePattern> {
    let mut parts: Vec<String> = vec![String::new()];
    let mut in_quotes = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().expect("never empty");
        if c == '"' {
            if in_quotes && chars.peek() == Some(&'"') {
                chars.next();
                current.push('"');
            } else {
                in_quotes = !in_quotes;
            }
        } else if in_quotes {
            // Everything inside quotes is literal.
            if "|*+?()[]{}.^$\\".contains(c) {
                current.push('\\');
            }
            current.push(c);
        } else if c == '.' {
            parts.push(String::new());
        } else if c == '*' {
            current.push_str(".*");
        } else if c == '?' {
            current.push('.');
        } else if c == '$' {
            current.push_str("\\$");
        } else {
            current.extend(c.to_lowercase());
        }
    }
    if in_quotes {
        return Err(Error::Pattern {
            pattern: pattern.to_owned(),
            reason: "unterminated quote".into(),
        });
    }
    let anchor = |re: &str| format!("^({re})$");
    match parts.as_slice() {
        [name] => Ok(NamePattern {
            schema: None,
            name: anchor(name),
        }),
        [schema, name] => Ok(NamePattern {
            schema: Some(anchor(schema)),
            name: anchor(name),
        }),
        _ => Err(Error::Pattern {
            pattern: pattern.to_owned(),
            reason: "too many dotted names (expected schema.name)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_translate_like_psql() {
        assert_eq!(
            parse("Public.T*").unwrap(),
            NamePattern {
                schema: Some("^(public)$".into()),
                name: "^(t.*)$".into()
            }
        );
        assert_eq!(
            parse(r#""My.Schema"."Ta""ble?""#).unwrap(),
            NamePattern {
                schema: Some(r"^(My\.Schema)$".into()),
                name: r#"^(Ta"ble\?)$"#.into()
            }
        );
        assert_eq!(parse("a?c").unwrap().name, "^(a.c)$");
        assert_eq!(parse("x$").unwrap().name, r"^(x\$)$");
        assert!(parse("\"open").is_err());
        assert!(parse("a.b.c").is_err());
    }

    #[test]
    fn pg_dump_arguments_keep_patterns_as_given() {
        let filter = ObjectFilter {
            include_schemas: vec!["App*".into()],
            exclude_tables: vec!["\"Big\".log".into()],
            ..ObjectFilter::default()
        };
        assert_eq!(
            filter.pg_dump_args(),
            vec!["--schema=App*", "--exclude-table=\"Big\".log"]
        );
        assert!(ObjectFilter::new().is_empty());
        assert!(!filter.is_empty());
    }
}
