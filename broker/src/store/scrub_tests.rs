//! Behaviour tests of verification: recovery from the verified offset, the scrubber, and what
//! the store does with a corrupt record they find. Each states the behaviour that must hold.
//!
//! Invariant under test: no record is served unless it passed its CRC check, and every corrupt
//! record is reported (store health) with the commit-log offset where it starts, whoever finds
//! it, while the rest of the log stays readable.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::scrub::{Scrubber, Step};
use super::tests::{settle, small_config};
use super::*;

fn message(queue_id: u32, body: &str) -> NewMessage {
    NewMessage::new("t", queue_id, Bytes::copy_from_slice(body.as_bytes()))
}

/// The rate of scrubbers tests drive by hand: steps of 1 MiB.
const TEST_RATE: u64 = 1 << 20;

/// `small_config` without the background scrubber: tests that drive a [`Scrubber`] themselves.
fn no_scrubber(dir: &Path) -> StoreConfig {
    StoreConfig {
        scrub_bytes_per_second: 0,
        ..small_config(dir)
    }
}

/// Appends `count` messages of about 300 bytes to queues 0 and 1 in turn (several 8 KiB
/// segments), then stops cleanly.
async fn cleanly_stopped_store(dir: &Path, count: usize) -> Vec<AppendResult> {
    let store = Store::open(no_scrubber(dir)).unwrap();
    let mut results = Vec::new();
    for i in 0..count {
        let body = format!("{i:0>300}");
        results.push(store.append(message((i % 2) as u32, &body)).await.unwrap());
    }
    store.shutdown().unwrap();
    results
}

/// Flips (inverts) `len` bytes of the commit log from `commit_log_offset`, in whichever segment
/// file holds it, the way a failing disk would: under the store, through the file system.
fn flip_bytes(dir: &Path, commit_log_offset: u64, len: usize) {
    let segment_bytes = small_config(dir).segment_bytes;
    let base = commit_log_offset / segment_bytes * segment_bytes;
    let path = dir
        .join(recovery::COMMIT_LOG_DIR)
        .join(segment::segment_file_name(base));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let position = segment::SEGMENT_HEADER_BYTES + commit_log_offset - base;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, position).unwrap();
    for byte in &mut bytes {
        *byte = !*byte;
    }
    file.write_all_at(&bytes, position).unwrap();
}

/// The record (index into `results`) that holds `commit_log_offset`.
fn record_holding(results: &[AppendResult], commit_log_offset: u64) -> usize {
    results
        .iter()
        .position(|r| r.commit_log_offset <= commit_log_offset && commit_log_offset < r.end_offset)
        .expect("a record holds the offset")
}

/// Waits (polling, with a deadline) until the store's health says `done`.
async fn wait_for_health(store: &Store, what: &str, done: impl Fn(&StoreHealth) -> bool) {
    let mut health = store.health();
    let waited = tokio::time::timeout(Duration::from_secs(20), health.wait_for(|h| done(h))).await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "{what}: health is {:?}",
        store.health().borrow()
    );
}

/// Runs one whole scrub pass; returns whether it was clean and the largest step it read.
fn scrub_pass(scrubber: &mut Scrubber) -> (bool, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut largest_step = 0;
    loop {
        assert!(Instant::now() < deadline, "a scrub pass did not end");
        match scrubber.step() {
            Step::Checked { bytes } => largest_step = largest_step.max(bytes),
            Step::PassEnded { clean, .. } => return (clean, largest_step),
        }
    }
}

fn corrupt_offset(store: &Store) -> Option<u64> {
    store
        .health()
        .borrow()
        .corrupt
        .as_ref()
        .map(|c| c.commit_log_offset)
}

/// (a) The case: 64 bytes flipped in the middle of the first segment of a store that
/// stopped cleanly lie below the verified offset, so recovery does not read them; the background
/// scrubber finds them and reports the record where they start. The store opens and serves every
/// other record meanwhile.
#[tokio::test]
async fn the_scrubber_finds_bytes_flipped_below_the_verified_offset_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 80).await;
    let flipped_at = small_config(dir.path()).segment_bytes / 2 - 32;
    flip_bytes(dir.path(), flipped_at, 64);
    let victim = record_holding(&results, flipped_at);

    let store = Store::open(small_config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.clean_shutdown);
    assert_eq!(
        report.records_checked, 0,
        "everything was verified before the stop: recovery reads nothing"
    );
    wait_for_health(&store, "the scrubber reports the flipped record", |h| {
        h.corrupt.is_some()
    })
    .await;
    let health = store.health().borrow().clone();
    assert_eq!(
        health.corrupt.as_ref().unwrap().commit_log_offset,
        results[victim].commit_log_offset
    );
    assert!(!health.verified);
    assert!(store.verified_offset() <= results[victim].commit_log_offset);
    // The bad record is never served; every other one is.
    assert!(matches!(
        store.read_message_at(results[victim].commit_log_offset),
        Err(StoreError::Corrupt { .. })
    ));
    let flipped = flipped_at..flipped_at + 64;
    let mut served = 0;
    for result in &results {
        if result.end_offset <= flipped.start || result.commit_log_offset >= flipped.end {
            store.read_message_at(result.commit_log_offset).unwrap();
            served += 1;
        }
    }
    assert!(served >= results.len() - 2);
}

