//! A deposed master rejoins as a slave, and a kill -9 in the middle of its truncation never brings
//! the cut tail back. Real processes: one controller, broker group `broker-a` of three
//! `CONTROLLED` brokers (SYNC_MASTER + SYNC_FLUSH), real signals.
//!
//! Each round makes the master's log diverge: both slaves are killed (SIGKILL) and sends reach the
//! master, which appends and flushes them but cannot acknowledge them (`FLUSH_SLAVE_TIMEOUT`).
//! Then the master is killed, the slaves restarted, one of them elected, and more messages are
//! acknowledged in the new epoch. The old master restarts armed with a failpoint that stops it
//! inside its truncation (after saving the intent; after cutting the commit log but before the
//! consume queues), is killed there with SIGKILL, and restarts again.
//!
//! Invariants:
//! - the divergent messages are never visible to consumers: not on the old master while it holds
//!   them, nor anywhere after;
//! - the truncation report lists every divergent message before anything is cut;
//! - after the second restart every broker's log is byte-identical to the master's, every
//!   `SEND_OK` message is consumed, in per-queue order (the failover history check).

use std::collections::BTreeSet;
use std::time::Duration;

use client::{Producer, ProducerConfig, PullConsumer};
use cluster_tests::failover::{
    broker_with, check_history, group_state, runtime, send_one, start_group,
    truncation_reported_keys, wait_for_full_set, wait_for_successor, Sent, BROKERS, QUEUES, TOPIC,
};
use cluster_tests::{log_mentions, read_queues, wait_until};

/// Slaves down for a few seconds stay in the in-sync set: they must be election candidates.
const SETTINGS: &[&str] = &[
    "--set",
    "in_sync_lag_max_ms=20000",
    "--set",
    "in_sync_gone_max_ms=20000",
];
/// Divergent messages per round.
const DIVERGENT: usize = 10;

/// Sends `count` messages with keys `order-<n>` (n from `next`) and records each outcome: one
/// at a time (the history check expects send order to be key order), or all at once.
fn send(
    rt: &tokio::runtime::Runtime,
    producer: &Producer,
    next: &mut u64,
    count: usize,
    all_at_once: bool,
    history: &mut Vec<Sent>,
) {
    let one = |key: String| {
        let producer = producer.clone();
        rt.spawn(async move { send_one(&producer, key).await })
    };
    let mut pending = Vec::new();
    for _ in 0..count {
        let task = one(format!("order-{next}"));
        *next += 1;
        if all_at_once {
            pending.push(task);
        } else {
            history.push(rt.block_on(task).expect("send task"));
        }
    }
    for task in pending {
        history.push(rt.block_on(task).expect("send task"));
    }
}

#[test]
fn killing_a_deposed_master_during_its_truncation_never_brings_the_tail_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), SETTINGS);
    let rt = runtime();
    let routed = rt
        .block_on(Producer::connect_controller(
            &controllers,
            ProducerConfig::default(),
        ))
        .expect("routed producer");
    let mut history = Vec::new();
    let mut divergent_keys = BTreeSet::new();
    let mut next = 0u64;

    for failpoint in ["truncate-after-intent", "truncate-after-log-cut"] {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        let old = before.master.expect("a master");
        send(&rt, &routed, &mut next, 20, false, &mut history);
        assert!(
            history.iter().rev().take(20).all(|s| s.outcome.is_ok()),
            "the group does not acknowledge before the round: {:?}",
            &history[history.len() - 20..]
        );

        // The master's log diverges: its slaves die, so it appends and flushes these but ships
        // and acknowledges none of them. (Killed, not stopped: a stopped slave would find the
        // chunks in its socket buffer when it resumed.)
        let slaves: Vec<u64> = (0..BROKERS).filter(|id| *id != old).collect();
        for id in &slaves {
            brokers[*id as usize].kill();
        }
        let direct = rt
            .block_on(Producer::connect(
                brokers[old as usize].addr(),
                ProducerConfig {
                    retries: 0,
                    ..ProducerConfig::default()
                },
            ))
            .expect("direct producer");
        let first = history.len();
        send(&rt, &direct, &mut next, DIVERGENT, true, &mut history);
        for sent in &history[first..] {
            assert!(
                sent.outcome.is_err(),
                "the master acknowledged {} with both slaves down: {:?}",
                sent.key,
                sent.outcome
            );
            divergent_keys.insert(sent.key.clone());
        }
        // Held by the master, never visible there.
        let on_old = rt.block_on(async {
            let consumer = PullConsumer::connect(brokers[old as usize].addr())
                .await
                .expect("consumer");
            read_queues(&consumer, TOPIC, QUEUES).await
        });
        let visible: Vec<&String> = on_old
            .iter()
            .flat_map(|m| &m.keys)
            .filter(|k| divergent_keys.contains(*k))
            .collect();
        assert!(
            visible.is_empty(),
            "unacknowledged messages are visible on the master: {visible:?}"
        );

        // The master dies, the slaves come back; one of them takes over and the new epoch
        // acknowledges more messages.
        brokers[old as usize].kill();
        for id in &slaves {
            brokers[*id as usize] = broker_with(dir.path(), *id, &controllers, SETTINGS);
        }
        wait_for_successor(&controllers, old, before.epoch);
        let first = history.len();
        send(&rt, &routed, &mut next, 20, false, &mut history);
        assert!(
            history[first..].iter().all(|s| s.outcome.is_ok()),
            "the new master does not acknowledge: {:?}",
            &history[first..]
        );

        // The old master rejoins and stops inside its truncation; killed there.
        let store = dir.path().join(format!("broker-a-{old}"));
        let log = store.with_extension("log");
        let reached_before = log_mentions(&log, "failpoint reached");
        brokers[old as usize] = broker_with(
            dir.path(),
            old,
            &controllers,
            &[SETTINGS, &["--failpoint", failpoint]].concat(),
        );
        let reached = wait_until(Duration::from_secs(30), || {
            log_mentions(&log, "failpoint reached") > reached_before
        });
        if !reached {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        assert!(reached, "broker {old} never reached {failpoint}");
        assert!(
            store.join("truncate.intent").exists(),
            "stopped at {failpoint} without a truncation intent"
        );
        brokers[old as usize].kill();

        // The report was on disk before anything was cut, and lists this round's divergence.
        let reported = truncation_reported_keys(&store);
        let round_keys: BTreeSet<String> = history[history.len() - 20 - DIVERGENT..]
            .iter()
            .take(DIVERGENT)
            .map(|s| s.key.clone())
            .collect();
        assert!(
            round_keys.is_subset(&reported),
            "the truncation report misses divergent messages: {:?}",
            round_keys.difference(&reported).collect::<Vec<_>>()
        );
        let acked: BTreeSet<&String> = history
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| &s.key)
            .collect();
        assert!(
            reported.iter().all(|k| !acked.contains(k)),
            "the report lists acknowledged messages under SYNC_MASTER"
        );

        // Restarted without the failpoint: recovery finishes the cut, the broker catches up.
        brokers[old as usize] = broker_with(dir.path(), old, &controllers, SETTINGS);
        wait_for_full_set(&controllers, Duration::from_secs(30));
        eprintln!(
            "{failpoint}: broker {old} killed inside its truncation, rejoined as a slave of {:?}",
            group_state(&controllers).master
        );
    }

    let consumed = check_history(dir.path(), &controllers, &brokers, &history);
    let came_back: Vec<&String> = divergent_keys.intersection(&consumed).collect();
    assert!(
        came_back.is_empty(),
        "cut messages came back to consumers: {came_back:?}"
    );
}
