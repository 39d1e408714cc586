//! Mapping a source relation (from a pgoutput Relation message) onto the
//! target table of the same schema-qualified name, columns by name.

use std::sync::Arc;

use pglive_postgres::QualifiedName;
use pglive_postgres::quote_ident;
use pglive_repl::pgoutput::{Relation, ReplicaIdentity};
use tokio_postgres::Client;

use crate::error::{Error, Result, target};
use crate::shape::{ShapeProblem, Shapes};
use crate::spread;

/// How rows of a table are found for UPDATE and DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    /// By the replica identity columns (primary key or chosen index).
    Key,
    /// By all columns (REPLICA IDENTITY FULL).
    Full,
    /// Not at all (REPLICA IDENTITY NOTHING).
    Nothing,
}

/// One column that the applier writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    /// The quoted column name.
    pub quoted: String,
    /// The target's type, fully qualified, for casts from text.
    pub type_sql: String,
    /// Whether the type has a default btree ordering, so rows can be sorted
    /// by it before they are looked up.
    pub orderable: bool,
}

/// A column of the target table as its catalog describes it.
#[derive(Clone, Debug)]
pub(crate) struct TargetColumn {
    pub name: String,
    /// The type without its modifier, for casts that never change a value
    /// (the column's own modifier checks the value when it is stored):
    /// `format_type(type, -1)`, which names `bpchar` and `"bit"` rather than
    /// `character` and `bit`, which a cast would read as length 1.
    pub type_sql: String,
    /// The type with the column's modifier, as `format_type` spells it
    /// (`numeric(12,2)`).
    pub type_with_modifier: String,
    /// The type's schema and name (a domain's base type's, as pgoutput's
    /// Type message names it).
    pub type_name: QualifiedName,
    /// The type's OID, when it is a built-in type (the same on every
    /// server); `None` for types made by `CREATE TYPE` or extensions.
    pub builtin_type: Option<u32>,
    /// `atttypmod` (-1: none).
    pub type_modifier: i32,
    /// `NOT NULL` without a default (nor identity): a row must give it.
    pub required: bool,
    pub generated: bool,
    pub orderable: bool,
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub identity_always: bool,
}

/// A source relation mapped onto its target table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableMap {
    pub name: QualifiedName,
    /// `"schema"."name"`.
    pub quoted: String,
    /// For each source column: its index in `columns`, or `None` when the
    /// target computes it (a generated column) and it is never written.
    pub source_to_column: Vec<Option<usize>>,
    /// The written columns, in source order.
    pub columns: Vec<Column>,
    /// Indices into `columns` of the replica identity columns.
    pub key: Vec<usize>,
    pub identity: Identity,
    /// Whether a unique index without every key column, or an exclusion
    /// constraint, ties rows of different keys: the target checks them row
    /// by row, so changes must reach it in source order (a value may move
    /// from one row to another).
    pub tied: bool,
    /// Whether the table's rows may be applied over several sessions by
    /// key (see `spread`).
    pub spread: bool,
    /// The written columns that are `GENERATED ALWAYS AS IDENTITY` on the
    /// target (unquoted names): they refuse the source's values until made
    /// `BY DEFAULT`.
    pub identity_always: Vec<String>,
    /// How the source's columns differ from the target's, if they do: a
    /// change to apply stops with it.
    pub mismatch: Option<Arc<ShapeProblem>>,
    /// A TimescaleDB hypertable on the target: its rows live in its chunks
    /// (it is truncated without `ONLY`, which TimescaleDB refuses).
    pub hypertable: bool,
    /// A hypertable's time column when it is a key column: keyed updates
    /// and deletes name the range of its values in a batch (see
    /// [`TimeKey`]).
    pub time_key: Option<TimeKey>,
}

/// A hypertable's time column among the key columns. A keyed `UPDATE` or
/// `DELETE` of a batch also bounds it by the batch's smallest and largest
/// value, as constants of a custom plan: TimescaleDB then leaves out the
/// chunks outside them, and in a compressed chunk decompresses only the
/// batches they overlap (a join alone decompresses the whole chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeKey {
    /// Its position among the key columns.
    pub position: usize,
    /// How its values compare as pgoutput prints them.
    pub order: TimeOrder,
}

/// How the text of a time column's values orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeOrder {
    /// Integers.
    Integer,
    /// ISO dates and timestamps as the pinned settings print them (`DateStyle
    /// ISO`, `TimeZone UTC`), four-digit years: as strings, once checked.
    Iso,
}