/// (b) After a clean stop, recovery CRC-checks every record from the verified offset: bytes
/// flipped past it (here, the verified offset an earlier run saved before the last records
/// were checked) are found at open, reported with their record's offset, and the store opens.
#[tokio::test]
async fn recovery_finds_bytes_flipped_past_the_verified_offset_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 80).await;
    let verified_offset = results[40].commit_log_offset;
    let saved = checkpoint::Checkpoint::load(dir.path()).unwrap().unwrap();
    assert_eq!(
        saved.verified_offset,
        results.last().unwrap().end_offset,
        "a clean stop saves everything it wrote as verified"
    );
    checkpoint::Checkpoint {
        verified_offset,
        ..saved
    }
    .save(dir.path())
    .unwrap();
    let victim = 60;
    flip_bytes(dir.path(), results[victim].commit_log_offset + 100, 1);

    let store = Store::open(no_scrubber(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.clean_shutdown);
    assert_eq!(report.checked_from_offset, verified_offset);
    assert!(report.records_checked > 0);
    assert_eq!(
        report.corrupt_offset,
        Some(results[victim].commit_log_offset)
    );
    assert_eq!(
        report.dispatch_stop_offset, None,
        "the consume queues were built before the stop"
    );
    assert_eq!(
        corrupt_offset(&store),
        Some(results[victim].commit_log_offset)
    );
    assert_eq!(store.write_offset(), results.last().unwrap().end_offset);
    for (index, result) in results.iter().enumerate() {
        if index != victim {
            store.read_message_at(result.commit_log_offset).unwrap();
        }
    }
}

/// (b) A corrupt record known when the store stops is found again at the next open, by recovery
/// alone: the verified offset saved at the stop stays below it.
#[tokio::test]
async fn a_corrupt_record_known_at_a_clean_stop_is_found_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 80).await;
    let victim = 10;
    flip_bytes(dir.path(), results[victim].commit_log_offset + 70, 8);
    {
        let store = Store::open(no_scrubber(dir.path())).unwrap();
        assert_eq!(corrupt_offset(&store), None, "below the verified offset");
        let mut scrubber = Scrubber::new(Arc::clone(&store.shared), TEST_RATE);
        assert!(!scrub_pass(&mut scrubber).0);
        assert_eq!(
            corrupt_offset(&store),
            Some(results[victim].commit_log_offset)
        );
        store.shutdown().unwrap();
    }
    let saved = checkpoint::Checkpoint::load(dir.path()).unwrap().unwrap();
    assert!(saved.verified_offset <= results[victim].commit_log_offset);
    let store = Store::open(no_scrubber(dir.path())).unwrap();
    assert_eq!(
        store.recovery_report().corrupt_offset,
        Some(results[victim].commit_log_offset)
    );
    assert_eq!(
        corrupt_offset(&store),
        Some(results[victim].commit_log_offset)
    );
}

/// (c) A flipped byte in the last record after a crash is a torn tail, cut as before: not
/// corruption. Recovery, which checked the whole log here, leaves the store verified.
#[tokio::test]
async fn a_flipped_byte_in_the_torn_tail_after_a_crash_is_still_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        checkpoint_interval_ms: 3_600_000,
        ..no_scrubber(dir.path())
    };
    let results = {
        let store = Store::open(config.clone()).unwrap();
        let mut results = Vec::new();
        for i in 0..30 {
            results.push(store.append(message(i % 2, "torn")).await.unwrap());
        }
        store.halt_for_test();
        results
    };
    let last = results.last().unwrap();
    flip_bytes(dir.path(), last.commit_log_offset + 66, 1);
    let store = Store::open(config).unwrap();
    let report = store.recovery_report().clone();
    assert!(!report.clean_shutdown);
    assert_eq!(report.torn_tail_offset, Some(last.commit_log_offset));
    assert_eq!(report.corrupt_offset, None);
    assert_eq!(store.write_offset(), last.commit_log_offset);
    let health = store.health().borrow().clone();
    assert_eq!(health.corrupt, None);
    assert!(health.verified, "recovery checked the whole log");
    let next = store.append(message(1, "next")).await.unwrap();
    assert_eq!(next.commit_log_offset, last.commit_log_offset);
}

