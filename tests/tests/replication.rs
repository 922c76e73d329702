//! Master-slave replication as real processes: one controller, broker group `broker-a` with a
//! master (id 0) and two slaves (ids 1 and 2), all on 127.0.0.1 with ephemeral ports, stopped
//! and killed with real signals.
//!
//! Invariants, checked on the whole history of each run:
//! - up to the confirm offset, each slave's commit log is byte-identical to the master's;
//! - under `SYNC_MASTER`, `SEND_OK` means every member of the in-sync set held the message: with
//!   a member stopped, sends answer `FLUSH_SLAVE_TIMEOUT` (never hang) until the controller
//!   accepts the set without it; then `SEND_OK` resumes; the member rejoins once resumed;
//! - `ASYNC_MASTER` never waits on a slave;
//! - every message acknowledged `SEND_OK` is consumed, from the slaves while the master is
//!   stopped, and the offsets the consumer committed on a slave reach the master when it returns.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use client::{
    ConsumeFrom, ConsumeResult, Message, Producer, ProducerConfig, PullConsumer, PushConsumer,
    PushConsumerConfig, ReceivedMessage, SendStatus,
};
use cluster_tests::{cli_json, group_member, wait_until, BrokerProcess, ControllerQuorum};
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::QueryOffsetRequest;

const TOPIC: &str = "payments";
const QUEUES: u32 = 4;

/// Broker `id` of `broker-a`, with the short replication timeouts these tests need.
fn broker(dir: &Path, id: u64, role: &str, controllers: &str, extra: &[&str]) -> BrokerProcess {
    let mut args = vec![
        "--set",
        "slave_timeout_ms=1000",
        "--set",
        "in_sync_lag_max_ms=2000",
    ];
    args.extend_from_slice(extra);
    group_member(dir, "broker-a", id, role, controllers, &args)
}

fn cluster_list(controllers: &str) -> Option<serde_json::Value> {
    cli_json(&["--controller", controllers, "--json", "cluster", "list"])
}

