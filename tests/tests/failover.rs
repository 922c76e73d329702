//! Automatic master failover as real processes: one controller, broker group `broker-a` of three
//! `CONTROLLED` brokers (`replication_mode = SYNC`, `SYNC_FLUSH`: SYNC_MASTER + SYNC_FLUSH with
//! two slaves), on 127.0.0.1 with ephemeral ports, killed and stopped with real signals, while
//! a routed producer sends without pause, one message at a time.
//!
//! Invariants, checked on the whole history of each run:
//! - every message acknowledged `SEND_OK` is consumed afterwards, from whichever broker is
//!   master at the end;
//! - per queue, the acknowledged messages are consumed in the order they were sent;
//! - up to the confirm offset, every broker's log is byte-identical to the final master's (one
//!   master per epoch: two masters of one epoch would have written different bytes);
//! - a master stopped past its lease and then resumed acknowledges nothing: every send that
//!   reaches it after its successor was elected is answered with an error.
//!
//! Failover time (kill -9 of the master to the first `SEND_OK` of a send started after the kill)
//! is printed per drill; `FAILOVER_DRILLS` sets how many kill drills run (default 5).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, PullConsumer, SendStatus};
use cluster_tests::{
    assert_same_log, cli_json, cluster_cli, group_member, read_queues, wait_until, BrokerProcess,
    ControllerQuorum,
};

const TOPIC: &str = "orders";
const QUEUES: u32 = 4;
const BROKERS: u64 = 3;

/// Broker `id` of `broker-a`: controlled, synchronous, `SYNC_FLUSH`.
fn broker(dir: &Path, id: u64, controllers: &str) -> BrokerProcess {
    group_member(
        dir,
        "broker-a",
        id,
        "CONTROLLED",
        controllers,
        &[
            "--set",
            "replication_mode=\"SYNC\"",
            "--set",
            "flush_disk_type=\"SYNC_FLUSH\"",
            "--set",
            "slave_timeout_ms=1000",
            "--set",
            "in_sync_lag_max_ms=2000",
        ],
    )
}

/// `broker-a` as the controller lists it.
#[derive(Debug, Default, Clone)]
struct GroupState {
    master: Option<u64>,
    epoch: u64,
    in_sync: BTreeSet<u64>,
    /// Per broker id: (alive, max offset, confirm offset).
    brokers: BTreeMap<u64, (bool, u64, u64)>,
}

