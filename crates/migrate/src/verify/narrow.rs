//! Where the rows of a differing part lie, data-diff style: the part's key
//! span is cut in sixteenths, those whose checksums differ are cut again
//! until they hold few keys, which are compared row by row by key and
//! digest. Every query reads a key range through the key's index.

use pglive_schema::Table;

use super::figures::{self, figures_sql};
use super::side::Side;
use crate::error::Result;

/// How many differing rows a comparison names per table.
pub(crate) const MAX_ROWS_NAMED: usize = 20;

/// Below this many keys a differing range is compared row by row.
const ROWS_AT_ONCE: i128 = 512;

/// What narrowing found in one part.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// The sixteenths of the part's key span whose rows differ.
    pub ranges: Vec<String>,
    /// The rows that differ (at most `want`).
    pub rows: Vec<String>,
}

/// Narrows down the rows of `table` that `condition` selects (all when
/// `None`), naming at most `want` rows. Tables without a single integer
/// key are not narrowed.
pub(crate) async fn narrow(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    condition: Option<&str>,
    want: usize,
) -> Result<Found> {
    let Some(key) = table.integer_key() else {
        return Ok(Found::default());
    };
    let quoted = pglive_postgres::quote_ident(key);
    let Some((low, high)) = key_bounds(source, target, table, &quoted, condition).await? else {
        return Ok(Found::default());
    };
    let span = (i128::from(low), i128::from(high) + 1);
    let top = differing_sixteenths(source, target, table, &quoted, span).await?;
    let mut found = Found {
        ranges: top
            .iter()
            .map(|(from, to)| format!("[{from}, {to})"))
            .collect(),
        rows: Vec::new(),
    };
    // Lowest keys first.
    let mut pending: Vec<(i128, i128)> = top.into_iter().rev().collect();
    while let Some((from, to)) = pending.pop() {
        if found.rows.len() >= want {
            break;
        }
        if to - from <= ROWS_AT_ONCE {
            let condition = key_range(&quoted, from, to);
            found
                .rows
                .extend(rows_that_differ(source, target, table, key, &condition).await?);
        } else {
            let differing =
                differing_sixteenths(source, target, table, &quoted, (from, to)).await?;
            pending.extend(differing.into_iter().rev());
        }
    }
    found.rows.truncate(want);
    Ok(found)
}

/// The lowest and highest value of integer `key` among the rows
/// `condition` selects on either side.
async fn key_bounds(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    key: &str,
    condition: Option<&str>,
) -> Result<Option<(i64, i64)>> {
    let bounds = format!(
        "SELECT min({key})::int8, max({key})::int8 FROM {}{}",
        table.rows_from(),
        condition.map(|c| format!(" WHERE {c}")).unwrap_or_default()
    );
    let (s, t) = (
        source.query_one(&bounds).await?,
        target.query_one(&bounds).await?,
    );
    let lows = [s.get::<_, Option<i64>>(0), t.get::<_, Option<i64>>(0)];
    let highs = [s.get::<_, Option<i64>>(1), t.get::<_, Option<i64>>(1)];
    Ok(
        match (lows.iter().flatten().min(), highs.iter().flatten().max()) {
            (Some(low), Some(high)) => Some((*low, *high)),
            _ => None,
        },
    )
}

/// `[start, end)` of key `column` as a condition; an end past the largest
/// bigint leaves the range open above.
fn key_range(column: &str, start: i128, end: i128) -> String {
    if end > i128::from(i64::MAX) {
        format!("{column} >= {start}")
    } else {
        format!("{column} >= {start} AND {column} < {end}")
    }
}

/// The sixteenths of `[start, end)` (fewer when it is narrower).
fn sixteenths(start: i128, end: i128) -> Vec<(i128, i128)> {
    let step = ((end - start) / 16).max(1);
    let mut pieces = Vec::new();
    let mut from = start;
    while from < end {
        let to = (from + step).min(end);
        pieces.push((from, to));
        from = to;
    }
    pieces
}

/// The sixteenths of `[start, end)` of `table`'s key whose checksums
/// differ between the sides.
async fn differing_sixteenths(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    key: &str,
    (start, end): (i128, i128),
) -> Result<Vec<(i128, i128)>> {
    let mut differing = Vec::new();
    for (from, to) in sixteenths(start, end) {
        let sql = figures_sql(table, Some(&key_range(key, from, to)), true);
        if figures::read(source, &sql, true).await? != figures::read(target, &sql, true).await? {
            differing.push((from, to));
        }
    }
    Ok(differing)
}

/// The rows of one small key range that differ, by the value of `key`
/// (unquoted).
async fn rows_that_differ(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    key: &str,
    condition: &str,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT {}::int8, md5({}) FROM {} t WHERE {condition}",
        pglive_postgres::quote_ident(key),
        figures::row_text(table),
        table.rows_from()
    );
    let read = |rows: Vec<tokio_postgres::Row>| -> std::collections::BTreeMap<i64, String> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let on_source = read(source.query(&sql).await?);
    let on_target = read(target.query(&sql).await?);
    let mut keys: Vec<&i64> = on_source.keys().chain(on_target.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| match (on_source.get(k), on_target.get(k)) {
            (Some(a), Some(b)) if a != b => Some(format!("{key}={k} changed")),
            (Some(_), None) => Some(format!("{key}={k} missing on the target")),
            (None, Some(_)) => Some(format!("{key}={k} only on the target")),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteenths_cover_the_span_once() {
        for (start, end) in [(0, 1), (0, 15), (0, 16), (-7, 1000), (5, 5 + 513)] {
            let pieces = sixteenths(start, end);
            assert!(pieces.len() <= 16 + 15, "{start}..{end}");
            assert_eq!(pieces.first().unwrap().0, start);
            assert_eq!(pieces.last().unwrap().1, end);
            assert!(pieces.windows(2).all(|w| w[0].1 == w[1].0));
        }
    }

    #[test]
    fn ranges_past_bigint_stay_open_above() {
        let top = i128::from(i64::MAX) + 1;
        assert_eq!(key_range("id", 5, top + 1), "id >= 5");
        assert_eq!(key_range("id", 5, 9), "id >= 5 AND id < 9");
    }
}
