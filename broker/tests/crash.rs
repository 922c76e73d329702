//! Crash test: a child process appending under `SYNC_FLUSH` is killed with SIGKILL at random
//! moments, again and again on the same store.
//!
//! Invariant: every append the child saw acknowledged with `Ok` (its `SEND_OK`) before the kill
//! is read back intact afterwards, at the queue offset and commit-log offset it was given, and
//! every queue reads back densely from queue offset 0 (no gaps, no duplicates).
//!
//! The child is this same test binary, re-run on the ignored test `crash_child` with the store
//! directory in an environment variable. It prints one `ACK` line per acknowledged append; the
//! parent kills it once a random number of acknowledgements has arrived. The seed is printed and
//! can be replayed with `STORE_CRASH_SEED`.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use broker::store::{GetRequest, NewMessage, PutStatus, Store, StoreConfig, TagFilter};
use bytes::Bytes;
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "STORE_CRASH_CHILD_DIR";
const ROUNDS: usize = 8;
const QUEUES: u32 = 4;
const APPENDERS: usize = 8;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        store_path: dir.to_path_buf(),
        segment_bytes: 256 << 10,
        max_message_bytes: 16 << 10,
        max_properties_bytes: 1 << 10,
        consume_queue_entries_per_file: 1000,
        batch_bytes_max: 256 << 10,
        disk_max_used_ratio: 1.0,
        ..StoreConfig::default()
    }
}

/// The body of appender `writer`'s `seq`th message: recognisable and of varying length.
fn body(writer: usize, seq: u64) -> Vec<u8> {
    let len = 20
        + ((writer as u64)
            .wrapping_mul(7919)
            .wrapping_add(seq.wrapping_mul(104_729))
            % 3000) as usize;
    format!("{writer}:{seq}:")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Acknowledged {
    queue_id: u32,
    queue_offset: u64,
    commit_log_offset: u64,
    writer: usize,
    seq: u64,
}

fn parse_acknowledged(line: &str) -> Option<Acknowledged> {
    let mut fields = line.strip_prefix("ACK ")?.split(' ');
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(Acknowledged {
        queue_id: next()? as u32,
        queue_offset: next()?,
        commit_log_offset: next()?,
        writer: next()? as usize,
        seq: next()?,
    })
}

#[test]
#[ignore = "child process of kill_9_during_sync_flush_appends_loses_no_acknowledged_message"]
fn crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("run by the crash test only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // The test harness printed "test NAME ... " without a newline: end that line first, so
        // that every line of ours starts at the beginning of a line.
        println!();
        let store = std::sync::Arc::new(Store::open(config(Path::new(&dir))).unwrap());
        let first_seq = broker::store::now_ms() * 1000;
        let mut tasks = Vec::new();
        for writer in 0..APPENDERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in first_seq.. {
                    let queue_id = ((writer as u64 + seq) % u64::from(QUEUES)) as u32;
                    let message =
                        NewMessage::new("crash", queue_id, Bytes::from(body(writer, seq)));
                    let result = store.append(message).await.unwrap();
                    if result.status == PutStatus::Ok {
                        println!(
                            "ACK {queue_id} {} {} {writer} {seq}",
                            result.queue_offset, result.commit_log_offset
                        );
                    }
                }
            }));
        }
        // Killed long before this in the test; a bound so that a lost child does not run forever.
        let _ = tokio::time::timeout(Duration::from_secs(60), futures_join(tasks)).await;
    });
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

fn verify(store: &Store, acknowledged: &[Acknowledged]) {
    let mut by_queue: HashMap<u32, Vec<broker::store::StoredMessage>> = HashMap::new();
    for queue_id in 0..QUEUES {
        let mut all = Vec::new();
        let mut queue_offset = 0;
        loop {
            let result = store
                .get_messages(&GetRequest {
                    topic: "crash",
                    queue_id,
                    queue_offset,
                    max_count: 32,
                    max_bytes: 1 << 20,
                    filter: &TagFilter::All,
                })
                .unwrap();
            if result.messages.is_empty() {
                break;
            }
            queue_offset = result.next_queue_offset;
            all.extend(result.messages);
        }
        for (n, message) in all.iter().enumerate() {
            assert_eq!(
                message.queue_offset(),
                n as u64,
                "queue {queue_id} is not dense"
            );
        }
        by_queue.insert(queue_id, all);
    }
    for one in acknowledged {
        let message = by_queue[&one.queue_id]
            .get(one.queue_offset as usize)
            .unwrap_or_else(|| panic!("acknowledged append lost: {one:?}"));
        assert_eq!(
            message.commit_log_offset(),
            one.commit_log_offset,
            "{one:?}"
        );
        assert_eq!(
            message.body(),
            Bytes::from(body(one.writer, one.seq)),
            "{one:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_sync_flush_appends_loses_no_acknowledged_message() {
    let seed = common::seed("STORE_CRASH_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acknowledged = Vec::new();
    let mut torn_tails = 0;
    for round in 0..ROUNDS {
        let acknowledged_before_kill = rng.random_range(1..3000);
        let acknowledged = tokio::task::block_in_place(|| {
            common::run_child_and_kill(
                "crash_child",
                &[(CHILD_DIR_ENV, common::dir_value(dir.path()))],
                parse_acknowledged,
                {
                    let mut seen = 0;
                    move |_| {
                        seen += 1;
                        seen >= acknowledged_before_kill
                    }
                },
            )
        });
        all_acknowledged.extend(acknowledged);
        let store = Store::open(config(dir.path())).unwrap();
        let report = store.recovery_report().clone();
        assert!(
            !report.clean_shutdown,
            "round {round}: the kill must leave the abort marker"
        );
        torn_tails += usize::from(report.torn_tail_offset.is_some());
        assert!(
            store
                .wait_readable(store.write_offset(), Duration::from_secs(30))
                .await
        );
        verify(&store, &all_acknowledged);
        println!(
            "round {round}: {} acknowledged so far, recovered end {}, checked {} records, torn tail {:?}",
            all_acknowledged.len(),
            report.recovered_end_offset,
            report.records_checked,
            report.torn_tail_offset
        );
        tokio::task::block_in_place(|| store.shutdown()).unwrap();
    }
    assert!(
        all_acknowledged.len() >= ROUNDS,
        "the child must have acknowledged appends"
    );
    println!(
        "{} acknowledged appends verified over {ROUNDS} kills ({torn_tails} torn tails cut)",
        all_acknowledged.len()
    );
}
