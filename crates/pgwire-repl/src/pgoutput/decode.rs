//! Decoding pgoutput messages from bytes.

use std::str::Utf8Error;

use bytes::Bytes;

use super::message::*;
use pglive_postgres::{Lsn, PgTimestamp};

/// A pgoutput message could not be decoded: it is empty, truncated, has bytes
/// left over, or a field holds a value the protocol does not allow.
///
/// Offsets count from the message's type byte (offset 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message has no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The type byte names no pgoutput message.
    #[error("unknown pgoutput message type {tag:#04x} ({})", char::from(*tag).escape_default())]
    UnknownMessageType {
        /// The type byte.
        tag: u8,
    },
    /// The message kind does not exist in the negotiated protocol version.
    #[error(
        "pgoutput {message} message needs protocol version {required}, but version {negotiated} is in use"
    )]
    UnsupportedVersion {
        /// The message kind.
        message: MessageKind,
        /// The first protocol version that has it.
        required: u32,
        /// The protocol version the decoder was given.
        negotiated: u32,
    },
    /// The message ends before a field does.
    #[error(
        "pgoutput {message} message truncated: {field} at offset {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// The message kind.
        message: MessageKind,
        /// The field being read.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
        /// The bytes the field needs.
        needed: usize,
        /// The bytes left in the message.
        available: usize,
    },
    /// A string field has no terminating NUL byte.
    #[error("pgoutput {message} message: {field} at offset {offset} is not NUL-terminated")]
    UnterminatedString {
        /// The message kind.
        message: MessageKind,
        /// The field being read.
        field: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("pgoutput {message} message: {field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The message kind.
        message: MessageKind,
        /// The field being read.
        field: &'static str,
        /// Where the string starts.
        offset: usize,
        /// What is wrong with it.
        #[source]
        source: Utf8Error,
    },
    /// A one-byte field (a marker, kind or flag) has a value the protocol
    /// does not define.
    #[error(
        "pgoutput {message} message: invalid {field} {value:#04x} ({}) at offset {offset}",
        char::from(*value).escape_default()
    )]
    InvalidByte {
        /// The message kind.
        message: MessageKind,
        /// The field being read.
        field: &'static str,
        /// Where the field is.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// A length field is negative.
    #[error("pgoutput {message} message: negative {field} {value} at offset {offset}")]
    NegativeLength {
        /// The message kind.
        message: MessageKind,
        /// The field being read.
        field: &'static str,
        /// Where the field is.
        offset: usize,
        /// The length found.
        value: i32,
    },
    /// Bytes are left after the last field of the message.
    #[error("pgoutput {message} message: {count} unexpected trailing bytes at offset {offset}")]
    TrailingBytes {
        /// The message kind.
        message: MessageKind,
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// Decodes the pgoutput messages of one replication stream, in order.
///
/// It knows the negotiated `proto_version` and whether it is inside a
/// streaming block: [`LogicalMessage::StreamStart`] enters one and
/// [`LogicalMessage::StreamStop`] leaves it. Inside a block, Message,
/// Relation, Type, Insert, Update, Delete and Truncate carry a transaction id
/// after their type byte. A message that fails to decode leaves the state
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    protocol_version: u32,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for a stream started with `proto_version` set to
    /// `protocol_version` (1 to 4), outside any streaming block.
    pub fn new(protocol_version: u32) -> Decoder {
        Decoder {
            protocol_version,
            in_stream: false,
        }
    }

    /// The protocol version the decoder was made for.
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Whether the decoder is between a Stream Start and its Stream Stop.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Sets whether the decoder is inside a streaming block: `false` after
    /// reconnecting (the server resumes at a transaction boundary), `true` to
    /// resume decoding in the middle of a block.
    pub fn set_in_stream(&mut self, in_stream: bool) {
        self.in_stream = in_stream;
    }

    /// Decodes the next message of the stream and updates the streaming
    /// state. Values in the result are slices of `data`.
    pub fn decode(&mut self, data: Bytes) -> Result<LogicalMessage, DecodeError> {
        let message = decode(data, self.protocol_version, self.in_stream)?;
        match message {
            LogicalMessage::StreamStart(_) => self.in_stream = true,
            LogicalMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(message)
    }
}

/// Decodes one pgoutput message with explicit context, changing no state:
/// `protocol_version` is the negotiated `proto_version` and `in_stream` says
/// whether the message is inside a streaming block (so that change messages
/// carry a transaction id; only with protocol version 2 and later).
///
/// Text and binary column values and message contents are slices of `data`
/// (no copy); names are copied into `String`s.
pub fn decode(
    data: Bytes,
    protocol_version: u32,
    in_stream: bool,
) -> Result<LogicalMessage, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let Some(kind) = MessageKind::from_tag(tag) else {
        return Err(DecodeError::UnknownMessageType { tag });
    };
    let required = kind.min_protocol_version();
    if protocol_version < required {
        return Err(DecodeError::UnsupportedVersion {
            message: kind,
            required,
            negotiated: protocol_version,
        });
    }
    let mut r = Reader {
        data: &data,
        pos: 1,
        kind,
    };
    let xid = if in_stream && protocol_version >= 2 && kind.has_stream_xid() {
        Some(r.u32("transaction id")?)
    } else {
        None
    };
    let message = match kind {
        MessageKind::Begin => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("transaction id")?,
        }),
        MessageKind::Message => LogicalMessage::Message(Message {
            xid,
            flags: r.u8("flags")?,
            lsn: r.lsn("message LSN")?,
            prefix: r.string("prefix")?,
            content: {
                let len = r.length("content length")?;
                r.bytes(len, "content")?
            },
        }),
        MessageKind::Commit => LogicalMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.timestamp("commit timestamp")?,
        }),
        MessageKind::Origin => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        MessageKind::Relation => LogicalMessage::Relation(r.relation(xid)?),
        MessageKind::Type => LogicalMessage::Type(Type {
            xid,
            id: r.u32("type OID")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        MessageKind::Insert => {
            let relation_id = r.u32("relation OID")?;
            r.expect(b'N', "new tuple marker")?;
            LogicalMessage::Insert(Insert {
                xid,
                relation_id,
                new: r.tuple()?,
            })
        }
        MessageKind::Update => {
            let relation_id = r.u32("relation OID")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                value => return Err(r.invalid_byte("tuple marker", offset, value)),
            };
            if old.is_some() {
                r.expect(b'N', "new tuple marker")?;
            }
            LogicalMessage::Update(Update {
                xid,
                relation_id,
                old,
                new: r.tuple()?,
            })
        }
        MessageKind::Delete => {
            let relation_id = r.u32("relation OID")?;
            let offset = r.pos;
            let old = match r.u8("old tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                value => return Err(r.invalid_byte("old tuple marker", offset, value)),
            };
            LogicalMessage::Delete(Delete {
                xid,
                relation_id,
                old,
            })
        }
        MessageKind::Truncate => {
            let count = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            // Each OID takes 4 bytes: never reserve more than the input holds.
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("relation OID")?);
            }
            LogicalMessage::Truncate(Truncate {
                xid,
                options,
                relation_ids,
            })
        }
        MessageKind::StreamStart => LogicalMessage::StreamStart(StreamStart {
            xid: r.u32("transaction id")?,
            first_segment: r.bool("first segment flag")?,
        }),
        MessageKind::StreamStop => LogicalMessage::StreamStop,
        MessageKind::StreamCommit => LogicalMessage::StreamCommit(StreamCommit {
            xid: r.u32("transaction id")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.timestamp("commit timestamp")?,
        }),
        MessageKind::StreamAbort => {
            let xid = r.u32("transaction id")?;
            let subxid = r.u32("subtransaction id")?;
            // The abort LSN and timestamp are sent only with protocol 4 and
            // streaming = parallel, which the decoder is not told: take them
            // when they are there.
            let parallel = if protocol_version >= 4 && r.remaining() > 0 {
                Some(ParallelAbort {
                    abort_lsn: r.lsn("abort LSN")?,
                    abort_time: r.timestamp("abort timestamp")?,
                })
            } else {
                None
            };
            LogicalMessage::StreamAbort(StreamAbort {
                xid,
                subxid,
                parallel,
            })
        }
        MessageKind::BeginPrepare => LogicalMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            prepare_time: r.timestamp("prepare timestamp")?,
            xid: r.u32("transaction id")?,
            gid: r.string("gid")?,
        }),
        MessageKind::Prepare => LogicalMessage::Prepare(r.prepare()?),
        MessageKind::StreamPrepare => LogicalMessage::StreamPrepare(r.prepare()?),
        MessageKind::CommitPrepared => LogicalMessage::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("transaction id")?,
            gid: r.string("gid")?,
        }),
        MessageKind::RollbackPrepared => LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end LSN")?,
            rollback_end_lsn: r.lsn("rollback end LSN")?,
            prepare_time: r.timestamp("prepare timestamp")?,
            rollback_time: r.timestamp("rollback timestamp")?,
            xid: r.u32("transaction id")?,
            gid: r.string("gid")?,
        }),
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    kind: MessageKind,
}

