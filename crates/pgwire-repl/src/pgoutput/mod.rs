//! The pgoutput logical decoding format: a decoder and an encoder.
//!
//! # The model
//!
//! `pgoutput` is the output plugin of PostgreSQL's built-in logical
//! replication. After `START_REPLICATION SLOT … LOGICAL … (proto_version 'N',
//! publication_names '…')`, every `XLogData` frame of the replication stream
//! carries exactly one pgoutput message: a type byte followed by big-endian
//! fields. This module turns one such payload into a [`LogicalMessage`] and
//! back, for every message of protocol versions 1 to 4:
//!
//! * A committed transaction arrives whole, as [`Begin`], its changes
//!   ([`Insert`], [`Update`], [`Delete`], [`Truncate`], [`Message`]), then
//!   [`Commit`]. [`Relation`] (and [`Type`]) messages describe a table before
//!   the first change to it that the session sends, and again after its
//!   definition changes; changes refer to tables by OID.
//! * **Streaming blocks** (version 2 and later, `streaming = on|parallel`): a
//!   large transaction still in progress is sent in blocks, each between
//!   [`StreamStart`] and [`LogicalMessage::StreamStop`], and finished later by
//!   [`StreamCommit`] or [`StreamAbort`] (which in version 4 with parallel
//!   streaming also carries the abort LSN and time). Inside a block, Relation,
//!   Type, Insert, Update, Delete, Truncate and Message put the id of the
//!   (sub)transaction right after the type byte. The wire format thus depends
//!   on context; the decoded form does not: those messages have an
//!   `xid: Option<u32>` field that is `Some` exactly inside a block, so
//!   encoding needs no context.
//! * **Two-phase** messages (version 3 and later, `two_phase`):
//!   [`BeginPrepare`] … [`Prepare`], later [`CommitPrepared`] or
//!   [`RollbackPrepared`], and [`LogicalMessage::StreamPrepare`] for a
//!   streamed transaction.
//!
//! # Tuple data
//!
//! A row ([`TupleData`]) is a list of [`ColumnValue`]s in the order of the
//! relation's columns: [`ColumnValue::Null`], [`ColumnValue::UnchangedToast`]
//! (a large value the update did not touch, which the server does not
//! resend), [`ColumnValue::Text`] in the type's text output format, or
//! [`ColumnValue::Binary`] in its send format when the `binary` option is on.
//! An update or delete carries the old key ([`OldTuple::Key`]) or, under
//! replica identity full, the old row ([`OldTuple::Full`]).
//!
//! # Zero copy, no panics
//!
//! Decoding takes the payload as [`bytes::Bytes`]. Column values and message
//! contents are `Bytes::slice`s of it that share its buffer; nothing is
//! copied but names (namespace, relation, column, type, origin, prefix, gid),
//! which become `String`s and must be valid UTF-8. Any malformed input — an
//! unknown type byte, a field cut short, bytes left over, an undefined marker,
//! invalid UTF-8 — is a [`DecodeError`] naming the message, the field and the
//! offset; never a panic. Counts in the input never make the decoder reserve
//! more memory than the input could fill.
//!
//! # Use
//!
//! A [`Decoder`] follows one stream: it holds the negotiated protocol version
//! and whether it is inside a streaming block, which [`StreamStart`] and
//! [`LogicalMessage::StreamStop`] change. [`decode`] decodes one message with
//! explicit context and no state. [`LogicalMessage::encode`] writes the exact
//! wire format, for tests that fabricate streams.
//!
//! ```
//! use bytes::Bytes;
//! use pglive_repl::pgoutput::{ColumnValue, Decoder, LogicalMessage};
//!
//! let mut decoder = Decoder::new(2);
//! // Insert into relation 16384 one row (1, NULL).
//! let wire = Bytes::from_static(b"I\0\0\x40\x00N\0\x02t\0\0\0\x011n");
//! let LogicalMessage::Insert(insert) = decoder.decode(wire).unwrap() else {
//!     unreachable!()
//! };
//! assert_eq!(insert.relation_id, 16384);
//! assert_eq!(insert.new.columns[0], ColumnValue::Text(Bytes::from_static(b"1")));
//! assert_eq!(insert.new.columns[1], ColumnValue::Null);
//! ```

mod decode;
mod encode;
mod message;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, Decoder, decode};
pub use message::{
    Begin, BeginPrepare, ColumnValue, Commit, CommitPrepared, Delete, Insert, LogicalMessage,
    Message, MessageKind, OldTuple, Origin, ParallelAbort, Prepare, Relation, RelationColumn,
    ReplicaIdentity, RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, TupleData,
    Type, Update,
};
