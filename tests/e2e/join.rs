//! `pglive migrate --join`: a second process takes parts of a running copy.

use std::time::{Duration, Instant};

use pglive_testkit::{Cluster, TcpProxy};

use crate::util::{self, finish, run, text};

/// Parts of migration `name`'s copy done, and in all (none before the
/// copy is planned).
fn copy_parts(cluster: &Cluster, db: &str, name: &str) -> Option<(u64, u64)> {
    let counts = cluster
        .psql(
            db,
            &format!(
                "SELECT count(*) FILTER (WHERE state = 'done') || ' ' || count(*) FROM pglive.copy_parts WHERE migration = '{name}'"
            ),
        )
        .ok()?;
    let (done, all) = counts.split_once(' ')?;
    Some((done.parse().ok()?, all.parse().ok()?))
}

/// Parts of migration `name`'s copy pending and not claimed by a running
/// worker (whose transaction locks the part's row).
fn unclaimed_parts(cluster: &Cluster, db: &str, name: &str) -> u64 {
    cluster
        .psql(
            db,
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM pglive.copy_parts WHERE migration = '{name}' AND state = 'pending'
                                        FOR UPDATE SKIP LOCKED) p"
            ),
        )
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `ready` every 10 ms for up to two minutes, while `child` runs.
fn wait_until(what: &str, child: &mut std::process::Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        assert!(child.try_wait().unwrap().is_none(), "exited before {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two processes share one copy through the target's state: the first
/// `migrate` is held (its target connections stalled) after it copied a
/// part; `migrate --join` takes parts, and is held in turn; the first,
/// released, copies the rest and waits for the joined process's parts;
/// the joined process is killed, its parts roll back and the first takes
/// them over. Both copied parts, and after cutover the target equals the
/// source. Joining a migration past its copy is refused.
#[test]
fn a_second_process_joins_the_copy() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "join",
        "CREATE TABLE big (id bigint PRIMARY KEY, body text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 150000) g;
         CREATE TABLE small (id int PRIMARY KEY, v text);
         INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         ANALYZE;",
    );
    let address = format!("{}:{}", cluster.host(), cluster.port())
        .parse()
        .unwrap();
    let (first_proxy, joined_proxy) = (
        TcpProxy::start(address).unwrap(),
        TcpProxy::start(address).unwrap(),
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let (first_target, joined_target) = (
        first_proxy.conninfo(cluster, &dst),
        joined_proxy.conninfo(cluster, &dst),
    );
    let parts = || copy_parts(cluster, &dst, "join");
    let mut first = util::spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &first_target,
        "--name",
        "join",
        "--jobs",
        "1",
        "--part-size",
        "1",
    ]);
    wait_until("the first process copied a part", &mut first, || {
        parts().is_some_and(|(done, _)| done >= 1)
    });
    first_proxy.stall(true);
    let (by_first, all) = parts().unwrap();
    assert!(by_first < all, "the copy ended before it was held");

    let mut joined = util::spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &joined_target,
        "--name",
        "join",
        "--join",
        "--jobs",
        "2",
    ]);
    wait_until("the joined process copied a part", &mut joined, || {
        parts().is_some_and(|(done, _)| done > by_first)
    });
    joined_proxy.stall(true);
    let (done, _) = parts().unwrap();
    assert!(done < all, "the joined process finished before it was held");

    first_proxy.stall(false);
    wait_until(
        "only the joined process's parts are left",
        &mut first,
        || unclaimed_parts(cluster, &dst, "join") == 0,
    );
    let processes = cluster
        .psql(
            &dst,
            "SELECT count(DISTINCT split_part(claimed_by, '/', 1)) FROM pglive.copy_parts
              WHERE migration = 'join' AND state = 'done'",
        )
        .unwrap();
    assert_eq!(processes, "2", "both processes copied parts");
    joined.kill().unwrap();
    joined.wait().unwrap();
    joined_proxy.cut();

    util::wait_for_stage(
        &target,
        "join",
        &["streaming"],
        &mut first,
        Duration::from_secs(120),
    );
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "join",
        ],
        &mut first,
    );
    let log = finish(first);
    assert!(
        log.contains("being copied by processes that joined"),
        "{log}"
    );
    for table in ["big", "small"] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }

    let late = run(&[
        "migrate", "--source", &source, "--target", &target, "--name", "join", "--join",
    ]);
    assert_eq!(late.status.code(), Some(1), "{}", text(&late));
    assert!(text(&late).contains("past its copy"), "{}", text(&late));
}
