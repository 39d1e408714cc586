//! From a row message to a change of a target table: the tuple's values
//! mapped onto the target's written columns (generated ones dropped), and
//! the row found by what the table's replica identity sends — its key, or
//! the whole old row.

use pglive_repl::pgoutput::{ColumnValue, Delete, Insert, OldTuple, TupleData, Update};

use crate::error::{Error, Result};
use crate::plan::{Change, Values};
use crate::table::{Identity, TableMap};

/// The change an INSERT makes to `table`.
pub(crate) fn insert(table: &TableMap, insert: Insert) -> Result<Change> {
    Ok(Change::Insert(map_tuple(table, insert.new)?))
}

/// The change an UPDATE makes to `table`.
pub(crate) fn update(table: &TableMap, update: Update) -> Result<Change> {
    let new = map_tuple(table, update.new)?;
    match (table.identity, update.old) {
        (Identity::Nothing, _) => Err(Error::NoReplicaIdentity {
            table: table.name.to_string(),
            operation: "UPDATE",
        }),
        (Identity::Full, Some(old)) => Ok(Change::UpdateFull {
            old: map_tuple(table, old.into_tuple())?,
            new,
        }),
        (Identity::Full, None) => Err(Error::Protocol(format!(
            "an UPDATE of {} without its old row although its replica identity is FULL",
            table.name
        ))),
        (Identity::Key, old) => {
            let new_key = key_values(table, &new);
            let key = match old {
                Some(old) => map_key(table, old.into_tuple())?,
                None => new_key.clone(),
            };
            if key.iter().any(|v| v.bytes().is_none()) {
                return Err(Error::Protocol(format!(
                    "an UPDATE of {} whose key is null or unchanged TOAST",
                    table.name
                )));
            }
            let key_changed = new_key
                .iter()
                .zip(&key)
                .any(|(n, o)| n.bytes().is_some() && n != o);
            Ok(Change::Update {
                key,
                new,
                key_changed,
            })
        }
    }
}

/// The change a DELETE makes to `table`.
pub(crate) fn delete(table: &TableMap, delete: Delete) -> Result<Change> {
    match (table.identity, delete.old) {
        (Identity::Nothing, _) => Err(Error::NoReplicaIdentity {
            table: table.name.to_string(),
            operation: "DELETE",
        }),
        (Identity::Full, old) => Ok(Change::DeleteFull {
            old: map_tuple(table, old.into_tuple())?,
        }),
        (Identity::Key, OldTuple::Key(old) | OldTuple::Full(old)) => Ok(Change::Delete {
            key: map_key(table, old)?,
        }),
        (Identity::Key, _) => Err(Error::Protocol(format!(
            "an unsupported old tuple in a DELETE of {}",
            table.name
        ))),
    }
}

/// The tuple's values for the written columns (generated ones dropped),
/// moved out of the message.
fn map_tuple(table: &TableMap, tuple: TupleData) -> Result<Values> {
    if tuple.columns.len() != table.source_to_column.len() {
        return Err(Error::ShapeMismatch {
            table: table.name.to_string(),
            difference: format!(
                "a row has {} columns but the relation described {}",
                tuple.columns.len(),
                table.source_to_column.len()
            ),
            fix: None,
        });
    }
    let mut values = Vec::with_capacity(table.columns.len());
    for (value, target) in tuple.columns.into_iter().zip(&table.source_to_column) {
        if target.is_some() {
            values.push(value);
        }
    }
    Ok(values)
}

/// The key values of a source row (an old key or old row), moved out.
fn map_key(table: &TableMap, tuple: TupleData) -> Result<Values> {
    let mut values = map_tuple(table, tuple)?;
    Ok(table
        .key
        .iter()
        .map(|&i| std::mem::replace(&mut values[i], ColumnValue::Null))
        .collect())
}

fn key_values(table: &TableMap, values: &Values) -> Values {
    table.key.iter().map(|&i| values[i].clone()).collect()
}
