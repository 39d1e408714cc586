//! The crate's error type.

use pglive_postgres::{Lsn, QualifiedName};

use crate::preflight::Findings;
use crate::state::{Settings, Stage};

/// Everything that can stop a migration, a cutover, a verification or a
/// clean. Each message says what to do; [`chain`] puts an error and its
/// causes on one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Preflight found problems; nothing was changed on either server.
    #[error("{0}")]
    Preflight(Findings),
    /// A session could not be opened.
    #[error(transparent)]
    Connect(#[from] pglive_postgres::Error),
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] pglive_repl::Error),
    /// Dumping or restoring the schema, or reading the catalog, failed.
    #[error(transparent)]
    Schema(#[from] pglive_schema::Error),
    /// Copying the data failed.
    #[error(transparent)]
    Copy(#[from] pglive_snapshot::Error),
    /// Applying the change stream failed.
    #[error(transparent)]
    Apply(#[from] pglive_apply::Error),
    /// A statement failed.
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
    /// A step failed; `doing` says which.
    #[error("{doing}")]
    During {
        /// What was being done.
        doing: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// The state pglive keeps on the target cannot be read.
    #[error("the pglive state on the target is unreadable: {reason}")]
    State {
        /// What is wrong with it.
        reason: String,
    },
    /// The state tables could not be created or upgraded.
    #[error(transparent)]
    StateSchema(#[from] pglive_postgres::StateSchemaError),
    /// Another process runs this migration.
    #[error(
        "a `pglive migrate` is running migration {name:?} (it holds its lock on the target): {hint}"
    )]
    Busy {
        /// The migration's name.
        name: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// The target records no migration of this name.
    #[error("no migration named {name:?} on {target} (start one with `pglive migrate`)")]
    NotFound {
        /// The migration's name.
        name: String,
        /// The target, described without password.
        target: String,
    },
    /// `pglive ddl retry|skip` while apply waits at no schema change.
    #[error("migration {name:?} waits at no schema change (`pglive status` lists them)")]
    NoPendingDdl {
        /// The migration's name.
        name: String,
    },
    /// The migration was started with another slot or publication.
    #[error(
        "migration {name:?} on the target uses slot {slot:?} and publication {publication:?}; run with the same --slot/--publication, or `pglive clean` to start over"
    )]
    OtherNames {
        /// The migration's name.
        name: String,
        /// Its recorded slot.
        slot: String,
        /// Its recorded publication.
        publication: String,
    },
    /// The migration was started with other filters or owner choices.
    #[error(
        "migration {name:?} was started with other --include/--exclude/--no-owner/--no-acl flags ({recorded:?}); run it with the same flags (or none), or `pglive clean` to start over"
    )]
    OtherSettings {
        /// The migration's name.
        name: String,
        /// What it was started with.
        recorded: Settings,
    },
    /// The migration is not at a stage where the request can be done.
    #[error("migration {name:?} is at stage {}: {needs}", stage.as_str())]
    WrongStage {
        /// The migration's name.
        name: String,
        /// Where it is.
        stage: Stage,
        /// What the request needs.
        needs: &'static str,
    },
    /// The replication slot is in use by another process.
    #[error(
        "slot {slot:?} is in use by process {pid} on the source: stop it first, or pass --force"
    )]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The source backend using it.
        pid: i32,
    },
    /// Source tables the migration does not carry yet.
    #[error(
        "table(s) {} were created on the source since streaming last looked; the slot is kept so nothing is lost: run `pglive migrate` again (it copies them and streams them from there), then cut over",
        names(tables)
    )]
    TablesNotCarried {
        /// The tables.
        tables: Vec<QualifiedName>,
    },
    /// The source kept writing while the cutover waited for it to go quiet.
    #[error(
        "the source did not go quiet within 10 minutes: stop the application's writes, or use --fence"
    )]
    NotQuiet,
    /// The cutover's consistent point waits for transactions open on the
    /// source.
    #[error(
        "the cutover's consistent point waits for transactions open on the source (sessions {sessions}): \
         end them (or wait for them), then cut over"
    )]
    PointWaits {
        /// The oldest open transactions' sessions.
        sessions: String,
    },
    /// The migration's slot can no longer give the changes.
    #[error(
        "the migration's replication slot {slot} is {why}: the changes since it fell behind cannot be recovered; \
         run `pglive clean` and start the migration again (set max_slot_wal_keep_size = -1 on the source while it runs)"
    )]
    SlotLost {
        /// The slot, quoted.
        slot: String,
        /// What happened to it.
        why: &'static str,
    },
    /// Prepared transactions are open on the source.
    #[error(
        "prepared transaction(s) {} are open on the source server: the cutover's consistent point waits for every \
         open transaction of the server, and one in the migrated database could COMMIT PREPARED after the switch; \
         commit or roll them back (COMMIT PREPARED / ROLLBACK PREPARED), then cut over",
        prepared.join(", ")
    )]
    PreparedTransactions {
        /// Each one, with its database and role.
        prepared: Vec<String>,
    },
    /// The fence cannot be made tight.
    #[error(
        "the source cannot be fenced: {}; {}",
        holes.join("; "),
        if *lifted { "the fence is lifted again and the source is writable" } else { "nothing was changed" }
    )]
    FenceLeaks {
        /// Each way a write could still reach the source, with what to do.
        holes: Vec<String>,
        /// Whether the fence had been raised (and is lifted again).
        lifted: bool,
    },
    /// The running migrate withdrew the cutover it was asked for.
    #[error(
        "the running `pglive migrate` could not cut over: {reason}; the cutover is withdrawn{}",
        if *fence_up {
            ", but the fence it raised is still up: `pglive cutover --abort` lifts it"
        } else {
            " (and any fence it raised lifted), and streaming goes on"
        }
    )]
    CutoverWithdrawn {
        /// Why, as the migrate reported it.
        reason: String,
        /// Whether the fence it raised could not be lifted.
        fence_up: bool,
    },
    /// `pglive cutover --abort` ended the cutover.
    #[error("cutover aborted")]
    CutoverAborted,

    /// The source's TimescaleDB settings could not be made what a migration
    /// needs.
    #[error(
        "the source runs TimescaleDB, and while pglive streams every session there needs \
         {settings}; pglive could not set them with ALTER SYSTEM ({reason}). As a superuser on \
         the source run `{grants} GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO \
         <role>;`, or put them in its configuration and reload it, then run the migration again"
    )]
    TimescaleSettings {
        /// The settings, their values and why.
        settings: String,
        /// The GRANTs that let the role set them.
        grants: String,
        /// Why they could not be set.
        reason: String,
    },
    /// Carried tables whose columns differ on the target (a column dropped
    /// on the source while schema changes were not captured).
    #[error(
        "the target's columns differ from the source's: {}; the slot is kept so nothing is lost: run on the target: {fix} then run `pglive cutover` again",
        differences.join("; ")
    )]
    ColumnsDiffer {
        /// Each table's differences.
        differences: Vec<String>,
        /// The SQL that makes the target match.
        fix: String,
    },
    /// Row counts differ after the catch-up.
    #[error(
        "row counts differ on {} table(s) ({}); the slot is kept so nothing is lost: investigate, then run `pglive cutover` again",
        tables.len(), tables.join(", ")
    )]
    CountsDiffer {
        /// The tables that differ.
        tables: Vec<String>,
    },
    /// Applying up to a position stopped before it got there.
    #[error("catching up to {lsn} stopped early ({how})")]
    CatchUpStopped {
        /// The position.
        lsn: Lsn,
        /// How the applier stopped.
        how: String,
    },
    /// The `pglive migrate` a cutover asked stopped before it finished.
    #[error(
        "the running `pglive migrate` stopped before the cutover finished: its output says why; the request is withdrawn: run `pglive cutover` again once that is fixed"
    )]
    MigrateStopped,
    /// A wait ran out of time.
    #[error(
        "{what} did not finish within {seconds} s; run it again to continue (see `pglive status`)"
    )]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// A live verification needs a running `pglive migrate`.
    #[error(
        "migration {name:?} is live (stage {}) but no `pglive migrate` runs for it: start it, and verify pauses it at a consistent point; or verify after cutover",
        stage.as_str()
    )]
    NotRunning {
        /// The migration's name.
        name: String,
        /// Where it is.
        stage: Stage,
    },
    /// A slot created to export a snapshot exported none.
    #[error("replication slot {slot:?} exported no snapshot")]
    NoSnapshot {
        /// The slot.
        slot: String,
    },
    /// A live verification could not agree on a point with the applier.
    #[error("verify: {reason}")]
    VerifyPoint {
        /// What went wrong.
        reason: String,
    },
    /// `--resume` found no stopped verification to continue.
    #[error("no stopped verification of {name:?} to resume: {reason}")]
    VerifyResume {
        /// The migration's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `migrate --join` found no running copy to join.
    #[error("nothing to join in migration {name:?}: {reason}")]
    NothingToJoin {
        /// The migration's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Another `pglive verify` of the same migration is running.
    #[error(
        "another `pglive verify` of {name:?} is running against this target: wait for it, or stop it (a stopped verification continues with --resume)"
    )]
    VerifyBusy {
        /// The migration's name.
        name: String,
    },
}

