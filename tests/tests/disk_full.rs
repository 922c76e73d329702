//! A master's disk fills while a producer sends, as real processes: one controller and broker
//! group `broker-a` of three `CONTROLLED` brokers (`SYNC_MASTER`, `SYNC_FLUSH`,
//! `min_in_sync_replicas = 1`); broker 0, the master, keeps its store on a small loop-mounted
//! ext4 file system that the test fills with a file of its own.
//!
//! Invariants, on the whole history of each test:
//! - every message acknowledged `SEND_OK` is consumed afterwards, per queue in send order;
//! - the master whose disk filled stops being master: a sound in-sync broker is elected and
//!   sends are `SEND_OK` again;
//! - once space is freed, the old master is back as a slave in the in-sync set, its log
//!   byte-identical to the new master's, with no store problem reported.

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_tests::failover::{
    check_history, group_state, runtime, start_group, store_of, switch_over, wait_for_full_set,
    Sender,
};
use cluster_tests::{log_mentions, wait_until, LoopFs};

/// Small segments, so that the headroom the high-water mark keeps (two segments) and the
/// preallocated next segment fit a small file system many times over (a segment must hold the
/// largest record, hence the smaller message limit).
const SEGMENT_BYTES: &str = "segment_bytes=1048576";
const MESSAGE_BYTES: &str = "max_message_bytes=262144";
const FS_BYTES: u64 = 48 << 20;

/// Starts the group with broker 0's store on `fs`'s mount point and makes broker 0 master.
fn group_with_master_on_small_disk(
    dir: &Path,
    extra: &[&str],
) -> (
    cluster_tests::ControllerQuorum,
    String,
    Vec<cluster_tests::BrokerProcess>,
) {
    let mut args = vec![
        "--set",
        SEGMENT_BYTES,
        "--set",
        MESSAGE_BYTES,
        "--set",
        "min_in_sync_replicas=1",
    ];
    args.extend_from_slice(extra);
    let (quorum, controllers, brokers) = start_group(dir, &args);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    if state.master != Some(0) {
        switch_over(&controllers, Some(0), state.epoch);
        assert!(wait_until(Duration::from_secs(20), || {
            group_state(&controllers).master == Some(0)
        }));
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    (quorum, controllers, brokers)
}

#[test]
fn a_master_past_its_high_water_mark_hands_over_and_rejoins_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopFs::mount(dir.path(), &dir.path().join("broker-a-0"), FS_BYTES);
    let (_quorum, controllers, brokers) = group_with_master_on_small_disk(dir.path(), &[]);
    let epoch = group_state(&controllers).epoch;
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(20), || sender
        .acked_since(started)
        >= 50));

    // Past the high-water mark (less than two segments free), but not full: the broker's own
    // writes and replication still fit.
    fs.fill(1 << 20);
    let filled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let state = group_state(&controllers);
            state.master.is_some_and(|m| m != 0) && state.epoch > epoch
        }),
        "the master past its high-water mark was not moved off: {:?}, store {}",
        group_state(&controllers),
        store_of(&controllers, 0)
    );
    assert_eq!(store_of(&controllers, 0)["disk_full"], true);
    assert!(
        wait_until(Duration::from_secs(20), || sender
            .first_ok_started_after(filled)
            .is_some()),
        "no SEND_OK after the handover"
    );

    fs.free();
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    assert_ne!(state.master, Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || store_of(&controllers, 0)
            ["problem"]
            == ""),
        "broker 0 still reports {}",
        store_of(&controllers, 0)
    );
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}

#[test]
fn a_master_whose_disk_fills_completely_restarts_fails_over_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LoopFs::mount(dir.path(), &dir.path().join("broker-a-0"), FS_BYTES);
    // The high-water mark at 100 % (and tiny segments, so tiny headroom): the disk fills for
    // real and a write of the store fails.
    let (_quorum, controllers, brokers) =
        group_with_master_on_small_disk(dir.path(), &["--set", "disk_high_water_ratio=1.0"]);
    let epoch = group_state(&controllers).epoch;
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(20), || sender
        .acked_since(started)
        >= 50));

    fs.fill(0);
    let filled = Instant::now();
    let log = dir.path().join("broker-a-0.log");
    assert!(
        wait_until(Duration::from_secs(20), || log_mentions(
            &log,
            "gives its place up and restarts"
        ) > 0),
        "broker 0 did not restart after its store failed to write"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let state = group_state(&controllers);
            state.master.is_some_and(|m| m != 0) && state.epoch > epoch
        }),
        "no other master elected: {:?}",
        group_state(&controllers)
    );
    assert!(
        wait_until(Duration::from_secs(20), || sender
            .first_ok_started_after(filled)
            .is_some()),
        "no SEND_OK after the failover"
    );
    // While the disk stays full the restarted broker stays out, and says so.
    assert!(wait_until(Duration::from_secs(20), || log_mentions(
        &log,
        "stays out of its group until space returns"
    ) > 0));

    fs.free();
    let state = wait_for_full_set(&controllers, Duration::from_secs(60));
    assert_ne!(state.master, Some(0));
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}
