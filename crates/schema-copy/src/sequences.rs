//! Sequence synchronization at cutover.
//!
//! Logical decoding does not carry sequence advances, so the target's
//! sequences stay where the pre-data restore left them (at their start)
//! until cutover, when writes on the source have stopped and
//! [`sync_sequences`] sets each one to the source's exact state: its
//! `last_value` and `is_called`, read from the sequence itself (the
//! `pg_sequences` view shows NULL both for an unused sequence, one
//! restarted by `ALTER SEQUENCE … RESTART`, and one the role may not read).
//! A sequence the source role cannot read is an error with the GRANT to
//! run, never a silent reset.

use tokio_postgres::GenericClient;

use crate::catalog::Catalog;
use crate::error::{Result, query};
use crate::filter::ObjectFilter;
use pglive_postgres::QualifiedName;

/// One sequence set on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedSequence {
    /// The sequence.
    pub name: QualifiedName,
    /// The source's last value; `None` if its next value is `last_value`
    /// itself (never used, or restarted).
    pub last_value: Option<i64>,
}

/// Sets every sequence `filter` selects on the target to the source's
/// position (`setval`), in one target transaction when `target` is one.
/// A sequence missing on the target is an error naming it.
pub async fn sync_sequences(
    source: &impl GenericClient,
    target: &impl GenericClient,
    filter: &ObjectFilter,
) -> Result<Vec<SyncedSequence>> {
    let catalog = Catalog::read(source, filter).await?;
    let mut synced = Vec::with_capacity(catalog.sequences.len());
    for sequence in catalog.sequences {
        let name = sequence.name.quoted();
        let row = source
            .query_one(
                &format!("SELECT last_value, is_called FROM {name}"),
                &[],
            )
            .await
            .map_err(query(format!(
                "reading sequence {name} on the source (GRANT SELECT ON SEQUENCE {name} TO the source role)"
            )))?;
        let (value, is_called): (i64, bool) = (row.get(0), row.get(1));
        target
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&name, &value, &is_called],
            )
            .await
            .map_err(query(format!("setting sequence {name} on the target")))?;
        synced.push(SyncedSequence {
            name: sequence.name,
            last_value: is_called.then_some(value),
        });
    }
    Ok(synced)
}