impl Error {
    /// Whether retrying on new connections may succeed: a connection was
    /// lost, or a server is shutting down.
    pub fn is_transient(&self) -> bool {
        let direct = match self {
            Error::Connect(e) => e.is_transient(),
            Error::Replication(e) => e.is_transient(),
            Error::Apply(e) => e.is_transient(),
            Error::StateSchema(e) => e.is_transient(),
            Error::Sql(e) => pglive_postgres::is_transient_statement_error(e),
            Error::During { source, .. } => source.is_transient(),
            _ => false,
        };
        // The stages wrap connection errors of their own (the copy's and
        // the schema copy's sessions): any transient cause counts.
        direct || causes(self).any(transient_cause)
    }

    /// Whether a server refused for want of a privilege (SQLSTATE 42501).
    pub fn is_privilege(&self) -> bool {
        std::iter::once(self as &(dyn std::error::Error + 'static))
            .chain(causes(self))
            .filter_map(|e| e.downcast_ref::<tokio_postgres::Error>())
            .any(|e| e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE))
    }
}

/// `error`'s causes, outermost first (not `error` itself).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |cause| cause.source())
}

/// Whether a cause is a lost connection or a server going away.
fn transient_cause(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause
        .downcast_ref::<pglive_postgres::Error>()
        .is_some_and(pglive_postgres::Error::is_transient)
        || cause
            .downcast_ref::<pglive_repl::Error>()
            .is_some_and(pglive_repl::Error::is_transient)
        || cause
            .downcast_ref::<pglive_apply::Error>()
            .is_some_and(pglive_apply::Error::is_transient)
        || cause
            .downcast_ref::<pglive_postgres::StateSchemaError>()
            .is_some_and(pglive_postgres::StateSchemaError::is_transient)
        || cause
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(pglive_postgres::is_transient_statement_error)
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error::State {
            reason: error.to_string(),
        }
    }
}

