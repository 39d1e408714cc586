//! pglive's own tables in the target's `pglive` schema, versioned.
//!
//! Each component (the copy, the applier, the migration) owns some tables
//! there. A component's tables are created and changed only by its
//! [`StateSchema::steps`], applied in order; `pglive.schema_version` records
//! how many of them each component's tables have had. An upgrade runs the
//! missing steps in one transaction under an advisory lock, so processes
//! starting together neither race nor see half of a change, and a target
//! written by a newer pglive is refused instead of misread.
//!
//! Step 1 of a component may meet tables made before versions were kept:
//! it is written to bring any such layout to version 1. Later steps are
//! plain DDL and must never be edited once released: add a step.

use tokio_postgres::Client;

/// The advisory lock every upgrade takes ("pglive" in ASCII, plus one).
const UPGRADE_LOCK: i64 = 0x70_67_6c_69_76_66;

/// One component's state tables and the steps that build them.
#[derive(Clone, Copy, Debug)]
pub struct StateSchema {
    /// The component's name in `pglive.schema_version`.
    pub component: &'static str,
    /// The SQL of each version, oldest first: step `i` turns version `i`
    /// into version `i + 1`.
    pub steps: &'static [&'static str],
}

/// Why the state tables could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateSchemaError {
    /// A statement failed.
    #[error("upgrading the pglive state tables of {component}")]
    Sql {
        /// The component.
        component: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The target's tables are newer than this pglive knows.
    #[error(
        "the pglive state of {component} on the target is at version {recorded}, but this pglive knows only {known}: use the pglive that made it (or a newer one)"
    )]
    Newer {
        /// The component.
        component: &'static str,
        /// The version on the target.
        recorded: i32,
        /// The newest version this code has steps for.
        known: i32,
    },
}

impl StateSchemaError {
    /// Whether retrying on a new connection may succeed (see
    /// [`crate::is_transient_statement_error`]).
    pub fn is_transient(&self) -> bool {
        match self {
            StateSchemaError::Sql { source, .. } => crate::is_transient_statement_error(source),
            StateSchemaError::Newer { .. } => false,
        }
    }
}

impl StateSchema {
    /// The newest version the steps build.
    pub fn version(&self) -> i32 {
        i32::try_from(self.steps.len()).unwrap_or(i32::MAX)
    }

    /// Brings the component's tables to [`StateSchema::version`], running
    /// the steps the target lacks in one transaction; returns the version
    /// found before.
    pub async fn upgrade(&self, client: &Client) -> Result<i32, StateSchemaError> {
        let sql = |source| StateSchemaError::Sql {
            component: self.component,
            source,
        };
        if self.recorded(client).await.map_err(sql)? == Some(self.version()) {
            return Ok(self.version());
        }
        client.batch_execute("BEGIN").await.map_err(sql)?;
        let upgraded = self.upgrade_in_transaction(client).await;
        let end = if upgraded.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = client.batch_execute(end).await.map_err(sql);
        let before = upgraded?;
        ended?;
        Ok(before)
    }

    /// The recorded version, without taking a lock: `None` when nothing is
    /// recorded (or the version table does not exist yet).
    async fn recorded(&self, client: &Client) -> Result<Option<i32>, tokio_postgres::Error> {
        let exists: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass('pglive.schema_version') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if !exists {
            return Ok(None);
        }
        Ok(client
            .query_opt(
                "SELECT version FROM pglive.schema_version WHERE component = $1",
                &[&self.component],
            )
            .await?
            .map(|row| row.get(0)))
    }

    async fn upgrade_in_transaction(&self, client: &Client) -> Result<i32, StateSchemaError> {
        let sql = |source| StateSchemaError::Sql {
            component: self.component,
            source,
        };
        client
            .execute(
                "SELECT pg_catalog.pg_advisory_xact_lock($1)",
                &[&UPGRADE_LOCK],
            )
            .await
            .map_err(sql)?;
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS pglive;
                 CREATE TABLE IF NOT EXISTS pglive.schema_version (
                     component text PRIMARY KEY,
                     version integer NOT NULL,
                     upgraded_at timestamptz NOT NULL DEFAULT now()
                 );",
            )
            .await
            .map_err(sql)?;
        let recorded = self.recorded(client).await.map_err(sql)?.unwrap_or(0);
        if recorded > self.version() {
            return Err(StateSchemaError::Newer {
                component: self.component,
                recorded,
                known: self.version(),
            });
        }
        for step in &self.steps[usize::try_from(recorded).unwrap_or(0)..] {
            client.batch_execute(step).await.map_err(sql)?;
        }
        client
            .execute(
                "INSERT INTO pglive.schema_version (component, version) VALUES ($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version, upgraded_at = now()",
                &[&self.component, &self.version()],
            )
            .await
            .map_err(sql)?;
        Ok(recorded)
    }
}
