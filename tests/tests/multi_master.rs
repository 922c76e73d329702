//! Multi-master through the controller, as real processes: three `controller`s, two broker
//! groups (`broker-a`, `broker-b`, one static `ASYNC_MASTER` each, `SYNC_FLUSH`), a producer and
//! a push consumer that find the brokers only through the controller's routes. Static masters
//! hold no lease, so they serve without a controller majority; controlled masters stop
//! acknowledging then (tests/tests/failover.rs covers them).
//!
//! Invariants, checked on the whole history of the run:
//! - every message answered `SEND_OK` is consumed afterwards (by key), whatever happened in
//!   between: the controller leader killed, a broker group's master killed and restarted on
//!   another port, two of three controllers down;
//! - sends never stop for a controller failure: the data path does not go through the
//!   controller, and cached routes keep serving when no controller has a majority;
//! - the queues of a group whose master is dead are skipped: no caller sees an error for it;
//! - with two of three controllers down, metadata writes fail with `CONTROLLER_NOT_AVAILABLE`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::controller::{ControllerConnection, ControllerError};
use client::routes::Routes;
use client::{
    ConsumeFrom, ConsumeResult, ErrorCode, Message, Producer, ProducerConfig, PushConsumer,
    PushConsumerConfig, SendStatus,
};
use cluster_tests::{
    cluster_cli, controller_leader, controller_status, group_alive, group_broker_with,
    wait_for_controller_leader, wait_for_masters, wait_until, BrokerProcess, ControllerQuorum,
};

/// The static master of `group` (no lease: it keeps serving without a controller majority).
fn group_broker(dir: &std::path::Path, group: &str, controllers: &str) -> BrokerProcess {
    group_broker_with(
        dir,
        group,
        controllers,
        &["--set", "broker_role=\"ASYNC_MASTER\""],
    )
}

/// What the senders saw: per key, the broker group that answered `SEND_OK`; every error.
#[derive(Default)]
struct History {
    acked: BTreeMap<String, String>,
    not_ok: Vec<String>,
}

impl History {
    fn acked_in(&self, group: &str) -> usize {
        self.acked.values().filter(|g| *g == group).count()
    }
}

