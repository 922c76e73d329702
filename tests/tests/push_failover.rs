//! A push consumer group through master failovers. Real processes: one controller, broker group
//! `broker-a` of three `CONTROLLED` brokers (SYNC_MASTER + SYNC_FLUSH), [`SENDERS`] routed
//! producers sending without pause, two routed push consumers of one group (clustering, pulls of
//! [`PULL_BATCH`]), and the master killed with SIGKILL, then restarted, [`DRILLS`] times.
//!
//! Invariants:
//! - every message acknowledged `SEND_OK` is delivered to the group;
//! - consumers resume where they were: per failover, the group is handed again (the same queue
//!   offset of the same queue a second time) fewer messages than one pull batch in all, counted
//!   on the whole history. Each queue's worker keeps its position in memory across the change
//!   of master (the new master holds everything consumers were shown: they see only what the
//!   in-sync set confirmed), and no queue moves between the members while the new master
//!   learns who they are. Before, each queue restarted from the new master's committed
//!   offset, and was handed again the batch whose commit had no answer and everything it had
//!   read from a slave that was not elected.

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
/// Producers sending at once, so that the consumers pull full batches now and then.
const SENDERS: usize = 3;

/// Every delivery to either member: (key, queue id, queue offset), in the order handed to the
/// listeners.
type Deliveries = Arc<Mutex<Vec<(String, u32, u64)>>>;

fn member(
    rt: &tokio::runtime::Runtime,
    controllers: &str,
    deliveries: &Deliveries,
) -> PushConsumer {
    let mut config = PushConsumerConfig::new("billing", TOPIC);
    config.consume_from = ConsumeFrom::First;
    config.pull_batch = PULL_BATCH;
    config.heartbeat_interval = Duration::from_millis(200);
    let deliveries = deliveries.clone();
    rt.block_on(PushConsumer::start_controller(
        controllers,
        config,
        move |message: &ReceivedMessage| {
            deliveries.lock().unwrap().push((
                message.keys[0].clone(),
                message.queue_id,
                message.queue_offset,
            ));
            Ok::<_, client::ListenerError>(ConsumeResult::ConsumeSuccess)
        },
    ))
    .expect("push consumer")
}

#[test]
fn a_push_consumer_group_resumes_where_it_was_after_each_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), &[]);
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let rt = runtime();

    let deliveries: Deliveries = Arc::default();
    let consumers = [
        member(&rt, &controllers, &deliveries),
        member(&rt, &controllers, &deliveries),
    ];
    let both_consume = wait_until(Duration::from_secs(15), || {
        consumers
            .iter()
            .all(|c| c.assigned_queues().len() == QUEUES as usize / 2)
    });
    assert!(both_consume, "the two members did not share the queues");
    let senders: Vec<Sender> = (0..SENDERS)
        .map(|n| {
            let config = client::ProducerConfig::default();
            Sender::start_keyed(&rt, &controllers, config, &format!("sender{n}-"))
        })
        .collect();
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
            wait_until(Duration::from_secs(15), || senders
                .iter()
                .any(|s| s.first_ok_started_after(killed_at).is_some())),
            "no SEND_OK after killing master {master} (drill {drill}): {:?}",
            group_state(&controllers)
        );
        brokers[master as usize] = broker(dir.path(), master, &controllers);
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history: Vec<_> = senders.into_iter().flat_map(|s| s.finish(&rt)).collect();

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
    for consumer in consumers {
        rt.block_on(consumer.shutdown());
    }
    let seen: std::collections::BTreeSet<&String> = deliveries.iter().map(|(k, _, _)| k).collect();
    let missing: Vec<&&String> = acked.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(
        all_delivered && missing.is_empty(),
        "{} of {} SEND_OK messages never delivered, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    // Redeliveries: each delivery of a (queue, queue offset) delivered before counts as handed
    // again (a send retried after a lost answer is another queue offset: not counted); counted
    // per failover, from its kill to the next.
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
        let total: usize = again.values().sum();
        eprintln!(
            "failover {drill}: handed again {total} (per queue {again:?}, of {QUEUES} queues, \
             batch {PULL_BATCH})"
        );
        assert!(
            total < PULL_BATCH as usize,
            "failover {drill} handed {total} messages again (per queue {again:?}), not fewer \
             than one batch of {PULL_BATCH}"
        );
    }
    eprintln!(
        "{} SEND_OK, {} deliveries, all delivered",
        acked.len(),
        deliveries.len()
    );
}
