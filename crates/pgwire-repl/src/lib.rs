//! PostgreSQL logical replication, spoken directly.
//!
//! `tokio-postgres` cannot open replication connections: it has no
//! `replication=database` startup parameter and no CopyBoth mode. This crate
//! speaks that part of the protocol on top of `postgres-protocol`, and decodes
//! what a logical slot with the `pgoutput` plugin sends.
//!
//! # The model
//!
//! - A [`pglive_postgres::ConnectConfig`] (the connection strings users
//!   already have) opens both kinds of session: this crate's replication
//!   connection and ordinary SQL sessions (`pglive_postgres::connect_sql`),
//!   so both trust the same certificates and pin the same session settings.
//! - [`ReplicationClient`] is a connection in replication mode. It runs
//!   replication commands: [`identify_system`](ReplicationClient::identify_system),
//!   [`create_slot`](ReplicationClient::create_slot) (optionally exporting a
//!   snapshot that other sessions import with `SET TRANSACTION SNAPSHOT`),
//!   [`drop_slot`](ReplicationClient::drop_slot), and plain SQL.
//! - [`ReplicationClient::start_replication`] turns it into a
//!   [`ReplicationStream`]: a `Stream` of [`ReplicationEvent`]s. A background
//!   task reads the socket in large chunks, answers keepalives and sends
//!   status updates; it reads only as fast as the stream is consumed. The
//!   position confirmed to the server is only what the caller reports through
//!   [`Feedback::set_flushed`] — never more.
//! - [`pgoutput`] decodes (and encodes) every pgoutput message of protocol
//!   versions 1–4, zero-copy over [`bytes::Bytes`].
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use pglive_postgres::ConnectConfig;
//! use pglive_repl::pgoutput::{Decoder, LogicalMessage};
//! use pglive_repl::{
//!     PgOutputOptions, ReplicationClient, ReplicationEvent, SlotOptions, StreamOptions,
//! };
//!
//! # async fn run() -> Result<(), pglive_repl::Error> {
//! let config = ConnectConfig::parse("host=db1 user=replicator dbname=shop sslmode=verify-full")?;
//! let mut client = ReplicationClient::connect(&config).await?;
//! let slot = client.create_slot("pglive", &SlotOptions::default()).await?;
//! // ... copy the data under slot.snapshot_name, then:
//! let options = PgOutputOptions::new(["pglive"]);
//! let mut stream = client
//!     .start_replication("pglive", slot.consistent_point, &options, StreamOptions::default())
//!     .await?;
//! let feedback = stream.feedback();
//! let mut decoder = Decoder::new(options.proto_version);
//! while let Some(event) = stream.next().await {
//!     if let ReplicationEvent::XLogData { data, .. } = event? {
//!         if let LogicalMessage::Commit(commit) = decoder.decode(data)? {
//!             // ... once the transaction is durably applied:
//!             feedback.set_flushed(commit.end_lsn);
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod auth;
mod channel_binding;
mod client;
mod commands;
mod error;
pub mod pgoutput;
mod startup;
mod stream;
mod wire;

pub use client::ReplicationClient;
pub use commands::{
    CreatedSlot, PgOutputOptions, QueryResult, SlotOptions, SnapshotAction, Streaming, SystemInfo,
};
pub use error::{Error, Result, ServerError};
pub use stream::{Feedback, ReplicationEvent, ReplicationStream, StreamOptions};
