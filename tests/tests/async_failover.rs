//! Failover of an `ASYNC_MASTER` group: what it may lose, and how that loss is reported. Real
//! processes: one controller, broker group `broker-a` of three `CONTROLLED` brokers with
//! `replication_mode = ASYNC` and `SYNC_FLUSH`, a routed producer sending without pause.
//!
//! `ASYNC_MASTER` acknowledges once the master has flushed a message, before any slave holds it,
//! so a failover can lose acknowledged messages. The test makes that loss certain: both slaves
//! are killed, the master keeps acknowledging on its own, then the master is killed and the
//! slaves restarted; one of them is elected without the last messages.
//!
//! Invariants:
//! - the loss is bounded by the replication lag: every SEND_OK message that is not consumed
//!   afterwards was acknowledged while the slaves were down or within a second before (the lag
//!   at that moment); everything acknowledged earlier is consumed, in per-queue order, and every
//!   broker's log ends identical to the new master's;
//! - the loss is reported: when the old master rejoins, its truncation report lists every lost
//!   message.

use std::time::{Duration, Instant};

use cluster_tests::failover::{
    broker_with, consume_history, runtime, start_group, truncation_reported_keys,
    wait_for_full_set, wait_for_successor, Sender, BROKERS,
};
use cluster_tests::wait_until;

/// Asynchronous replication; slaves down for a few seconds stay in the in-sync set.
const SETTINGS: &[&str] = &[
    "--set",
    "replication_mode=\"ASYNC\"",
    "--set",
    "in_sync_lag_max_ms=20000",
    "--set",
    "in_sync_gone_max_ms=20000",
];

#[test]
fn an_async_master_failover_loses_only_the_lag_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), SETTINGS);
    let before = wait_for_full_set(&controllers, Duration::from_secs(30));
    let old = before.master.expect("a master");
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let warm = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || sender.acked_since(warm) >= 50),
        "the group does not acknowledge"
    );

    // The slaves die; the master goes on acknowledging alone.
    let slaves: Vec<u64> = (0..BROKERS).filter(|id| *id != old).collect();
    for id in &slaves {
        brokers[*id as usize].kill();
    }
    // Taken once both slaves have exited: a send started earlier may still have reached one.
    let slaves_down_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || sender
            .acked_since(slaves_down_at)
            >= 30),
        "the ASYNC master stopped acknowledging without its slaves"
    );
    let master_killed_at = Instant::now();
    brokers[old as usize].kill();
    let acked_alone = sender.acked_since(slaves_down_at);

    // The slaves return; one is elected (both were in the in-sync set), the old master rejoins.
    for id in &slaves {
        brokers[*id as usize] = broker_with(dir.path(), *id, &controllers, SETTINGS);
    }
    wait_for_successor(&controllers, old, before.epoch);
    assert!(
        wait_until(Duration::from_secs(15), || sender
            .first_ok_started_after(master_killed_at)
            .is_some()),
        "no SEND_OK from the successor"
    );
    brokers[old as usize] = broker_with(dir.path(), old, &controllers, SETTINGS);
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let history = sender.finish(&rt);

    let (_, lost) = consume_history(dir.path(), &controllers, &brokers, &history);
    // Bounded by the lag: only what the slaves could not have copied.
    let lag_from = slaves_down_at - Duration::from_secs(1);
    let early: Vec<&String> = history
        .iter()
        .filter(|s| lost.contains(&s.key) && s.finished < lag_from)
        .map(|s| &s.key)
        .collect();
    assert!(
        early.is_empty(),
        "lost messages acknowledged before the slaves went down: {early:?}"
    );
    // Everything acknowledged by the master alone is gone: the test did make a loss.
    assert!(
        lost.len() >= acked_alone,
        "{} lost, but the master acknowledged {acked_alone} alone",
        lost.len()
    );
    // Reported: the old master's truncation listed every lost message.
    let reported = truncation_reported_keys(&dir.path().join(format!("broker-a-{old}")));
    let unreported: Vec<&String> = lost.iter().filter(|k| !reported.contains(*k)).collect();
    assert!(
        unreported.is_empty(),
        "lost messages missing from the truncation report: {unreported:?}"
    );
    eprintln!(
        "ASYNC_MASTER failover: {} SEND_OK, {} lost ({} acknowledged with both slaves down), all \
         {} listed in the rejoining master's truncation report ({} entries)",
        history.iter().filter(|s| s.outcome.is_ok()).count(),
        lost.len(),
        acked_alone,
        lost.len(),
        reported.len()
    );
}
