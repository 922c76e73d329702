//! The dispatcher: builds consume-queue entries for everything written, and saves the checkpoint.
//!
//! It follows `write_offset`. For the ranges the writer handed over with their entries
//! (`index_handoff`: its own group commits) it takes those entries; every other written range
//! (records copied from a master by `append_raw`, a hand-off that found the queue full) it scans
//! from the log, CRC-checking each record, as every read does. Either way it gathers the entries
//! per queue and appends each queue's run with one write. Both sources give the same entries
//! (debug builds check every handed-over range against the log), so a slave's consume queues are
//! built exactly like its master's, and recovery, which only has the log, rebuilds them the same.
//!
//! Every `checkpoint_interval_ms`, and at shutdown, it fsyncs the consume queues and then saves
//! the checkpoint (flushed offset read before the fsyncs, dispatched offset), in that order: the
//! checkpoint never claims more than is on disk.
//!
//! Entries are built for everything written, not only below the confirm offset; reads apply the
//! confirm offset. That keeps the consume queues a pure function of the log.
//!
//! A corrupt record stops it (`Shared::dispatch_stop_offset`): its topic, queue and queue offset
//! are unreadable, and indexing past it would leave a hole in its queue. The dispatcher reports
//! it (store health) and indexes nothing past it until a truncation cuts it; recovery may hand
//! over a store already stopped. The rest of the store goes on: what is indexed stays readable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::Checkpoint;
use super::consume_queue::{ConsumeQueue, ConsumeQueues, CqEntry};
use super::error::{Result, StoreError};
use super::record::RecordHeader;
use super::scan::{self, ScanEnd, Stop};
use super::shared::{DispatchState, Shared};

/// Bytes of commit log read per scan chunk.
pub(crate) const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Entries gathered in memory before they are written out (bounds memory during recovery).
const PENDING_ENTRIES_MAX: usize = 64 << 10;

/// Consume-queue entries gathered for several queues, written one run per queue.
#[derive(Default)]
pub(crate) struct PendingEntries {
    /// Keyed by the queue's address: each queue is one `Arc` for the store's lifetime.
    runs: HashMap<usize, Run>,
    entries: usize,
    /// The commit log does not begin at 0: a queue never written may begin above queue offset 0
    /// (`ConsumeQueues::set_log_begins_late`).
    may_begin_late: bool,
}

struct Run {
    queue: Arc<ConsumeQueue>,
    first_queue_offset: u64,
    encoded: Vec<u8>,
}

impl PendingEntries {
    /// Adds the entry of one record; writes everything out when too much is gathered.
    pub fn add(
        &mut self,
        queues: &ConsumeQueues,
        header: &RecordHeader,
        topic: &str,
    ) -> Result<()> {
        let entry = CqEntry {
            commit_log_offset: header.commit_log_offset,
            size_bytes: header.total_bytes,
            tag_hash: header.tag_hash,
        };
        self.add_run(
            queues,
            topic,
            header.queue_id,
            header.queue_offset,
            std::slice::from_ref(&entry),
        )
    }

    /// Adds the entries of consecutive queue offsets of one queue, the first at
    /// `first_queue_offset`; writes everything out when too much is gathered.
    pub fn add_run(
        &mut self,
        queues: &ConsumeQueues,
        topic: &str,
        queue_id: u32,
        first_queue_offset: u64,
        entries: &[CqEntry],
    ) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.may_begin_late = queues.log_begins_late();
        let queue = match queues.get(topic, queue_id) {
            Some(queue) => queue,
            None => queues.get_or_create(topic, queue_id)?,
        };
        let run = self
            .runs
            .entry(Arc::as_ptr(&queue) as usize)
            .or_insert_with(|| Run {
                first_queue_offset,
                queue,
                encoded: Vec::new(),
            });
        let expected = run.first_queue_offset
            + (run.encoded.len() / super::consume_queue::CQ_ENTRY_BYTES) as u64;
        if first_queue_offset != expected {
            return Err(StoreError::Corrupt {
                path: queues_path(&run.queue),
                position: first.commit_log_offset,
                reason: "queue offsets in the commit log skip or repeat",
            });
        }
        for entry in entries {
            entry.encode(&mut run.encoded);
        }
        self.entries += entries.len();
        if self.entries >= PENDING_ENTRIES_MAX {
            self.write_out()?;
        }
        Ok(())
    }

    /// Appends every gathered run to its queue.
    pub fn write_out(&mut self) -> Result<()> {
        for (_, run) in self.runs.drain() {
            run.queue
                .append(run.first_queue_offset, &run.encoded, self.may_begin_late)?;
        }
        self.entries = 0;
        Ok(())
    }
}

