//! One side of a comparison: a session reading an exported snapshot, each
//! read a short transaction of its own that imports it, so no table stays
//! locked while the others are read (apply goes on meanwhile, and may need
//! those locks), and any number of sessions read the same point.

use pglive_postgres::{ConnectConfig, connect_sql, quote_literal};
use pglive_schema::{Catalog, ObjectFilter};
use tokio_postgres::{Client, Row};

use crate::error::{Doing, Error, Result};

/// Where one side is read: the server and the snapshot exported there
/// (whose exporter stays open for as long as the comparison reads it).
#[derive(Clone, Copy)]
pub(crate) struct Point<'a> {
    /// The server.
    pub config: &'a ConnectConfig,
    /// The exported snapshot's id.
    pub snapshot: &'a str,
}

impl<'a> Point<'a> {
    /// A new session of its own reading this point.
    pub async fn open(&self) -> Result<OwnedSide<'a>> {
        Ok(OwnedSide {
            client: connect_sql(self.config).await?,
            snapshot: self.snapshot,
        })
    }
}

/// A session of its own at a [`Point`].
pub(crate) struct OwnedSide<'a> {
    client: Client,
    snapshot: &'a str,
}

impl OwnedSide<'_> {
    /// Reads through this session.
    pub fn side(&self) -> Side<'_> {
        Side {
            client: &self.client,
            snapshot: self.snapshot,
        }
    }

    /// The session, outside any snapshot (for pglive's own state).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A session reading a snapshot, borrowed.
#[derive(Clone, Copy)]
pub(crate) struct Side<'a> {
    client: &'a Client,
    snapshot: &'a str,
}

impl Side<'_> {
    async fn begin(&self) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(self.snapshot)
            ))
            .await
            .doing("importing the comparison's snapshot")
    }

    async fn end(&self) {
        self.client.batch_execute("ROLLBACK").await.ok();
    }

    /// Runs `sql` in the snapshot.
    pub async fn query(&self, sql: &str) -> Result<Vec<Row>> {
        self.begin().await?;
        let rows = self
            .client
            .query(sql, &[])
            .await
            .doing_with(|| format!("running {sql}"));
        self.end().await;
        rows
    }

    /// Runs `sql`, which returns one row, in the snapshot.
    pub async fn query_one(&self, sql: &str) -> Result<Row> {
        let mut rows = self.query(sql).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(Error::State {
                reason: format!("{sql} returned {n} rows instead of one"),
            }),
        }
    }

    /// The catalog as of the snapshot.
    pub async fn catalog(&self, filter: &ObjectFilter) -> Result<Catalog> {
        self.begin().await?;
        let catalog = Catalog::read(self.client, filter).await;
        self.end().await;
        Ok(catalog?)
    }

    /// Runs `read` with the session inside the snapshot.
    pub async fn within<T, F>(&self, read: F) -> Result<T>
    where
        F: AsyncFnOnce(&Client) -> Result<T>,
    {
        self.begin().await?;
        let result = read(self.client).await;
        self.end().await;
        result
    }
}

/// A snapshot of a server exported by a session of its own that stays
/// open (and reads nothing) for as long as this value lives.
pub(crate) struct ExportedSnapshot {
    config: ConnectConfig,
    _exporter: Client,
    id: String,
}

impl ExportedSnapshot {
    /// Exports the server's snapshot now.
    pub async fn take(config: &ConnectConfig) -> Result<ExportedSnapshot> {
        let exporter = connect_sql(config).await?;
        exporter
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .doing("taking a snapshot to compare")?;
        let id: String = exporter
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
            .doing("taking a snapshot to compare")?
            .get(0);
        Ok(ExportedSnapshot {
            config: config.clone(),
            _exporter: exporter,
            id,
        })
    }

    /// Where it is read.
    pub fn point(&self) -> Point<'_> {
        Point {
            config: &self.config,
            snapshot: &self.id,
        }
    }
}
