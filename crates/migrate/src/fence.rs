//! The fence: the source database made read-only for the cutover, so no
//! write lands after the final position. It is recorded on the target
//! before it is raised, and every path that does not finish the cutover
//! lifts it again (`pglive cutover --abort` and `pglive clean` lift a
//! recorded one).
//!
//! What it closes: new sessions start read-only (the database's
//! `default_transaction_read_only`), every session from before is ended, roles
//! whose own setting would start them writable are refused, and prepared
//! transactions (which `COMMIT PREPARED` could commit later) must be
//! resolved first. What it cannot close: a session that asks for writes
//! itself (`BEGIN READ WRITE`, `SET default_transaction_read_only = off`,
//! the setting in its startup options). The cutover reads the slot on
//! after its final position and reports such writes (see `late_changes`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, connect_sql, quote_ident, quote_literal};
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};
use crate::state;

/// How long raising the fence waits for sessions to end and prepared
/// transactions to be resolved.
const SETTLE: Duration = Duration::from_secs(10);

/// The setting the fence changes.
const SETTING: &str = "default_transaction_read_only";

/// What raising the fence did.
pub(crate) struct Raised {
    /// Sessions it ended.
    pub ended: u64,
    /// The database's own setting from before the fence, which lifting it
    /// restores.
    pub prior: Option<String>,
}

