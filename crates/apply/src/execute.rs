//! Running planned statements on the target.
//!
//! Values travel as text, exactly as pgoutput sent them, and are cast to the
//! target column's type by the target itself (`$1::text[]` unnested, then
//! `::type`), which parses them with the type's input function — the same
//! function that printed them on the source, under the same pinned settings.
//! Long insert runs use `COPY … FROM STDIN` (text format).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use pglive_repl::pgoutput::ColumnValue;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement as Prepared};

use crate::error::{Error, Result, target};
use crate::plan::{Statement, Values};
use crate::table::TableMap;

/// Insert runs at least this long go through COPY; shorter ones through one
/// prepared `INSERT … SELECT FROM unnest(…)`.
const COPY_THRESHOLD: usize = 64;

/// Bytes of COPY data sent per message.
const COPY_CHUNK: usize = 1 << 20;

/// A column of text values as a `text[]` parameter, sent in binary without
/// copying or re-validating the values.
#[derive(Debug)]
struct TextArray<'a>(Vec<Option<&'a [u8]>>);

impl ToSql for TextArray<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let dimension = postgres_protocol::types::ArrayDimension {
            len: i32::try_from(self.0.len())?,
            lower_bound: 1,
        };
        postgres_protocol::types::array_to_sql(
            Some(dimension),
            Type::TEXT.oid(),
            self.0.iter(),
            |value, out| match value {
                Some(bytes) => {
                    out.put_slice(bytes);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Binary
    }

    to_sql_checked!();
}

/// One text value as a `text` parameter.
#[derive(Debug)]
struct RawText<'a>(Option<&'a [u8]>);

impl ToSql for RawText<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.0 {
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }

    to_sql_checked!();
}

fn text_of<'a>(table: &TableMap, value: &'a ColumnValue) -> Result<Option<&'a [u8]>> {
    match value {
        ColumnValue::Null => Ok(None),
        ColumnValue::Text(bytes) => Ok(Some(bytes)),
        ColumnValue::UnchangedToast => Err(Error::Protocol(format!(
            "an unchanged TOAST value where {} needs the value",
            table.name
        ))),
        ColumnValue::Binary(_) => Err(Error::Protocol(format!(
            "binary values for {} although text was requested",
            table.name
        ))),
        other => Err(Error::Protocol(format!(
            "unsupported column value {other:?} for {}",
            table.name
        ))),
    }
}

/// One value in its text form as a parameter of whatever type the
/// statement gives it: a constant of that type in a custom plan.
#[derive(Debug)]
struct TypedText<'a>(&'a [u8]);

impl ToSql for TypedText<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// The smallest and largest time value of keyed rows `keys` of a
/// hypertable, when the table has a [`TimeKey`](crate::table::TimeKey)
/// and they compare.
fn time_bounds<'a>(
    table: &TableMap,
    keys: impl Iterator<Item = &'a Values>,
) -> Result<Option<[TypedText<'a>; 2]>> {
    let Some(time) = table.time_key else {
        return Ok(None);
    };
    let values = keys
        .map(|k| k.get(time.position).map_or(Ok(None), |v| text_of(table, v)))
        .collect::<Result<Vec<_>>>()?;
    Ok(time
        .bounds(values.into_iter())
        .map(|(low, high)| [TypedText(low), TypedText(high)]))
}

/// `params` followed by the time bounds, if any.
fn with_bounds<'a, T: ToSql + Sync>(
    params: &'a [T],
    bounds: &'a Option<[TypedText<'_>; 2]>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut all = params_ref(params);
    all.extend(bounds.iter().flatten().map(|b| b as &(dyn ToSql + Sync)));
    all
}

/// Prepared statements by SQL text, for the life of one target session.
#[derive(Default)]
pub(crate) struct StatementCache {
    prepared: HashMap<String, Prepared>,
}

