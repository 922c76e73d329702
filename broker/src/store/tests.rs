//! Behaviour tests of the whole store against real files in temporary directories.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::*;

/// Small segments and limits, so that tests roll segments and files often.
pub(crate) fn small_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        store_path: dir.to_path_buf(),
        segment_bytes: 8 << 10,
        max_message_bytes: 2 << 10,
        max_properties_bytes: 512,
        consume_queue_entries_per_file: 16,
        batch_bytes_max: 64 << 10,
        // Retention runs only where a test asks for it, whatever the disk of the machine.
        disk_max_used_ratio: 1.0,
        retention_check_interval_ms: 3_600_000,
        ..StoreConfig::default()
    }
}

fn message(topic: &str, queue_id: u32, body: &str) -> NewMessage {
    NewMessage::new(topic, queue_id, Bytes::copy_from_slice(body.as_bytes()))
}

/// Waits until everything confirmed is indexed (the dispatcher runs behind the writer), up to a
/// corrupt record that stops it.
pub(crate) async fn settle(store: &Store) {
    let target = store
        .confirm_offset()
        .min(store.shared.dispatch_stop_offset().unwrap_or(u64::MAX));
    assert!(
        store.wait_readable(target, Duration::from_secs(10)).await,
        "dispatcher did not catch up"
    );
}

async fn read_all(store: &Store, topic: &str, queue_id: u32) -> Vec<StoredMessage> {
    settle(store).await;
    let mut out = Vec::new();
    let mut queue_offset = store
        .queue_offsets(topic, queue_id)
        .map_or(0, |(min, _)| min);
    loop {
        let result = store
            .get_messages(&GetRequest {
                topic,
                queue_id,
                queue_offset,
                max_count: 7,
                max_bytes: 1 << 20,
                filter: &TagFilter::All,
            })
            .unwrap();
        match result.status {
            GetStatus::Found => {
                queue_offset = result.next_queue_offset;
                out.extend(result.messages);
            }
            GetStatus::NoNewMessage | GetStatus::QueueNotFound => return out,
            other => panic!("unexpected status {other:?}"),
        }
    }
}

fn bodies(messages: &[StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.body().to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn appended_messages_read_back_in_queue_order_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    for i in 0..40 {
        let msg = message("orders", i % 2, &format!("m{i}"))
            .with_tag(if i % 3 == 0 { "paid" } else { "new" })
            .with_property("KEYS", format!("k{i}"))
            .with_property("PAD", "p".repeat(300));
        let result = store.append(msg).await.unwrap();
        assert_eq!(result.status, PutStatus::Ok);
        assert_eq!(result.queue_offset, u64::from(i / 2));
        assert!(
            store.flushed_offset() >= result.end_offset,
            "SYNC_FLUSH answers after the fsync"
        );
    }
    let queue1 = read_all(&store, "orders", 1).await;
    assert_eq!(
        bodies(&queue1),
        (0..40)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
    );
    for (n, m) in queue1.iter().enumerate() {
        assert_eq!(m.queue_offset(), n as u64);
        assert_eq!(m.queue_id(), 1);
        assert_eq!(m.topic(), "orders");
        assert!(m.property("KEYS").unwrap().starts_with('k'));
    }
    let paid = store
        .get_messages(&GetRequest {
            topic: "orders",
            queue_id: 0,
            queue_offset: 0,
            max_count: 32,
            max_bytes: 1 << 20,
            filter: &TagFilter::parse("paid || other"),
        })
        .unwrap();
    assert_eq!(paid.status, GetStatus::Found);
    assert!(paid.messages.iter().all(|m| m.tag() == Some("paid")));
    assert_eq!(
        bodies(&paid.messages),
        vec!["m0", "m6", "m12", "m18", "m24", "m30", "m36"]
    );
    assert!(
        store.segments_for_test() > 1,
        "small segments must have rolled"
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    store.append(message("t", 0, "first")).await.unwrap();
    let before = store.write_offset();
    let too_big = NewMessage::new("t", 0, Bytes::from(vec![7u8; 2049]));
    let err = store.append(too_big).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::BodyTooLarge {
                body_bytes: 2049,
                limit_bytes: 2048
            }
        ),
        "{err}"
    );
    assert!(err.is_bad_input());
    let err = store
        .append(message("bad/topic", 0, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TopicInvalid { .. }));
    let err = store
        .append(message("t", 0, "x").with_property("big", "v".repeat(600)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PropertiesTooLarge { .. }));
    let err = store
        .append_batch(vec![message("t", 0, "a"), message("t", 1, "b")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BatchInvalid { .. }));
    assert_eq!(store.write_offset(), before);
    settle(&store).await;
    assert_eq!(store.queue_offsets("t", 0), Some((0, 1)));
}

