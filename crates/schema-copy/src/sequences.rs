//! Sequence synchronization at cutover.
//!
//! Logical decoding does not carry sequence advances, so the target's
//! sequences stay where the pre-data restore left them (at their start)
//! until cutover, when writes on the source have stopped and
//! [`sync_sequences`] sets each one to the source's position. A sequence
//! never used on the source is reset so that its next value is its start.

use tokio_postgres::GenericClient;

use crate::catalog::{Catalog, QualifiedName};
use crate::error::{Result, query};
use crate::filter::ObjectFilter;

/// One sequence set on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedSequence {
    /// The sequence.
    pub name: QualifiedName,
    /// The source's last value; `None` if it was never used.
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
        let (value, is_called) = match sequence.last_value {
            Some(last) => (last, true),
            None => (sequence.start_value, false),
        };
        target
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&name, &value, &is_called],
            )
            .await
            .map_err(query(format!("setting sequence {name} on the target")))?;
        synced.push(SyncedSequence {
            name: sequence.name,
            last_value: sequence.last_value,
        });
    }
    Ok(synced)
}