fn group_state(controllers: &str) -> GroupState {
    let Some(list) = cli_json(&["--controller", controllers, "--json", "cluster", "list"]) else {
        return GroupState::default();
    };
    let Some(group) = list["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["name"] == "broker-a"))
    else {
        return GroupState::default();
    };
    GroupState {
        master: group["master_id"].as_u64(),
        epoch: group["master_epoch"].as_u64().unwrap_or(0),
        in_sync: group["in_sync_set"]
            .as_array()
            .map(|ids| ids.iter().filter_map(|i| i.as_u64()).collect())
            .unwrap_or_default(),
        brokers: group["brokers"]
            .as_array()
            .map(|brokers| {
                brokers
                    .iter()
                    .map(|b| {
                        (
                            b["id"].as_u64().unwrap_or(u64::MAX),
                            (
                                b["alive"].as_bool().unwrap_or(false),
                                b["max_offset"].as_u64().unwrap_or(0),
                                b["confirm_offset"].as_u64().unwrap_or(0),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Waits until the group has an alive master and all brokers in its in-sync set.
fn wait_for_full_set(controllers: &str, within: Duration) -> GroupState {
    let all: BTreeSet<u64> = (0..BROKERS).collect();
    let ready = wait_until(within, || {
        let state = group_state(controllers);
        state.in_sync == all
            && state
                .master
                .and_then(|m| state.brokers.get(&m))
                .is_some_and(|(alive, _, _)| *alive)
    });
    let state = group_state(controllers);
    assert!(
        ready,
        "the group did not get a master with every broker in sync: {state:?}"
    );
    state
}

/// One send of the background producer.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    started: Instant,
    finished: Instant,
    /// SEND_OK's (queue id, queue offset), or the status or error otherwise.
    outcome: Result<(u32, u64), String>,
}

/// A routed producer sending one message at a time until stopped, recording every outcome.
struct Sender {
    log: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sender {
    fn start(rt: &tokio::runtime::Runtime, controllers: &str) -> Sender {
        let producer = rt
            .block_on(Producer::connect_controller(
                controllers,
                ProducerConfig::default(),
            ))
            .expect("producer");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = rt.spawn({
            let (log, stop) = (log.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let key = format!("order-{n}");
                    n += 1;
                    let started = Instant::now();
                    let message = Message::new(TOPIC, Bytes::from(format!("payment {key}")))
                        .with_key(key.clone());
                    let outcome = match producer.send(message).await {
                        Ok(r) if r.status == SendStatus::SendOk => Ok((r.queue_id, r.queue_offset)),
                        Ok(r) => Err(format!("{:?}", r.status)),
                        Err(err) => Err(err.to_string()),
                    };
                    log.lock().unwrap().push(Sent {
                        key,
                        started,
                        finished: Instant::now(),
                        outcome,
                    });
                }
            }
        });
        Sender {
            log,
            stop,
            task: Some(task),
        }
    }

    /// The first SEND_OK of a send started at or after `at`, if any yet.
    fn first_ok_started_after(&self, at: Instant) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.started >= at && s.outcome.is_ok())
            .map(|s| s.finished)
    }

    fn acked_since(&self, at: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.started >= at && s.outcome.is_ok())
            .count()
    }

    fn finish(mut self, rt: &tokio::runtime::Runtime) -> Vec<Sent> {
        self.stop.store(true, Ordering::Release);
        if let Some(task) = self.task.take() {
            rt.block_on(task).expect("sender task");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn create_topic(controllers: &str) {
    let (code, out) = cluster_cli(&[
        "--controller",
        controllers,
        "topic",
        "create",
        TOPIC,
        "--queues",
        &QUEUES.to_string(),
    ]);
    assert_eq!(code, 0, "topic create: {out}");
}

/// Checks the invariants on the whole history: every SEND_OK consumed from the final master,
/// per-queue order, and every broker's log identical to the master's below the confirm offset.
fn check_history(dir: &Path, controllers: &str, brokers: &[BrokerProcess], history: &[Sent]) {
    // Everything settles: every broker holds the master's whole log and may show all of it.
    let settled = wait_until(Duration::from_secs(30), || {
        let state = group_state(controllers);
        let Some(master) = state.master else {
            return false;
        };
        let end = state.brokers.get(&master).map_or(0, |b| b.1);
        state.brokers.len() == BROKERS as usize
            && state
                .brokers
                .values()
                .all(|(alive, max, confirm)| *alive && *max == end && *confirm == end)
    });
    let state = group_state(controllers);
    assert!(settled, "the group did not settle: {state:?}");
    let master = state.master.expect("a master");
    let end = state.brokers[&master].1;
    for id in (0..BROKERS).filter(|id| *id != master) {
        assert_same_log(
            &dir.join(format!("broker-a-{master}")),
            &dir.join(format!("broker-a-{id}")),
            end,
        );
    }

    let rt = runtime();
    let consumer = rt
        .block_on(PullConsumer::connect(brokers[master as usize].addr()))
        .expect("consumer");
    let consumed = rt.block_on(read_queues(&consumer, TOPIC, QUEUES));
    // Per queue: the keys in queue order (first occurrence; a retried send may store twice).
    let mut per_queue: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for message in &consumed {
        for key in &message.keys {
            if seen.insert(key.clone()) {
                let n: u64 = key.trim_start_matches("order-").parse().expect("key");
                per_queue.entry(message.queue_id).or_default().push(n);
            }
        }
    }
    let acked: Vec<&Sent> = history.iter().filter(|s| s.outcome.is_ok()).collect();
    let missing: Vec<&str> = acked
        .iter()
        .filter(|s| !seen.contains(&s.key))
        .map(|s| s.key.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} SEND_OK messages were not consumed, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // One sender, one message at a time: within a queue, send order is key order.
    let acked_keys: BTreeSet<u64> = acked
        .iter()
        .map(|s| s.key.trim_start_matches("order-").parse().unwrap())
        .collect();
    for (queue_id, keys) in &per_queue {
        let acked_in_queue: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| acked_keys.contains(k))
            .collect();
        assert!(
            acked_in_queue.windows(2).all(|w| w[0] < w[1]),
            "queue {queue_id} holds acknowledged messages out of send order: {acked_in_queue:?}"
        );
    }
    eprintln!(
        "history: {} sends, {} SEND_OK, all consumed in order from broker {master} (epoch {})",
        history.len(),
        acked.len(),
        state.epoch
    );
}

#[test]
fn killing_the_master_again_and_again_loses_no_acknowledged_message() {
    let drills: usize = std::env::var("FAILOVER_DRILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let mut brokers: Vec<BrokerProcess> = (0..BROKERS)
        .map(|id| broker(dir.path(), id, &controllers))
        .collect();
    create_topic(&controllers);
    wait_for_full_set(&controllers, Duration::from_secs(30));

    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let mut times = Vec::new();
    for drill in 0..drills {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        // Some load first, so the kill lands in the middle of sending.
        let warm = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || sender.acked_since(warm) >= 50),
            "the producer is not acknowledged before drill {drill}"
        );
        let master = before.master.expect("a master");
        let killed_at = Instant::now();
        brokers[master as usize].signal(libc::SIGKILL);
        let recovered = wait_until(Duration::from_secs(15), || {
            sender.first_ok_started_after(killed_at).is_some()
        });
        assert!(
            recovered,
            "no SEND_OK within 15 s of killing master {master} (drill {drill}): {:?}",
            group_state(&controllers)
        );
        let took = sender.first_ok_started_after(killed_at).unwrap() - killed_at;
        let after = group_state(&controllers);
        eprintln!(
            "drill {drill}: killed master {master} (epoch {}); SEND_OK again after {took:?}, \
             master now {:?} (epoch {})",
            before.epoch, after.master, after.epoch
        );
        assert_ne!(
            after.master,
            Some(master),
            "the killed master is still master"
        );
        assert!(after.epoch > before.epoch);
        times.push(took);
        // The killed broker comes back on its store and rejoins as a slave.
        brokers[master as usize] = broker(dir.path(), master, &controllers);
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history = sender.finish(&rt);
    times.sort();
    eprintln!(
        "failover times over {drills} drills: min {:?}, median {:?}, max {:?}",
        times.first(),
        times.get(times.len() / 2),
        times.last()
    );
    check_history(dir.path(), &controllers, &brokers, &history);
}

#[test]
fn a_stopped_master_that_wakes_after_its_successor_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let brokers: Vec<BrokerProcess> = (0..BROKERS)
        .map(|id| broker(dir.path(), id, &controllers))
        .collect();
    create_topic(&controllers);
    let before = wait_for_full_set(&controllers, Duration::from_secs(30));
    let old = before.master.expect("a master") as usize;

    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    // A second producer talks to the old master alone: whatever it answers after the stop.
    let direct = rt
        .block_on(Producer::connect(
            brokers[old].addr(),
            ProducerConfig {
                retries: 0,
                ..ProducerConfig::default()
            },
        ))
        .expect("direct producer");
    let warm = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || sender
        .acked_since(warm)
        >= 50));

    // Stopped past its lease: the controller elects a successor.
    brokers[old].signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let direct_during_stop = rt.spawn({
        let direct = direct.clone();
        async move {
            direct
                .send(
                    Message::new(TOPIC, Bytes::from_static(b"sent while stopped"))
                        .with_key("stopped"),
                )
                .await
        }
    });
    let elected = wait_until(Duration::from_secs(15), || {
        let state = group_state(&controllers);
        state.master.is_some_and(|m| m != old as u64) && state.epoch > before.epoch
    });
    assert!(
        elected,
        "no successor elected: {:?}",
        group_state(&controllers)
    );
    assert!(
        wait_until(Duration::from_secs(15), || sender
            .first_ok_started_after(stopped_at)
            .is_some()),
        "no SEND_OK from the successor"
    );

    // It wakes: the send that waited in it, and every new one, get an error, never SEND_OK.
    brokers[old].signal(libc::SIGCONT);
    let during = rt.block_on(direct_during_stop).unwrap();
    assert!(
        !matches!(&during, Ok(r) if r.status == SendStatus::SendOk),
        "the deposed master acknowledged a send that reached it while stopped: {during:?}"
    );
    for i in 0..20 {
        let answer =
            rt.block_on(direct.send(
                Message::new(TOPIC, Bytes::from_static(b"after")).with_key(format!("late-{i}")),
            ));
        assert!(
            !matches!(&answer, Ok(r) if r.status == SendStatus::SendOk),
            "the deposed master acknowledged send {i} after its successor's election: {answer:?}"
        );
    }
    // It rejoins as a slave of the successor.
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}

#[test]
fn a_planned_switchover_moves_mastership_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let brokers: Vec<BrokerProcess> = (0..BROKERS)
        .map(|id| broker(dir.path(), id, &controllers))
        .collect();
    create_topic(&controllers);
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    for round in 0..3 {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        let warm = Instant::now();
        assert!(wait_until(Duration::from_secs(10), || sender
            .acked_since(warm)
            >= 50));
        let master = before.master.expect("a master");
        let target = (master + 1) % BROKERS;
        let asked_at = Instant::now();
        let (code, out) = cluster_cli(&[
            "--controller",
            &controllers,
            "cluster",
            "elect",
            "broker-a",
            "--broker-id",
            &target.to_string(),
        ]);
        assert_eq!(code, 0, "cluster elect: {out}");
        let after = group_state(&controllers);
        assert_eq!(after.master, Some(target), "{out}");
        assert!(after.epoch > before.epoch);
        // The longest gap between two SEND_OKs around the switchover.
        assert!(wait_until(Duration::from_secs(10), || sender
            .first_ok_started_after(Instant::now())
            .is_some()
            || sender.acked_since(asked_at) >= 20));
        let gap = {
            let log = sender.log.lock().unwrap();
            let oks: Vec<Instant> = log
                .iter()
                .filter(|s| s.outcome.is_ok() && s.finished + Duration::from_secs(2) >= asked_at)
                .map(|s| s.finished)
                .collect();
            oks.windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default()
        };
        eprintln!("switchover {round}: broker {master} -> {target}; longest pause between SEND_OKs {gap:?}");
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}