/// (d) `verified` turns true once a full pass found nothing, stays false while a corrupt record
/// is known (whatever later passes find), and turns true again after the repair's cut and the
/// next clean pass.
#[tokio::test]
async fn verified_follows_full_passes_and_stays_false_while_corruption_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 80).await;
    let store = Store::open(no_scrubber(dir.path())).unwrap();
    assert!(
        !store.health().borrow().verified,
        "recovery did not read what lies below the verified offset"
    );
    let mut scrubber = Scrubber::new(Arc::clone(&store.shared), TEST_RATE);
    assert!(scrub_pass(&mut scrubber).0);
    assert!(store.health().borrow().verified);
    assert_eq!(store.verified_offset(), store.flushed_offset());

    // The disk rots under the running store.
    let victim = 50;
    flip_bytes(dir.path(), results[victim].commit_log_offset + 90, 1);
    assert!(!scrub_pass(&mut scrubber).0);
    let health = store.health().borrow().clone();
    assert_eq!(
        health.corrupt.map(|c| c.commit_log_offset),
        Some(results[victim].commit_log_offset)
    );
    assert!(!health.verified);
    assert_eq!(store.verified_offset(), results[victim].commit_log_offset);
    // Passes end at the corrupt record, and change nothing while it is known.
    assert!(!scrub_pass(&mut scrubber).0);
    assert!(!store.health().borrow().verified);

    // The repair: cut at the corrupt record, refill, and pass again.
    store
        .truncate_to(results[victim].commit_log_offset)
        .await
        .unwrap();
    assert_eq!(corrupt_offset(&store), None);
    assert!(
        !store.health().borrow().verified,
        "not until a pass proved it"
    );
    store.append(message(0, "refill")).await.unwrap();
    assert!(scrub_pass(&mut scrubber).0);
    assert!(store.health().borrow().verified);
    assert_eq!(store.verified_offset(), store.flushed_offset());
}

/// (e) A truncation in the middle of a pass (after which new records of other sizes fill the
/// cut range, so old record boundaries fall inside new records), and retention deleting the
/// segments ahead of a pass, never make the scrubber report a sound log as corrupt: it starts
/// again after a cut and skips what retention deleted.
#[tokio::test]
async fn the_scrubber_survives_truncation_and_retention_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(no_scrubber(dir.path())).unwrap();
    let mut results = Vec::new();
    for i in 0..120 {
        results.push(
            store
                .append(message(i % 2, &format!("{i:0>300}")))
                .await
                .unwrap(),
        );
    }
    settle(&store).await;
    assert!(store.segments_for_test() > 4);
    // Steps of 4 KiB: a pass has many.
    let mut scrubber = Scrubber::new(Arc::clone(&store.shared), 4 << 10);
    for _ in 0..3 {
        assert!(matches!(scrubber.step(), Step::Checked { bytes } if bytes > 0));
    }
    // The pass stands about 12 KiB in; cut below it and refill with records of another size.
    store
        .truncate_to(results[20].commit_log_offset)
        .await
        .unwrap();
    for i in 0..100 {
        store
            .append(message(i % 2, &format!("{i:0>77}")))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    assert!(scrub_pass(&mut scrubber).0, "a cut is not corruption");
    assert_eq!(corrupt_offset(&store), None);

    // Retention deletes every segment but the last while a pass is under way.
    settle(&store).await;
    assert!(matches!(scrubber.step(), Step::Checked { bytes } if bytes > 0));
    let report = store.run_retention(now_ms() + 100 * 3_600_000).unwrap();
    assert!(report.deleted_segments > 0);
    assert!(scrub_pass(&mut scrubber).0, "retention is not corruption");
    assert_eq!(corrupt_offset(&store), None);
    assert!(store.health().borrow().verified);
}

