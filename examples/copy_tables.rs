//! Embedding pglive's copy stage: schema before, rows under the slot's
//! snapshot, indexes and constraints after.
//!
//! ```text
//! cargo run --example copy_tables -- 'host=old dbname=shop' 'host=new dbname=shop'
//! ```
//!
//! The slot is temporary here, so it disappears with this program; a real
//! migration keeps a permanent slot and streams changes from its consistent
//! point once the copy is done (see `pglive-repl`), skipping each table's
//! changes up to its `copied_at`.

use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::{ReplicationClient, SlotOptions};
use pglive_schema::{Catalog, SchemaCopy, SchemaOptions};
use pglive_snapshot::{Copier, CopyEvent, CopyOptions, Snapshot};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(source), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: copy_tables SOURCE_CONNINFO TARGET_CONNINFO");
        std::process::exit(2);
    };
    let source = ConnectConfig::parse(&source)?;
    let target = ConnectConfig::parse(&target)?;

    // 1. A slot whose exported snapshot and consistent point describe the
    //    same instant. Keep this connection open and idle until the copy's
    //    workers have imported the snapshot.
    let mut replication = ReplicationClient::connect(&source).await?;
    let options = SlotOptions {
        temporary: true,
        ..SlotOptions::default()
    };
    let slot = replication
        .create_slot("copy_tables_example", &options)
        .await?;
    let snapshot = Snapshot::from_slot(&slot).ok_or("the slot exported no snapshot")?;

    // 2. The schema without indexes, dumped under the same snapshot.
    let mut schema =
        SchemaCopy::new(source.clone(), target.clone(), SchemaOptions::default()).await?;
    schema.dump(Some(&snapshot.name)).await?;
    schema.restore_pre_data().await?;

    // 3. The rows, in parallel, reporting progress as events.
    let source_client = connect_sql(&source).await?;
    let catalog = Catalog::read(&source_client, &schema.options().filter).await?;
    let copier = Copier::new(
        source,
        target.clone(),
        catalog.tables,
        CopyOptions::default(),
    );
    let summary = copier
        .run(&snapshot, |event| {
            if let CopyEvent::PartDone {
                table, part, rows, ..
            } = event
            {
                println!("copied {table} part {part}: {rows} rows");
            }
        })
        .await?;
    println!(
        "{} rows, {} bytes in {} parts",
        summary.rows, summary.bytes, summary.parts
    );

    // 4. Keys first, then the other indexes and constraints in parallel,
    //    then materialized views.
    let report = schema.restore_post_data().await?;
    println!(
        "post-data: {} entries in {:?}",
        report.entries, report.elapsed
    );

    // What the applier needs: where each table's copy stands in the WAL.
    let target_client = connect_sql(&target).await?;
    for (table, lsn) in pglive_snapshot::copied_at(&target_client, "default").await? {
        println!("{table} copied at {lsn}");
    }
    Ok(())
}
