//! Throwaway PostgreSQL clusters for pglive's tests, benches, examples and
//! `pglive demo`.
//!
//! pglive is tested against real servers, never against mocks of PostgreSQL.
//! This crate starts them: a [`Cluster`] is a private PostgreSQL server in a
//! temporary directory, set up for logical replication, that disappears with
//! its directory when the `Cluster` is dropped or the process ends.
//!
//! # The model
//!
//! - **Programs.** [`PgBinaries`] finds `postgres`, `initdb` and `pg_ctl`
//!   (`$PG_BINDIR`, `pg_config --bindir`, `PATH`, `/usr/lib/postgresql/*/bin`
//!   newest first) and their major version. Run `psql`, `pg_dump`, ... of the
//!   same version from [`Cluster::bin_dir`].
//! - **User.** PostgreSQL refuses to run as root. When this process is root,
//!   the server runs as the `postgres` system user; otherwise as us.
//! - **Layout.** `$TMPDIR/pglive-testkit-<pid>-<n>/` holds `data/` (with the
//!   server log, [`Cluster::log_path`]), `sock/` (the Unix socket) and, with
//!   TLS, `ssl/` (a fresh CA, [`Cluster::ca_cert`], and a server certificate
//!   for `localhost` and `127.0.0.1`).
//! - **Network.** The server listens on `127.0.0.1` on a free port, and on
//!   the private socket. Connection strings come from [`Cluster::conninfo`]
//!   (TCP) and [`Cluster::socket_conninfo`]; the superuser is `postgres`.
//! - **Authentication.** By default everything is trusted, replication
//!   included. [`ClusterOptions::password_auth`] makes the cluster look like a
//!   managed cloud database: TCP needs SCRAM, and a non-superuser role with
//!   `LOGIN REPLICATION` ([`Cluster::role`]) owns the test databases.
//! - **Teardown.** Each cluster has a small supervisor process that owns the
//!   postmaster. Dropping the `Cluster` (also while a test panics) stops the
//!   server and deletes the directory, and waits for both. If the process
//!   ends without dropping it — the [`Cluster::shared`] cluster lives in a
//!   static, or the process was killed, even with `SIGKILL` — the supervisor
//!   notices its input pipe closing and does the same.
//!
//! # Usage
//!
//! A test binary shares one cluster and takes a fresh database per test:
//!
//! ```
//! use pglive_testkit::Cluster;
//!
//! # fn main() -> Result<(), pglive_testkit::Error> {
//! let cluster = Cluster::shared();
//! let db = cluster.create_database("example")?;
//! cluster.psql(&db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")?;
//! assert_eq!(cluster.psql(&db, "SELECT count(*) FROM t")?, "2");
//! assert_eq!(cluster.psql(&db, "SHOW wal_level")?, "logical");
//! // Connect with any client: tokio_postgres::connect(&cluster.conninfo(&db), NoTls)
//! let _conninfo = cluster.conninfo(&db);
//! # Ok(())
//! # }
//! ```
//!
//! A test that changes server settings, restarts the server or needs TLS and
//! passwords starts its own:
//!
//! ```no_run
//! use pglive_testkit::{Cluster, ClusterOptions};
//!
//! # fn main() -> Result<(), pglive_testkit::Error> {
//! let cluster = Cluster::start(
//!     ClusterOptions::new()
//!         .ssl(true)
//!         .password_auth(true)
//!         .setting("max_replication_slots", "4"),
//! )?;
//! let db = cluster.create_database("tls")?;
//! let role = cluster.role().expect("password_auth creates a role");
//! let ca = cluster.ca_cert().expect("ssl creates a CA").display();
//! let conninfo = format!(
//!     "host=127.0.0.1 port={} user={} dbname={db} sslmode=verify-full sslrootcert={ca}",
//!     cluster.port(),
//!     role.user,
//! );
//! cluster.psql_as(&conninfo, Some(&role.password), "SELECT 1")?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod binaries;
mod cluster;
mod error;
mod process;
mod proxy;
pub mod sample;
mod ssl;
mod supervisor;
mod timescaledb;

pub use binaries::PgBinaries;
pub use cluster::{Cluster, ClusterOptions, Credentials};
pub use error::Error;
pub use proxy::TcpProxy;

/// Parses a connection string a test built (such as [`Cluster::conninfo`]'s)
/// into a client's configuration type (such as `pglive_postgres::ConnectConfig`),
/// panicking with the string when it does not parse.
pub fn config<T>(conninfo: &str) -> T
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    conninfo
        .parse()
        .unwrap_or_else(|e| panic!("connection string {conninfo:?}: {e}"))
}
