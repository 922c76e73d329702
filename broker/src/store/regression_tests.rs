//! Regression tests for defects a review found (races with truncation, recovery decisions, bounds
//! on sizes read from disk). Each states the behaviour that must hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tests::{settle, small_config, tail_segment};
use super::*;

fn message(topic: &str, queue_id: u32, body: &str) -> NewMessage {
    NewMessage::new(topic, queue_id, Bytes::copy_from_slice(body.as_bytes()))
}

fn read_queue(store: &Store, topic: &str, queue_id: u32, from: u64) -> Result<GetResult> {
    store.get_messages(&GetRequest {
        topic,
        queue_id,
        queue_offset: from,
        max_count: 64,
        max_bytes: 1 << 20,
        filter: &TagFilter::All,
    })
}

/// Truncation rebuilds the writer's queue-offset table from the consume queues, so it must first
/// index every record below the cut: queue offsets of records that survive are never reused.
#[tokio::test(flavor = "current_thread")]
async fn truncation_while_dispatch_lags_keeps_queue_offsets_below_the_cut() {
    let mut hit = 0;
    for _attempt in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            flush_disk_type: FlushDiskType::AsyncFlush,
            ..small_config(dir.path())
        };
        let store = Store::open(config).unwrap();
        let a0 = store.append(message("t", 0, "m0")).await.unwrap();
        settle(&store).await;
        let size = a0.end_offset - a0.commit_log_offset;
        let cut = store.write_offset() + 2 * size; // keep m1 and m2, cut m3
        let (r1, r2, r3, t) = tokio::join!(
            store.append(message("t", 0, "m1")),
            store.append(message("t", 0, "m2")),
            store.append(message("t", 0, "m3")),
            store.truncate_to(cut),
        );
        let (r1, r2, _r3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
        t.unwrap();
        assert_eq!((r1.queue_offset, r2.queue_offset), (1, 2));
        let next = store.append(message("t", 0, "m4")).await;
        let next = next.unwrap();
        if next.queue_offset != 3 {
            hit += 1;
            println!(
                "m4 got queue offset {} although m1 (1) and m2 (2) are still in the log",
                next.queue_offset
            );
            // The dispatcher now meets a repeated queue offset and poisons the store.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && store.append(message("t", 0, "probe")).await.is_ok()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let err = store.append(message("t", 0, "probe")).await;
            println!("append after the dispatcher saw it: {err:?}");
            store.halt_for_test();
            drop(store);
            // And the log itself is now permanently inconsistent: reopening fails.
            let reopened = Store::open(small_config(dir.path()));
            println!("reopen: {:?}", reopened.as_ref().err());
            break;
        }
    }
    assert_eq!(hit, 0, "queue offsets were reused after a truncation");
}

/// A truncation that fails after its intent is saved poisons the store: nothing more is
/// acknowledged on a half-cut log, and the next open finishes the cut.
#[tokio::test]
async fn failed_truncation_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join(recovery::COMMIT_LOG_DIR);
    let second = log_dir.join(segment::segment_file_name(8 << 10));
    let aside = dir.path().join("aside");
    let cut = {
        let store = Store::open(small_config(dir.path())).unwrap();
        let mut results = Vec::new();
        while store.write_offset() < (16 << 10) + 1000 {
            results.push(
                store
                    .append(message("t", 0, &"x".repeat(300)))
                    .await
                    .unwrap(),
            );
        }
        let cut = results[3].commit_log_offset;
        // Stand-in for an I/O error from unlink() of a later segment (step 2 of the cut).
        std::fs::rename(&second, &aside).unwrap();
        std::fs::create_dir(&second).unwrap();
        store.truncate_to(cut).await.unwrap_err();
        let err = store.append(message("t", 0, "after")).await.unwrap_err();
        assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
        assert!(
            store.shutdown().is_err(),
            "a poisoned store does not stop cleanly"
        );
        cut
    };
    // The operator clears the fault; the process restarts and finishes the cut.
    std::fs::remove_dir(&second).unwrap();
    std::fs::rename(&aside, &second).unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(
        store.recovery_report().finished_truncation_offset,
        Some(cut)
    );
    assert_eq!(store.write_offset(), cut);
}

