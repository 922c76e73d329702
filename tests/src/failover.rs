//! The failover scenarios' shared parts: broker group `broker-a` of [`BROKERS`] `CONTROLLED`
//! brokers (SYNC_MASTER + SYNC_FLUSH unless overridden), its state as `cluster list` shows it, a
//! routed producer that records every outcome ([`Sender`]), and the check of the whole history
//! ([`check_history`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, PullConsumer, SendStatus};

use crate::{
    assert_same_log, cli_json, group_member, read_queues, wait_until, BrokerProcess,
    ControllerQuorum,
};

pub const TOPIC: &str = "orders";
pub const QUEUES: u32 = 4;
pub const BROKERS: u64 = 3;

/// Broker `id` of `broker-a`: controlled, synchronous, `SYNC_FLUSH`.
pub fn broker(dir: &Path, id: u64, controllers: &str) -> BrokerProcess {
    broker_with(dir, id, controllers, &[])
}

/// [`broker`] with `extra_args` last (`--set KEY=VALUE` overrides the defaults above).
pub fn broker_with(dir: &Path, id: u64, controllers: &str, extra_args: &[&str]) -> BrokerProcess {
    let mut args = vec![
        "--set",
        "replication_mode=\"SYNC\"",
        "--set",
        "flush_disk_type=\"SYNC_FLUSH\"",
        "--set",
        "slave_timeout_ms=1000",
        "--set",
        "in_sync_lag_max_ms=2000",
    ];
    args.extend_from_slice(extra_args);
    group_member(dir, "broker-a", id, "CONTROLLED", controllers, &args)
}

/// `broker-a` as the controller lists it.
#[derive(Debug, Default, Clone)]
pub struct GroupState {
    pub master: Option<u64>,
    pub epoch: u64,
    pub in_sync: BTreeSet<u64>,
    /// Per broker id: (alive, max offset, confirm offset).
    pub brokers: BTreeMap<u64, (bool, u64, u64)>,
}

