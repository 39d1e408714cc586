//! Malformed input: every truncation, bad count, unknown kind, trailing byte or undefined flag is an error naming the field and offset, never a panic.

use super::*;

#[test]
fn rejects_empty_and_unknown_messages() {
    assert_eq!(error(b"", 1, false), DecodeError::Empty);
    assert_eq!(
        error(b"w", 1, false),
        DecodeError::UnknownMessageType { tag: b'w' }
    );
    assert_eq!(
        error(b"Z", 1, false).to_string(),
        "unknown pgoutput message type 0x5a (Z)"
    );
}

#[test]
fn rejects_messages_of_later_protocol_versions() {
    assert_eq!(
        error(b"E", 1, false),
        DecodeError::UnsupportedVersion {
            message: MessageKind::StreamStop,
            required: 2,
            negotiated: 1,
        }
    );
    let prepare = cat(&[b"P", &[0], &be64(1), &be64(2), &ts(3), &be32(4), b"g\0"]);
    assert!(matches!(
        decode(prepare.clone(), 2, false),
        Err(DecodeError::UnsupportedVersion { required: 3, .. })
    ));
    decode(prepare, 3, false).unwrap();
}

#[test]
fn rejects_truncated_messages_with_field_and_offset() {
    let begin = cat(&[b"B", &be64(LSN_A), &ts(TIME), &be32(742)]);
    for len in 1..begin.len() {
        assert!(
            matches!(
                error(&begin[..len], 1, false),
                DecodeError::Truncated {
                    message: MessageKind::Begin,
                    ..
                }
            ),
            "prefix of {len} bytes"
        );
    }
    let err = error(&begin[..12], 1, false);
    assert_eq!(
        err,
        DecodeError::Truncated {
            message: MessageKind::Begin,
            field: "commit timestamp",
            offset: 9,
            needed: 8,
            available: 3,
        }
    );
    assert_eq!(
        err.to_string(),
        "pgoutput Begin message truncated: commit timestamp at offset 9 needs 8 bytes, 3 left"
    );
    // A text value longer than what is left.
    let insert = cat(&[b"I", &be32(1), b"N", &[0, 1], b"t", &be32(10), b"abc"]);
    assert!(matches!(
        decode(insert, 1, false),
        Err(DecodeError::Truncated {
            field: "column value",
            offset: 13,
            needed: 10,
            available: 3,
            ..
        })
    ));
}

#[test]
fn huge_counts_with_little_input_are_errors() {
    // 65535 columns announced, 3 bytes of input left.
    let insert = cat(&[b"I", &be32(1), b"N", &[0xff, 0xff], b"nnn"]);
    assert!(matches!(
        decode(insert, 1, false),
        Err(DecodeError::Truncated {
            field: "column kind",
            offset: 11,
            ..
        })
    ));
    let relation = cat(&[b"R", &be32(1), b"s\0", b"t\0", b"d", &[0xff, 0xff], &[0]]);
    assert!(matches!(
        decode(relation, 1, false),
        Err(DecodeError::UnterminatedString { .. })
    ));
    let truncate = cat(&[b"T", &be32(u32::MAX), &[0], &be32(1)]);
    assert!(matches!(
        decode(truncate, 1, false),
        Err(DecodeError::Truncated {
            field: "relation OID",
            ..
        })
    ));
    let message = cat(&[b"M", &[0], &be64(1), b"\0", &be32(i32::MAX as u32), b"x"]);
    assert!(matches!(
        decode(message, 1, false),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn rejects_trailing_bytes() {
    let commit = cat(&[b"C", &[0], &be64(1), &be64(2), &ts(3), b"!"]);
    assert_eq!(
        decode(commit, 1, false),
        Err(DecodeError::TrailingBytes {
            message: MessageKind::Commit,
            offset: 26,
            count: 1,
        })
    );
    assert!(matches!(
        error(b"Ex", 2, false),
        DecodeError::TrailingBytes {
            offset: 1,
            count: 1,
            ..
        }
    ));
}

#[test]
fn rejects_bad_strings() {
    let origin = cat(&[b"O", &be64(1), b"abc"]);
    assert_eq!(
        decode(origin, 1, false),
        Err(DecodeError::UnterminatedString {
            message: MessageKind::Origin,
            field: "origin name",
            offset: 9,
        })
    );
    let relation = cat(&[b"R", &be32(1), b"s\0", b"t\xff\0", b"d", &[0, 0]]);
    let err = decode(relation, 1, false).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidUtf8 {
                field: "relation name",
                offset: 7,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn rejects_undefined_markers_and_flags() {
    let insert = cat(&[b"I", &be32(1), b"N", &[0, 1], b"x"]);
    assert_eq!(
        decode(insert, 1, false),
        Err(DecodeError::InvalidByte {
            message: MessageKind::Insert,
            field: "column kind",
            offset: 8,
            value: b'x',
        })
    );
    let insert = cat(&[b"I", &be32(1), b"K", &[0, 0]]);
    assert!(matches!(
        decode(insert, 1, false),
        Err(DecodeError::InvalidByte {
            field: "new tuple marker",
            ..
        })
    ));
    let update = cat(&[b"U", &be32(1), b"X", &[0, 0]]);
    assert!(matches!(
        decode(update, 1, false),
        Err(DecodeError::InvalidByte {
            field: "tuple marker",
            ..
        })
    ));
    let update = cat(&[b"U", &be32(1), b"K", &[0, 0], b"K", &[0, 0]]);
    assert!(matches!(
        decode(update, 1, false),
        Err(DecodeError::InvalidByte {
            field: "new tuple marker",
            ..
        })
    ));
    let delete = cat(&[b"D", &be32(1), b"N", &[0, 0]]);
    assert!(matches!(
        decode(delete, 1, false),
        Err(DecodeError::InvalidByte {
            field: "old tuple marker",
            ..
        })
    ));
    let relation = cat(&[b"R", &be32(1), b"s\0", b"t\0", b"z", &[0, 0]]);
    assert!(matches!(
        decode(relation, 1, false),
        Err(DecodeError::InvalidByte {
            field: "replica identity",
            value: b'z',
            ..
        })
    ));
    let start = cat(&[b"S", &be32(1), &[2]]);
    assert!(matches!(
        decode(start, 2, false),
        Err(DecodeError::InvalidByte {
            field: "first segment flag",
            ..
        })
    ));
    let insert = cat(&[b"I", &be32(1), b"N", &[0, 1], b"b", &(-1i32).to_be_bytes()]);
    assert_eq!(
        decode(insert, 1, false),
        Err(DecodeError::NegativeLength {
            message: MessageKind::Insert,
            field: "column value length",
            offset: 9,
            value: -1,
        })
    );
}
