//! Crash test of truncation: a child process appends under `SYNC_FLUSH` and now and then cuts its
//! log back (`truncate_to`), and is killed with SIGKILL at random moments, again and again.
//!
//! Invariant: a cut that returned never comes back after a restart, and nothing acknowledged and
//! not cut is lost. Precisely, after each kill the log holds exactly the acknowledged records left
//! by every completed cut, except that (a) a cut under way at the kill may have happened or not,
//! and (b) an append under way may have landed. Queue offsets stay dense.
//!
//! The child prints `ACK <seq> <commit_log_offset>` per acknowledged append, `BEGIN <offset>`
//! before a cut and `END <offset>` after it returns. The seed is printed and can be replayed with
//! `STORE_TRUNCATE_CRASH_SEED`.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use broker::store::{GetRequest, NewMessage, PutStatus, Store, StoreConfig, TagFilter};
use bytes::Bytes;
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "STORE_TRUNCATE_CHILD_DIR";
const CHILD_SEED_ENV: &str = "STORE_TRUNCATE_CHILD_SEED";
const CHILD_FIRST_SEQ_ENV: &str = "STORE_TRUNCATE_CHILD_FIRST_SEQ";
const ROUNDS: usize = 12;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        store_path: dir.to_path_buf(),
        segment_bytes: 16 << 10,
        max_message_bytes: 4 << 10,
        max_properties_bytes: 1 << 10,
        consume_queue_entries_per_file: 64,
        batch_bytes_max: 64 << 10,
        disk_max_used_ratio: 1.0,
        ..StoreConfig::default()
    }
}

fn body(seq: u64) -> Vec<u8> {
    let len = 16 + (seq.wrapping_mul(7919) % 1500) as usize;
    format!("{seq}:").bytes().cycle().take(len).collect()
}

fn seq_of(body: &[u8]) -> u64 {
    let text = std::str::from_utf8(body).expect("bodies are ASCII");
    text.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("body starts with its seq")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Acknowledged { seq: u64, commit_log_offset: u64 },
    Begin { commit_log_offset: u64 },
    End { commit_log_offset: u64 },
}

fn parse_event(line: &str) -> Option<Event> {
    let mut fields = line.split(' ');
    let kind = fields.next()?;
    let mut next = || fields.next()?.parse::<u64>().ok();
    match kind {
        "ACK" => Some(Event::Acknowledged {
            seq: next()?,
            commit_log_offset: next()?,
        }),
        "BEGIN" => Some(Event::Begin {
            commit_log_offset: next()?,
        }),
        "END" => Some(Event::End {
            commit_log_offset: next()?,
        }),
        _ => None,
    }
}

/// Every message of queue 0, as (seq, commit-log offset), checking queue offsets are dense.
fn read_log(store: &Store) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut queue_offset = 0;
    loop {
        let result = store
            .get_messages(&GetRequest {
                topic: "cut",
                queue_id: 0,
                queue_offset,
                max_count: 64,
                max_bytes: 1 << 20,
                filter: &TagFilter::All,
            })
            .unwrap();
        if result.messages.is_empty() {
            return out;
        }
        for message in &result.messages {
            assert_eq!(
                message.queue_offset(),
                out.len() as u64,
                "queue offsets must be dense"
            );
            out.push((seq_of(&message.body()), message.commit_log_offset()));
        }
        queue_offset = result.next_queue_offset;
    }
}

