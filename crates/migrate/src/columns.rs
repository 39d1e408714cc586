//! Whether every carried table has the source's columns on the target, by
//! name and type, checked at cutover. Apply's shape check stops at a column
//! the target lacks or holds with another type, but it cannot tell a
//! nullable column dropped on the source from one the operator added to the
//! target first (rows without it are valid either way): at cutover the
//! difference is final, so it is named with the SQL that makes the target
//! match.

use std::collections::HashMap;

use pglive_postgres::{ConnectConfig, QualifiedName, connect_sql, quote_ident};
use pglive_schema::Catalog;

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
    /// The table.
    pub(crate) fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// Compares the columns (name, type) of one table on the source and
    /// the target as sets of names; `None` when they match.
    fn between(
        table: &QualifiedName,
        source: &[(String, String)],
        target: &[(String, String)],
    ) -> Option<ColumnDifference> {
        let mut difference = ColumnDifference {
            table: table.clone(),
            missing: Vec::new(),
            extra: Vec::new(),
            retyped: Vec::new(),
        };
        for (name, type_name) in source {
            match target.iter().find(|(n, _)| n == name) {
                None => difference.missing.push((name.clone(), type_name.clone())),
                Some((_, there)) if there != type_name => {
                    difference
                        .retyped
                        .push((name.clone(), type_name.clone(), there.clone()));
                }
                Some(_) => {}
            }
        }
        for (name, _) in target {
            if !source.iter().any(|(n, _)| n == name) {
                difference.extra.push(name.clone());
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

/// Each table's columns (name, type), by table. Types are spelled with
/// `search_path` set to `pg_catalog`: a type outside it is always
/// schema-qualified, whatever the database's or role's own setting.
const COLUMNS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text,
            pg_catalog.format_type(a.atttypid, a.atttypmod)
       FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE (n.nspname, c.relname) IN (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])))
        AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY 1, 2, a.attnum";

async fn columns(
    config: &ConnectConfig,
    side: &str,
    tables: &[&QualifiedName],
) -> Result<HashMap<QualifiedName, Vec<(String, String)>>> {
    let client = connect_sql(config).await?;
    client
        .batch_execute("SET search_path = pg_catalog")
        .await
        .doing_with(|| format!("setting search_path on the {side}"))?;
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let mut by_table: HashMap<QualifiedName, Vec<(String, String)>> = HashMap::new();
    for row in client
        .query(COLUMNS, &[&schemas, &names])
        .await
        .doing_with(|| format!("reading the {side}'s columns"))?
    {
        by_table
            .entry(QualifiedName::new(
                row.get::<_, String>(0),
                row.get::<_, String>(1),
            ))
            .or_default()
            .push((row.get(2), row.get(3)));
    }
    Ok(by_table)
}

/// The carried tables (those the job's filter selects on the source) whose
/// columns differ on the target.
pub(crate) async fn differences(job: &Job) -> Result<Vec<ColumnDifference>> {
    let catalog = {
        let source = connect_sql(&job.source).await?;
        Catalog::read(&source, &job.filter())
            .await
            .doing("reading the source's tables")?
    };
    let tables: Vec<&QualifiedName> = catalog.tables.iter().map(|t| &t.name).collect();
    differing(job, &tables).await
}

/// Those of `tables` whose columns differ on the target (a table the
/// target lacks is not among them).
pub(crate) async fn differing(
    job: &Job,
    tables: &[&QualifiedName],
) -> Result<Vec<ColumnDifference>> {
    let (on_source, on_target) = tokio::try_join!(
        columns(&job.source, "source", tables),
        columns(&job.target, "target", tables)
    )?;
    Ok(tables
        .iter()
        .filter_map(|&table| {
            let there = on_target.get(table)?;
            ColumnDifference::between(table, on_source.get(table)?, there)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn the_same_columns_in_another_order_match() {
        let table = QualifiedName::new("public", "t");
        let source = columns(&[("id", "integer"), ("a", "text")]);
        let target = columns(&[("a", "text"), ("id", "integer")]);
        assert_eq!(ColumnDifference::between(&table, &source, &target), None);
    }

    #[test]
    fn each_difference_is_named_and_mended_by_one_statement() {
        let table = QualifiedName::new("public", "t");
        let source = columns(&[("id", "bigint"), ("Added", "numeric(10,2)")]);
        let target = columns(&[("id", "integer"), ("gone", "text")]);
        let difference = ColumnDifference::between(&table, &source, &target).unwrap();
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
