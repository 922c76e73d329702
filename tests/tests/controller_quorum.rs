//! The controller quorum as real processes: three `controller`s and real brokers registered with
//! them, killed with SIGKILL.
//!
//! Invariants:
//! - metadata the quorum acknowledged (a topic created) survives the loss of any minority of
//!   controllers, the leader included, and is present on every controller that comes back,
//!   even one that missed more than a snapshot's worth of log;
//! - with one controller of three down, every operation works;
//! - with two of three down, metadata writes fail with `CONTROLLER_NOT_AVAILABLE` (never a
//!   silent success) and reads are still answered from the survivor's copy.

use std::time::{Duration, Instant};

use client::controller::ControllerConnection;
use client::controller::ControllerError;
use client::ErrorCode;
use cluster_tests::{
    cli_json, cluster_cli, controller_leader as leader, controller_status as status, group_alive,
    group_broker as broker, wait_for_controller_leader, wait_for_masters, wait_until,
    ControllerQuorum,
};

/// Election timeouts of the test quorum (the defaults).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);

fn topic_names(controllers: &str) -> Vec<String> {
    cli_json(&["--controller", controllers, "--json", "topic", "list"])
        .map(|list| {
            list["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["topic"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let addrs = quorum.addrs();
    assert!(
        wait_until(Duration::from_secs(20), || leader(&addrs).is_some()),
        "no leader"
    );
    let _a = broker(dir.path(), "broker-a", &addrs);
    let _b = broker(dir.path(), "broker-b", &addrs);
    wait_for_masters(&addrs, 2);

    let conn = ControllerConnection::new(&addrs).unwrap();
    let created = conn.create_topic("orders", 4, &[]).await.unwrap();
    assert!(created.created);
    for i in 0..20 {
        conn.create_topic(&format!("t{i}"), 2, &["broker-a".into()])
            .await
            .unwrap();
    }
    let route_before = conn.route("orders").await.unwrap();
    assert_eq!(route_before.groups.len(), 2, "{route_before:?}");

    let old = wait_for_controller_leader(&addrs);
    quorum.kill(old, libc::SIGKILL);
    let killed = Instant::now();
    let survivors = quorum
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut new_leader = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            new_leader = leader(&survivors).filter(|id| *id != old);
            new_leader.is_some()
        }),
        "no new leader after the leader was killed"
    );
    let elapsed = killed.elapsed();
    eprintln!(
        "new leader {new_leader:?} {} ms after SIGKILL of leader {old}",
        elapsed.as_millis()
    );
    // Detection waits out the dead leader's lease, then one randomized election timeout: about
    // 2 x election_timeout_max; the slack covers starting a cluster-cli process per poll.
    assert!(
        elapsed < 2 * ELECTION_TIMEOUT_MAX + Duration::from_millis(800),
        "leader change took {elapsed:?}"
    );

    // Nothing committed is lost, and the route is as it was.
    let names = topic_names(&survivors);
    assert_eq!(names.len(), 21, "{names:?}");
    let route_after = conn.route("orders").await.unwrap();
    assert_eq!(
        route_after
            .groups
            .iter()
            .map(|g| (&g.group, g.queue_count, g.master_id))
            .collect::<Vec<_>>(),
        route_before
            .groups
            .iter()
            .map(|g| (&g.group, g.queue_count, g.master_id))
            .collect::<Vec<_>>(),
    );
    // One of three down: writes work, brokers heartbeat the new leader.
    assert!(conn.create_topic("after", 1, &[]).await.unwrap().created);
    wait_for_masters(&survivors, 2);

    // The old leader comes back and catches up.
    quorum.restart(old);
    let caught_up = wait_until(Duration::from_secs(20), || {
        status(&addrs).is_some_and(|s| {
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let applied: Vec<_> = members
                .iter()
                .map(|m| m["applied_index"].as_u64())
                .collect();
            members.len() == 3
                && members.iter().all(|m| m["reachable"] == true)
                && applied.iter().all(|a| a.is_some() && *a == applied[0])
        })
    });
    assert!(
        caught_up,
        "restarted controller did not catch up: {:?}",
        status(&addrs)
    );
    let (code, _) = cluster_cli(&["--controller", &addrs, "controller", "status"]);
    assert_eq!(
        code, 0,
        "controller status exits 0 when all members are reachable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_missed_a_snapshot_catches_up_and_a_lost_majority_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(
        dir.path(),
        3,
        &[
            "--set",
            "snapshot_logs_since_last=20",
            "--set",
            "logs_kept_after_snapshot=0",
        ],
    );
    let addrs = quorum.addrs();
    assert!(wait_until(Duration::from_secs(20), || leader(&addrs).is_some()));
    let _a = broker(dir.path(), "broker-a", &addrs);
    wait_for_masters(&addrs, 1);

    // Controller 3 misses 100 writes; the others snapshot and purge their logs meanwhile.
    let current = wait_for_controller_leader(&addrs);
    let lagging = quorum
        .members
        .iter()
        .map(|m| m.id)
        .find(|id| *id != current)
        .unwrap();
    quorum.kill(lagging, libc::SIGKILL);
    let conn = ControllerConnection::new(&addrs).unwrap();
    for i in 0..100 {
        conn.create_topic(&format!("topic-{i}"), 1, &[])
            .await
            .unwrap();
    }
    quorum.restart(lagging);
    let lagging_addr = quorum.member(lagging).addr.clone();
    let caught_up = wait_until(Duration::from_secs(30), || {
        status(&addrs).is_some_and(|s| {
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let leader_applied = members
                .iter()
                .find(|m| m["state"] == "LEADER")
                .and_then(|m| m["applied_index"].as_u64());
            members.iter().any(|m| {
                m["addr"] == lagging_addr.as_str()
                    && m["snapshot_index"].as_u64().is_some()
                    && m["applied_index"].as_u64() == leader_applied
            })
        })
    });
    assert!(
        caught_up,
        "lagging controller did not catch up: {:?}",
        status(&addrs)
    );
    let log =
        std::fs::read_to_string(dir.path().join(format!("controller-{lagging}.log"))).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "the leader had purged the missed entries: catching up needs a snapshot"
    );

    // Leave the lagging one alone: it has no leader, so it answers reads from its own copy,
    // which must hold every topic, and refuses writes.
    for id in [1, 2, 3].into_iter().filter(|id| *id != lagging) {
        quorum.kill(id, libc::SIGKILL);
    }
    let names = topic_names(&lagging_addr);
    assert_eq!(names.len(), 100, "the survivor's copy: {names:?}");
    let alone = ControllerConnection::new(&lagging_addr)
        .unwrap()
        .with_patience(Duration::from_secs(2));
    match alone.create_topic("refused", 1, &[]).await {
        Err(ControllerError::Refused {
            code: ErrorCode::ControllerNotAvailable,
            ..
        }) => {}
        other => panic!("a write without a majority answered {other:?}"),
    }
    let (code, _) = cluster_cli(&["--controller", &lagging_addr, "topic", "create", "x"]);
    assert_eq!(code, 2, "cluster-cli exits 2 when the quorum cannot write");
}

