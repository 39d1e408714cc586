//! The applier's state in the target: the applied position, written in the
//! same transaction as the changes it covers, the user triggers it
//! disabled (when it cannot use `session_replication_role`), and the
//! `GENERATED ALWAYS` identity columns it made `BY DEFAULT` so that the
//! source's values can be written into them.

use pglive_postgres::{Lsn, StateSchema};
use tokio_postgres::Client;

use crate::error::{Result, target};
use pglive_postgres::QualifiedName;

/// The applier's tables, by version (see [`StateSchema`]).
pub(crate) const STATE: StateSchema = StateSchema {
    component: "apply",
    steps: &[VERSION_1, VERSION_2],
};

/// Version 1, which also brings the layouts made before versions were kept
/// (no lanes, no spread tables) up to it.
const VERSION_1: &str = "
CREATE TABLE IF NOT EXISTS pglive.apply_progress (
    stream_id text NOT NULL,
    lane integer NOT NULL DEFAULT 0,
    applied_lsn pg_lsn NOT NULL,
    source_commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    spread_tables text[],
    PRIMARY KEY (stream_id, lane)
);
DO $$ BEGIN
    -- Before lanes, a stream had one row.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'pglive.apply_progress'::regclass AND attname = 'lane') THEN
        ALTER TABLE pglive.apply_progress
            ADD COLUMN lane integer NOT NULL DEFAULT 0,
            DROP CONSTRAINT apply_progress_pkey,
            ADD PRIMARY KEY (stream_id, lane);
    END IF;
END $$;
ALTER TABLE pglive.apply_progress ADD COLUMN IF NOT EXISTS spread_tables text[];
CREATE TABLE IF NOT EXISTS pglive.apply_disabled_triggers (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    trigger_name text NOT NULL,
    PRIMARY KEY (table_schema, table_name, trigger_name)
);
CREATE TABLE IF NOT EXISTS pglive.apply_identity_always (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    PRIMARY KEY (table_schema, table_name, column_name)
);";

/// Version 2: the schema changes captured on the source, replayed or
/// waiting for a decision (see `ddl`).
const VERSION_2: &str = "
CREATE TABLE IF NOT EXISTS pglive.apply_ddl (
    stream_id text NOT NULL,
    lsn pg_lsn NOT NULL,
    position integer NOT NULL,
    tag text NOT NULL,
    command text NOT NULL,
    outcome text NOT NULL
        CHECK (outcome IN ('replayed', 'skipped', 'pending', 'retry', 'skip')),
    problem text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, lsn, position)
);";

/// How long [`load`] waits for an earlier session's open batch on the same
/// stream to end.
const LOAD_LOCK_TIMEOUT: &str = "60s";

/// The applied position of each lane of a stream (index = lane).
///
/// Every batch ends with each lane's position recorded in the same target
/// transaction as that lane's changes. A batch spread over lanes commits
/// once per lane, so a crash between those commits leaves some lanes one
/// batch ahead; a batch on one session records every lane at once.
///
/// A spread batch's lanes also record which of its tables were spread
/// (the others went to lane 0), so that a restart assigns that batch's
/// changes to lanes as it was done, whatever the target's catalog says by
/// then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LanePositions {
    /// The applied position of each lane.
    pub by_lane: Vec<Lsn>,
    /// The tables the batch of the lanes furthest ahead spread by key.
    pub spread_tables: Vec<String>,
}

impl LanePositions {
    /// The position every lane has reached: replication resumes here.
    pub fn lowest(&self) -> Lsn {
        self.by_lane.iter().copied().min().unwrap_or(Lsn::ZERO)
    }

    /// The position of the lane furthest ahead.
    pub fn highest(&self) -> Lsn {
        self.by_lane.iter().copied().max().unwrap_or(Lsn::ZERO)
    }

    /// Whether every lane is at the same position.
    pub fn settled(&self) -> bool {
        self.lowest() == self.highest()
    }
}