#[tokio::test]
async fn batch_takes_consecutive_queue_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    store.append(message("t", 3, "solo")).await.unwrap();
    let batch = (0..5).map(|i| message("t", 3, &format!("b{i}"))).collect();
    let result = store.append_batch(batch).await.unwrap();
    assert_eq!(result.queue_offset, 1);
    assert_eq!(
        bodies(&read_all(&store, "t", 3).await),
        vec!["solo", "b0", "b1", "b2", "b3", "b4"]
    );
}

#[tokio::test]
async fn batch_reports_each_records_commit_log_offset_across_a_segment_roll() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    // 8 KiB segments and 1 KiB bodies: a batch of 20 spans at least two rolls, so its records
    // are not back to back.
    let body = "x".repeat(1 << 10);
    let batch: Vec<_> = (0..20).map(|_| message("t", 0, &body)).collect();
    let result = store.append_batch(batch).await.unwrap();
    assert_eq!(result.record_commit_log_offsets.len(), 20);
    assert_eq!(
        result.record_commit_log_offsets[0],
        result.commit_log_offset
    );
    let stored = read_all(&store, "t", 0).await;
    let read: Vec<u64> = stored.iter().map(|m| m.commit_log_offset()).collect();
    assert_eq!(read, result.record_commit_log_offsets);
    let record_bytes = result.record_commit_log_offsets[1] - result.record_commit_log_offsets[0];
    let contiguous = (result.end_offset - result.commit_log_offset) == 20 * record_bytes;
    assert!(
        !contiguous,
        "the batch must straddle a roll for this test to mean anything"
    );
    // A single append reports no per-record list: its offset is `commit_log_offset`.
    let single = store.append(message("t", 0, "one")).await.unwrap();
    assert!(single.record_commit_log_offsets.is_empty());
}

