//! `pglive clean`: remove the slot, the publication and the state. Safe to
//! run again; refuses while a migrate is running unless forced.

use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::ReplicationClient;

use crate::error::{Doing, Error, Result, chain};
use crate::fence;
use crate::preflight;
use crate::publication;
use crate::slot;
use crate::state;

/// Removes migration `name`: its slot and publications on the source, its
/// state on the target (the `pglive` schema goes with the last migration),
/// after undoing what the applier changed on the target tables. Returns
/// what was done, a line each; nothing when there was nothing to clean.
/// Refuses while a `pglive migrate` runs it, unless `force` (which also
/// ends the process using the slot).
pub async fn clean(
    source_config: ConnectConfig,
    target_config: ConnectConfig,
    name: &str,
    force: bool,
) -> Result<Vec<String>> {
    let target = preflight::connect(&target_config, "target").await?;
    let source = preflight::connect(&source_config, "source").await?;
    // Under a fence, new sessions start read-only.
    fence::allow_writes(&source).await?;
    let migration = state::load(&target, name).await?;
    let (slot, publication) = match &migration {
        Some(m) => (m.slot.clone(), m.publication.clone()),
        None => (name.to_owned(), name.to_owned()),
    };
    let mut done = Vec::new();
    if migration.is_some() && !force && state::is_running(&target, name).await? {
        return Err(Error::Busy {
            name: name.to_owned(),
            hint: "stop it first, or pass --force",
        });
    }
    // A fence of an unfinished cutover goes with the migration; after a
    // finished one, the source stays read-only on purpose.
    if let Some(m) = &migration {
        if m.fence_raised {
            if m.stage == state::Stage::Done {
                done.push(
                    "the source stays read-only from the fenced cutover (ALTER DATABASE … RESET default_transaction_read_only makes it writable)"
                        .to_owned(),
                );
            } else {
                match fence::lift_recorded(&source_config, &target, name).await {
                    Ok(true) => {
                        done.push("lifted the fence: the source is writable again".to_owned())
                    }
                    Ok(false) => {}
                    // Cleaning goes on: a slot left behind would hold WAL.
                    Err(error) => done.push(format!(
                        "could not lift the fence ({}): the source stays read-only until \
                         ALTER DATABASE … RESET default_transaction_read_only is run on it",
                        chain(&error)
                    )),
                }
            }
        }
    }
    // The slot: end whoever uses it when forced, then drop it.
    let active = slot::active_pid(&source, &slot).await?;
    if let Some(pid) = active {
        if let Some(pid) = pid {
            if !force {
                return Err(Error::SlotInUse { slot, pid });
            }
            source
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
        }
        let mut replication = ReplicationClient::connect(&source_config).await?;
        replication
            .drop_slot(&slot, true)
            .await
            .doing_with(|| format!("dropping slot {slot:?}"))?;
        replication.close().await.ok();
        done.push(format!("dropped slot {slot:?}"));
    }
    for dropped in publication::drop(&source, &publication).await? {
        done.push(format!("dropped publication {dropped:?}"));
    }
    if crate::ddl_capture::remove(&source, name).await? {
        done.push(format!(
            "removed the capture of schema changes (event trigger \"pglive_{name}\")"
        ));
    }
    let target_state = connect_sql(&target_config).await?;
    let has_state = target_state
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'pglive'", &[])
        .await?
        .is_some();
    if has_state {
        let resumed =
            crate::source_jobs::resume((&source, &target_state), name, &crate::events::Ignore)
                .await?;
        if resumed > 0 {
            done.push(format!(
                "scheduled again {resumed} TimescaleDB job(s) the copy paused on the source"
            ));
        }
        // The applier's trigger and identity-column records are not kept per
        // migration: they are undone only with the last migration.
        if state::others(&target_state, name).await? == 0 {
            // A failure stops here: the records must outlive the schema's
            // drop until they are undone.
            pglive_apply::restore_triggers(&target_state)
                .await
                .doing("enabling the target triggers pglive disabled")?;
            pglive_apply::restore_identity_columns(&target_state)
                .await
                .doing("making the target's identity columns GENERATED ALWAYS again")?;
        }
        pglive_snapshot::reset(&target_state, name).await?;
        pglive_apply::forget(&target_state, name).await?;
        crate::verify::forget(&target_state, name).await?;
        if migration.is_some() {
            done.push(format!(
                "removed migration {name:?} from the target's state"
            ));
        }
        if state::remove(&target_state, name).await? {
            done.push(
                "dropped the pglive state schema on the target (no other migration uses it)"
                    .to_owned(),
            );
        }
    }
    Ok(done)
}
