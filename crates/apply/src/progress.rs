//! The applier's state in the target: the applied position, written in the
//! same transaction as the changes it covers, and the user triggers it
//! disabled (when it cannot use `session_replication_role`).

use pglive_repl::Lsn;
use tokio_postgres::Client;

use crate::error::{Result, target};
use pglive_schema::QualifiedName;

const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS pglive;
CREATE TABLE IF NOT EXISTS pglive.apply_progress (
    stream_id text PRIMARY KEY,
    applied_lsn pg_lsn NOT NULL,
    source_commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pglive.apply_disabled_triggers (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    trigger_name text NOT NULL,
    PRIMARY KEY (table_schema, table_name, trigger_name)
);";

/// How long [`load`] waits for an earlier session's open batch on the same
/// stream to end.
const LOAD_LOCK_TIMEOUT: &str = "60s";

/// Creates the state tables and the stream's row if needed and reads the
/// applied position of `stream_id` (`0/0` when nothing was applied yet).
///
/// Every batch locks this row first, so reading it with `FOR UPDATE` waits
/// until no earlier session (one whose connection dropped while a batch was
/// open or committing) can still change it: the position read is final.
pub(crate) async fn load(client: &Client, stream_id: &str) -> Result<Lsn> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(target("creating the pglive state tables"))?;
    client
        .execute(
            "INSERT INTO pglive.apply_progress (stream_id, applied_lsn)
             VALUES ($1, '0/0') ON CONFLICT (stream_id) DO NOTHING",
            &[&stream_id],
        )
        .await
        .map_err(target("creating the stream's row in pglive.apply_progress"))?;
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{LOAD_LOCK_TIMEOUT}'"
        ))
        .await
        .map_err(target("reading pglive.apply_progress"))?;
    let row = client
        .query_one(
            "SELECT applied_lsn::text FROM pglive.apply_progress WHERE stream_id = $1 FOR UPDATE",
            &[&stream_id],
        )
        .await;
    // Release the lock whatever happened; the first error is the one to
    // report.
    let ended = client.batch_execute("ROLLBACK").await;
    let row = row.map_err(target(format!(
        "reading pglive.apply_progress (another session applying stream {stream_id:?} \
         holds its row for longer than {LOAD_LOCK_TIMEOUT}?)"
    )))?;
    ended.map_err(target("reading pglive.apply_progress"))?;
    Ok(row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO))
}

/// Records the applied position and commits the batch's transaction, as one
/// simple query (one round trip; if recording fails, nothing after it runs
/// and the transaction stays uncommitted).
pub(crate) fn save_and_commit_sql(stream_id: &str, lsn: Lsn, source_commit_seconds: f64) -> String {
    format!(
        "INSERT INTO pglive.apply_progress (stream_id, applied_lsn, source_commit_time, updated_at)
         VALUES ({}, '{lsn}'::pg_lsn, to_timestamp({source_commit_seconds}::float8), now())
         ON CONFLICT (stream_id) DO UPDATE
            SET applied_lsn = EXCLUDED.applied_lsn,
                source_commit_time = EXCLUDED.source_commit_time,
                updated_at = now();
         COMMIT",
        pglive_repl::quote_literal(stream_id)
    )
}

/// Reads the applied position of `stream_id` without creating anything;
/// for status displays.
pub async fn applied_lsn(client: &Client, stream_id: &str) -> Result<Option<Lsn>> {
    let row = client
        .query_opt(
            "SELECT applied_lsn::text FROM pglive.apply_progress
              WHERE to_regclass('pglive.apply_progress') IS NOT NULL AND stream_id = $1",
            &[&stream_id],
        )
        .await;
    match row {
        Ok(row) => Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok())),
        // The table does not exist yet.
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(None),
        Err(e) => Err(target("reading pglive.apply_progress")(e)),
    }
}

/// Disables the enabled user triggers of `table` and records them, so that
/// [`restore_triggers`] can enable exactly those again.
pub(crate) async fn disable_user_triggers(client: &Client, table: &QualifiedName) -> Result<()> {
    let rows = client
        .query(
            "SELECT t.tgname::text FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND NOT t.tgisinternal AND t.tgenabled <> 'D'",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(target(format!("reading the triggers of {table}")))?;
    for row in rows {
        let trigger: String = row.get(0);
        client
            .execute(
                "INSERT INTO pglive.apply_disabled_triggers VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&table.schema, &table.name, &trigger],
            )
            .await
            .map_err(target("recording a disabled trigger"))?;
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} DISABLE TRIGGER {}",
                pglive_repl::quote_ident(&trigger)
            ))
            .await
            .map_err(target(format!("disabling trigger {trigger} on {table}")))?;
    }
    Ok(())
}

/// Enables again every trigger the applier disabled; run at cutover.
/// Returns how many were enabled.
pub async fn restore_triggers(client: &Client) -> Result<u64> {
    let rows = match client
        .query(
            "SELECT table_schema, table_name, trigger_name FROM pglive.apply_disabled_triggers",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(0),
        Err(e) => return Err(target("reading pglive.apply_disabled_triggers")(e)),
    };
    let mut enabled = 0;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let trigger: String = row.get(2);
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} ENABLE TRIGGER {}",
                pglive_repl::quote_ident(&trigger)
            ))
            .await
            .map_err(target(format!("enabling trigger {trigger} on {table}")))?;
        client
            .execute(
                "DELETE FROM pglive.apply_disabled_triggers WHERE table_schema = $1 AND table_name = $2 AND trigger_name = $3",
                &[&table.schema, &table.name, &trigger],
            )
            .await
            .map_err(target("forgetting a restored trigger"))?;
        enabled += 1;
    }
    Ok(enabled)
}
