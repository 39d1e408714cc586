//! Whether a source relation's columns still match its target table, and
//! if not, the `ALTER TABLE` that makes the target match: columns the
//! target lacks (added on the source), columns whose type or modifier
//! differ (changed on the source), and target columns the source no longer
//! sends (dropped or renamed on the source). Checked on every Relation
//! message, so apply stops before the first row written under the new
//! shape.

use std::collections::HashMap;

use pglive_postgres::{QualifiedName, quote_ident};
use pglive_repl::pgoutput::Relation;
use tokio_postgres::Client;

use crate::error::{Error, Result, target};
use crate::table::{FIRST_USER_OID, TargetColumn};

/// A source column the target lacks or holds with another type.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SourceColumn {
    name: String,
    type_id: u32,
    type_modifier: i32,
}

/// How a relation differs from its target table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mismatch {
    missing: Vec<SourceColumn>,
    /// With the target's type, as it reads.
    differing: Vec<(SourceColumn, String)>,
    /// Target columns the source does not send, with their types.
    extra: Vec<(String, String)>,
}

/// What a relation is compared with besides the target's columns.
pub(crate) struct Shapes<'a> {
    /// The source's own types, named by Type messages, by OID.
    pub types: &'a HashMap<u32, QualifiedName>,
    /// Whether target columns the source does not send are expected.
    pub extra_target_columns: bool,
}

impl Shapes<'_> {
    /// Compares `relation` with the target's columns.
    pub(crate) fn compare(
        &self,
        relation: &Relation,
        target_columns: &[TargetColumn],
    ) -> Option<Mismatch> {
        let mut mismatch = Mismatch::default();
        for source in &relation.columns {
            let column = SourceColumn {
                name: source.name.clone(),
                type_id: source.type_id,
                type_modifier: source.type_modifier,
            };
            match target_columns.iter().find(|c| c.name == source.name) {
                None => mismatch.missing.push(column),
                Some(target) if target.generated => {}
                Some(target) => {
                    let type_differs = if source.type_id < FIRST_USER_OID {
                        target.builtin_type != Some(source.type_id)
                    } else {
                        // Built-in on the target, or another type by name
                        // (an extension's type may live in another schema).
                        target.builtin_type.is_some()
                            || self
                                .types
                                .get(&source.type_id)
                                .is_some_and(|name| name.name != target.type_name.name)
                    };
                    if type_differs || target.type_modifier != source.type_modifier {
                        mismatch
                            .differing
                            .push((column, target.type_with_modifier.clone()));
                    }
                }
            }
        }
        if !self.extra_target_columns {
            for target in target_columns {
                // A column rows may leave out takes its default: rows from
                // before the source's change still arrive that way after
                // the target was made to match.
                if !target.generated
                    && target.required
                    && !relation.columns.iter().any(|c| c.name == target.name)
                {
                    mismatch
                        .extra
                        .push((target.name.clone(), target.type_with_modifier.clone()));
                }
            }
        }
        (mismatch != Mismatch::default()).then_some(mismatch)
    }
}

/// A mismatch as people read it: what differs, and the SQL that makes the
/// target match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShapeProblem {
    difference: String,
    fix: String,
}

impl ShapeProblem {
    /// The error that stops apply.
    pub(crate) fn error(&self, table: &QualifiedName) -> Error {
        Error::ShapeMismatch {
            table: table.to_string(),
            difference: self.difference.clone(),
            fix: Some(self.fix.clone()),
        }
    }
}

impl Mismatch {
    /// What differs and the SQL that makes the target match (the source's
    /// types spelled by the target's `format_type` for built-in types, by
    /// their Type messages' names otherwise).
    pub(crate) async fn explain(
        self,
        client: &Client,
        table: &QualifiedName,
        shapes: &Shapes<'_>,
    ) -> Result<ShapeProblem> {
        let mut spelled = HashMap::new();
        for column in self
            .missing
            .iter()
            .chain(self.differing.iter().map(|(c, _)| c))
        {
            let sql = if column.type_id < FIRST_USER_OID {
                client
                    .query_one(
                        "SELECT pg_catalog.format_type($1, $2)",
                        &[&column.type_id, &column.type_modifier],
                    )
                    .await
                    .map_err(target(format!("naming the source's types of {table}")))?
                    .get(0)
            } else {
                shapes
                    .types
                    .get(&column.type_id)
                    .map(QualifiedName::quoted)
                    .unwrap_or_else(|| format!("<the source's type {}>", column.type_id))
            };
            spelled.insert(column.name.clone(), sql);
        }
        Ok(ShapeProblem {
            difference: self.describe(table, &spelled),
            fix: self.fix(table, &spelled),
        })
    }

