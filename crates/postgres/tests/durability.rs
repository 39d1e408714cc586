//! Every pglive session commits durably, whatever the server's default:
//! what it commits (its state, a copied part, an applied batch) survives a
//! crash of the server.

use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_testkit::{Cluster, ClusterOptions};

/// On a server set to `synchronous_commit = off` (as testkit's are), the
/// last commits before a crash are lost unless the session raises it:
/// each of 200 single-row commits made just before `kill -9` is there
/// after the restart. A setting stronger than `on`, chosen by the
/// server's owner, is kept.
#[tokio::test]
async fn commits_survive_a_crash_of_the_server() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let db = cluster.create_database("durable").unwrap();
    let config = ConnectConfig::parse(&cluster.conninfo(&db)).unwrap();
    let client = connect_sql(&config).await.unwrap();
    let setting: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "on");
    client
        .batch_execute("CREATE TABLE marks (n int)")
        .await
        .unwrap();
    for n in 0..200 {
        client
            .execute("INSERT INTO marks VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
    drop(client);
    cluster.kill().unwrap();
    cluster.restart().unwrap();
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM marks").unwrap(),
        "200"
    );

    cluster
        .psql(
            "postgres",
            &format!("ALTER DATABASE \"{db}\" SET synchronous_commit = remote_apply"),
        )
        .unwrap();
    let client = connect_sql(&config).await.unwrap();
    let setting: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "remote_apply");
}
