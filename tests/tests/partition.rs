//! A master cut off from the controllers while its slaves and clients still reach it. Real
//! processes: one controller on 127.0.0.2, broker group `broker-a` of three `CONTROLLED` brokers
//! (SYNC_MASTER + SYNC_FLUSH), each on a loopback address of its own (127.0.0.10 + id) that it
//! listens on and dials out from (`source_ip`), and clients on 127.0.0.1. `iptables` drops every
//! packet between the master's address and the controller's, both ways (the script installs it
//! when missing; the test runs as root, as CI does).
//!
//! The fault: a partition, not a crash. The master keeps running, serving its clients and its
//! slaves, and keeps believing it is master. Invariants:
//! - once its successor is elected, the cut-off master acknowledges nothing: every send that
//!   reaches it from then on is answered with an error, never `SEND_OK` (its lease ran out
//!   before the election), so no two masters acknowledge in overlapping time;
//! - the failover goes by the lease: a cut-off master's host refuses nothing, so it is never
//!   taken for gone (`controller/src/gone.rs`);
//! - after the link heals, the old master rejoins as a slave; every message acknowledged
//!   `SEND_OK` is consumed, in per-queue order, and every log is byte-identical to the final
//!   master's up to the confirm offset.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, SendStatus};
use cluster_tests::failover::{
    broker_ip, check_history, group_state, runtime, start_group_on, wait_for_full_set,
    wait_for_successor, Sender, TOPIC,
};
use cluster_tests::{log_mentions, wait_until};

const CONTROLLER_IP: &str = "127.0.0.2";

/// The `iptables` binary, installed from the distribution's packages when missing.
fn iptables() -> &'static str {
    let present = |path: &str| std::path::Path::new(path).exists();
    for path in ["/usr/sbin/iptables", "/sbin/iptables"] {
        if present(path) {
            return path;
        }
    }
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/install-iptables.sh"
        ))
        .status()
        .expect("run scripts/install-iptables.sh");
    assert!(
        status.success(),
        "iptables could not be installed: {status}"
    );
    ["/usr/sbin/iptables", "/sbin/iptables"]
        .into_iter()
        .find(|path| present(path))
        .expect("iptables installed")
}

/// Rules that drop every packet between two addresses, both ways; removed when dropped, even
/// when the test fails.
struct Cut {
    iptables: &'static str,
    rules: Vec<[String; 4]>,
}

impl Cut {
    fn between(a: &str, b: &str) -> Cut {
        let iptables = iptables();
        let rules = vec![
            ["-s".into(), a.into(), "-d".into(), b.into()],
            ["-s".into(), b.into(), "-d".into(), a.into()],
        ];
        for rule in &rules {
            run(iptables, "-I", rule);
        }
        Cut { iptables, rules }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in &self.rules {
            run(self.iptables, "-D", rule);
        }
    }
}

fn run(iptables: &str, action: &str, rule: &[String; 4]) {
    let status = Command::new(iptables)
        .args([action, "INPUT"])
        .args(rule)
        .args(["-j", "DROP"])
        .status()
        .expect("run iptables");
    assert!(
        status.success(),
        "iptables {action} INPUT {rule:?} -j DROP: {status}"
    );
}

#[test]
fn a_master_cut_off_from_the_controllers_acknowledges_nothing_once_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group_on(dir.path(), CONTROLLER_IP, &[]);
    let before = wait_for_full_set(&controllers, Duration::from_secs(30));
    let old = before.master.expect("a master");

    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    // A producer of the old master's own: what it answers during and after the partition.
    let direct = rt
        .block_on(Producer::connect(
            brokers[old as usize].addr(),
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

    let cut_at = Instant::now();
    let cut = Cut::between(&broker_ip(old), CONTROLLER_IP);
    let after = wait_for_successor(&controllers, old, before.epoch);
    let elected_in = cut_at.elapsed();
    assert!(
        wait_until(Duration::from_secs(15), || sender
            .first_ok_started_after(cut_at)
            .is_some()),
        "no SEND_OK from the successor {:?}",
        after.master
    );

    // The old master still runs and still reaches its clients: everything it answers now is an
    // error.
    for i in 0..20 {
        let answer = rt.block_on(
            direct.send(
                Message::new(TOPIC, Bytes::from_static(b"to the cut-off master"))
                    .with_key(format!("cut-{i}")),
            ),
        );
        assert!(
            !matches!(&answer, Ok(r) if r.status == SendStatus::SendOk),
            "the cut-off master acknowledged send {i} after its successor's election: {answer:?}"
        );
    }
    eprintln!(
        "master {old} cut off from the controller; broker {:?} elected after {elected_in:?}",
        after.master
    );

    // Healed: the old master learns it was replaced and rejoins as a slave.
    drop(cut);
    let healed = Instant::now();
    wait_for_full_set(&controllers, Duration::from_secs(30));
    eprintln!(
        "healed: master {old} rejoined as a slave after {:?}",
        healed.elapsed()
    );
    let state = group_state(&controllers);
    assert_ne!(state.master, Some(old));
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);

    let controller_log = dir.path().join("controller-1.log");
    assert_eq!(log_mentions(&controller_log, "master process gone"), 0);
    assert_eq!(log_mentions(&controller_log, "reason=\"master lost\""), 1);
}