impl StatementCache {
    async fn get(&mut self, client: &Client, sql: &str, table: &TableMap) -> Result<Prepared> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client
            .prepare(sql)
            .await
            .map_err(target(format!("preparing a statement for {}", table.name)))?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// How many rows a statement changed, to compare with what the source did.
pub(crate) struct Outcome {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// A statement that changed fewer rows than the source did: the operation,
/// the rows expected and the rows matched.
pub(crate) type Shortfall = (&'static str, u64, u64);

/// Runs one statement inside the open target transaction. Updates and
/// deletes must find every row the source changed; anything else is a
/// [`Shortfall`], reported by the caller with the LSN as
/// [`Error::RowsMissing`].
pub(crate) async fn execute(
    client: &Client,
    cache: &mut StatementCache,
    table: &TableMap,
    statement: &Statement,
) -> Result<std::result::Result<Outcome, Shortfall>> {
    match statement {
        Statement::Insert(rows) if rows.len() >= COPY_THRESHOLD => {
            copy_rows(client, table, rows).await?;
            Ok(Ok(Outcome::inserted(rows.len())))
        }
        Statement::Insert(rows) => {
            let columns: Vec<usize> = (0..table.columns.len()).collect();
            let params = column_arrays(table, rows.iter(), &columns)?;
            let what = format!("inserting into {}", table.name);
            run(
                client,
                cache,
                table,
                &insert_sql(table),
                &params_ref(&params),
                what,
            )
            .await?;
            Ok(Ok(Outcome::inserted(rows.len())))
        }
        Statement::Update { mask, rows } if table.tied && rows.len() > 1 => {
            let matched = update_tied(client, cache, table, mask, rows).await?;
            Ok(expect("UPDATE", rows.len(), matched).map(|()| Outcome::updated(rows.len())))
        }
        Statement::Update { mask, rows } => {
            let matched = update(client, cache, table, mask, rows).await?;
            Ok(expect("UPDATE", rows.len(), matched).map(|()| Outcome::updated(rows.len())))
        }
        Statement::Delete(keys) => {
            let key_positions: Vec<usize> = (0..table.key.len()).collect();
            let params = column_arrays(table, keys.iter(), &key_positions)?;
            let bounds = time_bounds(table, keys.iter())?;
            let what = format!("deleting from {}", table.name);
            let matched = run(
                client,
                cache,
                table,
                &delete_sql(table, bounds.is_some()),
                &with_bounds(&params, &bounds),
                what,
            )
            .await?;
            Ok(expect("DELETE", keys.len(), matched).map(|()| Outcome::deleted(keys.len())))
        }
        Statement::UpdateFull { old, new } => {
            let (matched_columns, set) = (sent(old), sent(new));
            let mut values = texts(table, old, &matched_columns)?;
            values.extend(texts(table, new, &set)?);
            let sql = update_full_sql(table, &set, &matched_columns);
            let what = format!("updating {}", table.name);
            let matched = run(client, cache, table, &sql, &params_ref(&values), what).await?;
            Ok(expect("UPDATE", 1, matched).map(|()| Outcome::updated(1)))
        }
        Statement::DeleteFull(old) => {
            let matched_columns = sent(old);
            let values = texts(table, old, &matched_columns)?;
            let sql = delete_full_sql(table, &matched_columns);
            let what = format!("deleting from {}", table.name);
            let matched = run(client, cache, table, &sql, &params_ref(&values), what).await?;
            Ok(expect("DELETE", 1, matched).map(|()| Outcome::deleted(1)))
        }
    }
}

/// One keyed UPDATE of `rows`; the rows it found.
async fn update(
    client: &Client,
    cache: &mut StatementCache,
    table: &TableMap,
    mask: &[bool],
    rows: &[(Values, Values)],
) -> Result<u64> {
    let set: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
    let key_positions: Vec<usize> = (0..table.key.len()).collect();
    let mut params = column_arrays(table, rows.iter().map(|(k, _)| k), &key_positions)?;
    params.extend(column_arrays(table, rows.iter().map(|(_, n)| n), &set)?);
    let bounds = time_bounds(table, rows.iter().map(|(k, _)| k))?;
    let what = format!("updating {}", table.name);
    run(
        client,
        cache,
        table,
        &update_sql(table, mask, bounds.is_some()),
        &with_bounds(&params, &bounds),
        what,
    )
    .await
}

/// A keyed UPDATE of a table whose rows are tied by a unique index or an
/// exclusion constraint. The target checks those row by row in an order
/// of its choosing, so a value that moved from one row to another in the
/// source can collide inside one statement although the source's order
/// never did. Then the statement is undone (to a savepoint) and its rows
/// run one by one in source order, as the source ran them.
async fn update_tied(
    client: &Client,
    cache: &mut StatementCache,
    table: &TableMap,
    mask: &[bool],
    rows: &[(Values, Values)],
) -> Result<u64> {
    const SAVEPOINT: &str = "SAVEPOINT pglive_tied";
    let savepoint = |sql: &'static str| async move {
        client
            .batch_execute(sql)
            .await
            .map_err(target(format!("updating {}", table.name)))
    };
    savepoint(SAVEPOINT).await?;
    match update(client, cache, table, mask, rows).await {
        Ok(matched) => {
            savepoint("RELEASE SAVEPOINT pglive_tied").await?;
            Ok(matched)
        }
        Err(e) if e.is_constraint_collision() => {
            savepoint("ROLLBACK TO SAVEPOINT pglive_tied; RELEASE SAVEPOINT pglive_tied").await?;
            let mut matched = 0;
            for row in rows {
                matched += update(client, cache, table, mask, std::slice::from_ref(row)).await?;
            }
            Ok(matched)
        }
        Err(e) => Err(e),
    }
}

/// Prepares `sql` (once per session) and runs it; the rows it changed.
async fn run(
    client: &Client,
    cache: &mut StatementCache,
    table: &TableMap,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: String,
) -> Result<u64> {
    let statement = cache.get(client, sql, table).await?;
    client
        .execute(&statement, params)
        .await
        .map_err(target(what))
}

/// Whether a statement found as many rows as the source changed.
fn expect(
    operation: &'static str,
    expected: usize,
    matched: u64,
) -> std::result::Result<(), Shortfall> {
    let expected = expected as u64;
    if matched == expected {
        Ok(())
    } else {
        Err((operation, expected, matched))
    }
}

/// Positions of the values that were sent (not unchanged TOAST).
fn sent(values: &Values) -> Vec<usize> {
    (0..values.len())
        .filter(|&i| !matches!(values[i], ColumnValue::UnchangedToast))
        .collect()
}

/// The values at `positions` as `text` parameters.
fn texts<'a>(
    table: &TableMap,
    values: &'a Values,
    positions: &[usize],
) -> Result<Vec<RawText<'a>>> {
    positions
        .iter()
        .map(|&i| Ok(RawText(text_of(table, &values[i])?)))
        .collect()
}

