//! Embedding pglive's replication client: decode every change a slot sends.
//!
//! ```text
//! cargo run --example stream_changes -- 'host=db dbname=shop user=replicator' my_publication
//! ```
//!
//! The slot is temporary, so it disappears with this program. Every commit
//! is confirmed to the server as soon as it is printed; a real consumer
//! confirms only what it has durably applied.

use futures_util::StreamExt;
use pglive_postgres::ConnectConfig;
use pglive_repl::pgoutput::{ColumnValue, Decoder, LogicalMessage};
use pglive_repl::{
    PgOutputOptions, ReplicationClient, ReplicationEvent, SlotOptions, SnapshotAction,
    StreamOptions, Streaming,
};

fn show(values: &[ColumnValue]) -> String {
    values
        .iter()
        .map(|v| match v {
            ColumnValue::Null => "NULL".to_owned(),
            ColumnValue::UnchangedToast => "(unchanged)".to_owned(),
            other => String::from_utf8_lossy(other.bytes().map(|b| &b[..]).unwrap_or_default())
                .into_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(conninfo), Some(publication)) = (args.next(), args.next()) else {
        eprintln!("usage: stream_changes CONNINFO PUBLICATION");
        std::process::exit(2);
    };
    let config = ConnectConfig::parse(&conninfo)?;
    let mut client = ReplicationClient::connect(&config).await?;
    let slot_options = SlotOptions {
        temporary: true,
        snapshot: SnapshotAction::NoExport,
        ..SlotOptions::default()
    };
    let slot = client
        .create_slot("stream_changes_example", &slot_options)
        .await?;
    let mut options = PgOutputOptions::new([publication]);
    options.proto_version =
        PgOutputOptions::max_proto_version(client.server_version_num().unwrap_or(0)).min(2);
    if options.proto_version >= 2 {
        options.streaming = Streaming::On;
    }
    eprintln!(
        "streaming from {} (protocol {})",
        slot.consistent_point, options.proto_version
    );
    let mut stream = client
        .start_replication(
            "stream_changes_example",
            slot.consistent_point,
            &options,
            StreamOptions::default(),
        )
        .await?;
    let feedback = stream.feedback();
    let mut decoder = Decoder::new(options.proto_version);
    let mut names = std::collections::HashMap::new();
    while let Some(event) = stream.next().await {
        let ReplicationEvent::XLogData { data, .. } = event? else {
            continue;
        };
        match decoder.decode(data)? {
            LogicalMessage::Relation(r) => {
                names.insert(r.id, format!("{}.{}", r.namespace, r.name));
            }
            LogicalMessage::Begin(b) => println!("BEGIN {} (commits at {})", b.xid, b.final_lsn),
            LogicalMessage::Insert(i) => println!(
                "  INSERT {} ({})",
                names[&i.relation_id],
                show(&i.new.columns)
            ),
            LogicalMessage::Update(u) => println!(
                "  UPDATE {} ({})",
                names[&u.relation_id],
                show(&u.new.columns)
            ),
            LogicalMessage::Delete(d) => println!(
                "  DELETE {} ({})",
                names[&d.relation_id],
                show(&d.old.tuple().columns)
            ),
            LogicalMessage::Commit(c) => {
                println!("COMMIT at {}", c.commit_lsn);
                feedback.set_flushed(c.end_lsn);
            }
            other => println!("  {}", other.kind()),
        }
    }
    Ok(())
}
