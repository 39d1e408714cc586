//! The decoded form of pgoutput messages.

use std::fmt;

use bytes::Bytes;

use pglive_postgres::{Lsn, PgTimestamp};

/// One pgoutput message, as sent inside an `XLogData` ('w') frame of the
/// replication stream.
///
/// Each variant corresponds to one message type of the
/// logical replication protocol; [`MessageKind`] names them without their
/// contents.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// 'B': the start of a transaction that is sent whole after it committed.
    Begin(Begin),
    /// 'M': a message written with `pg_logical_emit_message`.
    Message(Message),
    /// 'C': the end of a transaction opened by [`LogicalMessage::Begin`].
    Commit(Commit),
    /// 'O': the origin that a transaction was replayed from.
    Origin(Origin),
    /// 'R': the description of a table, sent before its first change.
    Relation(Relation),
    /// 'Y': the name of a non-built-in data type used by a following relation.
    Type(Type),
    /// 'I': a new row.
    Insert(Insert),
    /// 'U': a changed row.
    Update(Update),
    /// 'D': a removed row.
    Delete(Delete),
    /// 'T': one `TRUNCATE` of one or more tables.
    Truncate(Truncate),
    /// 'S': the start of a block of changes of an in-progress transaction
    /// (protocol version 2 and later).
    StreamStart(StreamStart),
    /// 'E': the end of a block of changes started by
    /// [`LogicalMessage::StreamStart`] (protocol version 2 and later).
    StreamStop,
    /// 'c': the commit of a streamed transaction (protocol version 2 and later).
    StreamCommit(StreamCommit),
    /// 'A': the abort of a streamed (sub)transaction (protocol version 2 and
    /// later).
    StreamAbort(StreamAbort),
    /// 'b': the start of a transaction sent at `PREPARE TRANSACTION` time
    /// (protocol version 3 and later).
    BeginPrepare(BeginPrepare),
    /// 'P': the end of a transaction opened by [`LogicalMessage::BeginPrepare`]
    /// (protocol version 3 and later).
    Prepare(Prepare),
    /// 'K': `COMMIT PREPARED` of a prepared transaction (protocol version 3 and
    /// later).
    CommitPrepared(CommitPrepared),
    /// 'r': `ROLLBACK PREPARED` of a prepared transaction (protocol version 3
    /// and later).
    RollbackPrepared(RollbackPrepared),
    /// 'p': `PREPARE TRANSACTION` of a streamed transaction (protocol version 3
    /// and later). Same fields as [`LogicalMessage::Prepare`].
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// Which kind of message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            LogicalMessage::Begin(_) => MessageKind::Begin,
            LogicalMessage::Message(_) => MessageKind::Message,
            LogicalMessage::Commit(_) => MessageKind::Commit,
            LogicalMessage::Origin(_) => MessageKind::Origin,
            LogicalMessage::Relation(_) => MessageKind::Relation,
            LogicalMessage::Type(_) => MessageKind::Type,
            LogicalMessage::Insert(_) => MessageKind::Insert,
            LogicalMessage::Update(_) => MessageKind::Update,
            LogicalMessage::Delete(_) => MessageKind::Delete,
            LogicalMessage::Truncate(_) => MessageKind::Truncate,
            LogicalMessage::StreamStart(_) => MessageKind::StreamStart,
            LogicalMessage::StreamStop => MessageKind::StreamStop,
            LogicalMessage::StreamCommit(_) => MessageKind::StreamCommit,
            LogicalMessage::StreamAbort(_) => MessageKind::StreamAbort,
            LogicalMessage::BeginPrepare(_) => MessageKind::BeginPrepare,
            LogicalMessage::Prepare(_) => MessageKind::Prepare,
            LogicalMessage::CommitPrepared(_) => MessageKind::CommitPrepared,
            LogicalMessage::RollbackPrepared(_) => MessageKind::RollbackPrepared,
            LogicalMessage::StreamPrepare(_) => MessageKind::StreamPrepare,
        }
    }
}

/// The kind of a pgoutput message, identified on the wire by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// 'B'
    Begin,
    /// 'M'
    Message,
    /// 'C'
    Commit,
    /// 'O'
    Origin,
    /// 'R'
    Relation,
    /// 'Y'
    Type,
    /// 'I'
    Insert,
    /// 'U'
    Update,
    /// 'D'
    Delete,
    /// 'T'
    Truncate,
    /// 'S'
    StreamStart,
    /// 'E'
    StreamStop,
    /// 'c'
    StreamCommit,
    /// 'A'
    StreamAbort,
    /// 'b'
    BeginPrepare,
    /// 'P'
    Prepare,
    /// 'K'
    CommitPrepared,
    /// 'r'
    RollbackPrepared,
    /// 'p'
    StreamPrepare,
}

impl MessageKind {
    /// Every kind, in the order of the protocol documentation.
    pub const ALL: [MessageKind; 19] = [
        MessageKind::Begin,
        MessageKind::Message,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
        MessageKind::BeginPrepare,
        MessageKind::Prepare,
        MessageKind::CommitPrepared,
        MessageKind::RollbackPrepared,
        MessageKind::StreamPrepare,
    ];

