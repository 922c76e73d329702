//! A controller leader stopped with SIGTERM hands leadership over (controller/src/handover.rs).
//!
//! Invariant: the stopping leader asks the follower with the most complete log to campaign when
//! openraft's vote lease ends; that follower accepts (it is a follower of that leader, in that
//! term), and the two survivors have a new leader of a later term. Who wins and how fast is the
//! rolling-restart benchmark's (docs/BENCHMARKS.md), not this test's: a follower's own election
//! timer may still fire first, which is as safe.

use std::time::Duration;

use cluster_tests::ControllerQuorum;
use cluster_tests::{controller_leader, log_mentions, wait_for_controller_leader, wait_until};

#[test]
fn a_stopping_leader_names_a_successor_and_the_quorum_elects_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let all = quorum.addrs();
    let old = wait_for_controller_leader(&all);
    quorum.kill(old, libc::SIGTERM);
    let survivors: Vec<String> = quorum
        .members
        .iter()
        .filter(|m| m.id != old)
        .map(|m| m.addr.clone())
        .collect();
    let survivors = survivors.join(",");
    let mut new = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            new = controller_leader(&survivors).filter(|id| *id != old);
            new.is_some()
        }),
        "the survivors elect a new leader"
    );
    let old_log = dir.path().join(format!("controller-{old}.log"));
    assert_eq!(
        log_mentions(&old_log, "leadership handed over"),
        1,
        "the stopping leader named a successor, which accepted"
    );
}