pub fn group_state(controllers: &str) -> GroupState {
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

/// The store of broker `id` of `broker-a` as cluster list shows it: its health
/// (`write_failed`, `corrupt_offset`, `disk_full`, `verified`, `problem`); `null` before its
/// first heartbeat.
pub fn store_of(controllers: &str, id: u64) -> serde_json::Value {
    let Some(list) = cli_json(&["--controller", controllers, "--json", "cluster", "list"]) else {
        return serde_json::Value::Null;
    };
    list["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["name"] == "broker-a"))
        .and_then(|group| group["brokers"].as_array())
        .and_then(|brokers| brokers.iter().find(|b| b["id"] == id))
        .map(|b| b["store"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the group has an alive master and all brokers in its in-sync set.
pub fn wait_for_full_set(controllers: &str, within: Duration) -> GroupState {
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

/// A planned switchover of `broker-a` (`cluster elect`, to `target` or the controller's choice)
/// from the master of `from_epoch`. The controller refuses, changing nothing (exit 2), while no
/// candidate was heard within the lease wait; on a loaded machine a heartbeat can come late, so
/// a refusal is asked again, for up to 15 s. An attempt whose answer was lost may have switched
/// over all the same: a later epoch ends the asking. Answers when the attempt that switched
/// over started. Panics on any other failure.
pub fn switch_over(controllers: &str, target: Option<u64>, from_epoch: u64) -> Instant {
    let target = target.map(|id| id.to_string());
    let mut args = vec!["--controller", controllers, "cluster", "elect", "broker-a"];
    if let Some(id) = &target {
        args.extend(["--broker-id", id]);
    }
    let mut refusal = String::new();
    let mut asked_at = Instant::now();
    let elected = wait_until(Duration::from_secs(15), || {
        if group_state(controllers).epoch > from_epoch {
            return true;
        }
        asked_at = Instant::now();
        let output =
            std::process::Command::new(crate::workspace_binary("cluster-cli", "cluster-cli"))
                .args(&args)
                .output()
                .expect("run cluster-cli");
        refusal = String::from_utf8_lossy(&output.stderr).into_owned();
        match output.status.code() {
            Some(0) => true,
            Some(2) => false,
            other => panic!("cluster elect exited {other:?}: {refusal}"),
        }
    });
    assert!(elected, "cluster elect: {refusal}");
    asked_at
}

/// Waits (up to 20 s) until another broker than `old` is master at a later epoch than
/// `old_epoch`; panics otherwise.
pub fn wait_for_successor(controllers: &str, old: u64, old_epoch: u64) -> GroupState {
    let elected = wait_until(Duration::from_secs(20), || {
        let state = group_state(controllers);
        state.master.is_some_and(|m| m != old) && state.epoch > old_epoch
    });
    let state = group_state(controllers);
    assert!(elected, "no successor to broker {old} elected: {state:?}");
    state
}

/// One send of the background producer.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub started: Instant,
    pub finished: Instant,
    /// SEND_OK's (queue id, queue offset), or the status or error otherwise.
    pub outcome: Result<(u32, u64), String>,
}

/// Sends one message to [`TOPIC`] with key `key` and records its outcome.
pub async fn send_one(producer: &Producer, key: String) -> Sent {
    let started = Instant::now();
    let message = Message::new(TOPIC, Bytes::from(format!("payment {key}"))).with_key(key.clone());
    let outcome = match producer.send(message).await {
        Ok(r) if r.status == SendStatus::SendOk => Ok((r.queue_id, r.queue_offset)),
        Ok(r) => Err(format!("{:?}", r.status)),
        Err(err) => Err(err.to_string()),
    };
    Sent {
        key,
        started,
        finished: Instant::now(),
        outcome,
    }
}

/// One controller and the [`BROKERS`] brokers of `broker-a` under `dir` (`extra_args` to each,
/// see [`broker_with`]), with [`TOPIC`] created. Returns the quorum, its address and the brokers.
pub fn start_group(
    dir: &Path,
    extra_args: &[&str],
) -> (ControllerQuorum, String, Vec<BrokerProcess>) {
    let quorum = ControllerQuorum::start(dir, 1, &[]);
    let controllers = quorum.addrs();
    let brokers = (0..BROKERS)
        .map(|id| broker_with(dir, id, &controllers, extra_args))
        .collect();
    create_topic(&controllers);
    (quorum, controllers, brokers)
}

/// [`start_group`] with the controller listening on `controller_ip` and broker `id` on
/// [`broker_ip`]`(id)`, each broker also dialling out from its address (`source_ip`): a
/// firewall can then cut the link between two of them alone.
pub fn start_group_on(
    dir: &Path,
    controller_ip: &str,
    extra_args: &[&str],
) -> (ControllerQuorum, String, Vec<BrokerProcess>) {
    let quorum = ControllerQuorum::start_on(dir, controller_ip, 1, &[]);
    let controllers = quorum.addrs();
    let brokers = (0..BROKERS)
        .map(|id| broker_on(dir, id, &controllers, extra_args))
        .collect();
    create_topic(&controllers);
    (quorum, controllers, brokers)
}

/// The loopback address broker `id` of [`start_group_on`] has to itself.
pub fn broker_ip(id: u64) -> String {
    format!("127.0.0.{}", 10 + id)
}

/// [`broker_with`] on [`broker_ip`]`(id)`: listening there, and dialling out from there.
pub fn broker_on(dir: &Path, id: u64, controllers: &str, extra_args: &[&str]) -> BrokerProcess {
    let ip = broker_ip(id);
    let listen = format!("{ip}:0");
    let source = format!("source_ip={ip:?}");
    let mut args = vec!["--listen", &listen, "--set", &source];
    args.extend_from_slice(extra_args);
    broker_with(dir, id, controllers, &args)
}

/// A routed producer sending one message at a time until stopped, recording every outcome.
pub struct Sender {
    pub log: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sender {
    /// A sender with the producer's default settings.
    pub fn start(rt: &tokio::runtime::Runtime, controllers: &str) -> Sender {
        Sender::start_with(rt, controllers, ProducerConfig::default())
    }

    /// A sender whose producer has `config` (a shorter `send_timeout` makes a refusing master
    /// show up in the history as errors sooner).
    pub fn start_with(
        rt: &tokio::runtime::Runtime,
        controllers: &str,
        config: ProducerConfig,
    ) -> Sender {
        Sender::start_keyed(rt, controllers, config, "order-")
    }

    /// A sender whose keys start with `key_prefix` instead of `order-`: several senders at once
    /// need keys of their own ([`check_history`] reads only `order-` keys).
    pub fn start_keyed(
        rt: &tokio::runtime::Runtime,
        controllers: &str,
        config: ProducerConfig,
        key_prefix: &str,
    ) -> Sender {
        let key_prefix = key_prefix.to_owned();
        let producer = rt
            .block_on(Producer::connect_controller(controllers, config))
            .expect("producer");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = rt.spawn({
            let (log, stop) = (log.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let sent = send_one(&producer, format!("{key_prefix}{n}")).await;
                    n += 1;
                    log.lock().unwrap().push(sent);
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
    pub fn first_ok_started_after(&self, at: Instant) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.started >= at && s.outcome.is_ok())
            .map(|s| s.finished)
    }

    pub fn acked_since(&self, at: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.started >= at && s.outcome.is_ok())
            .count()
    }

    pub fn finish(mut self, rt: &tokio::runtime::Runtime) -> Vec<Sent> {
        self.stop.store(true, Ordering::Release);
        if let Some(task) = self.task.take() {
            rt.block_on(task).expect("sender task");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Creates [`TOPIC`] with [`QUEUES`] queues ([`crate::create_topic`]).
pub fn create_topic(controllers: &str) {
    crate::create_topic(controllers, TOPIC, QUEUES);
}

/// Checks the invariants on the whole history: every SEND_OK consumed from the final master,
/// per-queue order, and every broker's log identical to the master's below the confirm offset.
/// Returns the key of every message consumed, for the caller's own checks.
pub fn check_history(
    dir: &Path,
    controllers: &str,
    brokers: &[BrokerProcess],
    history: &[Sent],
) -> BTreeSet<String> {
    let (seen, missing) = consume_history(dir, controllers, brokers, history);
    let acked = history.iter().filter(|s| s.outcome.is_ok()).count();
    assert!(
        missing.is_empty(),
        "{} of {acked} SEND_OK messages were not consumed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    seen
}

/// [`check_history`] without the first check: returns the keys consumed and the SEND_OK keys
/// that were not (what an `ASYNC_MASTER` failover may lose), having checked the rest.
pub fn consume_history(
    dir: &Path,
    controllers: &str,
    brokers: &[BrokerProcess],
    history: &[Sent],
) -> (BTreeSet<String>, Vec<String>) {
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
            // Only the history's own messages (`order-N`): a test's other sends (to a deposed
            // master, say) were never acknowledged, and may or may not have been stored.
            let Some(n) = key
                .strip_prefix("order-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                eprintln!(
                    "consumed a message outside the history: key {key:?}, queue {}, offset {}",
                    message.queue_id, message.queue_offset
                );
                continue;
            };
            if seen.insert(key.clone()) {
                per_queue.entry(message.queue_id).or_default().push(n);
            }
        }
    }
    let acked: Vec<&Sent> = history.iter().filter(|s| s.outcome.is_ok()).collect();
    let missing: Vec<String> = acked
        .iter()
        .filter(|s| !seen.contains(&s.key))
        .map(|s| s.key.clone())
        .collect();
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
        "history: {} sends, {} SEND_OK, {} of them consumed, in order, from broker {master} \
         (epoch {})",
        history.len(),
        acked.len(),
        acked.len() - missing.len(),
        state.epoch
    );
    (seen, missing)
}

/// The `KEYS` of every message the truncation reports in the store at `store` list (the
/// messages its truncations cut); empty without a report.
pub fn truncation_reported_keys(store: &Path) -> BTreeSet<String> {
    let Ok(reports) = std::fs::read_dir(store.join("truncated")) else {
        return BTreeSet::new();
    };
    reports
        .flat_map(|entry| {
            let text = std::fs::read_to_string(entry.expect("report entry").path())
                .expect("readable report");
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                    value["keys"].as_str().map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
