//! Everything that can be checked before anything is created: a user error
//! is reported here, with what to do about it, and nothing changes on
//! either server.

use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::ReplicationClient;
use pglive_schema::{Catalog, ObjectFilter, PgTools, SchemaCopy, SchemaOptions};
use tokio_postgres::Client;

use crate::error::{Error, chain};
use crate::state::Settings;

mod privileges;

/// What preflight found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Findings {
    /// Problems that stop the migration.
    pub failures: Vec<String>,
    /// Things worth knowing that do not stop it.
    pub warnings: Vec<String>,
    /// Facts for the operator, such as the disk the target will need.
    pub notes: Vec<String>,
}

impl Findings {
    /// Findings of one failure (such as a malformed connection string).
    pub fn failure(text: impl Into<String>) -> Findings {
        Findings {
            failures: vec![text.into()],
            ..Findings::default()
        }
    }
}

impl std::fmt::Display for Findings {
    /// The failures, one per line, after a line that says nothing changed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "preflight found {} problem(s); nothing was changed:",
            self.failures.len()
        )?;
        for failure in &self.failures {
            writeln!(f, "  - {failure}")?;
        }
        Ok(())
    }
}

/// What preflight needs to know about the planned migration.
pub(crate) struct Plan<'a> {
    pub source: &'a ConnectConfig,
    pub target: &'a ConnectConfig,
    pub slot: &'a str,
    pub publication: &'a str,
    pub filter: &'a ObjectFilter,
    /// The migration exists already: only what a resume needs is checked.
    pub resuming: bool,
    pub reuse_schema: bool,
    /// Filters and the owner and privilege choices.
    pub settings: &'a Settings,
    /// `--roles`: missing roles will be created on the target.
    pub copy_roles: bool,
    /// Hypertables are made hypertables on the target.
    pub hypertables: bool,
    /// `--hypertable`: plain tables made hypertables on the target.
    pub new_hypertables: &'a [crate::job::NewHypertable],
    /// `--ddl`.
    pub ddl: crate::DdlMode,
}

/// A preflight failure with one finding.
pub(crate) fn failed(text: String) -> Error {
    Error::Preflight(Findings::failure(text))
}

/// Opens an SQL session, turning connection failures into preflight
/// failures that name the server.
pub(crate) async fn connect(config: &ConnectConfig, role: &str) -> Result<Client, Error> {
    connect_sql(config).await.map_err(|e| {
        failed(format!(
            "cannot connect to the {role} {}: {}",
            config.describe(),
            chain(&e)
        ))
    })
}

async fn scalar(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one(sql, &[]).await?;
    Ok(row.get(0))
}