fn queues_path(queue: &ConsumeQueue) -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "consumequeue/{}/{}",
        queue.topic(),
        queue.queue_id()
    ))
}

/// Scans `[from, to)` of the log into the consume queues; returns where it stopped: `to`, or the
/// offset of a corrupt record, which it reports and stops the dispatcher at.
pub(crate) fn dispatch_range(shared: &Shared, from: u64, to: u64) -> Result<u64> {
    let mut pending = PendingEntries::default();
    let end = scan::scan(&shared.log, from, to, SCAN_CHUNK_BYTES, |header, raw| {
        let topic =
            std::str::from_utf8(&raw[header.topic_range()]).expect("checked by check_message");
        pending.add(&shared.queues, header, topic)
    })?;
    pending.write_out()?;
    match end {
        ScanEnd::Limit { commit_log_offset } => Ok(commit_log_offset),
        ScanEnd::Stopped {
            commit_log_offset,
            stop,
            ..
        } => {
            let reason = match stop {
                Stop::Zeros => "zeros below the written end",
                Stop::Invalid(reason) => reason,
            };
            tracing::error!(
                commit_log_offset,
                reason,
                "the dispatcher met a corrupt record: consume queues stop before it until it is \
                 cut"
            );
            shared.report_corrupt(commit_log_offset, reason.to_owned());
            shared.stop_dispatch_at(commit_log_offset);
            Ok(commit_log_offset)
        }
    }
}

/// Called by the writer after a write (see `Writer::index_written`), with `idle` true when no
/// command waits for it: indexes what was written on the writer's thread when the dispatcher is
/// not in a round, else wakes the dispatcher. At light load the dispatcher's wake-up per append (and
/// the writer's pre-emption by it) cost more than the indexing; under load, or while a round
/// runs, the dispatcher does it and the writer goes on writing. Checkpoints stay with the
/// dispatcher's own rounds. An error poisons the store, as in the dispatcher.
pub(crate) fn dispatch_if_idle(shared: &Shared, idle: bool) {
    if idle && shared.poisoned().is_none() {
        if let Ok(mut state) = shared.dispatch.try_lock() {
            let before = state.dispatched_offset;
            match dispatch_to(shared, &mut state, shared.log.write_offset()) {
                Ok(()) => {
                    if state.dispatched_offset != before {
                        shared.publish_readable();
                    }
                }
                Err(err) => {
                    drop(state);
                    shared.poison(err);
                }
            }
            return;
        }
    }
    shared.dispatch_signal.notify();
}

pub(crate) fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.checkpoint_interval_ms);
    loop {
        // Reads the atomic mirror, not the mutex: the writer notifies this signal while it may
        // hold the dispatch mutex (truncation), and the two locks must not be taken in both orders.
        let stopping = shared.dispatch_signal.wait(Some(interval), || {
            shared.dispatch_limit() > shared.dispatched_offset.load(Ordering::Acquire)
        });
        if shared.poisoned().is_some() {
            // The store failed (or a test simulates a crash): write nothing more.
            return;
        }
        let mut state = shared.dispatch.lock().expect("dispatch lock poisoned");
        if let Err(err) = round(&shared, &mut state, stopping) {
            drop(state);
            shared.poison(err);
            return;
        }
        if stopping {
            return;
        }
    }
}

