//! `cluster-cli ha status` against real processes: one controller, broker group `broker-a` with
//! an `ASYNC_MASTER` (id 0) and a slave (id 1) on 127.0.0.1 with ephemeral ports.
//!
//! Checked: once the slave has joined, the master's answer (through the CLI, found via the
//! controller) shows it connected and in sync, in the in-sync set `[0, 1]`; an unknown group is
//! exit code 1 with nothing on stdout.

use std::path::Path;
use std::time::Duration;

use cluster_tests::{
    cli_json, cluster_cli, group_member, wait_until, BrokerProcess, ControllerQuorum,
};

/// Broker `id` of `broker-a`.
fn broker(dir: &Path, id: u64, role: &str, controllers: &str) -> BrokerProcess {
    group_member(dir, "broker-a", id, role, controllers, &[])
}

fn ha_status(controllers: &str, group: &str) -> Option<serde_json::Value> {
    cli_json(&["--controller", controllers, "--json", "ha", "status", group])
}

/// The master's replica entry for broker `id`, if the answer has one.
fn replica(status: &serde_json::Value, id: u64) -> Option<&serde_json::Value> {
    status["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["broker_id"] == id)
}

#[test]
fn ha_status_shows_the_slave_connected_and_in_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let master = broker(dir.path(), 0, "ASYNC_MASTER", &controllers);
    let _slave = broker(dir.path(), 1, "SLAVE", &controllers);

    let mut last = None;
    let joined = wait_until(Duration::from_secs(30), || {
        last = ha_status(&controllers, "broker-a");
        last.as_ref().is_some_and(|s| {
            s["in_sync_set"] == serde_json::json!([0, 1])
                && replica(s, 1).is_some_and(|r| r["connected"] == true && r["in_sync"] == true)
        })
    });
    assert!(
        joined,
        "the slave never showed connected and in sync; last answer: {last:?}"
    );
    let status = last.expect("answered");
    assert_eq!(status["group"], "broker-a");
    assert_eq!(status["master_id"], 0);
    assert_eq!(status["master_addr"], master.addr());
    assert_eq!(status["master_reachable"], true);
    assert_eq!(status["replication"], "ASYNC_MASTER");
    assert!(status["master_epoch"].as_u64().is_some_and(|e| e >= 1));
    assert!(status["in_sync_set_epoch"].as_u64().is_some_and(|e| e >= 1));
    assert!(status["min_in_sync_replicas"].as_u64().is_some());
    let slave = replica(&status, 1).expect("the slave's entry");
    assert_eq!(slave["in_sync"], true);
    assert!(slave["addr"].as_str().is_some_and(|a| !a.is_empty()));
    assert!(slave["written_offset"].as_u64().is_some());

    // The human table answers too, with the slave's row.
    let (code, text) = cluster_cli(&["--controller", &controllers, "ha", "status", "broker-a"]);
    assert_eq!(code, 0, "ha status: {text}");
    assert!(text.contains("ASYNC_MASTER"), "{text}");
    assert!(text.contains("IN_SYNC"), "{text}");

    let (code, out) = cluster_cli(&[
        "--controller",
        &controllers,
        "--json",
        "ha",
        "status",
        "nosuchgroup",
    ]);
    assert_eq!(code, 1, "an unknown group is exit 1; stdout: {out}");
    assert!(
        out.trim().is_empty(),
        "nothing on stdout for an unknown group: {out}"
    );
}