/// Raises the fence on the source for migration `name`. Refuses, changing nothing, when a role's own setting
/// would let its new sessions write; when sessions cannot be ended or
/// prepared transactions stay unresolved, lifts the fence again and
/// returns [`Error::FenceLeaks`].
pub(crate) async fn raise(source: &Client, target: &Client, name: &str) -> Result<Raised> {
    let mut holes = roles_writable_by_setting(source).await?;
    let may_alter: bool = source
        .query_one(
            "SELECT pg_catalog.pg_has_role(d.datdba, 'MEMBER')
                    OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
               FROM pg_catalog.pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .doing("reading the source database's owner")?
        .get(0);
    if !may_alter {
        holes.push(format!(
            "pglive's source role may not ALTER DATABASE {} (it must own it, or be a superuser): \
             `ALTER DATABASE … OWNER TO` that role, or cut over without --fence once the application's writes stopped",
            quote_ident(&current_database(source).await?)
        ));
    }
    if !holes.is_empty() {
        return Err(Error::FenceLeaks {
            holes,
            lifted: false,
        });
    }
    // Recorded first, and only while the cutover still stands; a fence
    // recorded by an earlier attempt keeps its prior setting.
    if !state::record_fence(target, name, database_setting(source).await?.as_deref()).await? {
        return Err(Error::CutoverAborted);
    }
    let prior = state::load(target, name)
        .await?
        .and_then(|record| record.fence_prior);
    let database = current_database(source).await?;
    if let Err(error) = source
        .batch_execute(&format!(
            "ALTER DATABASE {} SET {SETTING} = on",
            quote_ident(&database)
        ))
        .await
    {
        // Refused by the server: nothing changed, so nothing is recorded.
        if error.as_db_error().is_some() {
            state::record_fence_lifted(target, name).await?;
        }
        return Err(error)
            .doing("fencing the source (ALTER DATABASE … SET default_transaction_read_only = on)");
    }
    match end_sessions(source).await {
        Ok(ended) => Ok(Raised { ended, prior }),
        Err(error) => {
            lift(source, prior.as_deref()).await?;
            state::record_fence_lifted(target, name).await?;
            Err(match error {
                Error::FenceLeaks { holes, .. } => Error::FenceLeaks {
                    holes,
                    lifted: true,
                },
                other => other,
            })
        }
    }
}

/// Lifts the fence migration `name` recorded, on a session of its own;
/// true when one was recorded.
pub(crate) async fn lift_recorded(
    source_config: &ConnectConfig,
    target: &Client,
    name: &str,
) -> Result<bool> {
    let Some(record) = state::load(target, name).await? else {
        return Ok(false);
    };
    if !record.fence_raised {
        return Ok(false);
    }
    let source = connect_sql(source_config).await?;
    lift(&source, record.fence_prior.as_deref()).await?;
    state::record_fence_lifted(target, name).await?;
    Ok(true)
}

/// Lifts a fence this process raised (`raised`), whatever the state says
/// (another process may have recorded it lifted while it went up).
pub(crate) async fn lift_raised(
    source_config: &ConnectConfig,
    target: &Client,
    name: &str,
    raised: &Raised,
) -> Result<()> {
    let source = connect_sql(source_config).await?;
    lift(&source, raised.prior.as_deref()).await?;
    state::record_fence_lifted(target, name).await
}

/// Makes a session opened while the fence is up writable again (new
/// sessions start read-only then).
pub(crate) async fn allow_writes(source: &Client) -> Result<()> {
    source
        .batch_execute(&format!("SET {SETTING} = off"))
        .await
        .doing("making pglive's own source session writable")
}

/// Restores the database's own setting from before the fence.
async fn lift(source: &Client, prior: Option<&str>) -> Result<()> {
    allow_writes(source).await?;
    let database = quote_ident(&current_database(source).await?);
    let statement = match prior {
        Some(value) => format!(
            "ALTER DATABASE {database} SET {SETTING} = {}",
            quote_literal(value)
        ),
        None => format!("ALTER DATABASE {database} RESET {SETTING}"),
    };
    source
        .batch_execute(&statement)
        .await
        .doing("lifting the fence on the source")
}

async fn current_database(source: &Client) -> Result<String> {
    Ok(source
        .query_one("SELECT current_database()::text", &[])
        .await
        .doing("reading the source's database name")?
        .get(0))
}

/// The database's own `default_transaction_read_only`, if it has one.
async fn database_setting(source: &Client) -> Result<Option<String>> {
    let row = source
        .query_opt(
            "SELECT split_part(c, '=', 2)
               FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
              WHERE s.setrole = 0
                AND s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                AND c LIKE 'default\\_transaction\\_read\\_only=%'",
            &[],
        )
        .await
        .doing("reading the source database's settings")?;
    Ok(row.map(|r| r.get(0)))
}

/// Roles whose own setting (`ALTER ROLE … SET`, also `IN DATABASE`) turns
/// `default_transaction_read_only` off: their new sessions would start
/// writable through the fence. Each with the statement that closes it.
async fn roles_writable_by_setting(source: &Client) -> Result<Vec<String>> {
    let rows = source
        .query(
            "SELECT r.rolname::text, s.setdatabase <> 0, current_database()::text
               FROM pg_catalog.pg_db_role_setting s
               JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
              WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
                AND EXISTS (SELECT 1 FROM unnest(s.setconfig) c
                             WHERE lower(c) ~ '^default_transaction_read_only=(f|fa|fal|fals|false|n|no|of|off|0)$')
              ORDER BY 1, 2",
            &[],
        )
        .await
        .doing("reading the roles' own settings on the source")?;
    Ok(rows
        .iter()
        .map(|r| {
            let role = quote_ident(r.get::<_, &str>(0));
            let in_database = if r.get(1) {
                format!(" IN DATABASE {}", quote_ident(r.get::<_, &str>(2)))
            } else {
                String::new()
            };
            format!(
                "role {role} has {SETTING} = off as its own setting, so its new sessions would write through the fence \
                 (run `ALTER ROLE {role}{in_database} RESET {SETTING}` for the cutover)"
            )
        })
        .collect())
}

/// Ends the source database's other sessions that started before the
/// fence (later ones start read-only) and waits until they are gone and no
/// prepared transaction of the database waits for its `COMMIT PREPARED`;
/// returns how many sessions it ended. Fails with [`Error::FenceLeaks`]
/// (lifted: false) after [`SETTLE`].
async fn end_sessions(source: &Client) -> Result<u64> {
    const OTHERS: &str = "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, '')
           FROM pg_catalog.pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    let deadline = Instant::now() + SETTLE;
    // A session that read the database's settings just before the fence
    // may show up a moment later: the sessions of two looks.
    let mut before: HashSet<i32> = HashSet::new();
    for look in 0..2 {
        if look > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for row in source
            .query(OTHERS, &[])
            .await
            .doing("listing the source's other sessions")?
        {
            before.insert(row.get(0));
        }
    }
    let mut signalled = HashSet::new();
    loop {
        let sessions: Vec<_> = source
            .query(OTHERS, &[])
            .await
            .doing("listing the source's other sessions")?
            .into_iter()
            .filter(|row| before.contains(&row.get::<_, i32>(0)))
            .collect();
        let prepared = source
            .query(
                "SELECT gid, owner::text FROM pg_catalog.pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .await
            .doing("listing the source's prepared transactions")?;
        if sessions.is_empty() && prepared.is_empty() {
            return Ok(signalled.len() as u64);
        }
        let mut holes = Vec::new();
        for row in &sessions {
            let pid: i32 = row.get(0);
            let (user, application): (&str, &str) = (row.get(1), row.get(2));
            match source
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
            {
                Ok(_) => {
                    signalled.insert(pid);
                    holes.push(format!(
                        "session {pid} of role {user:?} ({application:?}) did not end"
                    ));
                }
                Err(e) => holes.push(format!(
                    "session {pid} of role {user:?} ({application:?}) cannot be ended by pglive ({}): \
                     end it yourself, or `GRANT pg_signal_backend TO` pglive's source role \
                     (sessions of superusers only a superuser can end)",
                    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
                )),
            }
        }
        for row in &prepared {
            let (gid, owner): (&str, &str) = (row.get(0), row.get(1));
            holes.push(format!(
                "prepared transaction {gid:?} of role {owner:?} could still write with COMMIT PREPARED: \
                 commit or roll it back first"
            ));
        }
        if Instant::now() >= deadline {
            return Err(Error::FenceLeaks {
                holes,
                lifted: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
