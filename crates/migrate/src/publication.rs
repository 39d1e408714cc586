//! The migration's publications on the source.
//!
//! A table in a publication that publishes UPDATE or DELETE must have a
//! replica identity, or the source refuses the application's own UPDATEs
//! and DELETEs of it ("cannot update table … because it does not have a
//! replica identity and publishes updates"). So a migration uses two
//! publications:
//!
//! - `<name>` publishes INSERT and TRUNCATE of every selected table (`FOR
//!   ALL TABLES` for a superuser without filters, so that tables created
//!   later are in it too, except on a TimescaleDB source, where a table in
//!   a publication cannot become a hypertable);
//! - `<name>_changes` publishes UPDATE and DELETE of the tables that have a
//!   primary key or a replica identity.
//!
//! A keyless table is therefore migrated with its inserts only; the source
//! keeps accepting its updates and deletes, and cutover reports any it
//! received during the migration (see [`keyless_changes`]).

use std::collections::BTreeMap;

use crate::error::{Doing, Result};
use pglive_postgres::{QualifiedName, quote_ident};
use pglive_schema::{Catalog, ReplicaIdentity, Table};
use tokio_postgres::Client;

/// The suffix of the second publication's name.
const CHANGES_SUFFIX: &str = "_changes";

/// The longest publication name a migration may have: PostgreSQL names
/// hold 63 bytes, and the second publication adds a suffix.
pub(crate) const MAX_NAME_BYTES: usize = 63 - CHANGES_SUFFIX.len();

/// The name of the publication of UPDATEs and DELETEs.
pub(crate) fn changes_name(publication: &str) -> String {
    format!("{publication}{CHANGES_SUFFIX}")
}

/// Whether UPDATEs and DELETEs of `table` can be replicated: it has a
/// primary key or a replica identity index, or is `REPLICA IDENTITY FULL`.
pub(crate) fn identifies_rows(table: &Table) -> bool {
    match table.replica_identity {
        ReplicaIdentity::Nothing => false,
        ReplicaIdentity::Default => !table.primary_key.is_empty(),
        _ => true,
    }
}

/// The tables whose changes reach the WAL, so can be published (an
/// unlogged table cannot).
fn publishable(catalog: &Catalog) -> impl Iterator<Item = &Table> {
    catalog
        .tables
        .iter()
        .filter(|t| t.holds_rows() && !t.unlogged)
}

/// Creates both publications; returns how many tables each holds.
pub(crate) async fn create(
    source: &Client,
    publication: &str,
    catalog: &Catalog,
    all_tables: bool,
) -> Result<(usize, usize)> {
    let everything: Vec<String> = publishable(catalog).map(|t| t.name.quoted()).collect();
    let keyed: Vec<String> = publishable(catalog)
        .filter(|t| identifies_rows(t))
        .map(|t| t.name.quoted())
        .collect();
    let scope = |tables: &[String]| match tables.is_empty() {
        true => String::new(),
        false => format!(" FOR TABLE {}", tables.join(", ")),
    };
    let inserts = if all_tables {
        " FOR ALL TABLES".to_owned()
    } else {
        scope(&everything)
    };
    source
        .batch_execute(&format!(
            "BEGIN;
             CREATE PUBLICATION {}{inserts} WITH (publish = 'insert, truncate');
             CREATE PUBLICATION {}{} WITH (publish = 'update, delete');
             COMMIT",
            quote_ident(publication),
            quote_ident(&changes_name(publication)),
            scope(&keyed)
        ))
        .await
        .doing("creating the publications on the source")?;
    Ok((everything.len(), keyed.len()))
}

/// The publications to stream from: both, or the one publication of a
/// migration started before keyless tables had their own.
pub(crate) async fn stream_names(source: &Client, publication: &str) -> Result<Vec<String>> {
    let changes = changes_name(publication);
    Ok(match exists(source, &changes).await? {
        true => vec![publication.to_owned(), changes],
        false => vec![publication.to_owned()],
    })
}

/// Whether the source has a publication called `name`.
async fn exists(source: &Client, name: &str) -> Result<bool> {
    Ok(source
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .doing("reading pg_publication")?
        .is_some())
}