impl TimeKey {
    /// The smallest and largest of `values`, or `None` when one is null or
    /// does not print in the form this compares.
    pub fn bounds<'a>(
        &self,
        values: impl Iterator<Item = Option<&'a [u8]>>,
    ) -> Option<(&'a [u8], &'a [u8])> {
        let values: Vec<&[u8]> = values.collect::<Option<_>>()?;
        match self.order {
            TimeOrder::Integer => {
                let numbers: Vec<(i64, &[u8])> = values
                    .iter()
                    .map(|v| Some((std::str::from_utf8(v).ok()?.parse().ok()?, *v)))
                    .collect::<Option<_>>()?;
                Some((numbers.iter().min()?.1, numbers.iter().max()?.1))
            }
            TimeOrder::Iso if values.iter().all(|v| iso(v)) => {
                Some((*values.iter().min()?, *values.iter().max()?))
            }
            TimeOrder::Iso => None,
        }
    }
}

/// Whether `value` is `YYYY-MM-DD`, optionally followed by ` HH:MM:SS`, a
/// fraction and `+00`: the forms whose string order is their time order.
fn iso(value: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| {
        value
            .get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let date = value.len() >= 10
        && digits(0..4)
        && value[4] == b'-'
        && digits(5..7)
        && value[7] == b'-'
        && digits(8..10);
    if !date {
        return false;
    }
    let mut rest = &value[10..];
    if rest.is_empty() {
        return true;
    }
    let time = rest.len() >= 9
        && rest[0] == b' '
        && rest[1..3].iter().all(u8::is_ascii_digit)
        && rest[3] == b':'
        && rest[4..6].iter().all(u8::is_ascii_digit)
        && rest[6] == b':'
        && rest[7..9].iter().all(u8::is_ascii_digit);
    if !time {
        return false;
    }
    rest = &rest[9..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    rest.is_empty() || rest == b"+00"
}

/// The time column of hypertable `name` on the target and how its values
/// order, if it is one of `columns` at `key`.
async fn time_key(
    client: &Client,
    name: &QualifiedName,
    columns: &[Column],
    key: &[usize],
) -> Result<Option<TimeKey>> {
    let row = client
        .query_opt(
            "SELECT d.column_name::text, format_type(d.column_type, NULL) \
               FROM _timescaledb_catalog.dimension d \
               JOIN _timescaledb_catalog.hypertable h ON h.id = d.hypertable_id \
              WHERE h.schema_name = $1 AND h.table_name = $2 AND d.interval_length IS NOT NULL \
              ORDER BY d.id LIMIT 1",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(target(format!("reading the time column of {name}")))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (column, type_name): (String, String) = (row.get(0), row.get(1));
    let order = match type_name.as_str() {
        "smallint" | "integer" | "bigint" => TimeOrder::Integer,
        "date" | "timestamp with time zone" | "timestamp without time zone" => TimeOrder::Iso,
        _ => return Ok(None),
    };
    let quoted = pglive_postgres::quote_ident(&column);
    Ok(key
        .iter()
        .position(|&c| columns[c].quoted == quoted)
        .map(|position| TimeKey { position, order }))
}

/// Whether `name` is a TimescaleDB hypertable on the target of `client`.
async fn is_hypertable(client: &Client, name: &QualifiedName) -> Result<bool> {
    let context = || format!("reading whether {name} is a hypertable");
    let timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL",
            &[],
        )
        .await
        .map_err(target(context()))?
        .get(0);
    if !timescale {
        return Ok(false);
    }
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable \
                             WHERE schema_name = $1 AND table_name = $2)",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(target(context()))?
        .get(0))
}