impl Outcome {
    fn inserted(n: usize) -> Outcome {
        Outcome {
            inserted: n as u64,
            updated: 0,
            deleted: 0,
        }
    }
    fn updated(n: usize) -> Outcome {
        Outcome {
            inserted: 0,
            updated: n as u64,
            deleted: 0,
        }
    }
    fn deleted(n: usize) -> Outcome {
        Outcome {
            inserted: 0,
            updated: 0,
            deleted: n as u64,
        }
    }
}

fn params_ref<T: ToSql + Sync>(params: &[T]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// One `text[]` per listed position of each row.
fn column_arrays<'a>(
    table: &TableMap,
    rows: impl Iterator<Item = &'a Values> + Clone,
    positions: &[usize],
) -> Result<Vec<TextArray<'a>>> {
    let count = rows.clone().count();
    let mut arrays: Vec<Vec<Option<&'a [u8]>>> = positions
        .iter()
        .map(|_| Vec::with_capacity(count))
        .collect();
    for row in rows {
        for (array, &position) in arrays.iter_mut().zip(positions) {
            let value = row.get(position).ok_or_else(|| {
                Error::Protocol(format!("a row of {} has too few values", table.name))
            })?;
            array.push(text_of(table, value)?);
        }
    }
    Ok(arrays.into_iter().map(TextArray).collect())
}

fn unnest(first_param: usize, names: &[String]) -> String {
    let params: Vec<String> = (0..names.len())
        .map(|i| format!("${}::text[]", first_param + i))
        .collect();
    format!("unnest({}) AS s({})", params.join(", "), names.join(", "))
}

fn insert_sql(table: &TableMap) -> String {
    let names: Vec<String> = (0..table.columns.len()).map(|i| format!("v{i}")).collect();
    let columns: Vec<&str> = table.columns.iter().map(|c| c.quoted.as_str()).collect();
    let values: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("s.v{i}::{}", c.type_sql))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}",
        table.quoted,
        columns.join(", "),
        values.join(", "),
        unnest(1, &names)
    )
}

/// The rows of a keyed UPDATE or DELETE (`names` starts with the key
/// columns `k0`, `k1`, …): the unnested parameters, sorted by key when every
/// key type can be, so that the target visits its index and heap in order
/// (about a fifth less work than in arrival order). The sort casts each key
/// once; [`key_match`]'s cast of the already typed value costs nothing.
fn keyed_rows(table: &TableMap, names: &[String]) -> String {
    let rows = unnest(1, names);
    if !table.key.iter().all(|&c| table.columns[c].orderable) {
        return rows;
    }
    let keys = table.key.len();
    let columns: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| match table.key.get(i) {
            Some(&c) => format!("{name}::{} AS {name}", table.columns[c].type_sql),
            None => name.clone(),
        })
        .collect();
    format!(
        "(SELECT {} FROM {rows} ORDER BY {}) AS s",
        columns.join(", "),
        names[..keys].join(", ")
    )
}

