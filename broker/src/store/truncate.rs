//! Truncation: cutting the commit log back to an offset, crash-safely. A slave does this when its
//! tail diverged from its master's; a deposed master does it when it rejoins.
//!
//! The steps, in order (a running store first indexes every record below the target, fsyncs
//! everything written, and lowers the confirm offset to the target):
//! 0. list the messages about to be cut in a report (`truncated/`, see
//!    [`super::truncation_report`]), fsynced;
//! 1. save the intent file `truncate.intent` (the target offset) with the crash-safe protocol;
//! 2. zero the containing segment from the target to its end and fsync it; delete every later
//!    segment and fsync the directory;
//! 3. cut every consume queue at the target (fsynced);
//! 4. drop epochs that start at or after the target (saved crash-safely);
//! 5. clamp the checkpoint to the target;
//! 6. remove the intent file and fsync the directory.
//!
//! Recovery redoes steps 2-6 whenever it finds an intent file, before it reads anything, so a
//! crash at any point finishes the cut on restart: the cut tail never comes back. Every step is
//! idempotent, and no step shrinks a file (a crash mid-step leaves files recovery opens). A
//! failure after step 1 poisons a running store: only recovery continues a half-done cut.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::commit_log::CommitLog;
use super::consume_queue::ConsumeQueues;
use super::dispatch::dispatch_to;
use super::epoch::EpochHistory;
use super::error::{Result, StoreError};
use super::failpoint;
use super::flush;
use super::meta_file;
use super::record::{self, read_u64, Prefix, RECORD_PREFIX_BYTES};
use super::scan;
use super::segment::Segment;
use super::shared::Shared;
use super::writer::QueueOffsetTable;

pub const TRUNCATE_INTENT_FILE_NAME: &str = "truncate.intent";
const TRUNCATE_MAGIC: u32 = u32::from_le_bytes(*b"RMTI");
const TRUNCATE_FORMAT_VERSION: u16 = 1;

/// Checks that `commit_log_offset` is a record boundary the log holds. A record that starts there
/// (its header names this offset) but fails its check is [`StoreError::Corrupt`], not a caller's
/// error.
pub(crate) fn check_boundary(log: &CommitLog, commit_log_offset: u64) -> Result<()> {
    let invalid = |reason| StoreError::OffsetInvalid {
        commit_log_offset,
        reason,
    };
    let write_offset = log.write_offset();
    if commit_log_offset > write_offset {
        return Err(invalid("beyond the written end of the commit log"));
    }
    if commit_log_offset < log.min_offset() {
        return Err(invalid("before the oldest segment still held"));
    }
    if commit_log_offset == write_offset {
        return Ok(());
    }
    let segment = log
        .segment_for(commit_log_offset)
        .ok_or(invalid("no segment holds this offset"))?;
    if commit_log_offset == segment.base_offset() {
        return Ok(());
    }
    let segment_left = segment.end_offset() - commit_log_offset;
    if segment_left < RECORD_PREFIX_BYTES as u64 {
        let mut rest = vec![0u8; segment_left as usize];
        segment.read_at(commit_log_offset, &mut rest)?;
        return if rest.iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err(invalid("not a record boundary"))
        };
    }
    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    segment.read_at(commit_log_offset, &mut prefix)?;
    match record::classify_prefix(&prefix, segment_left) {
        Prefix::Padding => Ok(()),
        Prefix::Message { total_bytes } => {
            let mut raw = vec![0u8; total_bytes as usize];
            segment.read_at(commit_log_offset, &mut raw)?;
            match record::check_message(&raw) {
                Ok(header) if header.commit_log_offset == commit_log_offset => Ok(()),
                Err(reason)
                    if record::claimed_commit_log_offset(&raw) == Some(commit_log_offset) =>
                {
                    Err(StoreError::Corrupt {
                        path: segment.path().to_path_buf(),
                        position: segment.file_position(commit_log_offset),
                        reason,
                    })
                }
                _ => Err(invalid("not a record boundary")),
            }
        }
        Prefix::Zeros | Prefix::Invalid(_) => Err(invalid("not a record boundary")),
    }
}