/// (f) The rate bounds each step, whatever the clock: a step reads at most one second's worth
/// of the configured rate (down to a 4 KiB floor), plus the rest of a record it started.
#[tokio::test]
async fn a_scrub_step_reads_at_most_one_seconds_worth() {
    let dir = tempfile::tempdir().unwrap();
    cleanly_stopped_store(dir.path(), 200).await;
    for bytes_per_second in [4 << 10, 16 << 10, 1 << 20] {
        let store = Store::open(no_scrubber(dir.path())).unwrap();
        let mut scrubber = Scrubber::new(Arc::clone(&store.shared), bytes_per_second);
        let (clean, largest_step) = scrub_pass(&mut scrubber);
        assert!(clean);
        let record_bytes_max = 400;
        assert!(
            largest_step <= scrub::step_bytes(bytes_per_second) + record_bytes_max,
            "{largest_step} bytes in one step at {bytes_per_second} B/s"
        );
        assert!(largest_step > 0);
        drop(scrubber);
        store.shutdown().unwrap();
    }
}

/// A master never ships a record that fails its check: a raw read hands over the sound records
/// before it, and a raw read that starts at it fails and reports it.
#[tokio::test]
async fn raw_reads_stop_before_a_corrupt_record_and_report_it() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 20).await;
    let victim = 7;
    flip_bytes(dir.path(), results[victim].commit_log_offset + 75, 1);
    let store = Store::open(no_scrubber(dir.path())).unwrap();
    assert_eq!(corrupt_offset(&store), None, "below the verified offset");
    let shipped = store.read_raw(0, 1 << 20).unwrap();
    assert_eq!(shipped.len() as u64, results[victim].commit_log_offset);
    let err = store
        .read_raw(results[victim].commit_log_offset, 1 << 20)
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(
        corrupt_offset(&store),
        Some(results[victim].commit_log_offset)
    );
    // Past it, the log still ships.
    let after = store
        .read_raw(results[victim + 1].commit_log_offset, 1 << 20)
        .unwrap();
    assert!(!after.is_empty());
}

/// A finding read while a truncation rewrites the log (here: the rewrite marker held by hand, as
/// a cut holds it from its start to its end) is not reported, since the bytes read may be the
/// cut's; once no rewrite runs, the same record is reported.
#[tokio::test]
async fn a_finding_read_during_a_rewrite_of_the_log_is_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let results = cleanly_stopped_store(dir.path(), 40).await;
    flip_bytes(dir.path(), results[5].commit_log_offset + 80, 1);
    let store = Store::open(no_scrubber(dir.path())).unwrap();
    let mut scrubber = Scrubber::new(Arc::clone(&store.shared), TEST_RATE);
    {
        let _rewrite = store.shared.log_rewrite();
        for _ in 0..10 {
            assert!(matches!(scrubber.step(), Step::Checked { .. }));
        }
        assert_eq!(corrupt_offset(&store), None);
    }
    assert!(!scrub_pass(&mut scrubber).0);
    assert_eq!(corrupt_offset(&store), Some(results[5].commit_log_offset));
}

/// What the store reports to its observer (the broker turns it into metrics): every flush's
/// fsync latency, every byte a scrub pass checks, and every pass that ends.
#[tokio::test]
async fn the_observer_hears_flushes_scrubbed_bytes_and_ended_passes() {
    #[derive(Default)]
    struct Counts {
        flushes: std::sync::atomic::AtomicU64,
        scrubbed_bytes: std::sync::atomic::AtomicU64,
        passes: std::sync::atomic::AtomicU64,
    }
    impl StoreObserver for Counts {
        fn flushed(&self, _fsync_latency: Duration) {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn scrubbed(&self, bytes: u64) {
            self.scrubbed_bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        fn scrub_pass_ended(&self) {
            self.passes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let read =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);

    let dir = tempfile::tempdir().unwrap();
    let counts = Arc::new(Counts::default());
    let store =
        Store::open_with(no_scrubber(dir.path()), ConfirmMode::Local, counts.clone()).unwrap();
    assert_eq!(store.config().flush_disk_type, FlushDiskType::SyncFlush);
    for i in 0..40 {
        store
            .append(message(0, &format!("{i:0>300}")))
            .await
            .unwrap();
    }
    // A SYNC_FLUSH append is answered after the fsync covering it, which reported first.
    assert!(read(&counts.flushes) >= 1);
    assert_eq!(read(&counts.passes), 0);

    let mut scrubber = Scrubber::new(Arc::clone(&store.shared), TEST_RATE);
    assert!(scrub_pass(&mut scrubber).0);
    assert_eq!(read(&counts.passes), 1);
    assert_eq!(
        read(&counts.scrubbed_bytes),
        store.flushed_offset() - store.min_offset(),
        "a pass checks the whole log, and reports each byte once"
    );
}