/// For a table (and its partitions or children) on the target: whether a
/// unique index that does not contain every key column (`$3`) or an
/// exclusion constraint ties rows of different keys together; whether a
/// foreign key leads from or to it; and whether every key column has a
/// type whose equal values always print the same under the pinned session
/// settings (integers, text types with a deterministic collation, uuid,
/// bool, date, timestamps, enums, domains over them), so that equal keys
/// hash to one lane. `numeric` (1.0 = 1.00), `float` (0 = -0) or a
/// case-insensitive collation would not.
const TIES_SQL: &str = "
WITH RECURSIVE tree(oid, root) AS (
    SELECT c.oid, true FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = $2
  UNION ALL
    SELECT i.inhrelid, false FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.oid
)
SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index x
         WHERE x.indrelid IN (SELECT oid FROM tree)
           AND (x.indisexclusion
                OR (x.indisunique AND NOT $3::text[] <@ ARRAY(
                        SELECT a.attname::text FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey))))),
       EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint k
         WHERE k.contype = 'f'
           AND (k.conrelid IN (SELECT oid FROM tree) OR k.confrelid IN (SELECT oid FROM tree))),
       NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
          LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
         WHERE a.attrelid = (SELECT oid FROM tree WHERE root) AND a.attname = ANY ($3)
           AND NOT (COALESCE(b.typtype, t.typtype) = 'e'
                    OR COALESCE(b.oid, t.oid) IN (
                        'pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                        'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.oid'::pg_catalog.regtype,
                        'pg_catalog.bool'::pg_catalog.regtype, 'pg_catalog.uuid'::pg_catalog.regtype,
                        'pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype,
                        'pg_catalog.bpchar'::pg_catalog.regtype, 'pg_catalog.date'::pg_catalog.regtype,
                        'pg_catalog.timestamp'::pg_catalog.regtype,
                        'pg_catalog.timestamptz'::pg_catalog.regtype))
               OR NOT COALESCE((pg_catalog.to_jsonb(co.*) ->> 'collisdeterministic')::bool, true))";

/// OIDs below this are built-in objects, the same on every server.
pub(crate) const FIRST_USER_OID: u32 = 16384;