/// Creates the state tables if needed and reads the applied position of
/// every lane of `stream_id` (one lane at `0/0` when nothing was applied
/// yet). When all lanes agree, the rows are made to match `lanes` lanes.
///
/// Every batch locks the rows it records first, so reading them with
/// `FOR UPDATE` waits until no earlier session (one whose connection
/// dropped while a batch was open or committing) can still change them:
/// the positions read are final.
pub(crate) async fn load(client: &Client, stream_id: &str, lanes: usize) -> Result<LanePositions> {
    STATE.upgrade(client).await?;
    client
        .execute(
            "INSERT INTO pglive.apply_progress (stream_id, lane, applied_lsn)
             SELECT $1, 0, '0/0'
              WHERE NOT EXISTS (SELECT 1 FROM pglive.apply_progress WHERE stream_id = $1)
             ON CONFLICT DO NOTHING",
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
    let read = read_locked(client, stream_id, lanes).await;
    // Commit the normalised rows, or release the lock whatever happened;
    // the first error is the one to report.
    let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await;
    let positions = read.map_err(target(format!(
        "reading pglive.apply_progress (another session applying stream {stream_id:?} \
         holds its rows for longer than {LOAD_LOCK_TIMEOUT}?)"
    )))?;
    ended.map_err(target("reading pglive.apply_progress"))?;
    Ok(positions)
}

async fn read_locked(
    client: &Client,
    stream_id: &str,
    lanes: usize,
) -> std::result::Result<LanePositions, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT lane, applied_lsn::text, coalesce(spread_tables, '{}')
               FROM pglive.apply_progress
              WHERE stream_id = $1 ORDER BY lane FOR UPDATE",
            &[&stream_id],
        )
        .await?;
    let recorded: Vec<(usize, Lsn)> = rows
        .iter()
        .map(|r| {
            let lane = usize::try_from(r.get::<_, i32>(0)).unwrap_or(0);
            (lane, r.get::<_, String>(1).parse().unwrap_or(Lsn::ZERO))
        })
        .collect();
    let lowest = recorded.iter().map(|&(_, l)| l).min().unwrap_or(Lsn::ZERO);
    let count = recorded
        .iter()
        .map(|&(lane, _)| lane + 1)
        .max()
        .unwrap_or(1);
    // A lane without a row never committed since the lanes were last set
    // up; taking the lowest position for it can only apply a change again
    // (the same values for an update, an error for an insert or a delete),
    // never skip one.
    let mut by_lane = vec![lowest; count];
    for &(lane, lsn) in &recorded {
        by_lane[lane] = lsn;
    }
    let mut positions = LanePositions {
        by_lane,
        spread_tables: Vec::new(),
    };
    // The lanes ahead committed the batch the others did not.
    let highest = positions.highest();
    positions.spread_tables = rows
        .iter()
        .zip(&recorded)
        .filter(|(_, (_, lsn))| *lsn == highest)
        .flat_map(|(row, _)| row.get::<_, Vec<String>>(2))
        .collect();
    positions.spread_tables.sort();
    positions.spread_tables.dedup();
    if positions.settled() {
        client
            .batch_execute(&record_all_sql(stream_id, lanes, lowest, None))
            .await?;
    }
    Ok(positions)
}

/// Which rows of a stream a batch's transaction records. A position is
/// never lowered: while catching up after a crash between lane commits, a
/// batch on one session may end below a lane that was ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Lane `0`…`n - 1`, and no other: a batch on one session.
    AllLanes(usize),
    /// One lane of a batch spread over lanes.
    Lane(usize),
}

/// The statement that opens a batch's target transaction. It locks the
/// rows the batch will record, so an applier that starts while an earlier
/// one's transaction is still open (a dropped session the server has not
/// noticed yet) waits for it to end before reading the positions.
pub(crate) fn begin_sql(stream_id: &str, record: Record) -> String {
    let lane = match record {
        Record::AllLanes(_) => String::new(),
        Record::Lane(lane) => format!(" AND lane = {lane}"),
    };
    format!(
        "BEGIN; SELECT 1 FROM pglive.apply_progress WHERE stream_id = {}{lane} FOR UPDATE",
        pglive_postgres::quote_literal(stream_id)
    )
}

