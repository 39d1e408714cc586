//! Versioned state tables against a real server: steps run once and in
//! order, an interrupted layout from before versions were kept is brought
//! up, concurrent upgrades agree, and a newer layout is refused.

use pglive_postgres::{ConnectConfig, StateSchema, StateSchemaError, connect_sql};
use pglive_testkit::Cluster;

const V1: &str = "CREATE TABLE IF NOT EXISTS pglive.things (id int PRIMARY KEY);";
const V2: &str = "ALTER TABLE pglive.things ADD COLUMN name text NOT NULL DEFAULT 'x';";

const ONE: StateSchema = StateSchema {
    component: "things",
    steps: &[V1],
};
const TWO: StateSchema = StateSchema {
    component: "things",
    steps: &[V1, V2],
};

async fn database(name: &str) -> tokio_postgres::Client {
    let cluster = Cluster::shared();
    let db = cluster.create_database(name).unwrap();
    connect_sql(&ConnectConfig::parse(&cluster.conninfo(&db)).unwrap())
        .await
        .unwrap()
}

async fn columns(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'pglive.things'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn recorded(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one(
            "SELECT version FROM pglive.schema_version WHERE component = 'things'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn steps_run_once_in_order_and_newer_is_refused() {
    let client = database("state_steps").await;
    assert_eq!(ONE.upgrade(&client).await.unwrap(), 0);
    assert_eq!(columns(&client).await, ["id"]);
    assert_eq!(recorded(&client).await, 1);
    // Rows survive the next step; a repeat does nothing.
    client
        .batch_execute("INSERT INTO pglive.things VALUES (7)")
        .await
        .unwrap();
    assert_eq!(TWO.upgrade(&client).await.unwrap(), 1);
    assert_eq!(TWO.upgrade(&client).await.unwrap(), 2);
    assert_eq!(columns(&client).await, ["id", "name"]);
    assert_eq!(recorded(&client).await, 2);
    let name: String = client
        .query_one("SELECT name FROM pglive.things WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "x");
    // An older pglive must not misread what a newer one wrote.
    match ONE.upgrade(&client).await {
        Err(StateSchemaError::Newer {
            recorded: 2,
            known: 1,
            ..
        }) => {}
        other => panic!("expected a refusal of the newer layout, got {other:?}"),
    }
    // A failed upgrade leaves the session usable and nothing half done.
    let broken = StateSchema {
        component: "things",
        steps: &[
            V1,
            V2,
            "ALTER TABLE pglive.things ADD COLUMN n int; SELECT 1/0;",
        ],
    };
    assert!(matches!(
        broken.upgrade(&client).await,
        Err(StateSchemaError::Sql { .. })
    ));
    assert_eq!(columns(&client).await, ["id", "name"]);
    assert_eq!(recorded(&client).await, 2);
}

#[tokio::test]
async fn layout_from_before_versions_is_brought_up() {
    let client = database("state_legacy").await;
    client
        .batch_execute(
            "CREATE SCHEMA pglive; CREATE TABLE pglive.things (id int PRIMARY KEY); INSERT INTO pglive.things VALUES (1);",
        )
        .await
        .unwrap();
    assert_eq!(TWO.upgrade(&client).await.unwrap(), 0);
    assert_eq!(columns(&client).await, ["id", "name"]);
    assert_eq!(recorded(&client).await, 2);
}

#[tokio::test]
async fn concurrent_upgrades_agree() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("state_race").unwrap();
    let config = ConnectConfig::parse(&cluster.conninfo(&db)).unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect_sql(&config).await.unwrap());
    }
    let results =
        futures_util::future::join_all(clients.iter().map(|client| TWO.upgrade(client))).await;
    let mut before: Vec<i32> = results.into_iter().map(Result::unwrap).collect();
    before.sort();
    // Exactly one session ran the steps; the others found them done.
    assert_eq!(before, [0, 2, 2, 2]);
    assert_eq!(columns(&clients[0]).await, ["id", "name"]);
}
