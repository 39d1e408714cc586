//! Reading a database as an exported snapshot saw it.

use tokio_postgres::{Client, IsolationLevel, Transaction};

use crate::quote::quote_literal;

/// Which step of [`read_only_transaction`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The transaction could not start.
    #[error("starting a read-only transaction")]
    Begin(#[source] tokio_postgres::Error),
    /// The snapshot could not be imported: it is no longer valid (the
    /// session that exported it ran a command or closed) or never was.
    #[error("importing snapshot {name}")]
    Import {
        /// The snapshot's name.
        name: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Opens a read-only `REPEATABLE READ` transaction on `client` that sees
/// exactly what `snapshot` (the name an exporting session gave, as
/// `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` does) saw; without one, a
/// snapshot of its own.
pub async fn read_only_transaction<'a>(
    client: &'a mut Client,
    snapshot: Option<&str>,
) -> Result<Transaction<'a>, SnapshotError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(SnapshotError::Begin)?;
    if let Some(name) = snapshot {
        tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
            .await
            .map_err(|source| SnapshotError::Import {
                name: name.to_owned(),
                source,
            })?;
    }
    Ok(tx)
}