/// The in-sync set of `broker-a`, as the controller holds it.
fn in_sync_set(controllers: &str) -> BTreeSet<u64> {
    cluster_list(controllers)
        .and_then(|list| {
            list["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "broker-a")
                .map(|g| {
                    g["in_sync_set"]
                        .as_array()
                        .map(|ids| ids.iter().filter_map(|i| i.as_u64()).collect())
                        .unwrap_or_default()
                })
        })
        .unwrap_or_default()
}

fn wait_for_set(controllers: &str, want: &[u64], within: Duration) {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    let reached = wait_until(within, || in_sync_set(controllers) == want);
    assert!(
        reached,
        "the in-sync set did not become {want:?}; it is {:?}",
        in_sync_set(controllers)
    );
}

fn create_topic(controllers: &str) {
    cluster_tests::create_topic(controllers, TOPIC, QUEUES);
}

/// The commit log of the store in `store_dir`, bytes `0..end`, read from its segment files.
fn log_bytes(store_dir: &Path, end: u64) -> Vec<u8> {
    let mut segments: Vec<_> = std::fs::read_dir(store_dir.join("commitlog"))
        .expect("commit log directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.parse::<u64>().ok().map(|base| (base, e.path()))
        })
        .collect();
    segments.sort();
    let mut out = Vec::with_capacity(end as usize);
    for (base, path) in segments {
        if base >= end {
            break;
        }
        let bytes = std::fs::read(&path).expect("read segment");
        let take = ((end - base) as usize).min(bytes.len());
        out.extend_from_slice(&bytes[..take]);
    }
    assert_eq!(out.len() as u64, end, "segments do not cover the log");
    out
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to print and compare; equality is checked on the bytes themselves.
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Per broker id: (max offset, confirm offset), from cluster list.
fn offsets(controllers: &str) -> Vec<(u64, u64, u64)> {
    cluster_list(controllers)
        .and_then(|list| {
            let group = list["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "broker-a")?
                .clone();
            Some(
                group["brokers"]
                    .as_array()?
                    .iter()
                    .map(|b| {
                        (
                            b["id"].as_u64().unwrap_or(0),
                            b["max_offset"].as_u64().unwrap_or(0),
                            b["confirm_offset"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect(),
            )
        })
        .unwrap_or_default()
}

async fn send_keys(producer: &Producer, prefix: &str, count: usize) -> Vec<(String, SendStatus)> {
    let mut results = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let message =
            Message::new(TOPIC, Bytes::from(format!("payment {key}"))).with_key(key.clone());
        let sent = producer.send(message).await.expect("send");
        results.push((key, sent.status));
    }
    results
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sync_master_with_two_slaves_waits_for_the_in_sync_set_and_survives_a_stopped_slave() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let flush = ["--set", "flush_disk_type=\"SYNC_FLUSH\""];
    let master = broker(dir.path(), 0, "SYNC_MASTER", &controllers, &flush);
    let slave1 = broker(dir.path(), 1, "SLAVE", &controllers, &flush);
    let slave2 = broker(dir.path(), 2, "SLAVE", &controllers, &flush);
    create_topic(&controllers);
    wait_for_set(&controllers, &[0, 1, 2], Duration::from_secs(20));

    let rt = runtime();
    let producer = rt
        .block_on(Producer::connect(master.addr(), ProducerConfig::default()))
        .unwrap();
    let mut acked: Vec<String> = Vec::new();

    // 1. All in sync: every send is SEND_OK.
    let results = rt.block_on(send_keys(&producer, "steady", 300));
    assert!(
        results.iter().all(|(_, s)| *s == SendStatus::SendOk),
        "{results:?}"
    );
    acked.extend(results.into_iter().map(|(k, _)| k));

    // 2. Slaves hold the master's bytes up to the confirm offset.
    let settled = wait_until(Duration::from_secs(20), || {
        let o = offsets(&controllers);
        o.len() == 3
            && o.iter()
                .all(|(_, max, confirm)| *max == o[0].1 && *confirm == o[0].1)
    });
    assert!(
        settled,
        "offsets did not settle: {:?}",
        offsets(&controllers)
    );
    let end = offsets(&controllers)[0].1;
    assert!(end > 0);
    let master_log = log_bytes(&dir.path().join("broker-a-0"), end);
    for id in [1, 2] {
        let slave_log = log_bytes(&dir.path().join(format!("broker-a-{id}")), end);
        assert_eq!(
            checksum(&slave_log),
            checksum(&master_log),
            "slave {id} differs from the master below offset {end}"
        );
        assert!(slave_log == master_log);
    }

    // 3. Slave 2 stops: sends answer FLUSH_SLAVE_TIMEOUT within slave_timeout, never hang, until
    //    the set shrinks to {0, 1}; then SEND_OK again.
    slave2.signal(libc::SIGSTOP);
    let mut statuses = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    loop {
        let key = format!("stopped-{n}");
        n += 1;
        let sent_at = Instant::now();
        let result = rt
            .block_on(
                producer.send(
                    Message::new(TOPIC, Bytes::from_static(b"payment")).with_key(key.clone()),
                ),
            )
            .expect("send");
        assert!(
            sent_at.elapsed() < Duration::from_secs(5),
            "a send with a stopped slave took {:?}",
            sent_at.elapsed()
        );
        statuses.push(result.status);
        if result.status == SendStatus::SendOk {
            acked.push(key);
            if statuses.contains(&SendStatus::FlushSlaveTimeout) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "SEND_OK did not resume: {statuses:?}"
        );
    }
    assert!(
        statuses.contains(&SendStatus::FlushSlaveTimeout),
        "{statuses:?}"
    );
    wait_for_set(&controllers, &[0, 1], Duration::from_secs(5));
    let results = rt.block_on(send_keys(&producer, "shrunk", 100));
    assert!(
        results.iter().all(|(_, s)| *s == SendStatus::SendOk),
        "{results:?}"
    );
    acked.extend(results.into_iter().map(|(k, _)| k));

    // 4. Slave 2 resumes and rejoins.
    slave2.signal(libc::SIGCONT);
    wait_for_set(&controllers, &[0, 1, 2], Duration::from_secs(20));

    // 5. Slave 1 is killed, misses messages, restarts on its store and catches up.
    slave1.signal(libc::SIGKILL);
    drop(slave1);
    wait_for_set(&controllers, &[0, 2], Duration::from_secs(20));
    let results = rt.block_on(send_keys(&producer, "one-down", 200));
    assert!(
        results.iter().all(|(_, s)| *s == SendStatus::SendOk),
        "{results:?}"
    );
    acked.extend(results.into_iter().map(|(k, _)| k));
    let slave1 = broker(dir.path(), 1, "SLAVE", &controllers, &flush);
    wait_for_set(&controllers, &[0, 1, 2], Duration::from_secs(20));

    // 6. The master stops: a routed push consumer, started now, reads every acknowledged
    //    message from a slave, committing its offsets there.
    master.signal(libc::SIGSTOP);
    let consumed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut config = PushConsumerConfig::new("audit", TOPIC);
    config.consume_from = ConsumeFrom::First;
    config.heartbeat_interval = Duration::from_millis(500);
    config.poll_timeout = Duration::from_millis(500);
    let consumer = rt
        .block_on(PushConsumer::start_controller(&controllers, config, {
            let consumed = consumed.clone();
            move |m: &ReceivedMessage| {
                consumed.lock().unwrap().extend(m.keys.iter().cloned());
                Ok(ConsumeResult::ConsumeSuccess)
            }
        }))
        .unwrap();
    let all_read = wait_until(Duration::from_secs(40), || {
        let consumed = consumed.lock().unwrap();
        acked.iter().all(|k| consumed.contains(k))
    });
    let missing: Vec<String> = {
        let consumed = consumed.lock().unwrap();
        acked
            .iter()
            .filter(|k| !consumed.contains(*k))
            .cloned()
            .collect()
    };
    assert!(
        all_read,
        "{} of {} SEND_OK messages not consumed from the slaves, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // 7. The master returns: the offsets committed on the slave reach it (the consumer's next
    //    commits), never overwritten by the master's older (here: missing) ones.
    master.signal(libc::SIGCONT);
    let ends = rt.block_on(queue_ends(master.addr()));
    let caught_up = wait_until(Duration::from_secs(30), || {
        rt.block_on(committed(master.addr(), "audit")) == ends
    });
    assert!(
        caught_up,
        "the master's committed offsets {:?} did not reach the queue ends {ends:?}",
        rt.block_on(committed(master.addr(), "audit"))
    );
    rt.block_on(consumer.shutdown());
    drop(slave1);
}

/// The end (max queue offset) of each queue of the topic on the broker at `addr`.
async fn queue_ends(addr: &str) -> Vec<u64> {
    let consumer = PullConsumer::connect(addr).await.unwrap();
    let mut ends = Vec::new();
    for queue_id in 0..QUEUES {
        let probe = consumer
            .pull(TOPIC, queue_id, 0, 1, "*", Duration::ZERO)
            .await
            .unwrap();
        ends.push(probe.max_queue_offset);
    }
    ends
}

/// The offsets `group` committed on the broker at `addr`, per queue (0 when none).
async fn committed(addr: &str, group: &str) -> Vec<u64> {
    let Ok(mut client) = ConsumerGroupsClient::connect(format!("http://{addr}")).await else {
        return Vec::new();
    };
    let mut offsets = Vec::new();
    for queue_id in 0..QUEUES {
        let answer = client
            .query_offset(QueryOffsetRequest {
                group: group.to_owned(),
                topic: TOPIC.to_owned(),
                queue_id,
            })
            .await;
        match answer {
            Ok(answer) => offsets.push(answer.into_inner().queue_offset),
            Err(_) => return Vec::new(),
        }
    }
    offsets
}

#[test]
fn async_master_never_waits_on_a_slave() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let master = broker(dir.path(), 0, "ASYNC_MASTER", &controllers, &[]);
    let slave = broker(dir.path(), 1, "SLAVE", &controllers, &[]);
    create_topic(&controllers);
    wait_for_set(&controllers, &[0, 1], Duration::from_secs(20));
    let rt = runtime();
    let producer = rt
        .block_on(Producer::connect(master.addr(), ProducerConfig::default()))
        .unwrap();
    // The slave is stopped but still in the set: an ASYNC_MASTER answers at once regardless
    // (a wait would end in FLUSH_SLAVE_TIMEOUT after slave_timeout).
    slave.signal(libc::SIGSTOP);
    let results = rt.block_on(send_keys(&producer, "async", 200));
    assert!(
        results.iter().all(|(_, s)| *s == SendStatus::SendOk),
        "{results:?}"
    );
    slave.signal(libc::SIGCONT);
    // And the slave catches up once resumed.
    let caught_up = wait_until(Duration::from_secs(20), || {
        let o = offsets(&controllers);
        o.len() == 2 && o[0].1 == o[1].1
    });
    assert!(caught_up, "{:?}", offsets(&controllers));
}
