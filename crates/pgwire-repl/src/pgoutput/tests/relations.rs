//! Table and type descriptions: Relation (with each replica identity) and Type.

use super::*;

#[test]
fn relation() {
    let wire = cat(&[
        b"R",
        &be32(16384),
        b"public\0",
        b"accounts\0",
        b"d",
        &[0, 3],
        &[1],
        b"id\0",
        &be32(20),
        &(-1i32).to_be_bytes(),
        &[0],
        b"name\0",
        &be32(1043),
        &68i32.to_be_bytes(),
        &[0],
        b"caf\xc3\xa9\0",
        &be32(1700),
        &(-1i32).to_be_bytes(),
    ]);
    let expected = Relation {
        xid: None,
        id: 16384,
        namespace: "public".into(),
        name: "accounts".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            RelationColumn {
                flags: RelationColumn::KEY,
                name: "id".into(),
                type_id: 20,
                type_modifier: -1,
            },
            RelationColumn {
                flags: 0,
                name: "name".into(),
                type_id: 1043,
                type_modifier: 68,
            },
            RelationColumn {
                flags: 0,
                name: "café".into(),
                type_id: 1700,
                type_modifier: -1,
            },
        ],
    };
    assert!(expected.columns[0].is_key());
    assert!(!expected.columns[1].is_key());
    check(wire, 1, false, LogicalMessage::Relation(expected));

    // Inside a streaming block, with replica identity full and no columns.
    let wire = cat(&[b"R", &be32(77), &be32(16385), b"\0", b"t\0", b"f", &[0, 0]]);
    check(
        wire,
        3,
        true,
        LogicalMessage::Relation(Relation {
            xid: Some(77),
            id: 16385,
            namespace: String::new(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![],
        }),
    );
}

#[test]
fn replica_identities() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        assert_eq!(ReplicaIdentity::from_byte(byte), Some(identity));
        assert_eq!(identity.to_byte(), byte);
    }
    assert_eq!(ReplicaIdentity::from_byte(b'x'), None);
}

#[test]
fn type_message() {
    let wire = cat(&[b"Y", &be32(16400), b"public\0", b"mood\0"]);
    check(
        wire,
        1,
        false,
        LogicalMessage::Type(Type {
            xid: None,
            id: 16400,
            namespace: "public".into(),
            name: "mood".into(),
        }),
    );
    let wire = cat(&[b"Y", &be32(5), &be32(16400), b"public\0", b"mood\0"]);
    check(
        wire,
        2,
        true,
        LogicalMessage::Type(Type {
            xid: Some(5),
            id: 16400,
            namespace: "public".into(),
            name: "mood".into(),
        }),
    );
}
