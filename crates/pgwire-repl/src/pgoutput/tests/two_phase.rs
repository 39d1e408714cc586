//! Two-phase commit: Begin Prepare, Prepare, Stream Prepare, Commit Prepared, Rollback Prepared.

use super::*;

#[test]
fn begin_prepare() {
    let wire = cat(&[
        b"b",
        &be64(LSN_A),
        &be64(LSN_B),
        &ts(TIME),
        &be32(555),
        b"tx-1\0",
    ]);
    check(
        wire,
        3,
        false,
        LogicalMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            prepare_time: PgTimestamp(TIME),
            xid: 555,
            gid: "tx-1".into(),
        }),
    );
}

#[test]
fn prepare_and_stream_prepare() {
    let body: &[&[u8]] = &[
        &[0],
        &be64(LSN_A),
        &be64(LSN_B),
        &ts(TIME),
        &be32(555),
        b"tx-1\0",
    ];
    let prepare = Prepare {
        flags: 0,
        prepare_lsn: Lsn(LSN_A),
        end_lsn: Lsn(LSN_B),
        prepare_time: PgTimestamp(TIME),
        xid: 555,
        gid: "tx-1".into(),
    };
    let wire = cat(&[&[&b"P"[..]], body].concat());
    check(wire, 3, false, LogicalMessage::Prepare(prepare.clone()));
    let wire = cat(&[&[&b"p"[..]], body].concat());
    check(wire, 4, false, LogicalMessage::StreamPrepare(prepare));
}

#[test]
fn commit_prepared() {
    let wire = cat(&[
        b"K",
        &[0],
        &be64(LSN_A),
        &be64(LSN_B),
        &ts(TIME),
        &be32(555),
        b"tx-1\0",
    ]);
    check(
        wire,
        3,
        false,
        LogicalMessage::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: Lsn(LSN_A),
            end_lsn: Lsn(LSN_B),
            commit_time: PgTimestamp(TIME),
            xid: 555,
            gid: "tx-1".into(),
        }),
    );
}

#[test]
fn rollback_prepared() {
    let wire = cat(&[
        b"r",
        &[0],
        &be64(LSN_A),
        &be64(LSN_B),
        &ts(TIME),
        &ts(TIME + 5),
        &be32(555),
        b"tx-1\0",
    ]);
    check(
        wire,
        3,
        false,
        LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: Lsn(LSN_A),
            rollback_end_lsn: Lsn(LSN_B),
            prepare_time: PgTimestamp(TIME),
            rollback_time: PgTimestamp(TIME + 5),
            xid: 555,
            gid: "tx-1".into(),
        }),
    );
}