/// Indexes the log up to `target` (a record boundary) if the dispatcher has not yet, and
/// publishes the new dispatched offset (readers are told by the caller). Callers hold the
/// dispatch state: the dispatcher's rounds, and whoever needs everything indexed now.
///
/// Takes the writer's handed-over entries where a hand-off starts exactly at the dispatched
/// offset, and scans the log for every range in between (see the module header). Never indexes
/// past a corrupt record (see the module header): stops there.
pub(crate) fn dispatch_to(shared: &Shared, state: &mut DispatchState, target: u64) -> Result<()> {
    let target = target.min(shared.dispatch_stop_offset().unwrap_or(u64::MAX));
    if target <= state.dispatched_offset {
        return Ok(());
    }
    let mut pending = PendingEntries::default();
    let mut dispatched = state.dispatched_offset;
    while let Some(range) = shared.index_handoff.pop_until(target) {
        if range.end <= dispatched {
            continue; // indexed from the log meanwhile
        }
        if range.start != dispatched {
            // A written range nobody handed over lies before this one: read it from the log,
            // after the entries gathered so far (a queue takes its entries in order).
            pending.write_out()?;
            dispatched = dispatch_range(shared, dispatched, range.start)?;
            if shared
                .dispatch_stop_offset()
                .is_some_and(|stop| stop < range.end)
            {
                break; // a corrupt record: nothing past it is indexed
            }
        }
        if range.start != dispatched {
            // Cannot happen (hand-offs and the log are both cut at group boundaries); the log
            // decides.
            debug_assert!(false, "hand-off {range:?} overlaps what was indexed");
            continue;
        }
        #[cfg(debug_assertions)]
        check_against_log(shared, &range);
        for run in &range.runs {
            pending.add_run(
                &shared.queues,
                &run.topic,
                run.queue_id,
                run.first_queue_offset,
                run.entries.as_slice(),
            )?;
        }
        dispatched = range.end;
    }
    pending.write_out()?;
    let target = target.min(shared.dispatch_stop_offset().unwrap_or(u64::MAX));
    if dispatched < target {
        dispatched = dispatch_range(shared, dispatched, target)?;
    }
    state.dispatched_offset = dispatched;
    shared
        .dispatched_offset
        .store(state.dispatched_offset, Ordering::Release);
    Ok(())
}

/// Debug builds: a handed-over range must give exactly the entries a scan of the log gives.
#[cfg(debug_assertions)]
fn check_against_log(shared: &Shared, range: &super::index_handoff::WrittenRange) {
    let mut from_log = Vec::new();
    let end = scan::scan(
        &shared.log,
        range.start,
        range.end,
        SCAN_CHUNK_BYTES,
        |header, raw| {
            let topic =
                std::str::from_utf8(&raw[header.topic_range()]).expect("checked by check_message");
            from_log.push((
                topic.to_owned(),
                header.queue_id,
                header.queue_offset,
                CqEntry {
                    commit_log_offset: header.commit_log_offset,
                    size_bytes: header.total_bytes,
                    tag_hash: header.tag_hash,
                },
            ));
            Ok(())
        },
    )
    .and_then(scan::stop_to_error)
    .expect("a handed-over range reads back from the log");
    assert_eq!(
        end, range.end,
        "a handed-over range ends where the log says"
    );
    let handed: Vec<_> = range
        .runs
        .iter()
        .flat_map(|run| {
            run.entries.as_slice().iter().enumerate().map(|(i, entry)| {
                (
                    run.topic.clone(),
                    run.queue_id,
                    run.first_queue_offset + i as u64,
                    *entry,
                )
            })
        })
        .collect();
    assert_eq!(handed, from_log, "handed-over entries differ from the log");
}

fn round(shared: &Shared, state: &mut DispatchState, force_checkpoint: bool) -> Result<()> {
    let before = state.dispatched_offset;
    dispatch_to(shared, state, shared.log.write_offset())?;
    if state.dispatched_offset != before {
        shared.publish_readable();
    }
    let now = super::now_ms();
    if force_checkpoint
        || now.saturating_sub(state.last_checkpoint_ms) >= shared.config.checkpoint_interval_ms
    {
        save_checkpoint(shared, state)?;
        state.last_checkpoint_ms = now;
    }
    Ok(())
}

/// Fsyncs the consume queues and saves the checkpoint. Holds the dispatch state, so no round
/// runs in between.
pub(crate) fn save_checkpoint(shared: &Shared, state: &DispatchState) -> Result<()> {
    let flushed_offset = shared.log.flushed_offset();
    // Read with the flushed offset, before the fsyncs: never past what this checkpoint calls
    // flushed.
    let verified_offset = shared.verified_offset().min(flushed_offset);
    for queue in shared.queues.all() {
        queue.sync()?;
    }
    Checkpoint {
        flushed_offset,
        dispatched_offset: state.dispatched_offset,
        confirm_offset: shared.confirm_offset(),
        saved_at_ms: super::now_ms(),
        verified_offset,
    }
    .save(&shared.dir)
}
