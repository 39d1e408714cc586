//! Row changes: Insert, Update (with and without old tuples), Delete, Truncate, and values as slices of the input.

use super::*;

#[test]
fn insert_with_every_column_kind() {
    let wire = cat(&[
        b"I",
        &be32(16384),
        b"N",
        &[0, 4],
        b"t",
        &be32(2),
        b"42",
        b"n",
        b"u",
        b"b",
        &be32(3),
        &[0, 0xff, 7],
    ]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Insert(Insert {
            xid: None,
            relation_id: 16384,
            new: TupleData::new(vec![
                text("42"),
                ColumnValue::Null,
                ColumnValue::UnchangedToast,
                ColumnValue::Binary(Bytes::from_static(&[0, 0xff, 7])),
            ]),
        }),
    );
    // In a streaming block; an empty text value and an empty row.
    let wire = cat(&[
        b"I",
        &be32(1234),
        &be32(16384),
        b"N",
        &[0, 1],
        b"t",
        &be32(0),
    ]);
    check(
        wire,
        4,
        true,
        LogicalMessage::Insert(Insert {
            xid: Some(1234),
            relation_id: 16384,
            new: TupleData::new(vec![text("")]),
        }),
    );
    let wire = cat(&[b"I", &be32(1), b"N", &[0, 0]]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Insert(Insert {
            xid: None,
            relation_id: 1,
            new: TupleData::default(),
        }),
    );
}

#[test]
fn update_without_old_tuple() {
    let wire = cat(&[
        b"U",
        &be32(16384),
        b"N",
        &[0, 2],
        b"t",
        &be32(1),
        b"7",
        b"u",
    ]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Update(Update {
            xid: None,
            relation_id: 16384,
            old: None,
            new: TupleData::new(vec![text("7"), ColumnValue::UnchangedToast]),
        }),
    );
}

#[test]
fn update_with_key_and_full_old_tuple() {
    let wire = cat(&[
        b"U",
        &be32(16384),
        b"K",
        &[0, 2],
        b"t",
        &be32(1),
        b"1",
        b"n",
        b"N",
        &[0, 2],
        b"t",
        &be32(1),
        b"2",
        b"t",
        &be32(3),
        b"abc",
    ]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Update(Update {
            xid: None,
            relation_id: 16384,
            old: Some(OldTuple::Key(TupleData::new(vec![
                text("1"),
                ColumnValue::Null,
            ]))),
            new: TupleData::new(vec![text("2"), text("abc")]),
        }),
    );
    let wire = cat(&[
        b"U",
        &be32(99),
        &be32(16384),
        b"O",
        &[0, 1],
        b"t",
        &be32(1),
        b"1",
        b"N",
        &[0, 1],
        b"t",
        &be32(1),
        b"2",
    ]);
    check(
        wire,
        2,
        true,
        LogicalMessage::Update(Update {
            xid: Some(99),
            relation_id: 16384,
            old: Some(OldTuple::Full(TupleData::new(vec![text("1")]))),
            new: TupleData::new(vec![text("2")]),
        }),
    );
}

#[test]
fn delete() {
    let wire = cat(&[
        b"D",
        &be32(16384),
        b"K",
        &[0, 2],
        b"t",
        &be32(2),
        b"10",
        b"n",
    ]);
    let expected = OldTuple::Key(TupleData::new(vec![text("10"), ColumnValue::Null]));
    assert_eq!(expected.marker(), b'K');
    check(
        wire,
        1,
        false,
        LogicalMessage::Delete(Delete {
            xid: None,
            relation_id: 16384,
            old: expected,
        }),
    );
    let wire = cat(&[
        b"D",
        &be32(8),
        &be32(16384),
        b"O",
        &[0, 1],
        b"t",
        &be32(2),
        b"10",
    ]);
    check(
        wire,
        2,
        true,
        LogicalMessage::Delete(Delete {
            xid: Some(8),
            relation_id: 16384,
            old: OldTuple::Full(TupleData::new(vec![text("10")])),
        }),
    );
}

#[test]
fn truncate() {
    let wire = cat(&[b"T", &be32(2), &[3], &be32(16384), &be32(16390)]);
    let expected = Truncate {
        xid: None,
        options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
        relation_ids: vec![16384, 16390],
    };
    assert!(expected.cascade() && expected.restart_identity());
    check(wire, 1, false, LogicalMessage::Truncate(expected));

    let wire = cat(&[b"T", &be32(31), &be32(1), &[2], &be32(16384)]);
    let expected = Truncate {
        xid: Some(31),
        options: Truncate::RESTART_IDENTITY,
        relation_ids: vec![16384],
    };
    assert!(!expected.cascade() && expected.restart_identity());
    check(wire, 2, true, LogicalMessage::Truncate(expected));
}

#[test]
fn values_are_slices_of_the_input() {
    let wire = cat(&[
        b"I",
        &be32(1),
        b"N",
        &[0, 2],
        b"t",
        &be32(5),
        b"hello",
        b"b",
        &be32(2),
        b"hi",
    ]);
    let range = wire.as_ptr_range();
    let LogicalMessage::Insert(insert) = decode(wire.clone(), 1, false).unwrap() else {
        panic!("not an insert");
    };
    for value in &insert.new.columns {
        let bytes = value.bytes().unwrap();
        assert!(range.contains(&bytes.as_ptr()), "value was copied");
    }
    let wire = cat(&[b"M", &[0], &be64(1), b"\0", &be32(3), b"abc"]);
    let range = wire.as_ptr_range();
    let LogicalMessage::Message(message) = decode(wire.clone(), 1, false).unwrap() else {
        panic!("not a message");
    };
    assert!(range.contains(&message.content.as_ptr()));
}
