//! `pglive clean`: remove the slot, the publication and the state. Safe to
//! run again; refuses while a migrate is running unless forced.

use anyhow::{Context, Result, bail};
use pglive_postgres::connect_sql;
use pglive_repl::ReplicationClient;

use crate::cli::CleanArgs;
use crate::state;

pub async fn run(args: CleanArgs) -> Result<Vec<String>> {
    let source_config = crate::parse_conninfo(&args.servers.source, "--source")?;
    let target_config = crate::parse_conninfo(&args.servers.target, "--target")?;
    let name = &args.servers.name;
    let target = crate::preflight::connect(&target_config, "target").await?;
    let source = crate::preflight::connect(&source_config, "source").await?;
    let migration = state::load(&target, name).await?;
    let (slot, publication) = match &migration {
        Some(m) => (m.slot.clone(), m.publication.clone()),
        None => (name.clone(), name.clone()),
    };
    let mut done = Vec::new();
    if migration.is_some() && !args.force && state::is_running(&target, name).await? {
        bail!("a `pglive migrate` is running migration {name:?}: stop it first, or pass --force");
    }
    // The slot: end whoever uses it when forced, then drop it.
    let active: Option<Option<i32>> = source
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context("reading pg_replication_slots")?
        .map(|r| r.get(0));
    if let Some(pid) = active {
        if let Some(pid) = pid {
            if !args.force {
                bail!(
                    "slot {slot:?} is in use by process {pid} on the source: stop it first, or pass --force"
                );
            }
            source
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
        }
        let mut replication = ReplicationClient::connect(&source_config).await?;
        replication
            .drop_slot(&slot, true)
            .await
            .with_context(|| format!("dropping slot {slot:?}"))?;
        replication.close().await.ok();
        done.push(format!("dropped slot {slot:?}"));
    }
    for dropped in crate::publication::drop(&source, &publication).await? {
        done.push(format!("dropped publication {dropped:?}"));
    }
    let target_state = connect_sql(&target_config).await?;
    let has_state = target_state
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'pglive'", &[])
        .await?
        .is_some();
    if has_state {
        // The applier's trigger and identity-column records are not kept per
        // migration: they are undone only with the last migration.
        if state::others(&target_state, name).await? == 0 {
            // A failure stops here: the records must outlive the schema's
            // drop until they are undone.
            pglive_apply::restore_triggers(&target_state)
                .await
                .context("enabling the target triggers pglive disabled")?;
            pglive_apply::restore_identity_columns(&target_state)
                .await
                .context("making the target's identity columns GENERATED ALWAYS again")?;
        }
        pglive_snapshot::reset(&target_state, name).await?;
        pglive_apply::forget(&target_state, name).await?;
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