impl From<pglive_postgres::ParseLsnError> for Error {
    fn from(error: pglive_postgres::ParseLsnError) -> Error {
        Error::State {
            reason: error.to_string(),
        }
    }
}

/// Names what was being done when a step fails.
pub(crate) trait Doing<T> {
    /// Wraps the error as [`Error::During`] `what`.
    fn doing(self, what: impl Into<String>) -> Result<T>;
    /// As [`Doing::doing`], with the text made only on failure.
    fn doing_with(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::During {
            doing: what.into(),
            source: Box::new(e.into()),
        })
    }

    fn doing_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::During {
            doing: what(),
            source: Box::new(e.into()),
        })
    }
}

/// An error with its causes, on one line (each cause once).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn names(tables: &[QualifiedName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<pglive_postgres::ConfigError> for Error {
    fn from(error: pglive_postgres::ConfigError) -> Error {
        Error::Connect(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection error from a real connect attempt (nothing listens on
    /// the port): what a stage wraps when a server goes away.
    async fn lost_connection() -> pglive_postgres::Error {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = pglive_postgres::ConnectConfig::parse(&format!(
            "host=127.0.0.1 port={port} user=u dbname=d sslmode=disable"
        ))
        .unwrap();
        pglive_postgres::connect_sql(&config).await.unwrap_err()
    }

    #[tokio::test]
    async fn lost_connections_inside_the_stages_are_transient() {
        let copy = Error::Copy(pglive_snapshot::Error::Connect {
            server: "copy".to_owned(),
            source: lost_connection().await,
        });
        assert!(copy.is_transient(), "{copy:?}");
        let schema = Error::Schema(pglive_schema::Error::Connect {
            server: "schema".to_owned(),
            source: lost_connection().await,
        });
        let during = Error::During {
            doing: "adopting a table".to_owned(),
            source: Box::new(schema),
        };
        assert!(during.is_transient(), "{during:?}");
        // A refusal is not.
        assert!(!Error::NotQuiet.is_transient());
    }
}