/// Drops both publications (those that exist); returns the names dropped.
pub(crate) async fn drop(source: &Client, publication: &str) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    for name in [publication.to_owned(), changes_name(publication)] {
        if exists(source, &name).await? {
            source
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    quote_ident(&name)
                ))
                .await
                .doing_with(|| format!("dropping publication {name:?}"))?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}

/// UPDATEs plus DELETEs the source's statistics count for each keyless
/// table of `catalog`, by quoted name (`"schema"."table"`), from
/// `pg_stat_user_tables` (which may lag a second behind the last commit of
/// a session that is still open).
pub(crate) async fn keyless_changes(
    source: &Client,
    catalog: &Catalog,
) -> Result<BTreeMap<String, i64>> {
    change_counts(source, &keyless_tables(catalog)).await
}

/// The quoted names of the tables of `catalog` published for inserts only.
pub(crate) fn keyless_tables(catalog: &Catalog) -> Vec<String> {
    publishable(catalog)
        .filter(|t| !identifies_rows(t))
        .map(|t| t.name.quoted())
        .collect()
}

/// UPDATEs plus DELETEs the source's statistics count for each of
/// `tables` (quoted names) that still exists.
pub(crate) async fn change_counts(
    source: &Client,
    tables: &[String],
) -> Result<BTreeMap<String, i64>> {
    let rows = source
        .query(
            "SELECT t.name, s.n_tup_upd + s.n_tup_del
               FROM unnest($1::text[]) AS t(name)
               JOIN pg_catalog.pg_stat_user_tables s ON s.relid = pg_catalog.to_regclass(t.name)",
            &[&tables],
        )
        .await
        .doing("reading the statistics of keyless tables")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The selected source tables that this migration does not carry: those
/// created after it started, which its copy does not hold. Their rows may
/// be missing from the stream (a publication that lists its tables) and
/// their updates and deletes are (the second publication always lists its
/// tables), until `adopt` carries them. With DDL captured, a table the
/// target has is carried: its CREATE was replayed in the stream.
pub(crate) async fn tables_not_carried(
    source: &Client,
    target: &Client,
    (migration, publication): (&str, &str),
    filter: &pglive_schema::ObjectFilter,
) -> Result<Vec<QualifiedName>> {
    let catalog = Catalog::read(source, filter).await?;
    let unfinished = crate::state::adopting(target, migration).await?;
    let not_copied = not_copied(&catalog, target, migration, &unfinished).await?;
    if !crate::ddl_capture::installed(source, migration).await? {
        return Ok(not_copied);
    }
    let left = left_out(&catalog, source, publication, &unfinished).await?;
    if not_copied.is_empty() {
        return Ok(left);
    }
    // Captured, a new table arrives through its own CREATE (and is in
    // the publications from its first row, unless it was left for
    // adoption): carried once the target has it.
    let on_target = on_target(target, &not_copied).await?;
    let mut not_carried: Vec<QualifiedName> = not_copied
        .into_iter()
        .filter(|n| !on_target.contains(n) || unfinished.contains(n))
        .collect();
    for table in left {
        if !not_carried.contains(&table) {
            not_carried.push(table);
        }
    }
    Ok(not_carried)
}

/// The tables a capturing migration left out of `publication` (see
/// [`LeftTable`]): publishable selected tables it does not publish, and
/// those whose adoption is `unfinished`.
async fn left_out(
    catalog: &Catalog,
    source: &Client,
    publication: &str,
    unfinished: &[QualifiedName],
) -> Result<Vec<QualifiedName>> {
    let tables: Vec<QualifiedName> = publishable(catalog).map(|t| t.name.clone()).collect();
    let mut left = unpublished(source, publication, &tables).await?;
    for table in unfinished {
        if tables.contains(table) && !left.contains(table) {
            left.push(table.clone());
        }
    }
    Ok(left)
}

/// Those of `tables` that the target has.
async fn on_target(target: &Client, tables: &[QualifiedName]) -> Result<Vec<QualifiedName>> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let there: Vec<String> = target
        .query(
            "SELECT t FROM unnest($1::text[]) t WHERE pg_catalog.to_regclass(t) IS NOT NULL",
            &[&names],
        )
        .await
        .doing("looking for new tables on the target")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(tables
        .iter()
        .filter(|t| there.contains(&t.quoted()))
        .cloned()
        .collect())
}