#[test]
#[ignore = "child process of kill_9_during_truncation_never_brings_a_cut_tail_back"]
fn truncate_crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("run by the truncation crash test only");
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let first_seq: u64 = std::env::var(CHILD_FIRST_SEQ_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // The test harness printed "test NAME ... " without a newline: end that line first, so
        // that every line of ours starts at the beginning of a line.
        println!();
        let store = Store::open(config(Path::new(&dir))).unwrap();
        assert!(
            store
                .wait_readable(store.write_offset(), Duration::from_secs(30))
                .await
        );
        let mut live = read_log(&store);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut seq = first_seq;
        loop {
            for _ in 0..rng.random_range(1..=8) {
                let result = store
                    .append(NewMessage::new("cut", 0, Bytes::from(body(seq))))
                    .await
                    .unwrap();
                assert_eq!(result.status, PutStatus::Ok);
                println!("ACK {seq} {}", result.commit_log_offset);
                live.push((seq, result.commit_log_offset));
                seq += 1;
            }
            if rng.random_bool(0.5) && !live.is_empty() {
                let back = rng.random_range(1..=live.len().min(12));
                let cut = live[live.len() - back].1;
                println!("BEGIN {cut}");
                store.truncate_to(cut).await.unwrap();
                println!("END {cut}");
                live.retain(|(_, offset)| *offset < cut);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_truncation_never_brings_a_cut_tail_back() {
    let seed = common::seed("STORE_TRUNCATE_CRASH_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // What the log must hold: (seq, commit-log offset) of every surviving record.
    let mut expected: Vec<(u64, u64)> = Vec::new();
    let mut next_seq = 0u64;
    let mut outcomes = [0usize; 3]; // settled, cut under way, append under way
    for round in 0..ROUNDS {
        // Half the rounds kill right after a cut began (mostly in the middle of it), half after a
        // number of events (mostly in the middle of an append).
        let kill_on_begin = round % 2 == 0;
        let events_before_kill = rng.random_range(1..400);
        let begins_before_kill = rng.random_range(1..20);
        // How long after the BEGIN line the kill lands: spread over the cut's few milliseconds.
        let kill_delay = Duration::from_micros(rng.random_range(0..4_000));
        let events = tokio::task::block_in_place(|| {
            common::run_child_and_kill(
                "truncate_crash_child",
                &[
                    (CHILD_DIR_ENV, common::dir_value(dir.path())),
                    (CHILD_SEED_ENV, rng.random::<u64>().to_string()),
                    (CHILD_FIRST_SEQ_ENV, next_seq.to_string()),
                ],
                parse_event,
                {
                    let (mut events, mut begins) = (0, 0);
                    move |event: &Event| {
                        events += 1;
                        let begin = matches!(event, Event::Begin { .. });
                        begins += usize::from(begin);
                        if kill_on_begin {
                            let now = begin && begins >= begins_before_kill;
                            if now {
                                // Not a wait for a condition: it picks the moment of the kill.
                                std::thread::sleep(kill_delay);
                            }
                            now
                        } else {
                            events >= events_before_kill
                        }
                    }
                },
            )
        });
        let mut cut_under_way = None;
        for event in &events {
            match *event {
                Event::Acknowledged {
                    seq,
                    commit_log_offset,
                } => {
                    expected.push((seq, commit_log_offset));
                    next_seq = next_seq.max(seq + 1);
                }
                Event::Begin { commit_log_offset } => cut_under_way = Some(commit_log_offset),
                Event::End { commit_log_offset } => {
                    expected.retain(|(_, offset)| *offset < commit_log_offset);
                    cut_under_way = None;
                }
            }
        }
        let store = Store::open(config(dir.path())).unwrap();
        assert!(
            store
                .wait_readable(store.write_offset(), Duration::from_secs(30))
                .await
        );
        let actual = read_log(&store);
        let report = store.recovery_report().clone();
        let settled = actual == expected;
        let cut_happened = cut_under_way.is_some_and(|cut| {
            let mut cut_expected = expected.clone();
            cut_expected.retain(|(_, offset)| *offset < cut);
            actual == cut_expected
        });
        // An append under way may have landed: one more record, the next seq, right after.
        let append_landed = cut_under_way.is_none()
            && actual.len() == expected.len() + 1
            && actual[..expected.len()] == expected[..]
            && actual.last().is_some_and(|(seq, _)| *seq == next_seq);
        assert!(
            settled || cut_happened || append_landed,
            "round {round}: log after restart does not match the history\n expected {expected:?}\n cut under way {cut_under_way:?}\n actual {actual:?}\n recovery {report:?}"
        );
        outcomes[if settled {
            0
        } else if cut_happened {
            1
        } else {
            2
        }] += 1;
        println!(
            "round {round}: {} events, {} records, cut under way {cut_under_way:?}, finished truncation {:?}",
            events.len(),
            actual.len(),
            report.finished_truncation_offset
        );
        // The restarted log is the history the next round builds on.
        expected = actual;
        next_seq = expected
            .iter()
            .map(|(seq, _)| seq + 1)
            .max()
            .unwrap_or(next_seq)
            .max(next_seq)
            + 1;
        tokio::task::block_in_place(|| store.shutdown()).unwrap();
    }
    println!("outcomes over {ROUNDS} kills: settled {}, cut under way applied {}, append under way landed {}", outcomes[0], outcomes[1], outcomes[2]);
}