/// Records the applied position and commits the batch's transaction, as one
/// simple query (one round trip; if recording fails, nothing after it runs
/// and the transaction stays uncommitted). A lane of a spread batch also
/// records which tables the batch spread.
pub(crate) fn save_and_commit_sql(
    stream_id: &str,
    record: Record,
    lsn: Lsn,
    source_commit_seconds: f64,
    spread_tables: &[String],
) -> String {
    let commit_time = format!("to_timestamp({source_commit_seconds}::float8)");
    let record = match record {
        Record::AllLanes(lanes) => record_all_sql(stream_id, lanes, lsn, Some(&commit_time)),
        Record::Lane(lane) => {
            let tables: Vec<String> = spread_tables
                .iter()
                .map(|t| pglive_postgres::quote_literal(t))
                .collect();
            upsert_sql(
                stream_id,
                &lane.to_string(),
                lsn,
                &commit_time,
                &format!("ARRAY[{}]::text[]", tables.join(", ")),
                "",
            )
        }
    };
    format!("{record}; COMMIT")
}

/// Sets lanes `0`…`lanes - 1` of the stream to `lsn` and removes any other.
fn record_all_sql(stream_id: &str, lanes: usize, lsn: Lsn, commit_time: Option<&str>) -> String {
    let last = lanes.max(1) - 1;
    let quoted = pglive_postgres::quote_literal(stream_id);
    let kept_time = format!(
        "(SELECT max(source_commit_time) FROM pglive.apply_progress WHERE stream_id = {quoted})"
    );
    let commit_time = commit_time.unwrap_or(&kept_time);
    format!(
        "{}; DELETE FROM pglive.apply_progress WHERE stream_id = {quoted} AND lane > {last}",
        upsert_sql(
            stream_id,
            "lane",
            lsn,
            commit_time,
            "NULL::text[]",
            &format!(" FROM generate_series(0, {last}) AS lane"),
        ),
    )
}

fn upsert_sql(
    stream_id: &str,
    lane: &str,
    lsn: Lsn,
    commit_time: &str,
    spread_tables: &str,
    from: &str,
) -> String {
    format!(
        "INSERT INTO pglive.apply_progress
                (stream_id, lane, applied_lsn, source_commit_time, updated_at, spread_tables)
         SELECT {}, {lane}, '{lsn}'::pg_lsn, {commit_time}, now(), {spread_tables}{from}
         ON CONFLICT (stream_id, lane) DO UPDATE
            SET applied_lsn = GREATEST(apply_progress.applied_lsn, EXCLUDED.applied_lsn),
                source_commit_time = CASE WHEN EXCLUDED.applied_lsn >= apply_progress.applied_lsn
                    THEN EXCLUDED.source_commit_time ELSE apply_progress.source_commit_time END,
                spread_tables = CASE WHEN EXCLUDED.applied_lsn >= apply_progress.applied_lsn
                    THEN EXCLUDED.spread_tables ELSE apply_progress.spread_tables END,
                updated_at = now()",
        pglive_postgres::quote_literal(stream_id)
    )
}

/// Reads the applied position of `stream_id` (the lowest of its lanes)
/// without creating anything; for status displays.
pub async fn applied_lsn(client: &Client, stream_id: &str) -> Result<Option<Lsn>> {
    let row = client
        .query_opt(
            "SELECT applied_lsn::text FROM pglive.apply_progress
              WHERE to_regclass('pglive.apply_progress') IS NOT NULL AND stream_id = $1
              ORDER BY applied_lsn LIMIT 1",
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
                pglive_postgres::quote_ident(&trigger)
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
        let enabled_now = client
            .batch_execute(&format!(
                "ALTER TABLE {table} ENABLE TRIGGER {}",
                pglive_postgres::quote_ident(&trigger)
            ))
            .await;
        match enabled_now {
            Ok(()) => enabled += 1,
            // The table or trigger is gone from the target: nothing to undo.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "42704")) => {}
            Err(e) => return Err(target(format!("enabling trigger {trigger} on {table}"))(e)),
        }
        client
            .execute(
                "DELETE FROM pglive.apply_disabled_triggers WHERE table_schema = $1 AND table_name = $2 AND trigger_name = $3",
                &[&table.schema, &table.name, &trigger],
            )
            .await
            .map_err(target("forgetting a restored trigger"))?;
    }
    Ok(enabled)
}

