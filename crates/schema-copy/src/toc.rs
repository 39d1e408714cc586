//! Archive tables of contents (`pg_restore -l`) and how they are split.
//!
//! A custom-format archive lists one entry per line:
//! `3591; 2606 17169 CONSTRAINT public t t_pkey owner` — dump id, the catalog
//! (`pg_constraint` is 2606, `pg_class` 1259) and OID of the object, its
//! kind, schema, name and owner. Selecting lines and handing them back with
//! `pg_restore -L` restores just those entries; this is how extensions are
//! skipped and how post-data runs in phases. Objects are matched by catalog
//! OID, which is unambiguous whatever the names contain.

use std::collections::HashSet;

/// `pg_class`, the catalog of indexes.
const PG_CLASS: u32 = 1259;
/// `pg_constraint`.
pub(crate) const PG_CONSTRAINT: u32 = 2606;

/// One line of `pg_restore -l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TocEntry {
    /// The line as printed, handed back to `pg_restore -L`.
    pub line: String,
    /// The catalog holding the object (0 for entries such as INDEX ATTACH).
    pub catalog: u32,
    /// The object's OID in that catalog.
    pub oid: u32,
    /// Kind, schema, name and owner: `INDEX public t_idx owner`.
    pub rest: String,
}

impl TocEntry {
    fn kind_is(&self, kind: &str) -> bool {
        self.rest
            .strip_prefix(kind)
            .is_some_and(|r| r.starts_with(' '))
    }
}

/// Parses `pg_restore -l` output, skipping comments.
pub(crate) fn parse(listing: &str) -> Vec<TocEntry> {
    listing
        .lines()
        .filter(|line| !line.trim_start().starts_with(';') && !line.trim().is_empty())
        .filter_map(|line| {
            let (_, after) = line.split_once("; ")?;
            let mut words = after.splitn(3, ' ');
            let catalog = words.next()?.parse().ok()?;
            let oid = words.next()?.parse().ok()?;
            let rest = words.next()?.to_owned();
            Some(TocEntry {
                line: line.to_owned(),
                catalog,
                oid,
                rest,
            })
        })
        .collect()
}

/// Drops extensions and their comments.
pub(crate) fn without_extensions(entries: Vec<TocEntry>) -> Vec<TocEntry> {
    without_prefixed(entries, &["EXTENSION ", "COMMENT - EXTENSION "])
}

/// Drops every event trigger (and its comment).
pub(crate) fn without_event_triggers(entries: Vec<TocEntry>) -> Vec<TocEntry> {
    without_prefixed(entries, &["EVENT TRIGGER - ", "COMMENT - EVENT TRIGGER "])
}

/// Drops the extensions named in `names` (and their comments).
pub(crate) fn without_named_extensions(entries: Vec<TocEntry>, names: &[String]) -> Vec<TocEntry> {
    let prefixes: Vec<String> = names
        .iter()
        .flat_map(|name| {
            [
                format!("EXTENSION - {name} "),
                format!("COMMENT - EXTENSION {name} "),
            ]
        })
        .collect();
    without_prefixed(entries, &prefixes)
}

/// Splits off the entries of `relations` (`pg_class` OID, schema, name),
/// with their privileges, comments and materialized views' data: (the
/// others, those).
pub(crate) fn split_relations(
    entries: Vec<TocEntry>,
    relations: &[(u32, String, String)],
) -> (Vec<TocEntry>, Vec<TocEntry>) {
    entries.into_iter().partition(|e| {
        !relations.iter().any(|(oid, schema, name)| {
            // Tags of comments and privileges quote names that need it.
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            (e.catalog == PG_CLASS && e.oid == *oid)
                || [name.as_str(), quoted.as_str()].iter().any(|name| {
                    [
                        format!("ACL {schema} TABLE {name} "),
                        format!("ACL {schema} COLUMN {name}."),
                        format!("COMMENT {schema} VIEW {name} "),
                        format!("COMMENT {schema} MATERIALIZED VIEW {name} "),
                        format!("COMMENT {schema} COLUMN {name}."),
                        format!("COMMENT {schema} INDEX {name} "),
                        format!("MATERIALIZED VIEW DATA {schema} {name} "),
                    ]
                    .iter()
                    .any(|prefix| e.rest.starts_with(prefix))
                })
        })
    })
}

/// Drops pglive's own event triggers (which capture a migration's schema
/// changes on the source and call functions in its `pglive` schema, which
/// is never copied).
pub(crate) fn without_pglive_event_triggers(entries: Vec<TocEntry>) -> Vec<TocEntry> {
    without_prefixed(entries, &["EVENT TRIGGER - pglive_"])
}

