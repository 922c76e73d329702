//! A push consumer through master failovers. Real processes: one controller, broker group
//! `broker-a` of three `CONTROLLED` brokers (SYNC_MASTER + SYNC_FLUSH), a routed producer sending
//! without pause, a routed push consumer (clustering, pulls of [`PULL_BATCH`]), and the master
//! killed with SIGKILL, then restarted, [`DRILLS`] times.
//!
//! Invariants:
//! - every message acknowledged `SEND_OK` is delivered to the consumer;
//! - the consumer resumes on the new master from the replicated committed offsets: per queue and
//!   per failover it is handed again at most the batch whose commit was not answered, plus what
//!   it read from a slave while no master answered (commits to a slave that is not elected are
//!   lost). Offset commits, like sends, are answered under `SYNC_MASTER` only once the in-sync
//!   set holds them, and a new master takes every commit its log holds; so the test allows
//!   two batches per queue per failover, where a consumer restarting from an older snapshot, or
//!   from the start, would be handed hundreds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{ConsumeFrom, ConsumeResult, PushConsumer, PushConsumerConfig, ReceivedMessage};
use cluster_tests::failover::{
    broker, group_state, runtime, start_group, wait_for_full_set, Sender, QUEUES, TOPIC,
};
use cluster_tests::wait_until;

const PULL_BATCH: u32 = 8;
const DRILLS: usize = 2;

/// Every delivery: (key, queue id, queue offset), in the order handed to the listener.
type Deliveries = Arc<Mutex<Vec<(String, u32, u64)>>>;

#[test]
fn a_push_consumer_rides_out_failovers_without_loss_or_a_long_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), &[]);
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let rt = runtime();

    let deliveries: Deliveries = Arc::default();
    let mut config = PushConsumerConfig::new("billing", TOPIC);
    config.consume_from = ConsumeFrom::First;
    config.pull_batch = PULL_BATCH;
    config.heartbeat_interval = Duration::from_millis(200);
    let consumer = rt
        .block_on(PushConsumer::start_controller(&controllers, config, {
            let deliveries = deliveries.clone();
            move |message: &ReceivedMessage| {
                deliveries.lock().unwrap().push((
                    message.keys[0].clone(),
                    message.queue_id,
                    message.queue_offset,
                ));
                Ok::<_, client::ListenerError>(ConsumeResult::ConsumeSuccess)
            }
        }))
        .expect("push consumer");
    let sender = Sender::start(&rt, &controllers);
    let delivered = || deliveries.lock().unwrap().len();

    // Per drill: the deliveries before the kill, to count what came again after it.
    let mut kills = Vec::new();
    for drill in 0..DRILLS {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        let warm = delivered();
        assert!(
            wait_until(Duration::from_secs(15), || delivered() >= warm + 50),
            "the consumer is not consuming before drill {drill}"
        );
        let master = before.master.expect("a master");
        kills.push(delivered());
        let killed_at = Instant::now();
        brokers[master as usize].kill();
        assert!(
            wait_until(Duration::from_secs(15), || sender
                .first_ok_started_after(killed_at)
                .is_some()),
            "no SEND_OK after killing master {master} (drill {drill}): {:?}",
            group_state(&controllers)
        );
        brokers[master as usize] = broker(dir.path(), master, &controllers);
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history = sender.finish(&rt);

    // Every SEND_OK message is delivered.
    let acked: Vec<&String> = history
        .iter()
        .filter(|s| s.outcome.is_ok())
        .map(|s| &s.key)
        .collect();
    let all_delivered = wait_until(Duration::from_secs(30), || {
        let seen: std::collections::BTreeSet<String> = deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|(key, _, _)| key.clone())
            .collect();
        acked.iter().all(|key| seen.contains(*key))
    });
    let deliveries = deliveries.lock().unwrap().clone();
    rt.block_on(consumer.shutdown());
    let seen: std::collections::BTreeSet<&String> = deliveries.iter().map(|(k, _, _)| k).collect();
    let missing: Vec<&&String> = acked.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(
        all_delivered && missing.is_empty(),
        "{} of {} SEND_OK messages never delivered, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    // Rewinds: per queue, each delivery of a (queue, offset) delivered before counts as handed
    // again; counted per failover, from its kill to the next.
    let mut bounds = kills.clone();
    bounds.push(deliveries.len());
    let mut first_seen: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for (index, (_, queue_id, queue_offset)) in deliveries.iter().enumerate() {
        first_seen
            .entry((*queue_id, *queue_offset))
            .or_insert(index);
    }
    for (drill, window) in bounds.windows(2).enumerate() {
        let mut again: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, (_, queue_id, queue_offset)) in deliveries
            .iter()
            .enumerate()
            .take(window[1])
            .skip(window[0])
        {
            if first_seen[&(*queue_id, *queue_offset)] < index {
                *again.entry(*queue_id).or_default() += 1;
            }
        }
        eprintln!(
            "failover {drill}: handed again per queue {again:?} (of {} queues, batch {PULL_BATCH})",
            QUEUES
        );
        for (queue_id, count) in &again {
            assert!(
                *count <= 2 * PULL_BATCH as usize,
                "failover {drill} rewound queue {queue_id} by {count} messages, more than two \
                 batches of {PULL_BATCH}"
            );
        }
    }
    eprintln!(
        "{} SEND_OK, {} deliveries, all delivered",
        acked.len(),
        deliveries.len()
    );
}