    /// The type byte that starts a message of this kind.
    pub const fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Message => b'M',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
            MessageKind::BeginPrepare => b'b',
            MessageKind::Prepare => b'P',
            MessageKind::CommitPrepared => b'K',
            MessageKind::RollbackPrepared => b'r',
            MessageKind::StreamPrepare => b'p',
        }
    }

    /// The kind whose messages start with `tag`, if any.
    pub const fn from_tag(tag: u8) -> Option<MessageKind> {
        Some(match tag {
            b'B' => MessageKind::Begin,
            b'M' => MessageKind::Message,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            b'S' => MessageKind::StreamStart,
            b'E' => MessageKind::StreamStop,
            b'c' => MessageKind::StreamCommit,
            b'A' => MessageKind::StreamAbort,
            b'b' => MessageKind::BeginPrepare,
            b'P' => MessageKind::Prepare,
            b'K' => MessageKind::CommitPrepared,
            b'r' => MessageKind::RollbackPrepared,
            b'p' => MessageKind::StreamPrepare,
            _ => return None,
        })
    }

    /// The lowest `proto_version` in which the server sends this kind.
    pub const fn min_protocol_version(self) -> u32 {
        match self {
            MessageKind::StreamStart
            | MessageKind::StreamStop
            | MessageKind::StreamCommit
            | MessageKind::StreamAbort => 2,
            MessageKind::BeginPrepare
            | MessageKind::Prepare
            | MessageKind::CommitPrepared
            | MessageKind::RollbackPrepared
            | MessageKind::StreamPrepare => 3,
            _ => 1,
        }
    }

    /// Whether a message of this kind carries a transaction id after its type
    /// byte when it is sent inside a streaming block (protocol version 2 and
    /// later).
    pub const fn has_stream_xid(self) -> bool {
        matches!(
            self,
            MessageKind::Message
                | MessageKind::Relation
                | MessageKind::Type
                | MessageKind::Insert
                | MessageKind::Update
                | MessageKind::Delete
                | MessageKind::Truncate
        )
    }

    /// The name used in PostgreSQL's documentation, such as `Stream Start`.
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "Begin",
            MessageKind::Message => "Message",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::StreamStart => "Stream Start",
            MessageKind::StreamStop => "Stream Stop",
            MessageKind::StreamCommit => "Stream Commit",
            MessageKind::StreamAbort => "Stream Abort",
            MessageKind::BeginPrepare => "Begin Prepare",
            MessageKind::Prepare => "Prepare",
            MessageKind::CommitPrepared => "Commit Prepared",
            MessageKind::RollbackPrepared => "Rollback Prepared",
            MessageKind::StreamPrepare => "Stream Prepare",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// 'B': a transaction starts; its changes follow, then a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The final LSN of the transaction (the LSN of its commit record).
    pub final_lsn: Lsn,
    /// The commit timestamp of the transaction.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
}

/// 'M': a logical decoding message (`pg_logical_emit_message`), sent when the
/// `messages` option of pgoutput is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// Flags: 0, or [`Message::TRANSACTIONAL`].
    pub flags: u8,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content, a slice of the decoded input.
    pub content: Bytes,
}

impl Message {
    /// The flag bit of a message emitted as part of a transaction.
    pub const TRANSACTIONAL: u8 = 1;

    /// Whether the message was emitted as part of its transaction.
    pub fn is_transactional(&self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }
}

/// 'C': the transaction opened by the last [`Begin`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently always 0.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end LSN of the transaction: where the next one may start.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub commit_time: PgTimestamp,
}

/// 'O': the current transaction was replayed from another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The name of the origin.
    pub name: String,
}

/// 'R': the layout of a table, sent before the first change to it in a
/// session and again after it changes. Later row messages refer to it by
/// [`Relation::id`] and list values in the order of [`Relation::columns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// The relation's OID.
    pub id: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// The table's replica identity (`relreplident`).
    pub replica_identity: ReplicaIdentity,
    /// The published columns in order (generated columns are left out unless
    /// published).
    pub columns: Vec<RelationColumn>,
}

/// The replica identity of a table: which old values `UPDATE` and `DELETE`
/// carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaIdentity {
    /// 'd': the primary key, if any.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': every column.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The `relreplident` byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// The replica identity a `relreplident` byte stands for, if any.
    pub const fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags: 0, or [`RelationColumn::KEY`].
    pub flags: u8,
    /// The column name.
    pub name: String,
    /// The OID of the column's data type.
    pub type_id: u32,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// The flag bit of a column that is part of the replica identity key.
    pub const KEY: u8 = 1;

    /// Whether the column is part of the key that identifies old rows.
    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY != 0
    }
}

/// 'Y': the name of a data type that a following [`Relation`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// The type's OID.
    pub id: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The type name.
    pub name: String,
}