impl TableMap {
    /// Looks the relation's table up on the target and compares their
    /// shapes (see `shape`): a mismatch is kept on the map, and stops apply
    /// at the first change that is applied. `checks_foreign_keys` says whether the apply
    /// session fires foreign-key triggers (it does without
    /// `session_replication_role = replica`).
    pub async fn resolve(
        client: &Client,
        relation: &Relation,
        shapes: &Shapes<'_>,
        checks_foreign_keys: bool,
    ) -> Result<TableMap> {
        let name = QualifiedName::new(&relation.namespace, &relation.name);
        let rows = client
            .query(
                "SELECT a.attname::text,
                        format_type(a.atttypid, -1),
                        a.attgenerated <> '',
                        a.attidentity = 'a',
                        a.atttypid,
                        a.atttypmod,
                        format_type(a.atttypid, a.atttypmod),
                        bn.nspname::text,
                        b.typname::text,
                        a.attnotnull AND NOT a.atthasdef AND a.attidentity = '',
                        EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc
                                  JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
                                 WHERE am.amname = 'btree' AND oc.opcdefault
                                   AND oc.opcintype IN (t.oid, t.typbasetype,
                                       CASE WHEN t.oid = 'pg_catalog.varchar'::pg_catalog.regtype
                                            THEN 'pg_catalog.text'::pg_catalog.regtype END))
                   FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                   -- pgoutput's Type message names a domain's base type.
                   JOIN pg_catalog.pg_type b
                     ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
                   JOIN pg_catalog.pg_namespace bn ON bn.oid = b.typnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&relation.namespace, &relation.name],
            )
            .await
            .map_err(target(format!("reading the columns of {name}")))?;
        if rows.is_empty() {
            return Err(Error::TableMissing { table: name });
        }
        let target_columns: Vec<TargetColumn> = rows
            .iter()
            .map(|r| TargetColumn {
                name: r.get(0),
                type_sql: r.get(1),
                generated: r.get(2),
                identity_always: r.get(3),
                builtin_type: Some(r.get::<_, u32>(4)).filter(|oid| *oid < FIRST_USER_OID),
                type_modifier: r.get(5),
                type_with_modifier: r.get(6),
                type_name: QualifiedName::new(r.get::<_, String>(7), r.get::<_, String>(8)),
                required: r.get(9),
                orderable: r.get(10),
            })
            .collect();
        let mismatch = match shapes.compare(relation, &target_columns) {
            Some(mismatch) => Some(Arc::new(mismatch.explain(client, &name, shapes).await?)),
            None => None,
        };
        let mut map = Self::from_target_columns(name, relation, &target_columns)?;
        map.mismatch = mismatch;
        map.hypertable = is_hypertable(client, &map.name).await?;
        if map.hypertable {
            map.time_key = time_key(client, &map.name, &map.columns, &map.key).await?;
        }
        if map.identity == Identity::Key {
            let key_names: Vec<&str> = relation
                .columns
                .iter()
                .filter(|c| c.is_key())
                .map(|c| c.name.as_str())
                .collect();
            let ties = client
                .query_one(TIES_SQL, &[&relation.namespace, &relation.name, &key_names])
                .await
                .map_err(target(format!("reading the constraints of {}", map.name)))?;
            let (tied, foreign_keys, canonical_key): (bool, bool, bool) =
                (ties.get(0), ties.get(1), ties.get(2));
            map.tied = tied;
            let foreign_keys_checked = checks_foreign_keys && foreign_keys;
            map.spread = spread::table_spreads(canonical_key, tied, foreign_keys_checked);
        }
        Ok(map)
    }

    /// The mapping from the target's columns; tied and not spread until
    /// [`TableMap::resolve`] checked the target's constraints.
    pub fn from_target_columns(
        name: QualifiedName,
        relation: &Relation,
        target_columns: &[TargetColumn],
    ) -> Result<TableMap> {
        let mut source_to_column = Vec::with_capacity(relation.columns.len());
        let mut columns = Vec::new();
        let mut key = Vec::new();
        let mut identity_always = Vec::new();
        for source in &relation.columns {
            match target_columns.iter().find(|c| c.name == source.name) {
                // Never applied: the shapes' mismatch stops it first.
                None => source_to_column.push(None),
                Some(column) if column.generated => source_to_column.push(None),
                Some(column) => {
                    if source.is_key() {
                        key.push(columns.len());
                    }
                    if column.identity_always {
                        identity_always.push(column.name.clone());
                    }
                    source_to_column.push(Some(columns.len()));
                    columns.push(Column {
                        quoted: quote_ident(&column.name),
                        type_sql: column.type_sql.clone(),
                        orderable: column.orderable,
                    });
                }
            }
        }
        let identity = match relation.replica_identity {
            ReplicaIdentity::Full => Identity::Full,
            ReplicaIdentity::Nothing => Identity::Nothing,
            _ if key.is_empty() => Identity::Nothing,
            _ => Identity::Key,
        };
        Ok(TableMap {
            quoted: name.quoted(),
            name,
            source_to_column,
            columns,
            key,
            identity,
            tied: true,
            spread: false,
            identity_always,
            mismatch: None,
            hypertable: false,
            time_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds<'a>(order: TimeOrder, values: &[Option<&'a str>]) -> Option<(&'a str, &'a str)> {
        let key = TimeKey { position: 0, order };
        key.bounds(values.iter().map(|v| v.map(str::as_bytes)))
            .map(|(low, high)| {
                (
                    std::str::from_utf8(low).unwrap(),
                    std::str::from_utf8(high).unwrap(),
                )
            })
    }

    #[test]
    fn time_bounds_follow_time_not_text() {
        // Integers: by value, not as strings.
        assert_eq!(
            bounds(TimeOrder::Integer, &[Some("9"), Some("-12"), Some("100")]),
            Some(("-12", "100"))
        );
        // Timestamps: a fraction sorts after the whole second, shorter
        // fractions by their digits.
        let stamps = [
            Some("2026-01-02 00:05:00.5+00"),
            Some("2026-01-02 00:05:00+00"),
            Some("2026-01-02 00:05:00.25+00"),
            Some("2025-12-31 23:59:59.999999+00"),
        ];
        assert_eq!(
            bounds(TimeOrder::Iso, &stamps),
            Some(("2025-12-31 23:59:59.999999+00", "2026-01-02 00:05:00.5+00"))
        );
        assert_eq!(
            bounds(TimeOrder::Iso, &[Some("2026-01-02"), Some("2024-02-29")]),
            Some(("2024-02-29", "2026-01-02"))
        );
        // What does not compare as text gives no bounds (the statement runs
        // without them).
        for odd in [
            "infinity",
            "2026-01-02 00:05:00 BC",
            "12026-01-02 00:05:00+00",
            "2026-01-02 00:05:00+02",
            "2026-01-02 00:05:00.+00",
        ] {
            assert_eq!(
                bounds(TimeOrder::Iso, &[Some("2026-01-02"), Some(odd)]),
                None,
                "{odd}"
            );
        }
        assert_eq!(bounds(TimeOrder::Iso, &[Some("2026-01-02"), None]), None);
        assert_eq!(bounds(TimeOrder::Integer, &[Some("1.5")]), None);
        assert_eq!(bounds(TimeOrder::Integer, &[]), None);
    }
}
