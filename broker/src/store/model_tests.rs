//! Model test: random sequences of append / read / flush / reopen / crash / truncate, checked
//! after every step against a plain in-memory model of what the log must hold.
//!
//! Invariant: after any sequence, every queue reads back exactly the model's messages for it, in
//! order, at queue offsets 0, 1, 2, ...; the write offset is the end of the model's last record;
//! queue offsets continue without gaps after reopens, crashes and truncations; no corruption is
//! ever reported (by recovery, reads or a scrub pass) in a log nobody damaged, and the verified
//! offset never passes the flushed offset.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::tests::{settle, small_config};
use super::*;

const QUEUES: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    Append {
        queue_id: u32,
        body_bytes: usize,
        batch: usize,
    },
    Read {
        queue_id: u32,
        from_percent: u8,
    },
    Flush,
    Reopen,
    Crash,
    /// Cut before the record `back` places from the end (0: no-op cut at the write offset).
    Truncate {
        back: usize,
    },
    /// One whole scrub pass, which must find nothing.
    Scrub,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..QUEUES, 1usize..700, 1usize..4).prop_map(|(queue_id, body_bytes, batch)| Op::Append { queue_id, body_bytes, batch }),
        2 => (0..QUEUES, 0u8..=100).prop_map(|(queue_id, from_percent)| Op::Read { queue_id, from_percent }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => (0usize..12).prop_map(|back| Op::Truncate { back }),
        1 => Just(Op::Scrub),
    ]
}

#[derive(Clone, Debug)]
struct ModelRecord {
    queue_id: u32,
    body: Bytes,
    commit_log_offset: u64,
}

struct Model {
    records: Vec<ModelRecord>,
    end_offset: u64,
}

impl Model {
    fn queue(&self, queue_id: u32) -> Vec<&ModelRecord> {
        self.records
            .iter()
            .filter(|r| r.queue_id == queue_id)
            .collect()
    }
}

/// Where the next record starts after a log ending at `end`: a segment tail under 12 bytes
/// holds no record, so the log moves on to the next segment (all segments here are 8 KiB).
fn next_record_start(end: u64) -> u64 {
    let segment_bytes = small_config(std::path::Path::new("unused")).segment_bytes;
    let left = segment_bytes - end % segment_bytes;
    if left < record::RECORD_PREFIX_BYTES as u64 {
        end + left
    } else {
        end
    }
}

async fn check(store: &Store, model: &Model) {
    assert_eq!(
        store.write_offset(),
        next_record_start(model.end_offset),
        "write offset"
    );
    settle(store).await;
    assert_eq!(store.health().borrow().corrupt, None, "no corruption");
    assert!(store.verified_offset() <= store.flushed_offset());
    for queue_id in 0..QUEUES {
        let expected = model.queue(queue_id);
        let mut got = Vec::new();
        let mut queue_offset = 0;
        loop {
            let result = store
                .get_messages(&GetRequest {
                    topic: "model",
                    queue_id,
                    queue_offset,
                    max_count: 5,
                    max_bytes: 4096,
                    filter: &TagFilter::All,
                })
                .unwrap();
            if result.messages.is_empty() {
                break;
            }
            queue_offset = result.next_queue_offset;
            got.extend(result.messages);
        }
        assert_eq!(got.len(), expected.len(), "queue {queue_id} length");
        for (n, (message, model)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(message.queue_offset(), n as u64);
            assert_eq!(message.commit_log_offset(), model.commit_log_offset);
            assert_eq!(message.body(), model.body);
        }
    }
}

async fn run(dir: &Path, ops: Vec<Op>) {
    let config = small_config(dir);
    let mut store = Store::open(config.clone()).unwrap();
    let mut model = Model {
        records: Vec::new(),
        end_offset: 0,
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                queue_id,
                body_bytes,
                batch,
            } => {
                let messages: Vec<NewMessage> = (0..batch)
                    .map(|i| {
                        let fill = b'a' + ((step + i) % 26) as u8;
                        NewMessage::new("model", queue_id, Bytes::from(vec![fill; body_bytes]))
                    })
                    .collect();
                let result = store.append_batch(messages.clone()).await.unwrap();
                assert_eq!(result.status, PutStatus::Ok);
                assert_eq!(result.queue_offset, model.queue(queue_id).len() as u64);
                // Records of a batch are contiguous unless the batch rolled a segment; read
                // their offsets back from the store rather than guessing padding.
                settle(&store).await;
                let stored = store
                    .get_messages(&GetRequest {
                        topic: "model",
                        queue_id,
                        queue_offset: result.queue_offset,
                        max_count: batch,
                        max_bytes: usize::MAX,
                        filter: &TagFilter::All,
                    })
                    .unwrap();
                assert_eq!(stored.messages.len(), batch);
                for (message, new) in stored.messages.iter().zip(messages) {
                    model.records.push(ModelRecord {
                        queue_id,
                        body: new.body,
                        commit_log_offset: message.commit_log_offset(),
                    });
                }
                assert_eq!(
                    stored.messages[0].commit_log_offset(),
                    result.commit_log_offset
                );
                model.end_offset = result.end_offset;
            }
            Op::Read {
                queue_id,
                from_percent,
            } => {
                let expected = model.queue(queue_id);
                let from = expected.len() * from_percent as usize / 100;
                settle(&store).await;
                let result = store
                    .get_messages(&GetRequest {
                        topic: "model",
                        queue_id,
                        queue_offset: from as u64,
                        max_count: 3,
                        max_bytes: usize::MAX,
                        filter: &TagFilter::All,
                    })
                    .unwrap();
                let want: Vec<_> = expected
                    .iter()
                    .skip(from)
                    .take(3)
                    .map(|r| r.body.clone())
                    .collect();
                let got: Vec<_> = result.messages.iter().map(|m| m.body()).collect();
                assert_eq!(got, want);
            }
            Op::Flush => {
                store.flush().await.unwrap();
                assert_eq!(store.flushed_offset(), next_record_start(model.end_offset));
            }
            Op::Reopen => {
                store.shutdown().unwrap();
                drop(store);
                store = Store::open(config.clone()).unwrap();
                assert!(store.recovery_report().clean_shutdown);
            }
            Op::Crash => {
                store.halt_for_test();
                drop(store);
                store = Store::open(config.clone()).unwrap();
                assert!(!store.recovery_report().clean_shutdown);
                assert_eq!(store.recovery_report().torn_tail_offset, None);
            }
            Op::Truncate { back } => {
                let cut = if back == 0 || model.records.is_empty() {
                    model.end_offset
                } else {
                    let index = model.records.len().saturating_sub(back);
                    model.records[index].commit_log_offset
                };
                store.truncate_to(cut).await.unwrap();
                model.records.retain(|r| r.commit_log_offset < cut);
                model.end_offset = cut;
            }
            Op::Scrub => {
                let mut scrubber = scrub::Scrubber::new(store.shared.clone(), 4 << 10);
                loop {
                    if let scrub::Step::PassEnded { clean, .. } = scrubber.step() {
                        assert!(clean, "a scrub pass found corruption in a sound log");
                        break;
                    }
                }
                assert!(store.health().borrow().verified);
            }
        }
        check(&store, &model).await;
    }
    store.shutdown().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), run(dir.path(), ops)).await })
            .expect("model run timed out");
    }
}