/// Drops the entries whose kind and name (as `pg_restore -l` prints them)
/// start with one of `prefixes`.
fn without_prefixed(entries: Vec<TocEntry>, prefixes: &[impl AsRef<str>]) -> Vec<TocEntry> {
    entries
        .into_iter()
        .filter(|e| !prefixes.iter().any(|p| e.rest.starts_with(p.as_ref())))
        .collect()
}

/// The objects the applier needs before anything else: primary keys and the
/// indexes used as replica identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyObjects {
    /// `pg_constraint` OIDs of primary keys and of unique constraints whose
    /// index is a replica identity.
    pub constraints: HashSet<u32>,
    /// `pg_class` OIDs of replica identity indexes.
    pub indexes: HashSet<u32>,
    /// `schema name` of every primary key or replica identity index, for
    /// the INDEX ATTACH entries of partitions (which carry no OID).
    pub index_names: HashSet<String>,
}

/// The post-data entries in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PostDataPhases {
    /// Primary keys and replica identity indexes (with their partition
    /// attachments).
    pub keys: Vec<TocEntry>,
    /// Every other index, constraint, trigger, rule, policy, ...
    pub rest: Vec<TocEntry>,
    /// `MATERIALIZED VIEW DATA`: refreshed last, once every index exists.
    pub refresh: Vec<TocEntry>,
}

/// Splits post-data entries into phases.
pub(crate) fn post_data_phases(entries: Vec<TocEntry>, keys: &KeyObjects) -> PostDataPhases {
    let mut phases = PostDataPhases::default();
    for entry in entries {
        let is_key = (entry.catalog == PG_CONSTRAINT && keys.constraints.contains(&entry.oid))
            || (entry.catalog == PG_CLASS
                && entry.kind_is("INDEX")
                && keys.indexes.contains(&entry.oid))
            || entry.rest.strip_prefix("INDEX ATTACH ").is_some_and(|r| {
                keys.index_names
                    .iter()
                    .any(|name| r == name || r.starts_with(&format!("{name} ")))
            });
        if is_key {
            phases.keys.push(entry);
        } else if entry.rest.starts_with("MATERIALIZED VIEW DATA ") {
            phases.refresh.push(entry);
        } else {
            phases.rest.push(entry);
        }
    }
    phases
}

/// A list file for `pg_restore -L`.
pub(crate) fn list_file(entries: &[TocEntry]) -> String {
    let mut text = String::new();
    for entry in entries {
        text.push_str(&entry.line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
;
; Archive created at 2026-11-22 02:54:33 UTC
;     dbname: src
;
; Selected TOC Entries:
;
3591; 2606 17169 CONSTRAINT public Mixed Case Mixed Case_pkey postgres
3598; 2606 17187 CONSTRAINT public p p_pkey postgres
3600; 2606 17192 CONSTRAINT public p1 p1_pkey postgres
3594; 2606 17176 CONSTRAINT public r r_k_e_excl postgres
3596; 2606 17182 CONSTRAINT public u u_a postgres
3592; 1259 17177 INDEX public r_k postgres
3593; 1259 17178 INDEX public r_other postgres
3601; 0 0 INDEX ATTACH public p1_pkey postgres
3602; 2606 17200 FK CONSTRAINT public f f_id_fkey postgres
3750; 0 17193 MATERIALIZED VIEW DATA public mv postgres
3; 3079 16513 EXTENSION - btree_gist 
3760; 0 0 COMMENT - EXTENSION btree_gist 
216; 1259 17163 TABLE public Mixed Case postgres
";

    #[test]
    fn listing_parses_and_extensions_go() {
        let entries = parse(LISTING);
        assert_eq!(entries.len(), 13);
        assert_eq!(entries[0].catalog, 2606);
        assert_eq!(entries[0].oid, 17169);
        assert_eq!(
            entries[0].rest,
            "CONSTRAINT public Mixed Case Mixed Case_pkey postgres"
        );
        let kept = without_extensions(entries);
        assert_eq!(kept.len(), 11);
        assert!(kept.iter().all(|e| !e.line.contains("btree_gist")));
        assert!(list_file(&kept).starts_with("3591; 2606 17169 CONSTRAINT"));
    }

    #[test]
    fn keys_come_first_and_materialized_views_last() {
        let keys = KeyObjects {
            constraints: [17169, 17187, 17192, 17182].into(),
            indexes: [17177].into(),
            index_names: ["public p1_pkey".to_owned(), "public p_pkey".to_owned()].into(),
        };
        let phases = post_data_phases(parse(LISTING), &keys);
        let ids = |v: &[TocEntry]| {
            v.iter()
                .map(|e| e.line.split(';').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&phases.keys),
            ["3591", "3598", "3600", "3596", "3592", "3601"]
        );
        assert_eq!(ids(&phases.refresh), ["3750"]);
        assert_eq!(
            ids(&phases.rest),
            ["3594", "3593", "3602", "3", "3760", "216"]
        );
    }
}