/// The selected tables whose rows no copy brought to the target (or whose
/// adoption still owes its post-data).
async fn not_copied(
    catalog: &Catalog,
    target: &Client,
    migration: &str,
    unfinished: &[QualifiedName],
) -> Result<Vec<QualifiedName>> {
    let copied = pglive_snapshot::copied_at(target, migration).await?;
    let copied: std::collections::HashSet<String> =
        copied.keys().map(|name| name.to_string()).collect();
    Ok(catalog
        .tables
        .iter()
        .filter(|t| {
            t.holds_rows()
                && (!copied.contains(&t.name.to_string()) || unfinished.contains(&t.name))
        })
        .map(|t| t.name.clone())
        .collect())
}

/// Those of `tables` that `publication` does not publish (as listed, in a
/// schema it lists, or `FOR ALL TABLES`).
async fn unpublished(
    source: &Client,
    publication: &str,
    tables: &[QualifiedName],
) -> Result<Vec<QualifiedName>> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let published: Vec<QualifiedName> = source
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables
              WHERE pubname = $1
                AND (schemaname, tablename) IN (SELECT * FROM ROWS FROM (unnest($2::text[]), unnest($3::text[])))",
            &[&publication, &schemas, &names],
        )
        .await
        .doing_with(|| format!("reading publication {publication:?}"))?
        .iter()
        .map(|row| QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect();
    Ok(tables
        .iter()
        .filter(|t| !published.contains(t))
        .cloned()
        .collect())
}

/// A table created on a TimescaleDB source while a capturing migration
/// streams, left out of the publications by the capture (TimescaleDB
/// refuses `create_hypertable()` on a published table) and made on the
/// target by its replayed `CREATE`: it waits to be adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeftTable {
    /// The table.
    pub name: QualifiedName,
    /// Whether it is a hypertable on the source by now.
    pub hypertable: bool,
}

/// The tables left for adoption ([`LeftTable`]): selected and publishable,
/// not in `publication` or with an unfinished adoption, and on the target.
pub(crate) async fn left_for_adoption(
    source: &Client,
    target: &Client,
    (migration, publication): (&str, &str),
    filter: &pglive_schema::ObjectFilter,
) -> Result<Vec<LeftTable>> {
    let catalog = Catalog::read(source, filter).await?;
    let unfinished = crate::state::adopting(target, migration).await?;
    let left = left_out(&catalog, source, publication, &unfinished).await?;
    if left.is_empty() {
        return Ok(Vec::new());
    }
    let on_target = on_target(target, &left).await?;
    Ok(left
        .into_iter()
        .filter(|t| on_target.contains(t))
        .map(|name| LeftTable {
            hypertable: catalog.timescale.hypertables.iter().any(|h| h.name == name),
            name,
        })
        .collect())
}

/// Adds the tables of `catalog` to the migration's publications where they
/// are not in them yet: every one to `<name>` (unless it is `FOR ALL
/// TABLES`), those with a key to `<name>_changes`.
pub(crate) async fn add(source: &Client, publication: &str, catalog: &Catalog) -> Result<()> {
    let all_tables: bool = source
        .query_one(
            "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .doing_with(|| format!("reading publication {publication:?}"))?
        .get(0);
    let changes = changes_name(publication);
    for table in publishable(catalog) {
        let mut targets = Vec::new();
        if !all_tables {
            targets.push(publication.to_owned());
        }
        if identifies_rows(table) {
            targets.push(changes.clone());
        }
        for name in targets {
            let present = source
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_publication_tables
                      WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                    &[&name, &table.name.schema, &table.name.name],
                )
                .await
                .doing("reading pg_publication_tables")?
                .is_some();
            if !present {
                source
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        quote_ident(&name),
                        table.name.quoted()
                    ))
                    .await
                    .doing_with(|| {
                        format!(
                            "adding {} to publication {name:?} (the source role must own the table)",
                            table.name
                        )
                    })?;
            }
        }
    }
    Ok(())
}
