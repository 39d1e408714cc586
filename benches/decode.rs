//! Throughput of the pgoutput decoder on a realistic message mix.
//!
//! The stream is mostly row changes (inserts, updates, deletes) of a few
//! tables with 8 to 12 text columns of realistic sizes (keys, UUIDs,
//! timestamps, e-mail addresses, prices, free text, some nulls and
//! unchanged TOAST values), grouped in transactions of a few changes between
//! Begin and Commit, with a Relation message now and then. Each message is
//! decoded from its own `Bytes`, as it arrives from the replication
//! connection, and the decoded message is dropped.
//!
//! Run with `cargo bench --bench decode`; criterion reports bytes per second.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pglive_postgres::{Lsn, PgTimestamp};
use pglive_repl::pgoutput::{
    Begin, ColumnValue, Commit, Decoder, Delete, Insert, LogicalMessage, OldTuple, Relation,
    RelationColumn, ReplicaIdentity, TupleData, Update,
};

/// A small deterministic generator (xorshift64*), so that every run decodes
/// the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Words making up at least `min` and about `min + spread` bytes.
    fn text(&mut self, min: usize, spread: u64) -> String {
        let len = min + self.below(spread) as usize;
        const WORDS: [&str; 12] = [
            "order",
            "shipped",
            "customer",
            "the",
            "and",
            "priority",
            "warehouse",
            "returned",
            "invoice",
            "paid",
            "pending",
            "of",
        ];
        let mut out = String::with_capacity(len + 10);
        while out.len() < len {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        out
    }
}

/// What a column holds, which decides the size and shape of its values.
#[derive(Clone, Copy)]
enum Shape {
    Id,
    Uuid,
    Timestamp,
    Email,
    Name,
    Price,
    Flag,
    Status,
    Note,
}

fn value(rng: &mut Rng, shape: Shape) -> ColumnValue {
    let text = match shape {
        Shape::Id => (rng.below(50_000_000) + 1).to_string(),
        Shape::Uuid => format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.next() as u16,
            rng.below(0x1000),
            rng.below(0x1000),
            rng.next() & 0xFFFF_FFFF_FFFF
        ),
        Shape::Timestamp => format!(
            "2024-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
            rng.below(12) + 1,
            rng.below(28) + 1,
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1_000_000)
        ),
        Shape::Email => format!("user{}@example{}.com", rng.below(1_000_000), rng.below(100)),
        Shape::Name => rng.text(6, 14),
        Shape::Price => format!("{}.{:02}", rng.below(100_000), rng.below(100)),
        Shape::Flag => if rng.below(2) == 0 { "t" } else { "f" }.to_owned(),
        Shape::Status => ["new", "paid", "shipped", "cancelled"][rng.below(4) as usize].to_owned(),
        Shape::Note => {
            // Free text: mostly short, sometimes null or a TOASTed value
            // that an update leaves unchanged.
            match rng.below(10) {
                0 => return ColumnValue::Null,
                1 => return ColumnValue::UnchangedToast,
                2 => rng.text(200, 300),
                _ => rng.text(20, 80),
            }
        }
    };
    ColumnValue::Text(Bytes::from(text))
}

struct Table {
    id: u32,
    shapes: Vec<Shape>,
}

impl Table {
    fn relation(&self) -> LogicalMessage {
        LogicalMessage::Relation(Relation {
            xid: None,
            id: self.id,
            namespace: "public".into(),
            name: format!("table_{}", self.id),
            replica_identity: ReplicaIdentity::Default,
            columns: self
                .shapes
                .iter()
                .enumerate()
                .map(|(i, _)| RelationColumn {
                    flags: u8::from(i == 0),
                    name: format!("column_{i}"),
                    type_id: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn row(&self, rng: &mut Rng) -> TupleData {
        TupleData::new(self.shapes.iter().map(|&s| value(rng, s)).collect())
    }

    fn key(&self, rng: &mut Rng) -> TupleData {
        let mut columns = vec![value(rng, self.shapes[0])];
        columns.resize(self.shapes.len(), ColumnValue::Null);
        TupleData::new(columns)
    }
}

/// The encoded messages of the stream, each in its own `Bytes`.
fn stream() -> Vec<Bytes> {
    use Shape::*;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let tables = [
        Table {
            id: 16384,
            shapes: vec![Id, Uuid, Id, Status, Price, Price, Timestamp, Timestamp],
        },
        Table {
            id: 16390,
            shapes: vec![
                Id, Email, Name, Name, Flag, Timestamp, Timestamp, Note, Status, Id,
            ],
        },
        Table {
            id: 16402,
            shapes: vec![
                Id, Uuid, Id, Id, Price, Status, Name, Note, Timestamp, Flag, Timestamp, Email,
            ],
        },
    ];
    let mut messages = Vec::new();
    let mut lsn = 0x16_0000_0000u64;
    for t in &tables {
        messages.push(t.relation());
    }
    for tx in 0..2_000u32 {
        messages.push(LogicalMessage::Begin(Begin {
            final_lsn: Lsn(lsn + 4096),
            commit_time: PgTimestamp(770_000_000_000_000 + i64::from(tx)),
            xid: 1000 + tx,
        }));
        if tx % 500 == 499 {
            // A table's definition changed: its Relation is sent again.
            messages.push(tables[(tx / 500) as usize % tables.len()].relation());
        }
        for _ in 0..1 + rng.below(8) {
            let table = &tables[rng.below(tables.len() as u64) as usize];
            let change = match rng.below(20) {
                0..=9 => LogicalMessage::Insert(Insert {
                    xid: None,
                    relation_id: table.id,
                    new: table.row(&mut rng),
                }),
                10..=16 => LogicalMessage::Update(Update {
                    xid: None,
                    relation_id: table.id,
                    // Now and then the key changed.
                    old: (rng.below(5) == 0).then(|| OldTuple::Key(table.key(&mut rng))),
                    new: table.row(&mut rng),
                }),
                _ => LogicalMessage::Delete(Delete {
                    xid: None,
                    relation_id: table.id,
                    old: OldTuple::Key(table.key(&mut rng)),
                }),
            };
            messages.push(change);
        }
        messages.push(LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn + 4096),
            end_lsn: Lsn(lsn + 4200),
            commit_time: PgTimestamp(770_000_000_000_000 + i64::from(tx)),
        }));
        lsn += 8192;
    }
    // One buffer for the whole stream, split into one `Bytes` per message,
    // as frames cut from a connection's read buffer.
    let mut buffer = BytesMut::new();
    let mut ends = Vec::with_capacity(messages.len());
    for message in &messages {
        message.encode(&mut buffer);
        ends.push(buffer.len());
    }
    let mut buffer = buffer.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let message = buffer.split_to(end - start);
            start = end;
            message
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let messages = stream();
    let total: usize = messages.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("decode_mix", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(2);
            for message in &messages {
                let decoded = decoder.decode(message.clone()).expect("valid message");
                black_box(decoded);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