/// Sends from `senders` concurrent loops until `stop`, recording every answer.
fn start_senders(
    producer: Producer,
    senders: usize,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..senders)
        .map(|sender| {
            let (producer, stop, history) = (producer.clone(), stop.clone(), history.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let key = format!("s{sender}-{n}");
                    n += 1;
                    let message = Message::new("orders", Bytes::from_static(b"payment"))
                        .with_key(key.clone());
                    let outcome = producer.send(message).await;
                    {
                        let mut history = history.lock().unwrap();
                        match outcome {
                            Ok(result) if result.status == SendStatus::SendOk => {
                                history.acked.insert(key, result.broker_group);
                            }
                            Ok(result) => {
                                history.not_ok.push(format!("{key}: {:?}", result.status))
                            }
                            Err(err) => history.not_ok.push(format!("{key}: {err}")),
                        }
                    }
                    // A steady trickle, not a flood: the test is about routing, not speed.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// Waits until the senders have `more` acknowledgements beyond `from` in `group` (any group
/// when `None`).
async fn wait_for_acks(history: &Mutex<History>, group: Option<&str>, more: usize, what: &str) {
    let count = |h: &History| group.map_or(h.acked.len(), |g| h.acked_in(g));
    let from = count(&history.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = count(&history.lock().unwrap());
        if now >= from + more {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} new acknowledgements (errors: {:?})",
            now - from,
            history
                .lock()
                .unwrap()
                .not_ok
                .iter()
                .take(10)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the cached route shows broker-b's master alive at `addr` (any address when `None`).
async fn b_alive(routes: &Routes, addr: Option<&str>) -> bool {
    group_alive(routes, "orders", "broker-b", addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_controller_and_master_failures_and_every_ack_is_consumed() {
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
    wait_for_controller_leader(&addrs);
    let _a = group_broker(dir.path(), "broker-a", &addrs);
    let b = group_broker(dir.path(), "broker-b", &addrs);
    wait_for_masters(&addrs, 2);

    // What docs/OPERATIONS.md shows an operator: three controllers, all reachable, one leader;
    // two groups, each with its master.
    let status = controller_status(&addrs).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["reachable"] == true), "{status}");
    let (code, table) = cluster_cli(&["--controller", &addrs, "cluster", "list"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("broker-a") && table.contains("broker-b") && table.contains("MASTER"),
        "{table}"
    );

    let (code, out) = cluster_cli(&[
        "--controller",
        &addrs,
        "topic",
        "create",
        "orders",
        "--queues",
        "4",
    ]);
    assert_eq!(code, 0, "{out}");

    let conn = Arc::new(ControllerConnection::new(&addrs).unwrap());
    let routes = Routes::start(conn.clone());
    let producer = Producer::with_routes(routes.clone(), ProducerConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let senders = start_senders(producer, 8, stop.clone(), history.clone());

    // Sends spread over both groups.
    wait_for_acks(
        &history,
        Some("broker-a"),
        50,
        "group a before the failures",
    )
    .await;
    wait_for_acks(
        &history,
        Some("broker-b"),
        50,
        "group b before the failures",
    )
    .await;

    // 1. The controller leader dies: a new one is elected, the route is intact, sends go on.
    let old_leader = wait_for_controller_leader(&addrs);
    quorum.kill(old_leader, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || controller_leader(&addrs)
            .is_some_and(|l| l != old_leader)),
        "no new controller leader"
    );
    let (code, out) = cluster_cli(&["--controller", &addrs, "--json", "topic", "route", "orders"]);
    assert_eq!(code, 0, "topic route after the leader change: {out}");
    let route: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let groups = route["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{route}");
    assert!(groups.iter().all(|g| g["queues"] == 4), "{route}");
    wait_for_acks(
        &history,
        Some("broker-a"),
        50,
        "group a after the leader change",
    )
    .await;
    wait_for_acks(
        &history,
        Some("broker-b"),
        50,
        "group b after the leader change",
    )
    .await;

    // 2. broker-b's master dies: once the route says so, its queues are skipped; sends in
    // flight to it are retried on broker-a, so no caller sees an error.
    b.signal(libc::SIGKILL);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_alive(&routes, None).await {
        assert!(
            Instant::now() < deadline,
            "the route never showed broker-b dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_before = history.lock().unwrap().acked_in("broker-b");
    wait_for_acks(&history, Some("broker-a"), 200, "group a while b is down").await;
    assert_eq!(
        history.lock().unwrap().acked_in("broker-b"),
        b_before,
        "acknowledged by a dead broker"
    );

    // It comes back (same store, new port): the route shows its new address, and sends reach
    // it again.
    let b = group_broker(dir.path(), "broker-b", &addrs);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b_alive(&routes, Some(b.addr())).await {
        assert!(
            Instant::now() < deadline,
            "the route never showed broker-b back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_acks(&history, Some("broker-b"), 50, "group b after its return").await;

    // 3. Two of three controllers down: no majority. Sends go on from the cached routes;
    // metadata writes fail with a clear error.
    let second = wait_for_controller_leader(&addrs);
    quorum.kill(second, libc::SIGKILL);
    wait_for_acks(&history, Some("broker-a"), 100, "group a without a quorum").await;
    wait_for_acks(&history, Some("broker-b"), 100, "group b without a quorum").await;
    let alone = ControllerConnection::new(&addrs)
        .unwrap()
        .with_patience(Duration::from_secs(2));
    match alone.create_topic("refused", 1, &[]).await {
        Err(ControllerError::Refused {
            code: ErrorCode::ControllerNotAvailable,
            ..
        }) => {}
        other => panic!("a metadata write without a majority answered {other:?}"),
    }

    stop.store(true, Ordering::Release);
    for sender in senders {
        sender.await.unwrap();
    }
    let history = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    assert!(
        history.not_ok.is_empty(),
        "{} sends failed or were less durable than SEND_OK, e.g. {:?}",
        history.not_ok.len(),
        &history.not_ok[..history.not_ok.len().min(10)]
    );
    eprintln!(
        "{} acknowledged: {} by broker-a, {} by broker-b",
        history.acked.len(),
        history.acked_in("broker-a"),
        history.acked_in("broker-b")
    );

    // Every acknowledged message is consumed, from both groups, by a consumer that finds them
    // through the one controller left (it answers route reads from its own copy).
    let consumed: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut config = PushConsumerConfig::new("audit", "orders");
    config.consume_from = ConsumeFrom::First;
    config.heartbeat_interval = Duration::from_millis(200);
    let seen = consumed.clone();
    let consumer = PushConsumer::start_with_routes(
        routes.clone(),
        config,
        move |m: &client::ReceivedMessage| {
            seen.lock().unwrap().extend(m.keys.iter().cloned());
            Ok(ConsumeResult::ConsumeSuccess)
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<String> = {
            let consumed = consumed.lock().unwrap();
            history
                .acked
                .keys()
                .filter(|k| !consumed.contains(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never consumed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let groups: BTreeSet<String> = consumer
        .assigned_queues()
        .into_iter()
        .map(|q| q.group)
        .collect();
    assert_eq!(
        groups.len(),
        2,
        "the consumer reads both groups: {groups:?}"
    );
    consumer.shutdown().await;
}
