//! The PostgreSQL basics every pglive stage shares.
//!
//! pglive's stages (the replication connection, the schema copy, the data
//! copy, the applier, the migration that composes them) all connect to the
//! same two servers with the same connection strings, trust the same
//! certificates, pin the same session settings and name the same objects.
//! Those basics live here, so that no stage depends on another for them.
//!
//! # The model
//!
//! - [`ConnectConfig`] parses the connection strings users already have:
//!   libpq `key=value` or URIs, `PG*` variables, `~/.pgpass`, `sslmode` and
//!   `channel_binding` with libpq's meaning. The password never appears in
//!   `Debug` output or errors; [`ConnectConfig::describe`] names a server
//!   without it.
//! - [`tls::client_config`] builds one `rustls` configuration per
//!   connection configuration, so the replication connection and SQL
//!   sessions trust exactly the same certificates.
//! - [`connect_sql`] opens an ordinary SQL session (tokio-postgres) with
//!   [`SESSION_SETTINGS`] pinned: every setting that changes how a value is
//!   printed or parsed as text, which rows a query sees, or when a statement
//!   is cancelled.
//! - [`Lsn`], [`PgTimestamp`], [`QualifiedName`], [`quote_ident`] and
//!   [`quote_literal`] are the small values every stage passes around.
//! - [`StateSchema`] creates and upgrades each stage's tables in the
//!   target's `pglive` schema by numbered steps, recorded in
//!   `pglive.schema_version`.
//!
//! # Example
//!
//! ```no_run
//! use pglive_postgres::{ConnectConfig, QualifiedName, connect_sql};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConnectConfig::parse("postgresql://app@db1/shop?sslmode=verify-full")?;
//! let client = connect_sql(&config).await?;
//! let table = QualifiedName::new("public", "orders");
//! let sql = format!("SELECT count(*) FROM {}", table.quoted());
//! let rows: i64 = client.query_one(&sql, &[]).await?.get(0);
//! # let _ = rows;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod conninfo;
mod error;
mod lsn;
mod name;
mod quote;
mod session;
mod snapshot;
mod sql;
mod state_schema;
mod timestamp;
pub mod tls;

pub use conninfo::{ChannelBinding, ConfigError, ConnectConfig, Host, Keepalives, SslMode};
pub use error::{Error, Result, is_transient_statement_error};
pub use lsn::{Lsn, ParseLsnError};
pub use name::QualifiedName;
pub use quote::{quote_ident, quote_literal};
pub use session::{SESSION_SETTINGS, session_options, set_replica_role};
pub use snapshot::{SnapshotError, read_only_transaction};
pub use sql::{connect_sql, tokio_postgres_config};
pub use state_schema::{StateSchema, StateSchemaError};
pub use timestamp::PgTimestamp;
