//! Intake, the first step of a change's way: the stream's payloads,
//! decoded, leave here in commit order.
//!
//! pgoutput sends a transaction whole at its commit, except a large one
//! (protocol 2 and later), which arrives in blocks while it is still in
//! progress — Stream Start … Stream Stop, several times, interleaved with
//! other transactions — and ends with Stream Commit or Stream Abort.
//! Intake spools those blocks (to files past a memory budget, see `spool`)
//! and hands their messages on only at the commit. It also holds back the
//! first transaction that commits at or after a pause position, so the
//! target can show the source exactly as of that position.

use std::path::PathBuf;

use bytes::Bytes;
use pglive_postgres::Lsn;
use pglive_repl::pgoutput::{self, Decoder, LogicalMessage, StreamCommit};

use crate::error::{Error, Result};
use crate::spool::{Replay, Spools};

/// Decodes payloads and puts streamed transactions in commit order.
pub(crate) struct Intake {
    decoder: Decoder,
    protocol_version: u32,
    spools: Spools,
    /// The top-level transaction of the streamed block being received.
    block_xid: Option<u32>,
    pause_before: Option<Lsn>,
    /// The payload held back by the pause.
    held: Option<Bytes>,
}

/// What one payload brings to apply.
pub(crate) enum Intook {
    /// Nothing yet: a spooled change, a block boundary, an abort.
    Nothing,
    /// The payload is held back for a pause (see [`Intake::pause_before`]).
    Held,
    /// A message of a transaction sent whole.
    Message(LogicalMessage),
    /// A streamed transaction committed: its messages, then its commit.
    StreamedCommit {
        /// The commit.
        commit: StreamCommit,
        /// Its messages, in order (see [`Intake::replayed`]).
        replay: Replay,
    },
}

impl Intake {
    /// An intake for protocol `protocol_version` that keeps up to
    /// `spool_memory` bytes of streamed transactions in memory, the rest in
    /// `spill_dir`.
    pub fn new(protocol_version: u32, spool_memory: usize, spill_dir: PathBuf) -> Intake {
        Intake {
            decoder: Decoder::new(protocol_version),
            protocol_version,
            spools: Spools::new(spool_memory, spill_dir),
            block_xid: None,
            pause_before: None,
            held: None,
        }
    }

    /// Takes one payload (one pgoutput message).
    pub fn accept(&mut self, data: Bytes) -> Result<Intook> {
        if self.held.is_some() {
            return Err(Error::Protocol(
                "a message arrived while a transaction is held for a pause".to_owned(),
            ));
        }
        let message = self.decoder.decode(data.clone())?;
        if let (Some(pause), None) = (self.pause_before, self.block_xid) {
            let commit = match &message {
                LogicalMessage::Begin(begin) => Some(begin.final_lsn),
                LogicalMessage::StreamCommit(commit) => Some(commit.commit_lsn),
                _ => None,
            };
            if commit.is_some_and(|lsn| lsn >= pause) {
                self.held = Some(data);
                return Ok(Intook::Held);
            }
        }
        if let Some(top) = self.block_xid {
            match message {
                LogicalMessage::StreamStop => self.block_xid = None,
                other => {
                    let made_by = stream_xid(&other).unwrap_or(top);
                    self.spools.push(top, made_by, data)?;
                }
            }
            return Ok(Intook::Nothing);
        }
        Ok(match message {
            LogicalMessage::StreamStart(start) => {
                self.block_xid = Some(start.xid);
                Intook::Nothing
            }
            LogicalMessage::StreamStop => Intook::Nothing,
            LogicalMessage::StreamAbort(abort) => {
                self.spools.abort(abort.xid, abort.subxid);
                Intook::Nothing
            }
            LogicalMessage::StreamCommit(commit) => {
                let replay = self.spools.take(commit.xid)?;
                Intook::StreamedCommit { commit, replay }
            }
            other => Intook::Message(other),
        })
    }

    /// The next message of a streamed transaction being replayed.
    pub fn replayed(&self, replay: &mut Replay) -> Result<Option<LogicalMessage>> {
        match replay.next_message()? {
            Some(data) => Ok(Some(pgoutput::decode(data, self.protocol_version, true)?)),
            None => Ok(None),
        }
    }

    /// Holds back the first transaction that commits at or after `lsn`;
    /// `None` lifts the pause.
    pub fn pause_before(&mut self, lsn: Option<Lsn>) {
        self.pause_before = lsn;
    }

    /// Whether a payload is held back by the pause.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Lifts the pause and returns the payload it held.
    pub fn resume(&mut self) -> Option<Bytes> {
        self.pause_before = None;
        self.held.take()
    }

    /// Whether a streamed block is being received.
    pub fn in_block(&self) -> bool {
        self.block_xid.is_some()
    }

    /// Whether no streamed transaction is waiting for its commit.
    pub fn is_empty(&self) -> bool {
        self.spools.is_empty()
    }
}

/// The transaction id a change inside a streaming block carries.
fn stream_xid(message: &LogicalMessage) -> Option<u32> {
    match message {
        LogicalMessage::Insert(m) => m.xid,
        LogicalMessage::Update(m) => m.xid,
        LogicalMessage::Delete(m) => m.xid,
        LogicalMessage::Truncate(m) => m.xid,
        LogicalMessage::Relation(m) => m.xid,
        LogicalMessage::Type(m) => m.xid,
        LogicalMessage::Message(m) => m.xid,
        _ => None,
    }
}