/// Runs every check; `Err` lists the failures.
pub(crate) async fn run(plan: &Plan<'_>) -> Result<(Findings, Client, Client, Catalog), Error> {
    let source = connect(plan.source, "source").await?;
    let target = connect(plan.target, "target").await?;
    let mut found = Findings::default();
    let fail = |found: &mut Findings, text: String| found.failures.push(text);

    // Not the same database twice.
    let identity = "SELECT coalesce((SELECT system_identifier::text FROM pg_control_system()), '') || '/' || current_database()";
    let same = match (
        scalar(&source, identity).await,
        scalar(&target, identity).await,
    ) {
        (Ok(s), Ok(t)) => s == t,
        _ => plan.source.hosts == plan.target.hosts && plan.source.dbname == plan.target.dbname,
    };
    if same {
        fail(
            &mut found,
            format!(
                "source and target are the same database ({}): give the new server as --target",
                plan.target.describe()
            ),
        );
    }

    // The source can do logical replication for this role.
    match scalar(&source, "SELECT current_setting('wal_level')").await {
        Ok(level) if level == "logical" => {}
        Ok(level) => fail(
            &mut found,
            format!(
                "the source has wal_level={level}: set wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart the server)"
            ),
        ),
        Err(e) => fail(
            &mut found,
            format!("cannot read wal_level on the source: {e}"),
        ),
    }
    match scalar(
        &source,
        "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user",
    )
    .await
    {
        Ok(v) if v == "true" => {}
        Ok(_) => fail(
            &mut found,
            format!(
                "the source role {} lacks the REPLICATION attribute: ALTER ROLE {} REPLICATION (or on managed services grant the provider's replication role)",
                plan.source.user,
                pglive_postgres::quote_ident(&plan.source.user)
            ),
        ),
        Err(e) => fail(
            &mut found,
            format!("cannot read the source role's attributes: {e}"),
        ),
    }
    if !plan.resuming {
        let headroom = "SELECT (current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots))::text \
                        || ' ' || (current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication))::text";
        if let Ok(text) = scalar(&source, headroom).await {
            let mut parts = text.split(' ').map(|p| p.parse::<i64>().unwrap_or(0));
            let (slots, senders) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if slots < 2 {
                fail(
                    &mut found,
                    format!(
                        "the source has {slots} free replication slot(s); pglive needs 2 (one kept, one temporary when resuming a copy): raise max_replication_slots"
                    ),
                );
            }
            if senders < 2 {
                fail(
                    &mut found,
                    format!(
                        "the source has {senders} free WAL sender(s); pglive needs 2: raise max_wal_senders"
                    ),
                );
            }
        }
        // PostgreSQL 18 invalidates slots idle for longer than this; the
        // slot is idle for the whole copy.
        if let Ok(timeout) = scalar(
            &source,
            "SELECT coalesce(current_setting('idle_replication_slot_timeout', true), '0')",
        )
        .await
        {
            if timeout != "0" && timeout != "0s" && timeout != "0min" {
                found.warnings.push(format!(
                    "the source has idle_replication_slot_timeout = {timeout}: the slot is idle while the copy runs and \
                     would be invalidated after that long, losing the migration; set it to 0 for the migration \
                     (ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf())"
                ));
            }
        }
        match source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&plan.slot],
            )
            .await
        {
            Ok(Some(_)) => fail(
                &mut found,
                format!(
                    "a replication slot named {:?} already exists on the source: another migration may be using it; choose --slot, or run `pglive clean` if it is left over",
                    plan.slot
                ),
            ),
            Ok(None) => {}
            Err(e) => fail(&mut found, format!("cannot list replication slots: {e}")),
        }
        match source
            .query_opt(
                "SELECT pubname::text FROM pg_publication WHERE pubname = ANY($1) LIMIT 1",
                &[&vec![
                    plan.publication.to_owned(),
                    crate::publication::changes_name(plan.publication),
                ]],
            )
            .await
        {
            Ok(Some(row)) => fail(
                &mut found,
                format!(
                    "a publication named {:?} already exists on the source: choose --publication, or run `pglive clean` if it is left over",
                    row.get::<_, String>(0)
                ),
            ),
            Ok(None) => {}
            Err(e) => fail(&mut found, format!("cannot list publications: {e}")),
        }
    }

    // The tables: readable, publishable, and identifiable when they change.
    let catalog = match Catalog::read(&source, plan.filter).await {
        Ok(catalog) => catalog,
        Err(e) => {
            fail(
                &mut found,
                format!("cannot read the source catalog: {}", chain(&e)),
            );
            return Err(Error::Preflight(found));
        }
    };
    if catalog.tables.is_empty() {
        fail(
            &mut found,
            "the source has no tables to migrate (check --include/--exclude)".to_owned(),
        );
    }
    let superuser = scalar(
        &source,
        "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user",
    )
    .await
    .is_ok_and(|v| v == "true");
    for table in &catalog.tables {
        let name = table.name.quoted();
        let row = source
            .query_one(
                "SELECT has_table_privilege($1::text::regclass, 'SELECT'),
                        pg_has_role(c.relowner, 'USAGE'),
                        coalesce(s.n_tup_upd + s.n_tup_del, 0)
                   FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                  WHERE c.oid = $1::text::regclass",
                &[&name],
            )
            .await;
        let Ok(row) = row else { continue };
        let (select, owner, changes): (bool, bool, i64) = (row.get(0), row.get(1), row.get(2));
        if !select {
            fail(
                &mut found,
                format!(
                    "the source role cannot read {name}: GRANT SELECT ON {name} TO {}",
                    pglive_postgres::quote_ident(&plan.source.user)
                ),
            );
        }
        if !superuser && !owner && !plan.resuming {
            fail(
                &mut found,
                format!(
                    "the source role does not own {name}, so it cannot add it to a publication: run pglive as the tables' owner (or a superuser)"
                ),
            );
        }
        if table.holds_rows() && !table.unlogged && !crate::publication::identifies_rows(table) {
            let seen = match changes {
                0 => "none seen so far".to_owned(),
                n => format!("{n} seen before the migration"),
            };
            found.notes.push(format!(
                "{name} has no primary key or replica identity: its INSERTs stream, but UPDATEs and DELETEs cannot be carried \
                 ({seen}); pglive publishes it for inserts only, so the application's updates keep working, and cutover \
                 reports any it received. To carry them, add a primary key or ALTER TABLE {name} REPLICA IDENTITY FULL first"
            ));
        }
        if table.unlogged {
            found.warnings.push(format!(
                "{name} is UNLOGGED: it is copied, but later writes to it are not in the WAL and will not reach the target"
            ));
        }
    }

    // Tools and target.
    if let Err(e) = PgTools::find(catalog.server_major()) {
        fail(&mut found, chain(&e));
    }
    if !plan.reuse_schema && !plan.resuming {
        let carried = match plan.hypertables {
            true => catalog.timescale.hypertables.len(),
            false => 0,
        };
        let (failures, notes) = crate::timescale::check_target(
            &target,
            carried + plan.new_hypertables.len(),
            catalog.timescale.version.as_deref(),
        )
        .await;
        found.failures.extend(failures);
        found.notes.extend(notes);
        found.failures.extend(
            crate::timescale::check_new_hypertables(&source, &catalog, plan.new_hypertables).await,
        );
        if !catalog.timescale.hypertables.is_empty() {
            found
                .failures
                .extend(crate::timescale::check_source_settings(&source, &plan.source.user).await);
        }
        if catalog.timescale.version.is_some() {
            found.warnings.push(
                "while this migration runs, TimescaleDB refuses create_hypertable() on the source for the \
                 migration's tables (\"part of a publication\"): a table created meanwhile may become a \
                 hypertable within two minutes of its creation (the migration adopts it then); make others \
                 before it starts or after cutover"
                    .to_owned(),
            );
        }
    }
    if !plan.resuming && plan.ddl == crate::DdlMode::Capture {
        match crate::ddl_capture::why_not_allowed(&source).await {
            Ok(Some(why)) => fail(
                &mut found,
                format!(
                    "--ddl capture: {why}; run as a superuser, or choose --ddl stop (a changed table then stops apply with the ALTER to run on the target)"
                ),
            ),
            Ok(None) => {}
            Err(e) => fail(
                &mut found,
                format!("cannot tell whether DDL can be captured: {}", chain(&e)),
            ),
        }
        if !plan.filter.is_empty() {
            fail(
                &mut found,
                "--ddl capture carries every schema change, and this migration carries only some tables: choose --ddl stop, or migrate every table".to_owned(),
            );
        }
    }
    for failure in privileges::check(&source, &target, plan, &catalog).await {
        fail(&mut found, failure);
    }
    if !plan.resuming {
        match scalar(
            &target,
            "SELECT has_database_privilege(current_database(), 'CREATE')::text",
        )
        .await
        {
            Ok(v) if v == "true" => {}
            _ => fail(
                &mut found,
                format!(
                    "the target role {} cannot create schemas in its database: GRANT CREATE ON DATABASE … TO it, or use the database owner",
                    plan.target.user
                ),
            ),
        }
        if !plan.reuse_schema {
            let mut options = SchemaOptions::default();
            options.filter = plan.filter.clone();
            match SchemaCopy::new(plan.source.clone(), plan.target.clone(), options).await {
                Ok(copy) => {
                    if let Err(e) = copy.check_target().await {
                        fail(
                            &mut found,
                            format!(
                                "{}; or pass --reuse-schema to use the existing tables",
                                chain(&e)
                            ),
                        );
                    }
                }
                Err(e) => fail(&mut found, chain(&e)),
            }
        }
        if let Some(note) = disk_needed(&source, &catalog).await {
            found.notes.push(note);
        }
        if let Some(warning) = slot_may_be_invalidated(&source, &catalog).await {
            found.warnings.push(warning);
        }
        // Slot creation waits for transactions that started before it.
        if let Ok(old) = scalar(
            &source,
            "SELECT count(*)::text FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND xact_start < now() - interval '5 minutes'",
        )
        .await
        {
            if old != "0" {
                found.warnings.push(format!(
                    "{old} transaction(s) on the source have been open for over 5 minutes: creating the slot waits until they end"
                ));
            }
        }
    }
    // The replication connection itself (authentication, pg_hba).
    match ReplicationClient::connect(plan.source).await {
        Ok(client) => {
            let _ = client.close().await;
        }
        Err(e) => fail(
            &mut found,
            format!(
                "cannot open a replication connection to {}: {}",
                plan.source.describe(),
                chain(&e)
            ),
        ),
    }
    if found.failures.is_empty() {
        Ok((found, source, target, catalog))
    } else {
        Err(Error::Preflight(found))
    }
}