/// A truncation fsyncs everything written before it cuts, so an append waiting for its fsync
/// is answered truthfully (it was durable before the cut), never by a later fsync of other data
/// that refilled its offsets.
#[tokio::test(flavor = "current_thread")]
async fn append_waiting_for_its_fsync_is_answered_by_the_fsync_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(small_config(dir.path())).unwrap());
    store.append(message("t", 0, "warmup")).await.unwrap();
    let cut = store.write_offset();
    store.set_fsync_delay_for_test(Duration::from_millis(300));
    let a = tokio::spawn({
        let store = store.clone();
        async move { store.append(message("t", 0, "AAAA")).await }
    });
    while store.write_offset() == cut {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    store.truncate_to(cut).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the cut waited for the fsync of A"
    );
    store.set_fsync_delay_for_test(Duration::ZERO);
    let b = store.append(message("t", 0, "BBBB")).await.unwrap();
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status, PutStatus::Ok);
    assert_eq!(
        a.commit_log_offset, b.commit_log_offset,
        "B refilled A's offsets"
    );
}

/// After a truncation the confirm offset is at or below the cut, so consumers never read new
/// records before their fsync (a flush that was under way must not raise it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_offset_stays_below_unflushed_data_after_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(small_config(dir.path())).unwrap());
    store.append(message("t", 0, "warmup")).await.unwrap();
    let cut = store.write_offset();
    store.set_fsync_delay_for_test(Duration::from_millis(500));
    let a = tokio::spawn({
        let store = store.clone();
        async move { store.append(message("t", 0, "AAAA")).await }
    });
    while store.write_offset() == cut {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // the flusher is inside flush_once
    store.truncate_to(cut).await.unwrap();
    let _ = a.await;
    println!(
        "after truncate_to({cut}): write {}, flushed {}, confirm {}",
        store.write_offset(),
        store.flushed_offset(),
        store.confirm_offset()
    );
    // Now a new append that is NOT yet fsynced.
    store.set_fsync_delay_for_test(Duration::from_millis(3000));
    let b = tokio::spawn({
        let store = store.clone();
        async move { store.append(message("t", 0, "BBBB")).await }
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = None;
    while Instant::now() < deadline {
        let r = read_queue(&store, "t", 0, 1).unwrap();
        if r.status == GetStatus::Found {
            seen = Some((
                String::from_utf8_lossy(&r.messages[0].body()).into_owned(),
                store.flushed_offset(),
                r.messages[0].commit_log_offset(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.set_fsync_delay_for_test(Duration::ZERO);
    let _ = b.await;
    assert!(
        seen.is_none(),
        "consumer read {:?} (record at {}) while flushed_offset was {} under SYNC_FLUSH",
        seen.as_ref().unwrap().0,
        seen.as_ref().unwrap().2,
        seen.as_ref().unwrap().1
    );
}

/// Under ASYNC_FLUSH, a flush asked for beyond a later cut does not keep the flusher spinning.
#[tokio::test]
async fn async_flusher_rests_after_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        flush_disk_type: FlushDiskType::AsyncFlush,
        flush_interval_ms: 3_600_000,
        ..small_config(dir.path())
    };
    let store = Store::open(config).unwrap();
    let a = store
        .append(message("t", 0, &"a".repeat(200)))
        .await
        .unwrap();
    store.flush().await.unwrap();
    store.truncate_to(a.commit_log_offset).await.unwrap();
    // One smaller append afterwards: the writer's notify wakes the flusher.
    store.append(message("t", 0, "b")).await.unwrap();
    println!(
        "write {} flushed {} requested {}",
        store.write_offset(),
        store.flushed_offset(),
        store
            .shared
            .flush_requested_offset
            .load(std::sync::atomic::Ordering::Acquire)
    );
    let before = store
        .shared
        .flusher_rounds
        .load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let used = store
        .shared
        .flusher_rounds
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    println!("flusher loop iterations over 1 s with nothing to flush: {used}");
    assert!(used < 10, "flusher busy-loops: {used} iterations in 1 s");
}

/// A last segment left shorter than its capacity (a crash of an older build mid-truncation, or
/// a copy cut short) still opens: it is extended, and recovery judges what is missing.
#[tokio::test]
async fn short_last_segment_is_extended_and_the_truncation_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    let mut results = Vec::new();
    for i in 0..10 {
        results.push(
            store
                .append(message("t", 0, &format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    store.halt_for_test();
    drop(store);
    let cut = results[5].commit_log_offset;
    // The state a kill -9 leaves between set_len(position) and preallocate(full):
    truncate::save_intent(dir.path(), cut).unwrap();
    let path = tail_segment(dir.path());
    let base: u64 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(segment::SEGMENT_HEADER_BYTES + cut - base)
        .unwrap();
    drop(file);
    let reopened = Store::open(small_config(dir.path()));
    assert!(
        reopened.is_ok(),
        "store refuses to open: {}",
        reopened.err().unwrap()
    );
}

/// A damaged consume-queue entry (entries have no CRC) is an error on read, never a panic.
#[tokio::test]
async fn damaged_consume_queue_entry_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    let mut results = Vec::new();
    while store.write_offset() < (8 << 10) + 2000 {
        results.push(
            store
                .append(message("t", 0, &"x".repeat(300)))
                .await
                .unwrap(),
        );
    }
    settle(&store).await;
    store.shutdown().unwrap();
    drop(store);
    // Last message of the first segment.
    let (idx, last0) = results
        .iter()
        .enumerate()
        .rfind(|(_, r)| r.end_offset <= 8 << 10)
        .unwrap();
    let bad_size = ((8 << 10) - last0.commit_log_offset + 200) as u32;
    use std::os::unix::fs::FileExt;
    let cq = dir
        .path()
        .join("consumequeue/t/0")
        .join(segment::segment_file_name(idx as u64 - idx as u64 % 16));
    let f = std::fs::OpenOptions::new().write(true).open(&cq).unwrap();
    f.write_all_at(&bad_size.to_le_bytes(), 32 + (idx as u64 % 16) * 20 + 8)
        .unwrap();
    drop(f);
    let store = Store::open(small_config(dir.path())).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_queue(&store, "t", 0, idx as u64).map(|r| r.status)
    }));
    match outcome {
        Ok(r) => assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}"),
        Err(_) => panic!("reader panicked on a bad consume-queue entry"),
    }
}

/// Damage below the checkpoint's flushed offset is to fsynced data, so it is never cut as a torn
/// tail, even when it reads as zeros and nothing valid follows: recovery reports it and opens
/// with the log ending at the checkpoint's flushed offset, the consume queues stopping before
/// the damage.
#[tokio::test]
async fn damage_below_the_checkpointed_flushed_offset_is_reported_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        checkpoint_interval_ms: 3_600_000,
        ..small_config(dir.path())
    };
    let store = Store::open(config.clone()).unwrap();
    let mut results = Vec::new();
    for i in 0..10 {
        results.push(
            store
                .append(message("t", 0, &format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let end = store.write_offset();
    // The consume queue holds every entry (the checkpoint below claims only half).
    settle(&store).await;
    store.halt_for_test();
    drop(store);
    // A checkpoint taken while the dispatcher lagged: everything flushed, half dispatched.
    checkpoint::Checkpoint {
        flushed_offset: end,
        dispatched_offset: results[5].commit_log_offset,
        confirm_offset: end,
        saved_at_ms: 0,
        verified_offset: end,
    }
    .save(dir.path())
    .unwrap();
    // The last, fsynced and SEND_OK'd record reads back as zeros (lost write, bad block...).
    let last = results[9].clone();
    use std::os::unix::fs::FileExt;
    let path = tail_segment(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(
        &vec![0u8; (last.end_offset - last.commit_log_offset) as usize],
        segment::SEGMENT_HEADER_BYTES + last.commit_log_offset,
    )
    .unwrap();
    drop(f);
    let store = Store::open(config).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.torn_tail_offset, None, "fsynced data is never cut");
    assert_eq!(report.corrupt_offset, Some(last.commit_log_offset));
    assert_eq!(report.dispatch_stop_offset, Some(last.commit_log_offset));
    assert_eq!(store.write_offset(), end);
    assert_eq!(
        store
            .health()
            .borrow()
            .corrupt
            .as_ref()
            .map(|c| c.commit_log_offset),
        Some(last.commit_log_offset)
    );
    settle(&store).await;
    let read = read_queue(&store, "t", 0, 0).unwrap();
    assert_eq!(read.messages.len(), 9, "everything before the damage");
}

/// `read_raw` at an offset that is not a record boundary (a replica's bad request) is the
/// caller's error, not store corruption.
#[tokio::test]
async fn read_raw_at_a_non_boundary_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    store.append(message("t", 0, "hello")).await.unwrap();
    let err = store.read_raw(3, 4096).unwrap_err();
    println!("read_raw(3): {err}");
    assert!(
        !err.is_fatal(),
        "a bad request offset is reported as fatal corruption: {err}"
    );
    assert!(err.is_bad_input());
}

/// Consume-queue slots left past a hole (a power loss writes pages back out of order) are zeroed
/// by recovery, so they never come back as entries once new ones fill the hole.
#[tokio::test]
async fn consume_queue_slots_past_a_hole_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path()); // 16 entries per consume-queue file
    let end = {
        let store = Store::open(config.clone()).unwrap();
        for i in 0..5 {
            store
                .append(message("t", 0, &format!("m{i}")))
                .await
                .unwrap();
        }
        settle(&store).await;
        let end = store.write_offset();
        // Wait for a checkpoint that covers them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while checkpoint::Checkpoint::load(dir.path())
            .unwrap()
            .unwrap()
            .dispatched_offset
            < end
        {
            assert!(
                Instant::now() < deadline,
                "no checkpoint covered the appends"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.halt_for_test();
        end
    };
    // Power-loss residue: the dispatcher had written entries 5..8 for records whose log pages
    // were lost; the page holding entry 5 was lost too, the next one persisted.
    use std::os::unix::fs::FileExt;
    let cq = dir
        .path()
        .join("consumequeue/t/0")
        .join(segment::segment_file_name(0));
    let f = std::fs::OpenOptions::new().write(true).open(&cq).unwrap();
    for slot in 6..9u64 {
        let mut e = Vec::new();
        consume_queue::CqEntry {
            commit_log_offset: end + 13 * slot,
            size_bytes: 66,
            tag_hash: 0,
        }
        .encode(&mut e);
        f.write_all_at(&e, 32 + slot * 20).unwrap();
    }
    drop(f);
    let dump = |tag: &str| {
        let b = std::fs::read(&cq).unwrap();
        let sizes: Vec<u32> = (0..10)
            .map(|i| u32::from_le_bytes(b[32 + i * 20 + 8..32 + i * 20 + 12].try_into().unwrap()))
            .collect();
        println!("{tag}: sizes {sizes:?}");
    };
    dump("before reopen");
    {
        let store = Store::open(config.clone()).unwrap();
        dump("after recovery");
        println!(
            "after crash recovery: queue offsets {:?} report {:?} end {end}",
            store.queue_offsets("t", 0),
            store.recovery_report()
        );
        let r = store.append(message("t", 0, "m5")).await.unwrap();
        assert_eq!(r.queue_offset, 5);
        for i in 0..3 {
            store
                .append(message("t", 1, &format!("other{i}")))
                .await
                .unwrap();
        }
        settle(&store).await;
        store.shutdown().unwrap();
    }
    dump("after clean stop");
    let store = Store::open(config).unwrap();
    let offsets = store.queue_offsets("t", 0);
    let next = store.append(message("t", 0, "m6")).await.unwrap();
    settle(&store).await;
    let read = read_queue(&store, "t", 0, 6);
    println!(
        "after clean reopen: queue offsets {offsets:?}, next append got queue offset {}, read at 6: {:?}",
        next.queue_offset,
        read.as_ref().map(|r| r.status).map_err(|e| e.to_string())
    );
    assert_eq!(
        next.queue_offset, 6,
        "queue offsets skip over phantom entries"
    );
}