/// Makes the `GENERATED ALWAYS` identity columns of `table` `GENERATED BY
/// DEFAULT` and records them, so that the source's values can be inserted
/// and updated (an ALWAYS column refuses both) until
/// [`restore_identity_columns`] makes them ALWAYS again. The record and the
/// change commit together.
pub(crate) async fn allow_identity_values(
    client: &Client,
    table: &QualifiedName,
    columns: &[String],
    own_transaction: bool,
) -> Result<()> {
    let mut sql = String::from(if own_transaction { "BEGIN;" } else { "" });
    for column in columns {
        let _ = std::fmt::Write::write_fmt(
            &mut sql,
            format_args!(
                "INSERT INTO pglive.apply_identity_always VALUES ({}, {}, {}) ON CONFLICT DO NOTHING;
                 ALTER TABLE {table} ALTER COLUMN {} SET GENERATED BY DEFAULT;",
                pglive_postgres::quote_literal(&table.schema),
                pglive_postgres::quote_literal(&table.name),
                pglive_postgres::quote_literal(column),
                pglive_postgres::quote_ident(column),
            ),
        );
    }
    if own_transaction {
        sql.push_str("COMMIT");
    }
    client.batch_execute(&sql).await.map_err(target(format!(
        "making the identity columns of {table} accept the source's values"
    )))
}

/// [`allow_identity_values`] for every `GENERATED ALWAYS` identity column
/// of `tables`.
pub(crate) async fn allow_identity_values_of(
    client: &Client,
    tables: &[&QualifiedName],
) -> Result<()> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN unnest($1::text[], $2::text[]) AS t(s, r) ON t.s = n.nspname AND t.r = c.relname
              WHERE a.attidentity = 'a' AND a.attnum > 0 AND NOT a.attisdropped
              GROUP BY 1, 2",
            &[&schemas, &names],
        )
        .await
        .map_err(target("reading the target's identity columns"))?;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let columns: Vec<String> = row.get(2);
        allow_identity_values(client, &table, &columns, true).await?;
    }
    Ok(())
}

/// Makes every identity column the applier made `BY DEFAULT` `ALWAYS`
/// again; run at cutover. Returns how many were restored.
pub async fn restore_identity_columns(client: &Client) -> Result<u64> {
    let rows = match client
        .query(
            "SELECT table_schema, table_name, column_name FROM pglive.apply_identity_always",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(0),
        Err(e) => return Err(target("reading pglive.apply_identity_always")(e)),
    };
    let mut restored = 0;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let column: String = row.get(2);
        let result = client
            .batch_execute(&format!(
                "BEGIN;
                 ALTER TABLE {table} ALTER COLUMN {} SET GENERATED ALWAYS;
                 DELETE FROM pglive.apply_identity_always
                  WHERE table_schema = {} AND table_name = {} AND column_name = {};
                 COMMIT",
                pglive_postgres::quote_ident(&column),
                pglive_postgres::quote_literal(&table.schema),
                pglive_postgres::quote_literal(&table.name),
                pglive_postgres::quote_literal(&column),
            ))
            .await;
        match result {
            Ok(()) => restored += 1,
            // The table or column is gone from the target: nothing to undo.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "42703")) => {
                client.batch_execute("ROLLBACK").await.ok();
                client
                    .execute(
                        "DELETE FROM pglive.apply_identity_always
                          WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
                        &[&table.schema, &table.name, &column],
                    )
                    .await
                    .map_err(target("forgetting an identity column"))?;
            }
            Err(e) => {
                client.batch_execute("ROLLBACK").await.ok();
                return Err(target(format!(
                    "making {table}.{column} GENERATED ALWAYS again"
                ))(e));
            }
        }
    }
    Ok(restored)
}

/// Forgets the applied positions and the schema changes of `stream_id`
/// (for removing one migration from a target that holds others).
pub async fn forget(client: &Client, stream_id: &str) -> Result<()> {
    for table in ["pglive.apply_progress", "pglive.apply_ddl"] {
        match client
            .execute(
                &format!("DELETE FROM {table} WHERE stream_id = $1"),
                &[&stream_id],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {}
            Err(e) => return Err(target(format!("deleting from {table}"))(e)),
        }
    }
    Ok(())
}
