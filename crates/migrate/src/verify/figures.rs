//! The figures compared: a count of rows and, with full checksums, the sum
//! of the first 60 bits of each row's md5 (of its text form, under the
//! pinned session settings). A sum is independent of row order, so no sort
//! and bounded memory on any table size, and the sums of a table's parts
//! add up to the table's.

use pglive_schema::Table;

use super::side::Side;
use crate::error::Result;

/// The query of a table's figures over the rows `condition` selects (all
/// when `None`): a count, and a checksum when `full` (else `''`).
pub(crate) fn figures_sql(table: &Table, condition: Option<&str>, full: bool) -> String {
    let filter = condition.map(|c| format!(" WHERE {c}")).unwrap_or_default();
    if !full {
        return format!(
            "SELECT count(*)::int8, '' FROM {} t{filter}",
            table.rows_from()
        );
    }
    format!(
        "SELECT count(*)::int8, coalesce(sum(('x' || substr(md5({}), 1, 15))::bit(60)::int8::numeric), 0)::text FROM {} t{filter}",
        row_text(table),
        table.rows_from()
    )
}

/// A row's text form: its copied columns (generated ones are computed on
/// each side, and not compared).
pub(crate) fn row_text(table: &Table) -> String {
    let columns: Vec<String> = table
        .copied_columns()
        .map(|c| pglive_postgres::quote_ident(&c.name))
        .collect();
    if columns.is_empty() {
        "''".to_owned()
    } else {
        format!("ROW({})::text", columns.join(", "))
    }
}

/// Runs a [`figures_sql`] query: the count and, with `full`, the checksum.
pub(crate) async fn read(side: Side<'_>, sql: &str, full: bool) -> Result<(i64, Option<String>)> {
    let row = side.query_one(sql).await?;
    Ok((row.get(0), full.then(|| row.get(1))))
}

/// The sum of parts' checksums (each below 2^60 times the rows, so the
/// total fits in 128 bits for any table PostgreSQL can hold).
pub(crate) fn add_checksums<'a>(sums: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut total: i128 = 0;
    for sum in sums {
        total = total.checked_add(sum.parse::<i128>().ok()?)?;
    }
    Some(total.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_add_beyond_64_bits() {
        let big = ((1u64 << 60) - 1).to_string();
        let many = vec![big.as_str(); 40];
        let expected = (((1i128 << 60) - 1) * 40).to_string();
        assert_eq!(add_checksums(many), Some(expected));
        assert_eq!(add_checksums(["1", "x"]), None);
        assert_eq!(add_checksums([]), Some("0".to_owned()));
    }
}