/// A store whose appends wait 50 ms for their fsync before `FLUSH_DISK_TIMEOUT`.
fn impatient_store(dir: &Path) -> Store {
    let config = StoreConfig {
        sync_flush_timeout_ms: 50,
        ..small_config(dir)
    };
    Store::open(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fsync_answers_flush_disk_timeout_and_keeps_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = impatient_store(dir.path());
    store.set_fsync_delay_for_test(Duration::from_millis(400));
    let result = store.append(message("t", 0, "slow")).await.unwrap();
    assert_eq!(result.status, PutStatus::FlushDiskTimeout);
    // The message stays and becomes durable (and visible) once the fsync finishes.
    store.set_fsync_delay_for_test(Duration::ZERO);
    store.flush().await.unwrap();
    assert!(store.flushed_offset() >= result.end_offset);
    assert_eq!(bodies(&read_all(&store, "t", 0).await), vec!["slow"]);
}

/// One append at a time: the writer fsyncs each itself (group commit with nothing to gather), so
/// the flusher thread is not woken per append (two wake-ups each, see `flush::flush_if_idle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_one_at_a_time_are_fsynced_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    let rounds = || {
        store
            .shared
            .flusher_rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = rounds();
    for i in 0..100 {
        let result = store
            .append(message("t", 0, &format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(result.status, PutStatus::Ok);
        assert!(store.flushed_offset() >= result.end_offset);
    }
    let woken = rounds() - before;
    assert!(woken < 10, "the flusher ran {woken} rounds for 100 appends");
    settle(&store).await;
    assert_eq!(read_all(&store, "t", 0).await.len(), 100);
}

/// A slow fsync keeps the writer busy once, never twice: after it, fsyncs go to the flusher
/// while they stay slow, so an append that follows one still being fsynced is written and
/// answered (`FLUSH_DISK_TIMEOUT`) within its timeout instead of waiting behind the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_slow_fsync_the_writer_hands_fsyncs_to_the_flusher() {
    let dir = tempfile::tempdir().unwrap();
    let store = impatient_store(dir.path());
    store.set_fsync_delay_for_test(Duration::from_millis(400));
    let first = store.append(message("t", 0, "first")).await.unwrap();
    assert_eq!(first.status, PutStatus::FlushDiskTimeout);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.flushed_offset() < first.end_offset {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow fsync never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Answered at its timeout, while its own fsync (400 ms) still runs.
    let second = store.append(message("t", 0, "second")).await.unwrap();
    assert_eq!(second.status, PutStatus::FlushDiskTimeout);
    assert!(store.flushed_offset() < second.end_offset);
    let started = std::time::Instant::now();
    let third = store.append(message("t", 0, "third")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(third.status, PutStatus::FlushDiskTimeout);
    assert!(
        took < Duration::from_millis(250),
        "the third append waited {took:?}: behind the writer's own slow fsync of the second"
    );
    store.set_fsync_delay_for_test(Duration::ZERO);
    store.flush().await.unwrap();
    let fourth = store.append(message("t", 0, "fourth")).await.unwrap();
    assert_eq!(fourth.status, PutStatus::Ok);
    settle(&store).await;
    assert_eq!(
        bodies(&read_all(&store, "t", 0).await),
        vec!["first", "second", "third", "fourth"]
    );
}

#[tokio::test]
async fn async_flush_answers_before_the_fsync_and_flushes_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        flush_disk_type: FlushDiskType::AsyncFlush,
        flush_interval_ms: 20,
        ..small_config(dir.path())
    };
    let store = Store::open(config).unwrap();
    let result = store.append(message("t", 0, "fast")).await.unwrap();
    assert_eq!(result.status, PutStatus::Ok);
    // Visible from the page cache under ASYNC_FLUSH.
    assert_eq!(bodies(&read_all(&store, "t", 0).await), vec!["fast"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.flushed_offset() < result.end_offset {
        assert!(
            std::time::Instant::now() < deadline,
            "interval flush never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn clean_reopen_continues_offsets_without_rechecking() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let store = Store::open(small_config(dir.path())).unwrap();
        for i in 0..30 {
            store
                .append(message("t", 0, &format!("m{i}")))
                .await
                .unwrap();
        }
        store.shutdown().unwrap();
        store.write_offset()
    };
    let store = Store::open(small_config(dir.path())).unwrap();
    let report = store.recovery_report();
    assert!(report.clean_shutdown);
    assert_eq!(
        (report.checked_from_offset, report.recovered_end_offset),
        (end, end)
    );
    assert_eq!(report.torn_tail_offset, None);
    let next = store.append(message("t", 0, "after")).await.unwrap();
    assert_eq!(next.queue_offset, 30);
    assert_eq!(read_all(&store, "t", 0).await.len(), 31);
}

#[tokio::test]
async fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(small_config(dir.path())).unwrap();
    assert!(matches!(
        Store::open(small_config(dir.path())),
        Err(StoreError::Locked { .. })
    ));
}

/// Appends `count` messages to two queues, then stops like a crash (no final checkpoint).
async fn crashed_store(dir: &Path, config: StoreConfig, count: usize) -> (u64, Vec<AppendResult>) {
    let store = Store::open(config).unwrap();
    let mut results = Vec::new();
    for i in 0..count {
        results.push(
            store
                .append(message("t", (i % 2) as u32, &format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let end = store.write_offset();
    store.halt_for_test();
    assert!(dir.join(ABORT_FILE_NAME).exists());
    (end, results)
}

fn no_checkpoints(dir: &Path) -> StoreConfig {
    StoreConfig {
        checkpoint_interval_ms: 3_600_000,
        ..small_config(dir)
    }
}

pub(crate) fn tail_segment(dir: &Path) -> std::path::PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dir.join(recovery::COMMIT_LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            segment::parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).is_some()
        })
        .collect();
    names.sort();
    names.pop().unwrap()
}

fn write_at_offset(dir: &Path, commit_log_offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let path = tail_segment(dir);
    let base: u64 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(
        bytes,
        segment::SEGMENT_HEADER_BYTES + commit_log_offset - base,
    )
    .unwrap();
}

#[tokio::test]
async fn recovery_truncates_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (end, _) = crashed_store(dir.path(), no_checkpoints(dir.path()), 25).await;
    // The first 40 bytes of a record: a write cut short by the crash.
    let mut torn = Vec::new();
    record::encode_message(
        &message("t", 0, "torn"),
        record::RecordLimits {
            max_message_bytes: 2048,
            max_properties_bytes: 512,
        },
        &mut torn,
    )
    .unwrap();
    record::seal(&mut torn, 13, end, 1);
    write_at_offset(dir.path(), end, &torn[..40]);
    let store = Store::open(no_checkpoints(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert!(!report.clean_shutdown);
    assert_eq!(report.torn_tail_offset, Some(end));
    assert_eq!(report.recovered_end_offset, end);
    assert_eq!(
        read_all(&store, "t", 0).await.len() + read_all(&store, "t", 1).await.len(),
        25
    );
    let next = store.append(message("t", 0, "next")).await.unwrap();
    assert_eq!((next.commit_log_offset, next.queue_offset), (end, 13));
}

#[tokio::test]
async fn recovery_truncates_garbage_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (end, _) = crashed_store(dir.path(), no_checkpoints(dir.path()), 10).await;
    write_at_offset(dir.path(), end, &[0xAB; 300]);
    let store = Store::open(no_checkpoints(dir.path())).unwrap();
    assert_eq!(store.recovery_report().torn_tail_offset, Some(end));
    assert_eq!(store.write_offset(), end);
    drop(store);
    // The cut is permanent: the next open finds a clean end.
    let store = Store::open(no_checkpoints(dir.path())).unwrap();
    assert_eq!(store.recovery_report().torn_tail_offset, None);
    assert_eq!(store.write_offset(), end);
}

/// A corrupt record in the middle of the log, past the checkpoint, is not a torn tail: recovery
/// reports it and opens anyway, cutting nothing. Consumers see everything before it and nothing
/// after, appends are refused (its queue offset is unreadable), and the repair, a cut at the
/// corrupt record, makes the store whole and writable again.
#[tokio::test]
async fn recovery_reports_corruption_in_the_middle_opens_and_a_cut_there_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (end, results) = crashed_store(dir.path(), no_checkpoints(dir.path()), 25).await;
    // Flip one byte in the body of an early record of the tail segment.
    let segment_base: u64 = tail_segment(dir.path())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let victim = results
        .iter()
        .position(|r| r.commit_log_offset >= segment_base && r.commit_log_offset + 200 < end)
        .expect("a record with others after it in the tail segment");
    let victim_offset = results[victim].commit_log_offset;
    write_at_offset(dir.path(), victim_offset + 65, b"X"); // first body byte
    let before = std::fs::read(tail_segment(dir.path())).unwrap();

    let store = Store::open(no_checkpoints(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.corrupt_offset, Some(victim_offset));
    assert_eq!(report.dispatch_stop_offset, Some(victim_offset));
    assert_eq!(report.torn_tail_offset, None);
    assert_eq!(store.write_offset(), end, "the log end stays where it is");
    assert_eq!(
        std::fs::read(tail_segment(dir.path())).unwrap(),
        before,
        "nothing is cut"
    );
    let health = store.health().borrow().clone();
    assert_eq!(
        health.corrupt.map(|c| c.commit_log_offset),
        Some(victim_offset)
    );
    assert!(!health.verified);
    assert!(store.verified_offset() <= victim_offset);
    // Consumers see every message before it, and nothing from it on.
    let seen = read_all(&store, "t", 0).await.len() + read_all(&store, "t", 1).await.len();
    assert_eq!(seen, victim);
    assert_eq!(store.readable_offset(), victim_offset);
    assert!(matches!(
        store.read_message_at(victim_offset),
        Err(StoreError::Corrupt { .. })
    ));
    let refused = store.append(message("t", 0, "refused")).await.unwrap_err();
    assert!(matches!(refused, StoreError::Corrupt { .. }), "{refused}");
    // A cut above the corrupt record cannot rebuild the queue offsets between: refused.
    assert!(matches!(
        store
            .truncate_to(results[victim + 1].commit_log_offset)
            .await,
        Err(StoreError::OffsetInvalid { .. })
    ));

    // The repair: cut at the corrupt record (it fails its own check, but records end there).
    store.truncate_to(victim_offset).await.unwrap();
    assert_eq!(store.write_offset(), victim_offset);
    assert!(store.health().borrow().corrupt.is_none());
    let next = store
        .append(message("t", 0, "after the repair"))
        .await
        .unwrap();
    assert_eq!(next.commit_log_offset, victim_offset);
    assert_eq!(
        next.queue_offset, results[victim].queue_offset,
        "the queue goes on where the cut left it"
    );
    let seen = read_all(&store, "t", 0).await.len() + read_all(&store, "t", 1).await.len();
    assert_eq!(seen, victim + 1);
}

#[tokio::test]
async fn corruption_behind_the_checkpoint_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let results = {
        let store = Store::open(small_config(dir.path())).unwrap();
        let mut results = Vec::new();
        for i in 0..5 {
            results.push(
                store
                    .append(message("t", 0, &format!("m{i}")))
                    .await
                    .unwrap(),
            );
        }
        results
    };
    write_at_offset(dir.path(), results[2].commit_log_offset + 65, b"X");
    let store = Store::open(small_config(dir.path())).unwrap();
    let err = store
        .get_messages(&GetRequest {
            topic: "t",
            queue_id: 0,
            queue_offset: 0,
            max_count: 10,
            max_bytes: 1 << 20,
            filter: &TagFilter::All,
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn truncation_cuts_log_queues_and_epochs_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    store.begin_epoch(1).await.unwrap();
    let mut results = Vec::new();
    for i in 0..40 {
        if i == 30 {
            store.begin_epoch(2).await.unwrap();
        }
        results.push(
            store
                .append(message("t", 0, &format!("m{i}")).with_property("KEYS", format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    let cut = results[20].commit_log_offset;
    let end = store.write_offset();
    assert!(matches!(
        store.truncate_to(cut + 1).await,
        Err(StoreError::OffsetInvalid { .. })
    ));
    store.truncate_to(cut).await.unwrap();
    assert_eq!(store.write_offset(), cut);
    assert!(store.confirm_offset() <= cut);
    // The report lists every cut message, in log order, after its summary.
    let report = std::fs::read_to_string(
        dir.path()
            .join(truncation_report::REPORT_DIR_NAME)
            .join(format!("{cut:020}-{end:020}.jsonl")),
    )
    .unwrap();
    let lines: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (
            &lines[0]["from"],
            &lines[0]["to"],
            &lines[0]["bytes"],
            &lines[0]["messages"],
            &lines[0]["listed"]
        ),
        (
            &serde_json::json!(cut),
            &serde_json::json!(end),
            &serde_json::json!(end - cut),
            &serde_json::json!(20),
            &serde_json::json!(20)
        )
    );
    for (i, line) in lines[1..].iter().enumerate() {
        let n = 20 + i;
        assert_eq!(line["keys"], format!("k{n}"));
        assert_eq!(line["queue_offset"], n as u64);
        assert_eq!(line["commit_log_offset"], results[n].commit_log_offset);
        assert_eq!(line["topic"], "t");
    }
    assert_eq!(
        store.epoch_history(),
        vec![EpochEntry {
            epoch: 1,
            start_offset: 0
        }]
    );
    assert_eq!(read_all(&store, "t", 0).await.len(), 20);
    let next = store.append(message("t", 0, "new20")).await.unwrap();
    assert_eq!((next.commit_log_offset, next.queue_offset), (cut, 20));
    drop(store);
    let store = Store::open(small_config(dir.path())).unwrap();
    let all = read_all(&store, "t", 0).await;
    assert_eq!(all.len(), 21);
    assert_eq!(bodies(&all[20..]), vec!["new20"]);
}

#[tokio::test]
async fn interrupted_truncation_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, results) = crashed_store(dir.path(), small_config(dir.path()), 30).await;
    let cut = results[10].commit_log_offset;
    // The crash came right after the intent was saved: nothing else of the cut happened.
    truncate::save_intent(dir.path(), cut).unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(
        store.recovery_report().finished_truncation_offset,
        Some(cut)
    );
    assert_eq!(store.write_offset(), cut);
    assert!(!dir
        .path()
        .join(truncate::TRUNCATE_INTENT_FILE_NAME)
        .exists());
    let remaining = read_all(&store, "t", 0).await.len() + read_all(&store, "t", 1).await.len();
    assert_eq!(remaining, 10);
    drop(store);
    // And it stays cut.
    let store = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(store.write_offset(), cut);
}

#[tokio::test]
async fn raw_copy_gives_a_byte_identical_slave_with_its_own_consume_queues() {
    let master_dir = tempfile::tempdir().unwrap();
    let slave_dir = tempfile::tempdir().unwrap();
    let master = Store::open(small_config(master_dir.path())).unwrap();
    let slave = Store::open(small_config(slave_dir.path())).unwrap();
    for i in 0..120 {
        let body = "x".repeat(50 + (i * 37) % 700);
        master
            .append(message("t", (i % 3) as u32, &body))
            .await
            .unwrap();
    }
    // A chunk at the wrong offset, or with a flipped bit, is refused and writes nothing.
    let first = master.read_raw(0, 2000).unwrap();
    assert!(matches!(
        slave.append_raw(64, first.clone()).await,
        Err(StoreError::RawInvalid { .. })
    ));
    let mut damaged = first.to_vec();
    damaged[100] ^= 1;
    assert!(matches!(
        slave.append_raw(0, Bytes::from(damaged)).await,
        Err(StoreError::RawInvalid { .. })
    ));
    assert_eq!(slave.write_offset(), 0);
    // A well-formed record whose topic would name a path outside the store is refused.
    let mut forged = Vec::new();
    record::encode_message(&message("abc", 0, "x"), slave.shared.limits, &mut forged).unwrap();
    forged[record::RECORD_HEADER_BYTES..record::RECORD_HEADER_BYTES + 3].copy_from_slice(b"../");
    record::seal(&mut forged, 0, 0, 1);
    assert!(matches!(
        slave.append_raw(0, Bytes::from(forged)).await,
        Err(StoreError::RawInvalid { .. })
    ));

    while slave.write_offset() < master.write_offset() {
        let chunk = master.read_raw(slave.write_offset(), 3000).unwrap();
        assert!(!chunk.is_empty());
        slave.append_raw(slave.write_offset(), chunk).await.unwrap();
    }
    slave.flush().await.unwrap();
    assert_eq!(slave.write_offset(), master.write_offset());
    let master_bytes = master.read_all_raw_for_test();
    assert_eq!(slave.read_all_raw_for_test(), master_bytes);
    for queue_id in 0..3 {
        let expected: Vec<_> = read_all(&master, "t", queue_id)
            .await
            .iter()
            .map(|m| m.raw().clone())
            .collect();
        let copied: Vec<_> = read_all(&slave, "t", queue_id)
            .await
            .iter()
            .map(|m| m.raw().clone())
            .collect();
        assert_eq!(copied, expected);
    }
    // A slave that later becomes master continues the queue offsets.
    let next = slave.append(message("t", 0, "promoted")).await.unwrap();
    assert_eq!(next.queue_offset, 40);
}

#[tokio::test]
async fn retention_deletes_old_segments_and_queues_follow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    for i in 0..200 {
        store
            .append(message("t", 0, &format!("{i:0>200}")))
            .await
            .unwrap();
    }
    let segments = store.segments_for_test();
    assert!(segments > 4);
    // The dispatcher runs behind the writer: the queue must hold all 200 before it is trimmed.
    settle(&store).await;
    // Age every segment file by 100 hours; retention keeps the tail whatever its age.
    let old = std::time::SystemTime::now() - Duration::from_secs(100 * 3600);
    for entry in std::fs::read_dir(dir.path().join(recovery::COMMIT_LOG_DIR)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some() {
            continue; // a spare, not part of the log
        }
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(old).unwrap();
    }
    let report = store.run_retention(now_ms()).unwrap();
    assert_eq!(report.deleted_segments, segments - 1);
    assert_eq!(store.min_offset(), report.min_offset);
    let (min, max) = store.queue_offsets("t", 0).unwrap();
    assert!(min > 0 && max == 200);
    let result = store
        .get_messages(&GetRequest {
            topic: "t",
            queue_id: 0,
            queue_offset: 0,
            max_count: 10,
            max_bytes: 1 << 20,
            filter: &TagFilter::All,
        })
        .unwrap();
    assert_eq!(result.status, GetStatus::OffsetTooSmall);
    assert_eq!(result.next_queue_offset, min);
    let rest = read_all(&store, "t", 0).await;
    assert_eq!(rest.len() as u64, max - min);
    assert_eq!(rest[0].queue_offset(), min);
    drop(store);
    let store = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(store.queue_offsets("t", 0), Some((min, max)));
}

#[tokio::test]
async fn external_confirm_offset_hides_what_replicas_do_not_hold_yet() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    store.set_confirm_mode(ConfirmMode::External);
    let first = store.append(message("t", 0, "a")).await.unwrap();
    store.append(message("t", 0, "b")).await.unwrap();
    assert!(
        read_all(&store, "t", 0).await.is_empty(),
        "nothing confirmed yet"
    );
    store.set_confirm_offset(first.end_offset);
    assert_eq!(bodies(&read_all(&store, "t", 0).await), vec!["a"]);
    // Never past what is locally durable.
    assert_eq!(store.set_confirm_offset(u64::MAX), store.flushed_offset());
    assert_eq!(read_all(&store, "t", 0).await.len(), 2);
}

#[tokio::test]
async fn epochs_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(small_config(dir.path())).unwrap();
        assert_eq!(store.begin_epoch(3).await.unwrap(), 0);
        store.append(message("t", 0, "a")).await.unwrap();
        let start = store.begin_epoch(4).await.unwrap();
        assert_eq!(start, store.write_offset());
        assert!(store.begin_epoch(4).await.is_err());
    }
    let store = Store::open(small_config(dir.path())).unwrap();
    let history = store.epoch_history();
    assert_eq!(
        history.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[tokio::test]
async fn rolling_adopts_the_segment_made_ahead_of_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    let log_dir = dir.path().join(recovery::COMMIT_LOG_DIR);
    let spare = segment::spare_path(&log_dir, 8 << 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !spare.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare segment was made"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&spare).unwrap());
    while store.write_offset() < 8 << 10 {
        store
            .append(message("t", 0, &"x".repeat(500)))
            .await
            .unwrap();
    }
    let adopted = log_dir.join(segment::segment_file_name(8 << 10));
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(adopted).unwrap()),
        inode
    );
}

/// A written range whose entries never reached the dispatcher (a full hand-off) is indexed from
/// the log, between ranges whose entries did: every message is found at its queue offset.
#[tokio::test]
// The guard stops the dispatcher (an OS thread) on purpose; the appends never take it.
#[allow(clippy::await_holding_lock)]
async fn a_range_without_a_hand_off_is_indexed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    {
        // Hold the dispatcher still while three groups are written; drop the middle one's
        // hand-off, as a full hand-off would.
        let _dispatch = store.shared.dispatch.lock().unwrap();
        store.append(message("t", 0, "first")).await.unwrap();
        let first = store.shared.index_handoff.pop_until(u64::MAX).unwrap();
        store.append(message("t", 0, "second")).await.unwrap();
        store.shared.index_handoff.clear();
        store
            .shared
            .index_handoff
            .push(first)
            .expect("an empty hand-off takes a range");
        store
            .append_batch(vec![message("t", 0, "third"), message("t", 0, "fourth")])
            .await
            .unwrap();
    }
    let read = read_all(&store, "t", 0).await;
    assert_eq!(bodies(&read), ["first", "second", "third", "fourth"]);
    for (queue_offset, message) in read.iter().enumerate() {
        assert_eq!(message.queue_offset(), queue_offset as u64);
    }
}

/// An empty store begins at another store's first offset (a slave seeded from a master whose
/// retention deleted offset 0): the records copied from there read back at the same queue
/// offsets, with queues beginning above 0 (over several consume-queue files), before and after a
/// reopen. A store that holds a record refuses, changing nothing.
#[tokio::test]
async fn an_empty_store_begins_at_another_stores_first_offset() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(small_config(dirs.0.path())).unwrap();
    master.begin_epoch(1).await.unwrap();
    for i in 0..300 {
        master
            .append(message("t", i % 2, &format!("m{i}")))
            .await
            .unwrap();
    }
    master.flush().await.unwrap();
    settle(&master).await;
    master.run_retention(now_ms() + 100 * 3_600_000).unwrap();
    let first = master.min_offset();
    let end = master.write_offset();
    assert!(first > 0, "retention deleted the oldest segments");

    let copy = Store::open(small_config(dirs.1.path())).unwrap();
    let epoch = EpochEntry {
        epoch: 1,
        start_offset: 0,
    };
    copy.start_at(first, Some(epoch)).await.unwrap();
    assert_eq!((copy.min_offset(), copy.write_offset()), (first, first));
    let mut at = first;
    while at < end {
        let chunk = master.read_raw(at, 4 << 10).unwrap();
        at = copy.append_raw(at, chunk).await.unwrap();
    }
    let check = |copy: &Store| {
        assert_eq!(copy.min_offset(), first);
        assert_eq!(copy.write_offset(), end);
        assert_eq!(copy.epoch_history(), [epoch]);
        for queue_id in 0..2 {
            let (min, max) = copy.queue_offsets("t", queue_id).unwrap();
            assert_eq!(Some((min, max)), master.queue_offsets("t", queue_id));
            assert!(
                min > 16,
                "the queue begins beyond its first consume-queue file"
            );
        }
    };
    // The confirm offset follows the flushed one here: flush, so that all of it is readable.
    copy.flush().await.unwrap();
    settle(&copy).await;
    check(&copy);
    for queue_id in 0..2 {
        let (copied, held) = (
            read_all(&copy, "t", queue_id).await,
            read_all(&master, "t", queue_id).await,
        );
        assert_eq!(bodies(&copied), bodies(&held));
        let offsets = |m: &[StoredMessage]| m.iter().map(|m| m.queue_offset()).collect::<Vec<_>>();
        assert_eq!(offsets(&copied), offsets(&held));
    }

    // Holding records now: refused, nothing changes.
    let refused = copy.start_at(0, None).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::OffsetInvalid { .. }),
        "{refused}"
    );
    check(&copy);

    copy.shutdown().unwrap();
    drop(copy);
    let copy = Store::open(small_config(dirs.1.path())).unwrap();
    settle(&copy).await;
    check(&copy);
    for queue_id in 0..2 {
        assert_eq!(
            bodies(&read_all(&copy, "t", queue_id).await),
            bodies(&read_all(&master, "t", queue_id).await)
        );
    }
    // Appends go on at the next queue offsets.
    copy.append(message("t", 0, "next")).await.unwrap();
    settle(&copy).await;
    let (_, max) = master.queue_offsets("t", 0).unwrap();
    assert_eq!(copy.queue_offsets("t", 0).unwrap().1, max + 1);
}

/// A store stopped right after it began at another offset, before any record came, opens as an
/// empty log beginning there, with its epoch.
#[tokio::test]
async fn a_store_begun_elsewhere_reopens_empty_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small_config(dir.path())).unwrap();
    let at = 5 * (8 << 10);
    let epoch = EpochEntry {
        epoch: 3,
        start_offset: at - 100,
    };
    store.start_at(at, Some(epoch)).await.unwrap();
    drop(store);
    let store = Store::open(small_config(dir.path())).unwrap();
    assert_eq!((store.min_offset(), store.write_offset()), (at, at));
    assert_eq!(store.epoch_history(), [epoch]);
    // It still holds nothing: it may begin elsewhere again.
    store.start_at(2 * at, None).await.unwrap();
    assert_eq!((store.min_offset(), store.write_offset()), (2 * at, 2 * at));
    assert!(store.epoch_history().is_empty());
    store.append(message("t", 0, "first")).await.unwrap();
    assert_eq!(bodies(&read_all(&store, "t", 0).await), ["first"]);
}
