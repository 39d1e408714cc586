//! Whether every carried table has the source's columns on the target, by
//! name and type, checked at cutover. Apply's shape check stops at a column
//! the target lacks or holds with another type, but it cannot tell a
//! nullable column dropped on the source from one the operator added to the
//! target first (rows without it are valid either way): at cutover the
//! difference is final, so it is named with the SQL that makes the target
//! match.

use pglive_postgres::{ConnectConfig, QualifiedName, connect_sql, quote_ident};
use pglive_schema::{Catalog, Table};

use crate::error::{Doing, Result};
use crate::job::Job;

/// How one table's columns differ between the source and the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnDifference {
    table: QualifiedName,
    /// Source columns the target lacks, with their types.
    missing: Vec<(String, String)>,
    /// Target columns the source lacks.
    extra: Vec<String>,
    /// Columns of another type on the target: name, source's, target's.
    retyped: Vec<(String, String, String)>,
}

impl ColumnDifference {
    /// Compares the columns of `source` and `target` (one table, both
    /// sides) as sets of names; `None` when they match.
    fn between(source: &Table, target: &Table) -> Option<ColumnDifference> {
        let mut difference = ColumnDifference {
            table: source.name.clone(),
            missing: Vec::new(),
            extra: Vec::new(),
            retyped: Vec::new(),
        };
        for column in &source.columns {
            match target.columns.iter().find(|c| c.name == column.name) {
                None => difference
                    .missing
                    .push((column.name.clone(), column.type_name.clone())),
                Some(there) if there.type_name != column.type_name => {
                    difference.retyped.push((
                        column.name.clone(),
                        column.type_name.clone(),
                        there.type_name.clone(),
                    ));
                }
                Some(_) => {}
            }
        }
        for column in &target.columns {
            if !source.columns.iter().any(|c| c.name == column.name) {
                difference.extra.push(column.name.clone());
            }
        }
        let matches = difference.missing.is_empty()
            && difference.extra.is_empty()
            && difference.retyped.is_empty();
        (!matches).then_some(difference)
    }

    /// What differs, for people.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "the target lacks {}",
                self.missing
                    .iter()
                    .map(|(name, type_name)| format!("{} {type_name}", quote_ident(name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.extra.is_empty() {
            parts.push(format!(
                "the source no longer has {}",
                self.extra
                    .iter()
                    .map(|name| quote_ident(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (name, source, target) in &self.retyped {
            parts.push(format!(
                "{} is {source} on the source, {target} on the target",
                quote_ident(name)
            ));
        }
        format!("{}: {}", self.table, parts.join("; "))
    }

    /// The statement that makes the target's table match the source's.
    pub(crate) fn fix(&self) -> String {
        let mut actions: Vec<String> = self
            .extra
            .iter()
            .map(|name| format!("DROP COLUMN {}", quote_ident(name)))
            .collect();
        actions.extend(
            self.missing
                .iter()
                .map(|(name, type_name)| format!("ADD COLUMN {} {type_name}", quote_ident(name))),
        );
        actions.extend(self.retyped.iter().map(|(name, type_name, _)| {
            format!("ALTER COLUMN {} TYPE {type_name}", quote_ident(name))
        }));
        format!(
            "ALTER TABLE {} {};",
            self.table.quoted(),
            actions.join(", ")
        )
    }
}

/// The carried tables (those the job's filter selects on the source) whose
/// columns differ on the target. Types are spelled with `search_path`
/// set to `pg_catalog` on both sides: a type outside it is always
/// schema-qualified, whatever the databases' or roles' own settings.
pub(crate) async fn differences(job: &Job) -> Result<Vec<ColumnDifference>> {
    let read = async |config: &ConnectConfig, side: &str| -> Result<Catalog> {
        let client = connect_sql(config).await?;
        client
            .batch_execute("SET search_path = pg_catalog")
            .await
            .doing_with(|| format!("setting search_path on the {side}"))?;
        Catalog::read(&client, &job.filter())
            .await
            .doing_with(|| format!("reading the {side}'s columns"))
    };
    let (on_source, on_target) =
        tokio::try_join!(read(&job.source, "source"), read(&job.target, "target"))?;
    Ok(on_source
        .tables
        .iter()
        .filter_map(|table| {
            let there = on_target.tables.iter().find(|t| t.name == table.name)?;
            ColumnDifference::between(table, there)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use pglive_schema::Column;

    use super::*;

    fn table(columns: &[(&str, &str)]) -> Table {
        Table {
            oid: 1,
            name: QualifiedName::new("public", "t"),
            kind: pglive_schema::TableKind::Ordinary,
            unlogged: false,
            estimated_rows: None,
            bytes: 0,
            primary_key: Vec::new(),
            replica_identity: pglive_schema::ReplicaIdentity::Default,
            identity_columns: Vec::new(),
            columns: columns
                .iter()
                .map(|(name, type_name)| Column {
                    name: (*name).to_owned(),
                    type_name: (*type_name).to_owned(),
                    not_null: false,
                    generated: false,
                    binary_safe: true,
                })
                .collect(),
            partition_of: None,
            leaves: Vec::new(),
            hypertable: false,
        }
    }

    #[test]
    fn the_same_columns_in_another_order_match() {
        let source = table(&[("id", "integer"), ("a", "text")]);
        let target = table(&[("a", "text"), ("id", "integer")]);
        assert_eq!(ColumnDifference::between(&source, &target), None);
    }

    #[test]
    fn each_difference_is_named_and_mended_by_one_statement() {
        let source = table(&[("id", "bigint"), ("Added", "numeric(10,2)")]);
        let target = table(&[("id", "integer"), ("gone", "text")]);
        let difference = ColumnDifference::between(&source, &target).unwrap();
        assert_eq!(
            difference.describe(),
            "\"public\".\"t\": the target lacks \"Added\" numeric(10,2); the source no longer has \"gone\"; \
             \"id\" is bigint on the source, integer on the target"
        );
        assert_eq!(
            difference.fix(),
            "ALTER TABLE \"public\".\"t\" DROP COLUMN \"gone\", ADD COLUMN \"Added\" numeric(10,2), \
             ALTER COLUMN \"id\" TYPE bigint;"
        );
    }
}
