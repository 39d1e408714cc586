//! Spreading one batch over several target sessions ("lanes").
//!
//! A row belongs to one lane, chosen by a stable hash of its key, so every
//! change of one row runs on one session, in source order. Rows of
//! different keys are independent when nothing on the target ties them
//! together: no unique index or exclusion constraint beyond the key, and no
//! foreign key that the target checks. A table with such a tie is not
//! *spread*: all its changes run in lane 0, in source order.
//!
//! The hash must give the same lane for the same key in every process and
//! every version, because a restart after a crash between two lanes'
//! commits decides by it which changes a lane already holds. It is FNV-1a
//! over the key's values, which no library update can change.
//!
//! A key that is one integer is hashed by its block of
//! [`INTEGER_BLOCK`] consecutive values instead: rows inserted with
//! ascending keys then fill different index pages in each lane rather than
//! all lanes fighting over the rightmost one. Equal keys still get one
//! lane (their text, and so their block, is the same); keys that merely
//! share a lane are always safe.

use crate::plan::{Change, Statement, Values};
use crate::table::TableMap;
use pglive_repl::pgoutput::ColumnValue;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Consecutive integer keys that share a lane.
pub(crate) const INTEGER_BLOCK: i64 = 1024;

/// The value of a key printed as a plain decimal integer that fits in an
/// `i64` with room to spare (at most 18 digits).
fn plain_integer(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The lane of a row whose key values are `key`, among `lanes` lanes.
pub(crate) fn lane_of_key<'a>(
    key: impl IntoIterator<Item = &'a ColumnValue>,
    lanes: usize,
) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut values = key.into_iter().peekable();
    let first = values.next();
    if let (Some(value), None) = (first, values.peek()) {
        if let Some(n) = value.bytes().and_then(|b| plain_integer(b)) {
            let block = n.div_euclid(INTEGER_BLOCK);
            let hash = fnv(fnv(FNV_OFFSET, &[2]), &block.to_le_bytes());
            return (hash % lanes as u64) as usize;
        }
    }
    let mut hash = FNV_OFFSET;
    for value in first.into_iter().chain(values) {
        hash = match value.bytes() {
            Some(bytes) => {
                let hash = fnv(hash, &[1]);
                let hash = fnv(hash, &(bytes.len() as u64).to_le_bytes());
                fnv(hash, bytes)
            }
            None => fnv(hash, &[0]),
        };
    }
    (hash % lanes as u64) as usize
}

/// The lane of a row of `table` given its whole values (an inserted or new
/// row).
fn lane_of_row(table: &TableMap, row: &Values, lanes: usize) -> usize {
    lane_of_key(table.key.iter().map(|&i| &row[i]), lanes)
}

/// The lane of one change of `table`: lane 0 unless the table's rows are
/// `spread` (as decided when the change's batch was applied).
pub(crate) fn lane_of_change(
    table: &TableMap,
    spread: bool,
    change: &Change,
    lanes: usize,
) -> usize {
    if !spread {
        return 0;
    }
    match change {
        Change::Insert(row) => lane_of_row(table, row, lanes),
        Change::Update { key, .. } | Change::Delete { key } => lane_of_key(key, lanes),
        Change::UpdateFull { .. } | Change::DeleteFull { .. } => 0,
    }
}

/// Splits one table's statements into one list per lane, keeping each
/// lane's statements (and rows) in their order. Statements that find rows
/// by whole old row exist only for tables that are not spread.
pub(crate) fn split_statements(
    table: &TableMap,
    statements: Vec<Statement>,
    lanes: usize,
) -> Vec<Vec<Statement>> {
    let mut out: Vec<Vec<Statement>> = (0..lanes).map(|_| Vec::new()).collect();
    if !table.spread || lanes <= 1 {
        out[0] = statements;
        return out;
    }
    for statement in statements {
        match statement {
            Statement::Insert(rows) => {
                let mut parts = vec![Vec::new(); lanes];
                for row in rows {
                    parts[lane_of_row(table, &row, lanes)].push(row);
                }
                push_parts(&mut out, parts, Statement::Insert);
            }
            Statement::Update { mask, rows } => {
                let mut parts = vec![Vec::new(); lanes];
                for (key, new) in rows {
                    parts[lane_of_key(&key, lanes)].push((key, new));
                }
                push_parts(&mut out, parts, |rows| Statement::Update {
                    mask: mask.clone(),
                    rows,
                });
            }
            Statement::Delete(keys) => {
                let mut parts = vec![Vec::new(); lanes];
                for key in keys {
                    parts[lane_of_key(&key, lanes)].push(key);
                }
                push_parts(&mut out, parts, Statement::Delete);
            }
            whole_row @ (Statement::UpdateFull { .. } | Statement::DeleteFull(_)) => {
                out[0].push(whole_row)
            }
        }
    }
    out
}

fn push_parts<T>(
    out: &mut [Vec<Statement>],
    parts: Vec<Vec<T>>,
    make: impl Fn(Vec<T>) -> Statement,
) {
    for (lane, part) in parts.into_iter().enumerate() {
        if !part.is_empty() {
            out[lane].push(make(part));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn the_hash_is_fnv_1a() {
        // Published FNV-1a 64 test vectors. The lane of a key is part of
        // what is on disk: a restart after a crash between lane commits
        // relies on it, so the hash must never change.
        assert_eq!(fnv(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn value_boundaries_and_nulls_are_part_of_the_key() {
        let lanes = 1 << 20;
        assert_ne!(
            lane_of_key(&[text("ab"), text("c")], lanes),
            lane_of_key(&[text("a"), text("bc")], lanes)
        );
        assert_ne!(
            lane_of_key(&[ColumnValue::Null, text("a")], lanes),
            lane_of_key(&[text("a"), ColumnValue::Null], lanes)
        );
        assert_eq!(lane_of_key(&[text("x")], 1), 0);
    }

    #[test]
    fn integer_keys_share_a_lane_by_block() {
        let lanes = 1 << 20;
        let lane = |k: i64| lane_of_key(&[text(&k.to_string())], lanes);
        assert_eq!(lane(0), lane(INTEGER_BLOCK - 1));
        assert_ne!(lane(0), lane(INTEGER_BLOCK));
        assert_eq!(lane(-1), lane(-INTEGER_BLOCK));
        assert_ne!(lane(-1), lane(0));
        // Text that only looks like a big number is hashed as text.
        assert_eq!(plain_integer(b"1234567890123456789"), None);
        assert_eq!(plain_integer(b"-"), None);
        assert_eq!(plain_integer(b"+1"), None);
        assert_eq!(plain_integer(b"-42"), Some(-42));
    }
}
