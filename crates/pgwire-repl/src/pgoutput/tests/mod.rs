//! Tests of the pgoutput codec, by message kind: hand-built messages
//! written from the protocol documentation, malformed input, and property
//! tests. The helpers and constants here serve every file.

mod malformed;
mod properties;
mod relations;
mod rows;
mod transactions;
mod two_phase;

use bytes::{Bytes, BytesMut};

use super::*;
use pglive_postgres::{Lsn, PgTimestamp};

/// Concatenates the parts of a hand-built message.
fn cat(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn ts(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes `wire` in the given context, compares with `expected`, and checks
/// that encoding `expected` gives back `wire` byte for byte.
#[track_caller]
fn check(wire: Bytes, version: u32, in_stream: bool, expected: LogicalMessage) {
    let decoded = decode(wire.clone(), version, in_stream).unwrap();
    assert_eq!(decoded, expected);
    assert_eq!(
        expected.to_bytes(),
        wire,
        "encoding differs from the wire bytes"
    );
}

#[track_caller]
fn error(wire: &[u8], version: u32, in_stream: bool) -> DecodeError {
    decode(Bytes::copy_from_slice(wire), version, in_stream).unwrap_err()
}

fn text(s: &'static str) -> ColumnValue {
    ColumnValue::Text(Bytes::from_static(s.as_bytes()))
}

const LSN_A: u64 = 0x0000_0016_B374_D848;
const LSN_B: u64 = 0x0000_0016_B374_D9A0;
const TIME: i64 = 770_000_000_123_456;
