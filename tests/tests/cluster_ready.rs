//! `cluster ready` answers from fresh facts only, with real controllers and brokers.
//!
//! Invariant: ready is never answered while the controller quorum has no leader with its
//! quorum, nor while a broker it counts may be gone: a broker stopped with SIGTERM is not ready
//! as soon as its process has exited (it tells the controller on its way out), and one killed
//! with SIGKILL within about two heartbeat intervals (not after the 3 s heartbeat timeout).

use std::time::{Duration, Instant};

use cluster_tests::{
    cluster_cli, group_broker, wait_for_controller_leader, wait_for_masters, wait_until,
    ControllerQuorum,
};
use serde_json::Value;

/// `cluster ready --json` once (or waiting up to `wait_s`); its exit code and answer.
fn ready(controllers: &str, wait_s: u64) -> (i32, Value) {
    let (code, stdout) = cluster_cli(&[
        "--controller",
        controllers,
        "--json",
        "cluster",
        "ready",
        "--groups",
        "2",
        "--brokers",
        "2",
        "--wait-s",
        &wait_s.to_string(),
    ]);
    let answer = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (code, answer)
}

fn problems_mention(answer: &Value, needle: &str) -> bool {
    answer["problems"].as_array().is_some_and(|problems| {
        problems
            .iter()
            .any(|p| p.as_str().unwrap_or("").contains(needle))
    })
}

#[test]
fn ready_is_false_right_after_a_broker_stops_and_without_a_controller_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let addrs = quorum.addrs();
    wait_for_controller_leader(&addrs);
    let _a = group_broker(dir.path(), "broker-a", &addrs);
    let b = group_broker(dir.path(), "broker-b", &addrs);
    wait_for_masters(&addrs, 2);
    let (code, answer) = ready(&addrs, 30);
    assert_eq!(code, 0, "{answer}");

    // SIGTERM: once the process has exited, ready says no at the first question.
    b.signal(libc::SIGTERM);
    assert!(b.wait().success(), "broker-b stops cleanly");
    let (code, answer) = ready(&addrs, 0);
    assert_eq!(code, 1, "ready right after broker-b stopped: {answer}");
    assert!(problems_mention(&answer, "broker-b"), "{answer}");

    // Back again (a new process), then SIGKILL: not ready well before the heartbeat timeout.
    let mut b = group_broker(dir.path(), "broker-b", &addrs);
    let (code, answer) = ready(&addrs, 30);
    assert_eq!(code, 0, "after broker-b's restart: {answer}");
    b.kill();
    let killed = Instant::now();
    let mut last = Value::Null;
    let noticed = wait_until(Duration::from_secs(2), || {
        let (code, answer) = ready(&addrs, 0);
        last = answer;
        code == 1
    });
    assert!(noticed, "still ready 2 s after broker-b's SIGKILL: {last}");
    eprintln!(
        "not ready {} ms after broker-b's SIGKILL: {last}",
        killed.elapsed().as_millis()
    );
    let _b = group_broker(dir.path(), "broker-b", &addrs);
    let (code, answer) = ready(&addrs, 30);
    assert_eq!(code, 0, "after broker-b's second restart: {answer}");

    // Two of three controllers gone: no quorum, so no ready, though every broker is up.
    let leader = wait_for_controller_leader(&addrs);
    let follower = quorum
        .members
        .iter()
        .map(|m| m.id)
        .find(|id| *id != leader)
        .expect("a follower");
    quorum.kill(leader, libc::SIGKILL);
    quorum.kill(follower, libc::SIGKILL);
    let (code, answer) = ready(&addrs, 0);
    assert_eq!(code, 1, "ready without a controller quorum: {answer}");
    assert!(problems_mention(&answer, "controller"), "{answer}");
}
