//! `examples/migrate.rs`, the library's page-long live migration, run
//! against real servers while the application writes: it must cut over
//! (fencing the source) and leave the target equal to the source.

use std::time::Duration;

use pglive_postgres::ConnectConfig;
use pglive_testkit::Cluster;

use crate::migrate::{SCHEMA, assert_same_rows, load, workload_sql};
use crate::util::Workload;

// The example's `main` is for `cargo run --example migrate`; the test
// calls its library part.
#[allow(dead_code)]
#[path = "../../examples/migrate.rs"]
mod program;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_migrates_live_and_verifies() {
    let cluster = Cluster::shared();
    let src = cluster.create_database("example_src").unwrap();
    let dst = cluster.create_database("example_dst").unwrap();
    cluster.psql(&src, SCHEMA).unwrap();
    cluster.psql(&src, &load(5_000)).unwrap();
    let workload = Workload::start(cluster.conninfo(&src), workload_sql);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = program::migrate_live(
        ConnectConfig::parse(&cluster.conninfo(&src)).unwrap(),
        ConnectConfig::parse(&cluster.conninfo(&dst)).unwrap(),
        "example",
    )
    .await
    .unwrap();
    // The fence ended the workload's writes before the last position.
    let writes = workload.stop();
    assert!(writes > 10, "the workload ran ({writes} transactions)");
    assert!(summary.contains("source stays read-only"), "{summary}");
    let write = cluster.psql(&src, "INSERT INTO log (line) VALUES ('after the switch')");
    assert!(
        format!("{write:?}").contains("read-only transaction"),
        "the source stays fenced: {write:?}"
    );
    assert_same_rows(cluster, &src, cluster, &dst);
}