fn key_match(table: &TableMap) -> String {
    table
        .key
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let column = &table.columns[c];
            format!("t.{} = s.k{k}::{}", column.quoted, column.type_sql)
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// With `bounded`, also the time bounds as the two parameters after the
/// first `params` ([`time_bounds`]).
fn time_range(table: &TableMap, bounded: bool, params: usize) -> String {
    match table.time_key.filter(|_| bounded) {
        Some(time) => {
            let column = &table.columns[table.key[time.position]];
            format!(
                " AND t.{column} >= ${low}::{ty} AND t.{column} <= ${high}::{ty}",
                column = column.quoted,
                ty = column.type_sql,
                low = params + 1,
                high = params + 2
            )
        }
        None => String::new(),
    }
}

fn update_sql(table: &TableMap, mask: &[bool], bounded: bool) -> String {
    let mut names: Vec<String> = (0..table.key.len()).map(|k| format!("k{k}")).collect();
    let mut set = Vec::new();
    for (i, column) in table.columns.iter().enumerate().filter(|(i, _)| mask[*i]) {
        names.push(format!("v{i}"));
        set.push(format!("{} = s.v{i}::{}", column.quoted, column.type_sql));
    }
    format!(
        "UPDATE {} AS t SET {} FROM {} WHERE {}{}",
        table.quoted,
        set.join(", "),
        keyed_rows(table, &names),
        key_match(table),
        time_range(table, bounded, names.len())
    )
}

fn delete_sql(table: &TableMap, bounded: bool) -> String {
    let names: Vec<String> = (0..table.key.len()).map(|k| format!("k{k}")).collect();
    format!(
        "DELETE FROM {} AS t USING {} WHERE {}{}",
        table.quoted,
        keyed_rows(table, &names),
        key_match(table),
        time_range(table, bounded, names.len())
    )
}

/// Finds one row equal to the old values, comparing text forms so that types
/// without an equality operator (json, point, xml) match too.
fn full_row_match(table: &TableMap, columns: &[usize]) -> String {
    let mut predicate = String::new();
    for (n, &c) in columns.iter().enumerate() {
        if n > 0 {
            predicate.push_str(" AND ");
        }
        let _ = write!(
            predicate,
            "{}::text IS NOT DISTINCT FROM ${}",
            table.columns[c].quoted,
            n + 1
        );
    }
    if predicate.is_empty() {
        predicate.push_str("true");
    }
    format!(
        "ctid = (SELECT ctid FROM {} WHERE {predicate} LIMIT 1)",
        table.quoted
    )
}

fn update_full_sql(table: &TableMap, set: &[usize], matched: &[usize]) -> String {
    let assignments: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(n, &c)| {
            let column = &table.columns[c];
            format!(
                "{} = ${}::text::{}",
                column.quoted,
                matched.len() + n + 1,
                column.type_sql
            )
        })
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        table.quoted,
        assignments.join(", "),
        full_row_match(table, matched)
    )
}

fn delete_full_sql(table: &TableMap, matched: &[usize]) -> String {
    format!(
        "DELETE FROM {} WHERE {}",
        table.quoted,
        full_row_match(table, matched)
    )
}

/// Appends `value` escaped for COPY's text format.
fn copy_escape(out: &mut BytesMut, value: &[u8]) {
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.put_slice(&value[start..i]);
        out.put_slice(escaped);
        start = i + 1;
    }
    out.put_slice(&value[start..]);
}

async fn copy_rows(client: &Client, table: &TableMap, rows: &[Values]) -> Result<()> {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.quoted.as_str()).collect();
    let sql = format!("COPY {} ({}) FROM STDIN", table.quoted, columns.join(", "));
    let context = || format!("copying rows into {}", table.name);
    let sink = client.copy_in(&sql).await.map_err(target(context()))?;
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 4096);
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'\t');
            }
            match text_of(table, value)? {
                Some(bytes) => copy_escape(&mut buf, bytes),
                None => buf.put_slice(b"\\N"),
            }
        }
        buf.put_u8(b'\n');
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze())
                .await
                .map_err(target(context()))?;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.freeze()).await.map_err(target(context()))?;
    }
    sink.finish().await.map_err(target(context()))?;
    Ok(())
}

/// `TRUNCATE ONLY` the tables in one statement, as the source did (a
/// hypertable with its chunks: TimescaleDB refuses `ONLY`).
pub(crate) async fn truncate(
    client: &Client,
    tables: &[&TableMap],
    cascade: bool,
    restart_identity: bool,
) -> Result<()> {
    let names: Vec<&str> = tables.iter().map(|t| t.quoted.as_str()).collect();
    // ONLY binds to each name of the list on its own.
    let targets: Vec<String> = tables
        .iter()
        .map(|t| match t.hypertable {
            true => t.quoted.clone(),
            false => format!("ONLY {}", t.quoted),
        })
        .collect();
    let sql = format!(
        "TRUNCATE {}{}{}",
        targets.join(", "),
        if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if cascade { " CASCADE" } else { "" }
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(target(format!("truncating {}", names.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escaping() {
        let mut out = BytesMut::new();
        copy_escape(&mut out, b"a\\b\tc\nd\re");
        assert_eq!(&out[..], b"a\\\\b\\tc\\nd\\re");
    }
}
