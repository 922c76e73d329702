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
//!   reaches it after its successor was elected is answered with an error;
//! - a killed master is replaced on the evidence that its process is gone (its slaves find its
//!   host refusing connections), a paused one only once its lease has run out.
//!
//! Failover time (kill -9 of the master to the first `SEND_OK` of a send started after the kill)
//! is printed per drill; `FAILOVER_DRILLS` sets how many kill drills run (default 5).

use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, SendStatus};
use cluster_tests::failover::{
    broker, check_history, group_state, runtime, start_group, switch_over, wait_for_full_set,
    wait_for_successor, Sender, BROKERS, TOPIC,
};
use cluster_tests::{log_mentions, wait_until};

#[test]
fn killing_the_master_again_and_again_loses_no_acknowledged_message() {
    let drills: usize = std::env::var("FAILOVER_DRILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), &[]);
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
        brokers[master as usize].kill();
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
    // Nearest rank: with 20 drills the p99 is the slowest.
    let p99 = times[(times.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "failover times over {drills} drills: min {:?}, median {:?}, p99 {p99:?}, max {:?}",
        times.first(),
        times.get(times.len() / 2),
        times.last()
    );
    check_history(dir.path(), &controllers, &brokers, &history);
    // A killed master's host refuses connections at once: every failover went by that evidence,
    // not by the lease (controller/src/gone.rs).
    let by_evidence = log_mentions(
        &dir.path().join("controller-1.log"),
        "reason=\"master process gone\"",
    );
    assert_eq!(
        by_evidence, drills,
        "{by_evidence} of {drills} failovers elected on the evidence that the master is gone"
    );
}

#[test]
fn a_stopped_master_that_wakes_after_its_successor_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &[]);
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
    wait_for_successor(&controllers, old as u64, before.epoch);
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
    // A paused master's host still accepts connections: no evidence, the lease ruled.
    let controller_log = dir.path().join("controller-1.log");
    assert_eq!(log_mentions(&controller_log, "master process gone"), 0);
    assert_eq!(log_mentions(&controller_log, "reason=\"master lost\""), 1);
}

#[test]
fn a_planned_switchover_moves_mastership_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &[]);
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
        let asked_at = switch_over(&controllers, Some(target), before.epoch);
        let after = group_state(&controllers);
        assert_eq!(after.master, Some(target), "{after:?}");
        assert!(after.epoch > before.epoch);
        // The longest gap between two SEND_OKs around the switchover, once the new master has
        // acknowledged a few.
        assert!(
            wait_until(Duration::from_secs(10), || sender.acked_since(asked_at)
                >= 20),
            "the new master acknowledges nothing"
        );
        // From the last SEND_OK before the request to the first after the new master's election.
        let gap = {
            let log = sender.log.lock().unwrap();
            let last_before = log
                .iter()
                .filter(|s| s.outcome.is_ok() && s.finished < asked_at)
                .map(|s| s.finished)
                .max()
                .unwrap_or(asked_at);
            let oks: Vec<Instant> = log
                .iter()
                .filter(|s| s.outcome.is_ok() && s.finished >= last_before)
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

/// Regression: an idle controlled master's keep-alives were never sent, because the controller's
/// views (one per heartbeat) woke the shipping loop more often than the keep-alive interval and
/// each wake-up restarted its timer; the slaves dropped their streams as silent every 1.6 s.
#[test]
fn an_idle_controlled_master_keeps_its_slaves_streams_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, _brokers) = start_group(dir.path(), &[]);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    let slaves: Vec<u64> = (0..BROKERS)
        .filter(|id| Some(*id) != state.master)
        .collect();
    let dropped = |id: u64| {
        log_mentions(
            &dir.path().join(format!("broker-a-{id}.log")),
            "the master was silent",
        )
    };
    // Three times the slaves' silence limit (3 keep-alives + 1 s): any drop shows by then.
    let any_dropped = wait_until(Duration::from_secs(5), || {
        slaves.iter().any(|id| dropped(*id) > 0)
    });
    assert!(
        !any_dropped,
        "an idle master's slaves found it silent: {:?}",
        slaves
            .iter()
            .map(|id| (id, dropped(*id)))
            .collect::<Vec<_>>()
    );
}
