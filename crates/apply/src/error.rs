//! The crate's error type.

use pglive_postgres::Lsn;

/// Everything that can stop the applier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement on the target failed.
    #[error("target: {context}{}", sqlstate_suffix(.source))]
    Target {
        /// What was being done, naming the table.
        context: String,
        /// The client's error, with its SQLSTATE.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A session could not be opened (connection string, TLS, server).
    #[error(transparent)]
    Connect(#[from] pglive_postgres::Error),
    /// The applier's state tables could not be created or upgraded.
    #[error(transparent)]
    State(#[from] pglive_postgres::StateSchemaError),
    /// The replication connection or decoder failed.
    #[error(transparent)]
    Replication(#[from] pglive_repl::Error),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] pglive_repl::pgoutput::DecodeError),
    /// A source table has no counterpart on the target.
    #[error(
        "source table {table} does not exist on the target: create it there (or exclude it from the publication) and resume"
    )]
    TableMissing {
        /// The schema-qualified name.
        table: pglive_postgres::QualifiedName,
    },
    /// A source table's shape no longer matches the target's (DDL on the
    /// source during the migration).
    #[error(
        "table {table}: {difference}; make the target match{} and resume",
        fix.as_ref().map(|f| format!(" (run on the target: {f})")).unwrap_or_default()
    )]
    ShapeMismatch {
        /// The schema-qualified name.
        table: String,
        /// What differs, naming the columns.
        difference: String,
        /// The SQL that makes the target's table match the source's, when
        /// it is known.
        fix: Option<String>,
    },
    /// An UPDATE or DELETE arrived for a table that has no replica identity.
    #[error(
        "table {table} has REPLICA IDENTITY NOTHING but received an {operation}: give it a primary key or REPLICA IDENTITY FULL on the source"
    )]
    NoReplicaIdentity {
        /// The schema-qualified name.
        table: String,
        /// `UPDATE` or `DELETE`.
        operation: &'static str,
    },
    /// Rows that the source changed were not found on the target: the target
    /// diverged from the source.
    #[error(
        "{operation} on {table} matched {matched} of {expected} rows in the transaction ending at {lsn}: the target has diverged from the source"
    )]
    RowsMissing {
        /// The schema-qualified name.
        table: String,
        /// `UPDATE` or `DELETE`.
        operation: &'static str,
        /// Rows the source changed.
        expected: u64,
        /// Rows found on the target.
        matched: u64,
        /// The last source commit in the batch.
        lsn: Lsn,
    },
    /// A TRUNCATE named chunks of a table but not the table (a chunk
    /// truncated by hand): truncating the whole table would lose rows.
    #[error(
        "the source truncated chunks of {table} without the table itself; the target's chunks \
         differ, so pglive cannot tell which rows that removed: delete the same time range on the \
         target by hand, then run the migration again, or compare with `pglive verify --full`"
    )]
    ChunkTruncated {
        /// The table whose chunks were truncated.
        table: String,
    },
    /// A schema change captured on the source is not replayed by pglive
    /// (not on its list, run inside a function, ambiguous in its query
    /// string, or giving existing rows other values on the target than on
    /// the source): apply stops before it, to go on after `pglive ddl
    /// retry|skip` ([`crate::decide_ddl`]).
    #[error(
        "schema change {} in the source transaction committed at {} is not replayed: {}. The command: {}",
        pending.tag, pending.lsn, pending.problem, pending.command
    )]
    DdlNotReplayed {
        /// The command.
        pending: crate::PendingDdl,
    },
    /// A captured schema change failed on the target: apply stops before
    /// it, to go on after `pglive ddl retry|skip` ([`crate::decide_ddl`]).
    #[error(
        "schema change {} in the source transaction committed at {} failed on the target: {}. The command: {}",
        pending.tag, pending.lsn, pending.problem, pending.command
    )]
    DdlFailed {
        /// The command, and the target's error as its problem.
        pending: crate::PendingDdl,
        /// The target's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The stream broke the protocol's rules (a change outside a
    /// transaction, an unknown relation id, binary values that were not
    /// asked for).
    #[error("unexpected replication stream: {0}")]
    Protocol(String),
    /// An [`crate::ApplyOptions`] value cannot work.
    #[error("invalid apply option: {0}")]
    InvalidOption(String),
    /// Spilling a large streamed transaction to disk failed.
    #[error("spill file {path}")]
    Spill {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A target error in one line: severity, SQLSTATE, message and detail.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    sqlstate_suffix(error).trim_start_matches(": ").to_owned()
}

fn sqlstate_suffix(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            ": {} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => format!(": {error}"),
    }
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Target { source, .. } => source.code().map(|c| c.code()),
            Error::Replication(e) => e.sqlstate(),
            _ => None,
        }
    }

    /// The schema change apply stopped at, when that is what stopped it.
    pub fn pending_ddl(&self) -> Option<&crate::PendingDdl> {
        match self {
            Error::DdlNotReplayed { pending } | Error::DdlFailed { pending, .. } => Some(pending),
            _ => None,
        }
    }

    /// Whether the error is a lost connection or server restart, after which
    /// a new applier resumes from the state in the target.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Target { source, .. } | Error::DdlFailed { source, .. } => {
                pglive_postgres::is_transient_statement_error(source)
            }
            Error::Connect(e) => e.is_transient(),
            Error::State(e) => e.is_transient(),
            Error::Replication(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether this is a target statement that failed on a unique index
    /// or an exclusion constraint.
    pub(crate) fn is_constraint_collision(&self) -> bool {
        matches!(self, Error::Target { source, .. }
            if source.code().is_some_and(|c| matches!(c.code(), "23505" | "23P01")))
    }
}

pub(crate) fn target(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Target { context, source }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
