//! The migration's slot as the source sees it: how much WAL it holds, how
//! much more it may hold before `max_slot_wal_keep_size` invalidates it,
//! and whether it is lost.

use pglive_postgres::quote_ident;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};

/// The WAL figures of a slot (`pg_replication_slots`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct SlotWal {
    /// WAL the slot keeps on the source (from its restart position).
    pub retained_bytes: i64,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
    /// How much more WAL may be written before the slot is invalidated;
    /// `None` without a limit.
    pub safe_bytes: Option<i64>,
}

impl SlotWal {
    /// Reads slot `slot`'s figures; `None` when there is no such slot.
    pub async fn read(source: &Client, slot: &str) -> Result<Option<SlotWal>> {
        let row = source
            .query_opt(
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8,
                        coalesce(wal_status, 'lost'), safe_wal_size::int8
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .doing("reading the slot's WAL")?;
        Ok(row.map(|r| SlotWal {
            retained_bytes: r.get(0),
            wal_status: r.get(1),
            safe_bytes: r.get(2),
        }))
    }

    /// Whether the source removes WAL the slot still needs at its next
    /// checkpoint (the slot is about to be lost).
    pub fn at_risk(&self) -> bool {
        self.wal_status == "unreserved"
    }
}

/// Whether slot `slot` exists on the source (`None`: it does not) and
/// which backend streams from it (`Some(None)`: none).
pub(crate) async fn active_pid(source: &Client, slot: &str) -> Result<Option<Option<i32>>> {
    Ok(source
        .query_opt(
            "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .doing("reading pg_replication_slots")?
        .map(|r| r.get(0)))
}

/// Fails with [`Error::SlotLost`] when slot `slot` is gone or invalidated:
/// the changes since cannot be recovered, and the migration must start
/// over.
pub(crate) async fn check_usable(source: &Client, slot: &str) -> Result<()> {
    match SlotWal::read(source, slot).await? {
        Some(wal) if wal.wal_status != "lost" => Ok(()),
        found => Err(Error::SlotLost {
            slot: quote_ident(slot),
            why: if found.is_some() {
                "invalidated by the source (it held more WAL than max_slot_wal_keep_size, or stayed idle longer than idle_replication_slot_timeout)"
            } else {
                "gone from the source (dropped by someone else)"
            },
        }),
    }
}