/// Checks that the log may be cut at `commit_log_offset`: a record boundary it holds
/// ([`check_boundary`]), or the known corrupt record, which fails its own check but starts where
/// the records before it end ([`scan::reaches_by_prefixes`]): the cut a repair makes. A cut
/// above a corrupt record that stops the dispatcher is refused: the consume queues, from which
/// the writer's queue offsets are rebuilt after a cut, do not cover the records between.
pub(crate) fn check_cut(shared: &Shared, commit_log_offset: u64) -> Result<()> {
    if let Some(stop) = shared.dispatch_stop_offset() {
        if commit_log_offset > stop {
            return Err(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "above a corrupt record the consume queues stop at: cut at or below it",
            });
        }
    }
    match check_boundary(&shared.log, commit_log_offset) {
        Err(StoreError::OffsetInvalid { .. } | StoreError::Corrupt { .. })
            if shared.corrupt_offset() == Some(commit_log_offset)
                && scan::reaches_by_prefixes(&shared.log, commit_log_offset)? =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Reads a pending truncation target left by a crash.
pub(crate) fn load_intent(dir: &std::path::Path) -> Result<Option<u64>> {
    let Some((_, payload)) = meta_file::load(
        dir,
        TRUNCATE_INTENT_FILE_NAME,
        TRUNCATE_MAGIC,
        TRUNCATE_FORMAT_VERSION,
    )?
    else {
        return Ok(None);
    };
    if payload.len() != 8 {
        return Err(StoreError::Format {
            path: dir.join(TRUNCATE_INTENT_FILE_NAME),
            reason: "truncation intent has the wrong length".into(),
        });
    }
    Ok(Some(read_u64(&payload, 0)))
}

pub(crate) fn save_intent(dir: &std::path::Path, commit_log_offset: u64) -> Result<()> {
    meta_file::save(
        dir,
        TRUNCATE_INTENT_FILE_NAME,
        TRUNCATE_MAGIC,
        TRUNCATE_FORMAT_VERSION,
        &commit_log_offset.to_le_bytes(),
    )
}

/// Steps 2-6 above. Used by a running store and by recovery.
pub(crate) fn apply(
    dir: &std::path::Path,
    log: &CommitLog,
    queues: &ConsumeQueues,
    epochs: &mut EpochHistory,
    commit_log_offset: u64,
) -> Result<()> {
    cut_segments(log, commit_log_offset)?;
    failpoint::reach(failpoint::TRUNCATE_AFTER_LOG_CUT);
    for queue in queues.all() {
        queue.cut(commit_log_offset)?;
    }
    epochs.truncate_from(commit_log_offset)?;
    if let Some(checkpoint) = Checkpoint::load(dir)? {
        if checkpoint.flushed_offset > commit_log_offset
            || checkpoint.dispatched_offset > commit_log_offset
            || checkpoint.confirm_offset > commit_log_offset
            || checkpoint.verified_offset > commit_log_offset
        {
            Checkpoint {
                flushed_offset: checkpoint.flushed_offset.min(commit_log_offset),
                dispatched_offset: checkpoint.dispatched_offset.min(commit_log_offset),
                confirm_offset: checkpoint.confirm_offset.min(commit_log_offset),
                saved_at_ms: super::now_ms(),
                verified_offset: checkpoint.verified_offset.min(commit_log_offset),
            }
            .save(dir)?;
        }
    }
    meta_file::remove(dir, TRUNCATE_INTENT_FILE_NAME)
}

/// Zeroes the log from `commit_log_offset` on: every later segment leaves the segment list
/// first (so no thread finds it), then is deleted (directory fsynced); the rest of the
/// containing segment is zeroed (fsynced).
pub(crate) fn cut_segments(log: &CommitLog, commit_log_offset: u64) -> Result<()> {
    let segments = log.segments();
    log.retain_segments(|s| s.base_offset() <= commit_log_offset);
    for segment in segments {
        if segment.base_offset() > commit_log_offset {
            std::fs::remove_file(segment.path())
                .map_err(StoreError::io("remove segment", segment.path()))?;
        } else if segment.end_offset() > commit_log_offset {
            segment.zero_from(commit_log_offset)?;
        }
    }
    meta_file::sync_dir(log.dir())
}

/// Truncates a running store; called by the writer, which owns the tail. Returns the new tail
/// segment and the rebuilt queue-offset table.
///
/// Before cutting it (1) dispatches everything below the cut, because the writer's queue-offset
/// table is rebuilt from the consume queues, and (2) fsyncs everything written, so that every
/// append waiting for its fsync is answered truthfully: it was durable before the cut. Once the
/// intent is saved, any failure poisons the store: the files are half cut, and only recovery
/// (which finishes the intent) may continue from there.
pub(crate) fn truncate_running(
    shared: &Shared,
    commit_log_offset: u64,
    report: bool,
) -> Result<(Arc<Segment>, QueueOffsetTable)> {
    tracing::warn!(
        commit_log_offset,
        write_offset = shared.log.write_offset(),
        "truncating the commit log"
    );
    let mut dispatch = shared.dispatch.lock().expect("dispatch lock poisoned");
    // Until the end of the cut (the generation bumped): the scrubber reports nothing it read
    // meanwhile.
    let _rewrite = shared.log_rewrite();
    dispatch_to(shared, &mut dispatch, commit_log_offset)?;
    // Hand-offs past the cut describe bytes it removes; the writer (this thread) pushes none
    // until the cut is done.
    shared.index_handoff.clear();
    let _flush = shared.flush_lock.lock().expect("flush lock poisoned");
    if let Err(err) = flush::flush_locked(shared) {
        shared.poison(err);
        return Err(shared.poisoned().expect("just poisoned"));
    }
    if report {
        report_cut(shared, commit_log_offset);
    }
    // Consumers stop seeing the tail before it goes (no raise can pass this while we hold
    // flush_lock: the flusher raises under it, and the writer is this thread).
    shared.clamp_confirm_offset(commit_log_offset);
    let mut epochs = shared.epochs.lock().expect("epoch lock poisoned");
    save_intent(&shared.dir, commit_log_offset)?;
    failpoint::reach(failpoint::TRUNCATE_AFTER_INTENT);
    if let Err(err) = apply(
        &shared.dir,
        &shared.log,
        &shared.queues,
        &mut epochs,
        commit_log_offset,
    ) {
        shared.poison(err);
        return Err(shared.poisoned().expect("just poisoned"));
    }

    shared.log.set_write_offset(commit_log_offset);
    shared
        .log
        .set_flushed_offset(shared.log.flushed_offset().min(commit_log_offset));
    shared.flush_progress.send_modify(|p| {
        p.flushed_offset = p.flushed_offset.min(commit_log_offset);
        p.truncation_generation += 1;
    });
    shared
        .flush_requested_offset
        .fetch_min(commit_log_offset, Ordering::AcqRel);
    // New data will refill the cut offsets: its pages are releasable again once flushed.
    shared
        .page_cache_released_offset
        .fetch_min(commit_log_offset, Ordering::AcqRel);
    dispatch.dispatched_offset = dispatch.dispatched_offset.min(commit_log_offset);
    shared
        .dispatched_offset
        .store(dispatch.dispatched_offset, Ordering::Release);
    shared.resume_dispatch_from(commit_log_offset);
    // Again, now that the durable offsets are lowered: an external raise computed before them
    // cannot stay above the cut.
    shared.clamp_confirm_offset(commit_log_offset);
    shared.publish_readable();
    shared.publish_progress();

    let tail = match shared.log.segment_for(commit_log_offset) {
        Some(tail) => tail,
        None => {
            let created = Segment::create(
                shared.log.dir(),
                commit_log_offset,
                shared.config.segment_bytes,
            );
            match created {
                Ok(segment) => shared.log.push_segment(segment),
                Err(err) => {
                    shared.poison(err);
                    return Err(shared.poisoned().expect("just poisoned"));
                }
            }
        }
    };
    Ok((tail, queue_offset_table(&shared.queues)))
}

/// Lists the messages about to be cut (see [`super::truncation_report`]) and says so in the log.
fn report_cut(shared: &Shared, commit_log_offset: u64) {
    let write_offset = shared.log.write_offset();
    if commit_log_offset >= write_offset {
        return;
    }
    match super::truncation_report::write(&shared.dir, &shared.log, commit_log_offset, write_offset)
    {
        Ok((summary, path)) => tracing::warn!(
            from = summary.from,
            to = summary.to,
            bytes = summary.bytes,
            messages = summary.messages,
            report = %path.display(),
            "cutting messages consumers never saw; under ASYNC_MASTER some may have been \
             acknowledged to producers: the report lists every one"
        ),
        Err(err) => tracing::error!(
            from = commit_log_offset,
            to = write_offset,
            error = %err,
            "could not write the truncation report; cutting anyway"
        ),
    }
}

/// The writer's table, from the consume queues (which hold every record below write_offset).
pub(crate) fn queue_offset_table(queues: &ConsumeQueues) -> QueueOffsetTable {
    let mut table = QueueOffsetTable::new();
    for queue in queues.all() {
        table
            .entry(queue.topic().to_owned())
            .or_default()
            .insert(queue.queue_id(), queue.max_queue_offset());
    }
    table
}