/// Whether every queue of broker-b in the cached route of `orders` has an alive master.
async fn alive_b(routes: &client::routes::Routes) -> bool {
    group_alive(routes, "orders", "broker-b", None).await
}

/// Route watch: a client watching a topic learns within about one broker heartbeat timeout
/// that a group's master died and that it came back; the route survives a controller leader
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_watch_pushes_broker_death_and_return() {
    use client::routes::{writable_queues, Routes};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(
        dir.path(),
        3,
        // The lease wait (lease + margin) may not exceed the heartbeat timeout.
        &[
            "--set",
            "broker_heartbeat_timeout_ms=1000",
            "--set",
            "broker_lease_ms=700",
        ],
    );
    let addrs = quorum.addrs();
    assert!(wait_until(Duration::from_secs(20), || leader(&addrs).is_some()));
    let _a = broker(dir.path(), "broker-a", &addrs);
    let b = broker(dir.path(), "broker-b", &addrs);
    wait_for_masters(&addrs, 2);
    let conn = Arc::new(ControllerConnection::new(&addrs).unwrap());
    conn.create_topic("orders", 2, &[]).await.unwrap();

    let routes = Routes::start(conn.clone());
    let route = routes.get("orders").await.unwrap();
    assert_eq!(writable_queues(&route).len(), 4);
    assert!(alive_b(&routes).await);

    // The watch, not a fetch, must bring the change: `get` answers from the cache.
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_b(&routes).await {
        assert!(
            Instant::now() < deadline,
            "the watch never reported broker-b dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "broker-b shown dead {} ms after SIGKILL",
        killed.elapsed().as_millis()
    );

    // Its return is pushed too, across a controller leader change. The restarted broker listens
    // on a new port, so seeing that address proves the push (a new leader also presumes unheard
    // brokers alive for one timeout, which alone would not).
    let old = wait_for_controller_leader(&addrs);
    quorum.kill(old, libc::SIGKILL);
    drop(b);
    let b = broker(dir.path(), "broker-b", &addrs);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let route = routes.get("orders").await.unwrap();
        let back = writable_queues(&route)
            .iter()
            .filter(|q| q.group == "broker-b")
            .all(|q| q.master_alive && q.master_addr == b.addr());
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never reported broker-b back: {route:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        writable_queues(&routes.get("orders").await.unwrap()).len(),
        4
    );
}
