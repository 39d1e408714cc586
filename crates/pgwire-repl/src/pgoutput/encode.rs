//! Encoding pgoutput messages to bytes, as the server writes them.

use bytes::{BufMut, Bytes, BytesMut};

use super::message::*;

impl LogicalMessage {
    /// Appends this message to `out` in pgoutput's wire format, exactly as the
    /// server would send it: change messages whose `xid` is `Some` get the
    /// transaction id that they carry inside a streaming block.
    ///
    /// # Panics
    ///
    /// If the message cannot be represented on the wire: a name containing a
    /// NUL byte, more than 65535 columns, more than `u32::MAX` truncated
    /// relations, or a value or message content longer than `i32::MAX` bytes.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.kind().tag());
        match self {
            LogicalMessage::Begin(m) => {
                out.put_u64(m.final_lsn.0);
                out.put_i64(m.commit_time.0);
                out.put_u32(m.xid);
            }
            LogicalMessage::Message(m) => {
                put_xid(out, m.xid);
                out.put_u8(m.flags);
                out.put_u64(m.lsn.0);
                put_string(out, &m.prefix);
                put_length(out, m.content.len());
                out.put_slice(&m.content);
            }
            LogicalMessage::Commit(m) => {
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time.0);
            }
            LogicalMessage::Origin(m) => {
                out.put_u64(m.commit_lsn.0);
                put_string(out, &m.name);
            }
            LogicalMessage::Relation(m) => {
                put_xid(out, m.xid);
                out.put_u32(m.id);
                put_string(out, &m.namespace);
                put_string(out, &m.name);
                out.put_u8(m.replica_identity.to_byte());
                out.put_u16(count16(m.columns.len()));
                for column in &m.columns {
                    out.put_u8(column.flags);
                    put_string(out, &column.name);
                    out.put_u32(column.type_id);
                    out.put_i32(column.type_modifier);
                }
            }
            LogicalMessage::Type(m) => {
                put_xid(out, m.xid);
                out.put_u32(m.id);
                put_string(out, &m.namespace);
                put_string(out, &m.name);
            }
            LogicalMessage::Insert(m) => {
                put_xid(out, m.xid);
                out.put_u32(m.relation_id);
                out.put_u8(b'N');
                put_tuple(out, &m.new);
            }
            LogicalMessage::Update(m) => {
                put_xid(out, m.xid);
                out.put_u32(m.relation_id);
                if let Some(old) = &m.old {
                    out.put_u8(old.marker());
                    put_tuple(out, old.tuple());
                }
                out.put_u8(b'N');
                put_tuple(out, &m.new);
            }
            LogicalMessage::Delete(m) => {
                put_xid(out, m.xid);
                out.put_u32(m.relation_id);
                out.put_u8(m.old.marker());
                put_tuple(out, m.old.tuple());
            }
            LogicalMessage::Truncate(m) => {
                put_xid(out, m.xid);
                let count = u32::try_from(m.relation_ids.len())
                    .expect("a pgoutput Truncate message holds at most u32::MAX relations");
                out.put_u32(count);
                out.put_u8(m.options);
                for id in &m.relation_ids {
                    out.put_u32(*id);
                }
            }
            LogicalMessage::StreamStart(m) => {
                out.put_u32(m.xid);
                out.put_u8(u8::from(m.first_segment));
            }
            LogicalMessage::StreamStop => {}
            LogicalMessage::StreamCommit(m) => {
                out.put_u32(m.xid);
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time.0);
            }
            LogicalMessage::StreamAbort(m) => {
                out.put_u32(m.xid);
                out.put_u32(m.subxid);
                if let Some(parallel) = &m.parallel {
                    out.put_u64(parallel.abort_lsn.0);
                    out.put_i64(parallel.abort_time.0);
                }
            }
            LogicalMessage::BeginPrepare(m) => {
                out.put_u64(m.prepare_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.prepare_time.0);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
            LogicalMessage::Prepare(m) | LogicalMessage::StreamPrepare(m) => {
                out.put_u8(m.flags);
                out.put_u64(m.prepare_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.prepare_time.0);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
            LogicalMessage::CommitPrepared(m) => {
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time.0);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
            LogicalMessage::RollbackPrepared(m) => {
                out.put_u8(m.flags);
                out.put_u64(m.prepare_end_lsn.0);
                out.put_u64(m.rollback_end_lsn.0);
                out.put_i64(m.prepare_time.0);
                out.put_i64(m.rollback_time.0);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
        }
    }

    /// This message in pgoutput's wire format; see [`LogicalMessage::encode`].
    ///
    /// # Panics
    ///
    /// As [`LogicalMessage::encode`].
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn put_xid(out: &mut BytesMut, xid: Option<u32>) {
    if let Some(xid) = xid {
        out.put_u32(xid);
    }
}

fn put_string(out: &mut BytesMut, text: &str) {
    assert!(
        !text.as_bytes().contains(&0),
        "a pgoutput string cannot contain a NUL byte: {text:?}"
    );
    out.put_slice(text.as_bytes());
    out.put_u8(0);
}

fn put_length(out: &mut BytesMut, len: usize) {
    let len = i32::try_from(len).expect("a pgoutput value is at most i32::MAX bytes long");
    out.put_i32(len);
}

fn count16(len: usize) -> u16 {
    u16::try_from(len).expect("a pgoutput tuple or relation has at most 65535 columns")
}

fn put_tuple(out: &mut BytesMut, tuple: &TupleData) {
    out.put_u16(count16(tuple.columns.len()));
    for value in &tuple.columns {
        out.put_u8(value.kind_byte());
        if let Some(bytes) = value.bytes() {
            put_length(out, bytes.len());
            out.put_slice(bytes);
        }
    }
}
