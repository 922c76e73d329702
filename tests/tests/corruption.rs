//! Flipped bits in a replica's commit log, as real processes: one controller and broker group
//! `broker-a` of three `CONTROLLED` brokers (`SYNC_MASTER`, `SYNC_FLUSH`), while a producer
//! sends. The test flips 64 bytes at a random place of a broker's first segment (the seed is
//! printed; `CORRUPTION_SEED` replays it): a stopped slave's (at rest), and the running
//! master's.
//!
//! Invariants, on the whole history of each test:
//! - a corrupt replica is never elected while a sound in-sync one is alive, and a corrupt master
//!   gives mastership up;
//! - the corrupt replica repairs itself from a healthy one: it ends byte-identical to the master
//!   below the confirm offset, back in the in-sync set, with no store problem reported;
//! - every message acknowledged `SEND_OK` is consumed afterwards, per queue in send order.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster_tests::failover::{
    broker_with, check_history, group_state, runtime, start_group, store_of, wait_for_full_set,
    wait_for_successor, Sender,
};
use cluster_tests::wait_until;

/// Small segments and a fast scrubber, so that a pass over the test's log takes milliseconds and
/// passes start twice a second.
const ARGS: &[&str] = &[
    // A stopped slave stays in the in-sync set (no planned stop): the at-rest test needs a
    // corrupt member of the set, excluded from the election by its store's report alone.
    "--set",
    "planned_stop=false",
    "--set",
    "segment_bytes=4194304",
    "--set",
    "max_message_bytes=262144",
    "--set",
    "scrub_bytes_per_second=268435456",
    "--set",
    "scrub_pass_interval_ms=500",
];

/// A seed from `CORRUPTION_SEED`, else from the clock; printed, so that a failure replays.
fn seed() -> u64 {
    let seed = std::env::var("CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                | 1
        });
    eprintln!("CORRUPTION_SEED={seed}");
    seed
}

/// XORs 64 bytes at a place drawn from `seed` in what broker `id` wrote to its first segment
/// (`written`: its log end), through the file: a running broker's page cache sees it too.
fn flip_bits(dir: &Path, id: u64, written: u64, seed: u64) {
    let segment = dir
        .join(format!("broker-a-{id}"))
        .join("commitlog")
        .join(format!("{:020}", 0));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .expect("open the first segment");
    let in_segment = written.min(4 << 20);
    assert!(
        in_segment > 64 * 1024,
        "too little written to flip bits in the middle"
    );
    // xorshift64*: any record of the segment but the first and last 4 KiB (the first holds
    // the group's first records, the last may still be written).
    let mut x = seed;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let draw = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let position = 4096 + 4096 + draw % (in_segment - 2 * 4096 - 64);
    let mut bytes = [0u8; 64];
    file.read_exact_at(&mut bytes, position).unwrap();
    for byte in &mut bytes {
        *byte ^= 0x5a;
    }
    file.write_all_at(&bytes, position).unwrap();
    file.sync_all().unwrap();
    eprintln!("flipped 64 bytes of broker {id}'s log at file position {position}");
}

/// Waits until every broker is in sync and reports a sound store.
fn wait_for_sound_full_set(controllers: &str) {
    wait_for_full_set(controllers, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), || (0..3).all(|id| {
            let store = store_of(controllers, id);
            store["problem"] == "" && store["corrupt_offset"].is_null()
        })),
        "a store problem remains: {} / {} / {}",
        store_of(controllers, 0),
        store_of(controllers, 1),
        store_of(controllers, 2)
    );
    wait_for_full_set(controllers, Duration::from_secs(60));
}

#[test]
fn a_slave_corrupt_at_rest_is_never_elected_and_repairs_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), ARGS);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    let master = state.master.unwrap();
    let (corrupt, sound) = match master {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(30), || sender
        .acked_since(started)
        >= 500));

    // At rest: a clean stop, then the flip (below the verified offset its checkpoint saved, so
    // only the scrubber can find it).
    let written = group_state(&controllers).brokers[&corrupt].1;
    brokers[corrupt as usize].stop();
    flip_bits(dir.path(), corrupt, written, seed());
    // The master cannot take the corrupt slave out of the set while stopped: the election below
    // must exclude it by its store's report alone.
    brokers[master as usize].signal(libc::SIGSTOP);
    brokers[corrupt as usize] = broker_with(dir.path(), corrupt, &controllers, ARGS);
    assert!(
        wait_until(Duration::from_secs(20), || !store_of(&controllers, corrupt)
            ["corrupt_offset"]
            .is_null()),
        "the restarted slave did not report its corrupt record: {}",
        store_of(&controllers, corrupt)
    );
    brokers[master as usize].kill();
    let elected = wait_for_successor(&controllers, master, state.epoch);
    assert_eq!(
        elected.master,
        Some(sound),
        "the corrupt slave was elected over a sound in-sync one"
    );

    brokers[master as usize] = broker_with(dir.path(), master, &controllers, ARGS);
    wait_for_sound_full_set(&controllers);
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}

#[test]
fn a_master_corrupt_while_running_hands_over_and_repairs_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), ARGS);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    let master = state.master.unwrap();
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(30), || sender
        .acked_since(started)
        >= 500));

    let written = group_state(&controllers).brokers[&master].1;
    flip_bits(dir.path(), master, written, seed());
    let flipped = Instant::now();
    let elected = wait_for_successor(&controllers, master, state.epoch);
    assert_ne!(elected.master, Some(master));
    assert!(
        wait_until(Duration::from_secs(20), || sender
            .first_ok_started_after(flipped)
            .is_some()),
        "no SEND_OK after the handover"
    );
    wait_for_sound_full_set(&controllers);
    let history = sender.finish(&rt);
    check_history(dir.path(), &controllers, &brokers, &history);
}