/// 'I': a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`].
    pub relation_id: u32,
    /// The new row ('N').
    pub new: TupleData,
}

/// 'U': a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`].
    pub relation_id: u32,
    /// The old key ('K') when a key column changed, or the whole old row
    /// ('O') under replica identity full; absent otherwise.
    pub old: Option<OldTuple>,
    /// The new row ('N'); unchanged TOAST values are
    /// [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// 'D': a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`].
    pub relation_id: u32,
    /// The old key ('K') or, under replica identity full, the old row ('O').
    pub old: OldTuple,
}

/// The old values that [`Update`] and [`Delete`] carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OldTuple {
    /// 'K': the replica identity columns; the others are null.
    Key(TupleData),
    /// 'O': the whole old row (replica identity full).
    Full(TupleData),
}

impl OldTuple {
    /// The values, whichever the kind.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }

    /// The values, whichever the kind, taken out of the message.
    pub fn into_tuple(self) -> TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }

    /// The byte that introduces this kind of old tuple: 'K' or 'O'.
    pub const fn marker(&self) -> u8 {
        match self {
            OldTuple::Key(_) => b'K',
            OldTuple::Full(_) => b'O',
        }
    }
}

/// The values of one row, in the order of its [`Relation`]'s columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TupleData {
    /// One value per column.
    pub columns: Vec<ColumnValue>,
}

impl TupleData {
    /// A row of these values.
    pub fn new(columns: Vec<ColumnValue>) -> TupleData {
        TupleData { columns }
    }
}

impl From<Vec<ColumnValue>> for TupleData {
    fn from(columns: Vec<ColumnValue>) -> Self {
        TupleData { columns }
    }
}

/// One value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ColumnValue {
    /// 'n': SQL `NULL`.
    Null,
    /// 'u': a TOASTed value that did not change; the real value is not sent.
    UnchangedToast,
    /// 't': the value in the type's text output format, a slice of the
    /// decoded input.
    Text(Bytes),
    /// 'b': the value in the type's binary send format (pgoutput option
    /// `binary`), a slice of the decoded input.
    Binary(Bytes),
}

impl ColumnValue {
    /// The kind byte that introduces this value on the wire.
    pub const fn kind_byte(&self) -> u8 {
        match self {
            ColumnValue::Null => b'n',
            ColumnValue::UnchangedToast => b'u',
            ColumnValue::Text(_) => b't',
            ColumnValue::Binary(_) => b'b',
        }
    }

    /// The bytes of a text or binary value; `None` for null and unchanged
    /// TOAST.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Some(bytes),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }
}

/// 'T': one `TRUNCATE` of one or more tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// The transaction id; present only inside a streaming block.
    pub xid: Option<u32>,
    /// Option bits: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The OIDs of the truncated relations.
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    /// The option bit of `TRUNCATE … CASCADE`.
    pub const CASCADE: u8 = 1;
    /// The option bit of `TRUNCATE … RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// Whether the truncate cascaded.
    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    /// Whether owned sequences were restarted.
    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// 'S': a block of changes of the in-progress transaction `xid` follows, up to
/// the next [`LogicalMessage::StreamStop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The (top-level) transaction id.
    pub xid: u32,
    /// Whether this is the first block of this transaction.
    pub first_segment: bool,
}

/// 'c': a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The transaction id.
    pub xid: u32,
    /// Flags; currently always 0.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end LSN of the transaction.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub commit_time: PgTimestamp,
}

/// 'A': a streamed transaction, or one of its subtransactions, aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction id.
    pub xid: u32,
    /// The aborted subtransaction; equal to `xid` when the whole transaction
    /// aborted.
    pub subxid: u32,
    /// Where and when it aborted; sent only with protocol version 4 and
    /// `streaming = parallel`.
    pub parallel: Option<ParallelAbort>,
}

/// The extra fields of a [`StreamAbort`] under parallel streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelAbort {
    /// The LSN of the abort.
    pub abort_lsn: Lsn,
    /// The abort timestamp.
    pub abort_time: PgTimestamp,
}

/// 'b': a prepared transaction starts; its changes follow, then a [`Prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// The LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// The end LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// The prepare timestamp.
    pub prepare_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// 'P' (and 'p' for a streamed transaction): a transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Flags; currently always 0.
    pub flags: u8,
    /// The LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// The end LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// The prepare timestamp.
    pub prepare_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// 'K': a prepared transaction was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Flags; currently always 0.
    pub flags: u8,
    /// The LSN of the commit of the prepared transaction.
    pub commit_lsn: Lsn,
    /// The end LSN of the commit of the prepared transaction.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier of the prepared transaction.
    pub gid: String,
}

/// 'r': a prepared transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags; currently always 0.
    pub flags: u8,
    /// The end LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// The end LSN of the rollback of the prepared transaction.
    pub rollback_end_lsn: Lsn,
    /// The prepare timestamp.
    pub prepare_time: PgTimestamp,
    /// The rollback timestamp.
    pub rollback_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier of the prepared transaction.
    pub gid: String,
}