impl Reader<'_> {
    #[inline]
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The next `N` bytes, consumed.
    #[inline]
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self
            .data
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
        {
            Some(bytes) => {
                self.pos += N;
                Ok(*bytes)
            }
            None => Err(self.truncated(field, N)),
        }
    }

    #[inline]
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        match self.data.get(self.pos) {
            Some(&byte) => {
                self.pos += 1;
                Ok(byte)
            }
            None => Err(self.truncated(field, 1)),
        }
    }

    #[inline]
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        self.array(field)
            .map(|b| PgTimestamp(i64::from_be_bytes(b)))
    }

    /// An Int8 that must be 0 or 1.
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(self.invalid_byte(field, offset, value)),
        }
    }

    /// A byte that must be `expected`.
    #[inline]
    fn expect(&mut self, expected: u8, field: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            value if value == expected => Ok(()),
            value => Err(self.invalid_byte(field, offset, value)),
        }
    }

    /// An Int32 length that must not be negative.
    #[inline]
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.kind,
            field,
            offset,
            value,
        })
    }

    /// The next `len` bytes as a slice of the input.
    #[inline]
    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.data.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = &self.data[offset..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.kind,
                field,
                offset,
            });
        };
        let text =
            std::str::from_utf8(&rest[..len]).map_err(|source| DecodeError::InvalidUtf8 {
                message: self.kind,
                field,
                offset,
                source,
            })?;
        self.pos += len + 1;
        Ok(text.to_owned())
    }

    fn relation(&mut self, xid: Option<u32>) -> Result<Relation, DecodeError> {
        let id = self.u32("relation OID")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let offset = self.pos;
        let identity = self.u8("replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(identity)
            .ok_or_else(|| self.invalid_byte("replica identity", offset, identity))?;
        let count = usize::from(self.u16("column count")?);
        // A column takes at least 10 bytes (flags, empty name, type, modifier).
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: self.u8("column flags")?,
                name: self.string("column name")?,
                type_id: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            xid,
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: an Int16 column count, then each column.
    #[inline]
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = usize::from(self.u16("tuple column count")?);
        // A column takes at least one byte: never reserve more than the input
        // holds, whatever the count says.
        let mut columns = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let offset = self.pos;
            let value = match self.u8("column kind")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => {
                    let len = self.length("column value length")?;
                    ColumnValue::Text(self.bytes(len, "column value")?)
                }
                b'b' => {
                    let len = self.length("column value length")?;
                    ColumnValue::Binary(self.bytes(len, "column value")?)
                }
                kind => return Err(self.invalid_byte("column kind", offset, kind)),
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }

    fn prepare(&mut self) -> Result<Prepare, DecodeError> {
        Ok(Prepare {
            flags: self.u8("flags")?,
            prepare_lsn: self.lsn("prepare LSN")?,
            end_lsn: self.lsn("end LSN")?,
            prepare_time: self.timestamp("prepare timestamp")?,
            xid: self.u32("transaction id")?,
            gid: self.string("gid")?,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.kind,
                offset: self.pos,
                count,
            }),
        }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.kind,
            field,
            offset: self.pos,
            needed,
            available: self.remaining(),
        }
    }

    #[cold]
    #[inline(never)]
    fn invalid_byte(&self, field: &'static str, offset: usize, value: u8) -> DecodeError {
        DecodeError::InvalidByte {
            message: self.kind,
            field,
            offset,
            value,
        }
    }
}
