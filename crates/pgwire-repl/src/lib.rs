//! PostgreSQL logical replication for pglive (being written).
#![deny(missing_docs)]

mod lsn;
pub mod pgoutput;
mod timestamp;

pub use lsn::{Lsn, ParseLsnError};
pub use timestamp::PgTimestamp;
