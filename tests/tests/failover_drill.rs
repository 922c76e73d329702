//! `scripts/failover-drill.sh`, the operators' failover rehearsal, end to end: it brings up the
//! topology, kills a master with SIGKILL each round while producers and a consumer group run,
//! and checks the whole history.
//!
//! Invariant (2m-2s-sync): every message acknowledged `SEND_OK` is consumed afterwards (`"lost":
//! 0`), in per-producer, per-queue send order; every round fails over (a failover time is
//! measured for each). 2m-2s-async may lose up to the replication lag: the drill passes and
//! reports the count. The last line of stdout is the JSON summary either way.

use cluster_tests::run_script;
use serde_json::Value;

fn drill(topology: &str, rounds: u32, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    let rounds_arg = rounds.to_string();
    let mut args = vec![
        "--topology",
        topology,
        "--rounds",
        &rounds_arg,
        "--controllers",
        "1",
        "--dir",
        cluster_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_script("failover-drill.sh", &args);
    eprintln!("{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("the last line is not the JSON summary: {stdout}"));
    assert_eq!(code, 0, "the drill failed: {summary}");
    assert_eq!(summary["passed"], true, "{summary}");
    assert_eq!(summary["rounds"], rounds, "{summary}");
    assert_eq!(summary["order_violations"], 0, "{summary}");
    assert!(summary["acked"].as_u64().unwrap() > 0, "{summary}");
    for round in summary["round_details"].as_array().unwrap() {
        // The new master cannot acknowledge before it is elected: a failover time shorter than
        // the election (seen by polling, within a few tens of ms) counted the old master's.
        let failover = round["failover_ms"].as_u64().expect("a failover time");
        assert!(
            failover + 200 >= round["elected_ms"].as_u64().unwrap(),
            "{round}"
        );
        assert!(
            round["new_epoch"].as_u64() > round["old_epoch"].as_u64(),
            "{round}"
        );
    }
    for field in ["p50", "p99", "max"] {
        assert!(
            summary["failover_ms"][field].as_u64().is_some(),
            "{summary}"
        );
    }
    assert!(
        !cluster_dir.exists(),
        "a passing drill brings its cluster down and removes it"
    );
    summary
}

#[test]
fn a_sync_topology_loses_nothing_over_five_master_kills() {
    let summary = drill("2m-2s-sync", 5, &[]);
    assert_eq!(summary["lost"], 0, "{summary}");
    eprintln!("2m-2s-sync drill: {summary}");
}

#[test]
fn an_async_topology_drill_reports_its_loss_and_passes() {
    let summary = drill("2m-2s-async", 2, &[]);
    assert!(summary["lost"].as_u64().is_some(), "{summary}");
    eprintln!("2m-2s-async drill: {summary}");
}

/// The same promise with every port encrypted and every request checked against the ACL
/// (`--tls --acl`): masters killed while producers and consumers run as the built-in admin over
/// TLS, and nothing acknowledged is lost. (`tests/tls.rs` shows that a plaintext connection to
/// each port is refused.)
#[test]
fn a_sync_topology_with_tls_and_the_acl_loses_nothing() {
    let summary = drill("2m-2s-sync", 2, &["--tls", "--acl"]);
    assert_eq!(summary["lost"], 0, "{summary}");
    eprintln!("2m-2s-sync drill with --tls --acl: {summary}");
}
