//! Transaction framing: Begin, Commit, Origin, logical decoding messages, and the blocks of streamed in-progress transactions.

use super::*;

#[test]
fn begin() {
    let wire = cat(&[b"B", &be64(LSN_A), &ts(TIME), &be32(742)]);
    let expected = LogicalMessage::Begin(Begin {
        final_lsn: Lsn(LSN_A),
        commit_time: PgTimestamp(TIME),
        xid: 742,
    });
    for version in 1..=4 {
        check(wire.clone(), version, false, expected.clone());
    }
    // Begin never carries a streaming xid, even inside a block.
    check(wire, 2, true, expected);
}

#[test]
fn commit() {
    let wire = cat(&[b"C", &[0], &be64(LSN_A), &be64(LSN_B), &ts(TIME)]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TIME),
        }),
    );
}

#[test]
fn origin() {
    let wire = cat(&[b"O", &be64(LSN_A), b"pg_16390\0"]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(LSN_A),
            name: "pg_16390".into(),
        }),
    );
}

#[test]
fn logical_decoding_message() {
    let outside = cat(&[b"M", &[1], &be64(LSN_A), b"pglive\0", &be32(5), b"hello"]);
    check(
        outside,
        1,
        false,
        LogicalMessage::Message(Message {
            xid: None,
            flags: Message::TRANSACTIONAL,
            lsn: Lsn(LSN_A),
            prefix: "pglive".into(),
            content: Bytes::from_static(b"hello"),
        }),
    );
    let inside = cat(&[b"M", &be32(900), &[0], &be64(LSN_A), b"p\0", &be32(0)]);
    let expected = Message {
        xid: Some(900),
        flags: 0,
        lsn: Lsn(LSN_A),
        prefix: "p".into(),
        content: Bytes::new(),
    };
    assert!(!expected.is_transactional());
    check(inside, 2, true, LogicalMessage::Message(expected));
}

#[test]
fn stream_start_and_stop() {
    check(
        cat(&[b"S", &be32(1000), &[1]]),
        2,
        false,
        LogicalMessage::StreamStart(StreamStart {
            xid: 1000,
            first_segment: true,
        }),
    );
    check(
        cat(&[b"S", &be32(1000), &[0]]),
        4,
        false,
        LogicalMessage::StreamStart(StreamStart {
            xid: 1000,
            first_segment: false,
        }),
    );
    check(
        Bytes::from_static(b"E"),
        2,
        true,
        LogicalMessage::StreamStop,
    );
}

#[test]
fn stream_commit() {
    let wire = cat(&[
        b"c",
        &be32(1000),
        &[0],
        &be64(LSN_A),
        &be64(LSN_B),
        &ts(TIME),
    ]);
    check(
        wire,
        2,
        false,
        LogicalMessage::StreamCommit(StreamCommit {
            xid: 1000,
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TIME),
        }),
    );
}

#[test]
fn stream_abort() {
    let plain = LogicalMessage::StreamAbort(StreamAbort {
        xid: 1000,
        subxid: 1001,
        parallel: None,
    });
    for version in 2..=4 {
        check(
            cat(&[b"A", &be32(1000), &be32(1001)]),
            version,
            false,
            plain.clone(),
        );
    }
    // Protocol 4 with streaming = parallel adds the abort LSN and time.
    let wire = cat(&[b"A", &be32(1000), &be32(1000), &be64(LSN_B), &ts(TIME)]);
    check(
        wire.clone(),
        4,
        false,
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 1000,
            subxid: 1000,
            parallel: Some(ParallelAbort {
                abort_lsn: Lsn(LSN_B),
                abort_time: PgTimestamp(TIME),
            }),
        }),
    );
    // Before protocol 4 those bytes are left over.
    assert!(matches!(
        decode(wire, 3, false),
        Err(DecodeError::TrailingBytes {
            offset: 9,
            count: 16,
            ..
        })
    ));
    // Half of them is a truncated message.
    let half = cat(&[b"A", &be32(1000), &be32(1000), &be64(LSN_B)]);
    assert!(matches!(
        decode(half, 4, false),
        Err(DecodeError::Truncated {
            field: "abort timestamp",
            offset: 17,
            ..
        })
    ));
}

#[test]
fn message_kinds_and_tags() {
    for kind in MessageKind::ALL {
        assert_eq!(MessageKind::from_tag(kind.tag()), Some(kind));
    }
    assert_eq!(MessageKind::from_tag(b'w'), None);
    assert_eq!(MessageKind::StreamAbort.to_string(), "Stream Abort");
    assert_eq!(MessageKind::Insert.min_protocol_version(), 1);
    assert_eq!(MessageKind::StreamStop.min_protocol_version(), 2);
    assert_eq!(MessageKind::StreamPrepare.min_protocol_version(), 3);
}

#[test]
fn decoder_follows_streaming_blocks() {
    let mut decoder = Decoder::new(2);
    assert!(!decoder.in_stream());
    let insert_outside = cat(&[b"I", &be32(16384), b"N", &[0, 1], b"n"]);
    let insert_inside = cat(&[b"I", &be32(1000), &be32(16384), b"N", &[0, 1], b"n"]);

    let m = decoder.decode(insert_outside.clone()).unwrap();
    assert!(matches!(
        m,
        LogicalMessage::Insert(Insert { xid: None, .. })
    ));

    decoder.decode(cat(&[b"S", &be32(1000), &[1]])).unwrap();
    assert!(decoder.in_stream());
    let m = decoder.decode(insert_inside.clone()).unwrap();
    assert!(matches!(
        m,
        LogicalMessage::Insert(Insert {
            xid: Some(1000),
            relation_id: 16384,
            ..
        })
    ));
    // The message without an xid is now misread, so it is an error...
    assert!(decoder.decode(insert_outside.clone()).is_err());
    // ...which leaves the state alone.
    assert!(decoder.in_stream());

    decoder.decode(Bytes::from_static(b"E")).unwrap();
    assert!(!decoder.in_stream());
    decoder.decode(insert_outside).unwrap();

    decoder.set_in_stream(true);
    decoder.decode(insert_inside).unwrap();
    assert_eq!(decoder.protocol_version(), 2);
}
