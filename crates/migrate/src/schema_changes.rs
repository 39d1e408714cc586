//! The schema changes a migration captured on the source, as recorded on
//! the target: listed by `pglive status`, decided about by `pglive ddl`.

use pglive_postgres::ConnectConfig;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::preflight;
use crate::state;

pub use pglive_apply::DdlDecision;

/// One captured schema change (its `serde` form is in `pglive status
/// --json`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaChange {
    /// The commit LSN of its source transaction.
    pub lsn: String,
    /// Which schema change of that transaction (from 0).
    pub position: u32,
    /// Its command tag (`ALTER TABLE`).
    pub tag: String,
    /// The command.
    pub command: String,
    /// `replayed`, `skipped`, `pending` (apply waits at it for `pglive
    /// ddl retry|skip`), or `retry`/`skip` (decided, not yet carried out).
    pub outcome: String,
    /// Why apply waits at it, while it does.
    pub problem: Option<String>,
}

impl From<pglive_apply::DdlRecord> for SchemaChange {
    fn from(record: pglive_apply::DdlRecord) -> SchemaChange {
        SchemaChange {
            lsn: record.lsn.to_string(),
            position: record.position,
            tag: record.tag,
            command: record.command,
            outcome: record.outcome,
            problem: record.problem,
        }
    }
}

/// The schema changes migration `name` met, in stream order.
pub(crate) async fn list(client: &tokio_postgres::Client, name: &str) -> Result<Vec<SchemaChange>> {
    Ok(pglive_apply::ddl_log(client, name)
        .await?
        .into_iter()
        .map(SchemaChange::from)
        .collect())
}

/// Decides about the schema change migration `name`'s apply waits at: a
/// running `pglive migrate` goes on within a second. Returns the change;
/// an error when apply waits at none.
pub async fn decide(
    target: ConnectConfig,
    name: &str,
    decision: DdlDecision,
) -> Result<SchemaChange> {
    let client = preflight::connect(&target, "target").await?;
    if state::load(&client, name).await?.is_none() {
        return Err(Error::NotFound {
            name: name.to_owned(),
            target: target.describe(),
        });
    }
    match pglive_apply::decide_ddl(&client, name, decision).await? {
        Some(record) => Ok(record.into()),
        None => Err(Error::NoPendingDdl {
            name: name.to_owned(),
        }),
    }
}