    /// What differs, for people.
    fn describe(&self, table: &QualifiedName, spelled: &HashMap<String, String>) -> String {
        let mut parts = Vec::new();
        let type_of = |name: &str| spelled.get(name).map_or("?", String::as_str).to_owned();
        if !self.missing.is_empty() {
            parts.push(format!(
                "the source has column(s) the target lacks: {}",
                self.missing
                    .iter()
                    .map(|c| format!("{} {}", quote_ident(&c.name), type_of(&c.name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.differing.is_empty() {
            parts.push(format!(
                "column type(s) differ, so values could change on the way: {}",
                self.differing
                    .iter()
                    .map(|(c, target)| format!(
                        "{} is {} on the source, {target} on the target",
                        quote_ident(&c.name),
                        type_of(&c.name)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.extra.is_empty() {
            parts.push(format!(
                "the target has column(s) the source no longer sends (dropped or renamed there): {}",
                self.extra
                    .iter()
                    .map(|(name, _)| quote_ident(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some((gone, added)) = self.rename(spelled) {
            parts.push(format!(
                "taken for a rename of {0} to {1}: if {0} was dropped and {1} added instead, run ALTER TABLE {2} DROP COLUMN {0}, ADD COLUMN {1} {3}; \
                 (renamed, the target's values of {0} stay in {1})",
                quote_ident(gone),
                quote_ident(&added.name),
                table.quoted(),
                spelled[&added.name]
            ));
        }
        parts.join("; ")
    }

    /// The single column gone and the single one added, when they have the
    /// same type: most likely a rename.
    fn rename(&self, spelled: &HashMap<String, String>) -> Option<(&str, &SourceColumn)> {
        match (self.missing.as_slice(), self.extra.as_slice()) {
            ([added], [(gone, gone_type)])
                if spelled.get(&added.name).is_some_and(|t| t == gone_type) =>
            {
                Some((gone.as_str(), added))
            }
            _ => None,
        }
    }

    /// The statements that make the target's table match. A single column
    /// gone and a single one added with the same type is taken for a
    /// rename (dropping and adding would lose the target's values).
    fn fix(&self, table: &QualifiedName, spelled: &HashMap<String, String>) -> String {
        let quoted = table.quoted();
        let mut statements = Vec::new();
        let mut actions = Vec::new();
        let renamed = match self.rename(spelled) {
            Some((gone, added)) => {
                statements.push(format!(
                    "ALTER TABLE {quoted} RENAME COLUMN {} TO {};",
                    quote_ident(gone),
                    quote_ident(&added.name)
                ));
                true
            }
            None => false,
        };
        if !renamed {
            for column in &self.missing {
                actions.push(format!(
                    "ADD COLUMN {} {}",
                    quote_ident(&column.name),
                    spelled[&column.name]
                ));
            }
        }
        for (column, _) in &self.differing {
            actions.push(format!(
                "ALTER COLUMN {} TYPE {}",
                quote_ident(&column.name),
                spelled[&column.name]
            ));
        }
        if !renamed {
            for (name, _) in &self.extra {
                actions.push(format!("DROP COLUMN {}", quote_ident(name)));
            }
        }
        if !actions.is_empty() {
            statements.push(format!("ALTER TABLE {quoted} {};", actions.join(", ")));
        }
        statements.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pglive_repl::pgoutput::{RelationColumn, ReplicaIdentity};

    fn relation(columns: &[(&str, u32, i32)]) -> Relation {
        Relation {
            xid: None,
            id: 1,
            namespace: "public".to_owned(),
            name: "t".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(name, type_id, type_modifier)| RelationColumn {
                    flags: 0,
                    name: (*name).to_owned(),
                    type_id: *type_id,
                    type_modifier: *type_modifier,
                })
                .collect(),
        }
    }

    fn target(name: &str, builtin: Option<u32>, sql: &str, modifier: i32) -> TargetColumn {
        TargetColumn {
            name: name.to_owned(),
            type_sql: sql.to_owned(),
            type_with_modifier: sql.to_owned(),
            type_name: QualifiedName::new("pg_catalog", sql),
            builtin_type: builtin,
            type_modifier: modifier,
            required: true,
            generated: false,
            orderable: true,
            identity_always: false,
        }
    }

    fn spelled(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const TEXT: u32 = 25;

    /// Compares with no source types known and extra columns refused.
    fn compare(relation: &Relation, columns: &[TargetColumn]) -> Option<Mismatch> {
        compare_with(relation, columns, &HashMap::new())
    }

    fn compare_with(
        relation: &Relation,
        columns: &[TargetColumn],
        types: &HashMap<u32, QualifiedName>,
    ) -> Option<Mismatch> {
        Shapes {
            types,
            extra_target_columns: false,
        }
        .compare(relation, columns)
    }

    #[test]
    fn equal_shapes_match_and_generated_target_columns_are_not_extra() {
        let mut generated = target("g", Some(INT4), "integer", -1);
        generated.generated = true;
        let columns = [target("id", Some(INT4), "integer", -1), generated];
        assert_eq!(compare(&relation(&[("id", INT4, -1)]), &columns), None);
    }

    #[test]
    fn extra_target_columns_match_when_expected() {
        let columns = [
            target("id", Some(INT4), "integer", -1),
            target("audit", Some(TEXT), "text", -1),
        ];
        let shapes = Shapes {
            types: &HashMap::new(),
            extra_target_columns: true,
        };
        assert_eq!(
            shapes.compare(&relation(&[("id", INT4, -1)]), &columns),
            None
        );
        assert!(compare(&relation(&[("id", INT4, -1)]), &columns).is_some());
    }

    #[test]
    fn added_changed_and_dropped_columns_get_one_alter() {
        let columns = [
            target("id", Some(INT4), "integer", -1),
            target("n", Some(INT4), "integer", -1),
            target("old", Some(TEXT), "text", -1),
        ];
        let mismatch = compare(
            &relation(&[("id", INT4, -1), ("n", INT8, -1), ("added", INT4, -1)]),
            &columns,
        )
        .unwrap();
        let table = QualifiedName::new("public", "t");
        let types = spelled(&[("n", "bigint"), ("added", "integer")]);
        assert_eq!(
            mismatch.fix(&table, &types),
            "ALTER TABLE \"public\".\"t\" ADD COLUMN \"added\" integer, ALTER COLUMN \"n\" TYPE bigint, DROP COLUMN \"old\";"
        );
        let said = mismatch.describe(&table, &types);
        for part in [
            "\"added\" integer",
            "\"n\" is bigint on the source, integer on the target",
            "no longer sends (dropped or renamed there): \"old\"",
        ] {
            assert!(said.contains(part), "{part}: {said}");
        }
        assert!(!said.contains("rename of"), "{said}");
    }

    #[test]
    fn one_gone_and_one_added_of_the_same_type_is_a_rename_with_the_other_reading_given() {
        let columns = [
            target("id", Some(INT4), "integer", -1),
            target("before", Some(TEXT), "text", -1),
        ];
        let mismatch = compare(
            &relation(&[("id", INT4, -1), ("after", TEXT, -1)]),
            &columns,
        )
        .unwrap();
        let table = QualifiedName::new("public", "t");
        let types = spelled(&[("after", "text")]);
        assert_eq!(
            mismatch.fix(&table, &types),
            "ALTER TABLE \"public\".\"t\" RENAME COLUMN \"before\" TO \"after\";"
        );
        let said = mismatch.describe(&table, &types);
        assert!(
            said.contains("DROP COLUMN \"before\", ADD COLUMN \"after\" text"),
            "{said}"
        );
        // Of another type: not taken for a rename.
        assert_eq!(
            mismatch.fix(&table, &spelled(&[("after", "integer")])),
            "ALTER TABLE \"public\".\"t\" ADD COLUMN \"after\" integer, DROP COLUMN \"before\";"
        );
    }

    #[test]
    fn a_modifier_or_a_user_type_of_another_name_differs() {
        let columns = [target("amount", Some(1700), "numeric(12,2)", 786_438)];
        assert!(compare(&relation(&[("amount", 1700, 786_436)]), &columns).is_some());
        let mut mood = target("m", None, "mood", -1);
        mood.type_name = QualifiedName::new("public", "mood");
        let other: HashMap<u32, QualifiedName> =
            [(70_000, QualifiedName::new("public", "feeling"))].into();
        assert!(compare_with(&relation(&[("m", 70_000, -1)]), &[mood.clone()], &other).is_some());
        // The same name in another schema (an extension's type) matches.
        let same: HashMap<u32, QualifiedName> =
            [(70_000, QualifiedName::new("extensions", "mood"))].into();
        assert_eq!(
            compare_with(&relation(&[("m", 70_000, -1)]), &[mood], &same),
            None
        );
    }
}