/// The copy rate assumed to estimate how long the slot waits while the
/// copy runs (this machine's measured figure is 80–90 MB/s with 2 jobs).
const ASSUMED_COPY_BYTES_PER_SECOND: f64 = 50e6;

/// A warning when `max_slot_wal_keep_size` could invalidate the slot
/// while the copy runs: the WAL the source writes meanwhile (at its
/// average rate since its statistics were reset, PostgreSQL 14+) against
/// the limit. An invalidated slot loses the migration.
async fn slot_may_be_invalidated(source: &Client, catalog: &Catalog) -> Option<String> {
    // pg_settings holds the value in its unit (MB); -1 is no limit.
    let row = source
        .query_one(
            "SELECT current_setting('max_slot_wal_keep_size'), setting::float8 * 1048576
               FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await
        .ok()?;
    let (setting, limit): (String, f64) = (row.get(0), row.get(1));
    if limit < 0.0 {
        return None;
    }
    // pg_stat_wal exists from PostgreSQL 14 on.
    let rate: f64 = source
        .query_one(
            "SELECT wal_bytes::float8
                    / greatest(extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time()))::float8, 1)
               FROM pg_stat_wal",
            &[],
        )
        .await
        .map_or(0.0, |r| r.get(0));
    let tables: i64 = catalog.tables.iter().map(|t| t.bytes).sum();
    let copy_seconds = tables as f64 / ASSUMED_COPY_BYTES_PER_SECOND;
    let written = rate * copy_seconds;
    let size = |n: f64| crate::human::bytes(n.max(0.0) as u64);
    (written > limit / 2.0).then(|| {
        format!(
            "the source has max_slot_wal_keep_size = {setting}: the copy of {} takes about {:.0} min, while the \
             source writes about {} of WAL (its average rate); a slot holding more than {} is invalidated and the \
             migration lost: raise it, or set it to -1 for the migration (ALTER SYSTEM SET max_slot_wal_keep_size = -1; \
             SELECT pg_reload_conf())",
            size(tables as f64),
            copy_seconds / 60.0,
            size(written),
            size(limit)
        )
    })
}

/// What the copied data will take on the target: the selected tables and
/// their indexes as they are on the source. Free disk cannot be read
/// through SQL without file access, so this is for the operator to check.
async fn disk_needed(source: &Client, catalog: &Catalog) -> Option<String> {
    let tables: i64 = catalog.tables.iter().map(|t| t.bytes).sum();
    let oids: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
    let indexes: i64 = source
        .query_one(
            "SELECT coalesce(sum(pg_indexes_size(c.oid)), 0)::int8
               FROM pg_class c WHERE c.oid = ANY($1::oid[])",
            &[&oids],
        )
        .await
        .ok()?
        .get(0);
    let size = |n: i64| crate::human::bytes(u64::try_from(n).unwrap_or(0));
    Some(format!(
        "the target needs about {} of free disk for this data ({} of tables, {} of indexes, as on the source) \
         plus WAL while it loads; pglive cannot read free disk through SQL, so check it before the copy",
        size(tables + indexes),
        size(tables),
        size(indexes)
    ))
}
