//! Recovery: bringing the store back to a consistent state when it opens.
//!
//! In order:
//! 1. open the segments (checking headers and contiguity), the consume queues and the epochs;
//! 2. finish an interrupted truncation (`truncate.intent`), before anything is read;
//! 3. start at the checkpoint (`min(flushed, dispatched)`, a durable record boundary; the oldest
//!    segment when there is no checkpoint or the consume queues are gone), cut every consume queue
//!    there, and CRC-check every record from there forward, rebuilding consume-queue entries
//!    from the same pass;
//! 4. at the first position that is not a valid record: below the checkpoint's flushed offset it
//!    is damage to fsynced data, and the store refuses to open ([`StoreError::Corrupt`] names the
//!    file and position; nothing is changed). Otherwise look at everything after it: if any
//!    valid record follows, the damage is in the middle of the log, and the store refuses to open
//!    likewise. Otherwise it is a torn or garbage tail from a crash mid-write: it is zeroed once,
//!    with a warning. (A power loss can leave unflushed pages written out of order, a hole before
//!    valid records past the checkpoint; that too is refused, since those records may have been
//!    acknowledged after the checkpoint was saved: an operator decides.)
//! 5. fsync the recovered range (it may have been read from the page cache only), save a fresh
//!    checkpoint, and drop epochs that start beyond the recovered end.
//!
//! The abort marker (a file present while the store is open) tells a crash from a clean stop.
//! Both take the same path; only the log level differs, since a clean stop leaves nothing to fix.

use std::path::Path;
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::commit_log::CommitLog;
use super::config::StoreConfig;
use super::consume_queue::ConsumeQueues;
use super::dispatch::{PendingEntries, SCAN_CHUNK_BYTES};
use super::epoch::EpochHistory;
use super::error::{Result, StoreError};
use super::scan::{self, ScanEnd, Stop};
use super::segment::Segment;
use super::truncate;

/// Directory of the commit-log segments inside the store directory.
pub const COMMIT_LOG_DIR: &str = "commitlog";
/// Directory of the consume queues inside the store directory.
pub const CONSUME_QUEUE_DIR: &str = "consumequeue";

/// What recovery found and did; logged at open and kept for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run stopped cleanly (no abort marker).
    pub clean_shutdown: bool,
    /// An interrupted truncation to this offset was finished.
    pub finished_truncation_offset: Option<u64>,
    /// Where CRC checking started.
    pub checked_from_offset: u64,
    /// Records CRC-checked and re-dispatched.
    pub records_checked: u64,
    /// Bytes CRC-checked.
    pub bytes_checked: u64,
    /// The end of the valid log: the new write offset.
    pub recovered_end_offset: u64,
    /// A torn or garbage tail was cut at this offset.
    pub torn_tail_offset: Option<u64>,
    pub duration: Duration,
}

pub(crate) struct Recovered {
    pub log: CommitLog,
    pub queues: ConsumeQueues,
    pub epochs: EpochHistory,
    pub report: RecoveryReport,
    /// The confirm offset the last checkpoint saved, capped at the recovered end.
    pub checkpoint_confirm_offset: u64,
}

pub(crate) fn recover(dir: &Path, config: &StoreConfig, clean_shutdown: bool) -> Result<Recovered> {
    let started = Instant::now();
    let mut report = RecoveryReport {
        clean_shutdown,
        ..RecoveryReport::default()
    };
    let queue_dir = dir.join(CONSUME_QUEUE_DIR);
    let queues_existed = queue_dir.exists();
    let log = CommitLog::open(&dir.join(COMMIT_LOG_DIR))?;
    let queues = ConsumeQueues::open(&queue_dir, config.consume_queue_entries_per_file)?;
    let mut epochs = EpochHistory::load(dir)?;

    if let Some(target) = truncate::load_intent(dir)? {
        tracing::warn!(
            commit_log_offset = target,
            "finishing a truncation interrupted by a crash"
        );
        truncate::apply(dir, &log, &queues, &mut epochs, target)?;
        report.finished_truncation_offset = Some(target);
    }

    let Some(last) = log.last_segment() else {
        // A new store.
        log.push_segment(Segment::create(log.dir(), 0, config.segment_bytes)?);
        Checkpoint::default().save(dir)?;
        report.duration = started.elapsed();
        return Ok(Recovered {
            log,
            queues,
            epochs,
            report,
            checkpoint_confirm_offset: 0,
        });
    };
    let min_offset = log.min_offset();
    queues.set_log_begins_late(min_offset > 0);
    let checkpoint = Checkpoint::load(dir)?;
    let start = match checkpoint {
        Some(checkpoint) if queues_existed => checkpoint
            .recovery_start()
            .clamp(min_offset, last.end_offset()),
        _ => min_offset,
    };
    report.checked_from_offset = start;
    for queue in queues.all() {
        queue.recover_to(start)?;
        // Retention may have deleted segments since these files were written.
        queue.delete_before(min_offset)?;
    }

    let mut pending = PendingEntries::default();
    let mut records = 0u64;
    let end = scan::scan(
        &log,
        start,
        last.end_offset(),
        SCAN_CHUNK_BYTES,
        |header, raw| {
            records += 1;
            let topic =
                std::str::from_utf8(&raw[header.topic_range()]).expect("checked by check_message");
            pending.add(&queues, header, topic)
        },
    )?;
    pending.write_out()?;
    report.records_checked = records;

    let recovered_end = match end {
        ScanEnd::Limit { commit_log_offset } => commit_log_offset,
        ScanEnd::Stopped {
            commit_log_offset,
            path,
            position,
            stop,
        } => {
            // Everything below the checkpoint's flushed offset was fsynced before it was saved:
            // damage there cannot be a torn write.
            let durable_end = checkpoint.map_or(0, |c| c.flushed_offset);
            if commit_log_offset < durable_end {
                tracing::error!(
                    segment = %path.display(),
                    position,
                    reason = ?stop,
                    durable_end,
                    "damaged record below the last checkpointed flushed offset: refusing to open"
                );
                return Err(StoreError::Corrupt {
                    path,
                    position,
                    reason: "damaged record below the last checkpointed flushed offset",
                });
            }
            let (valid_after, saw_nonzero) =
                scan::find_valid_record_after(&log, commit_log_offset, SCAN_CHUNK_BYTES)?;
            if let Some(valid_offset) = valid_after {
                tracing::error!(
                    segment = %path.display(),
                    position,
                    reason = ?stop,
                    next_valid_commit_log_offset = valid_offset,
                    "corrupt record before valid ones: refusing to open"
                );
                return Err(StoreError::Corrupt {
                    path,
                    position,
                    reason: match stop {
                        Stop::Zeros => "zeros in the middle of the log, followed by valid records",
                        Stop::Invalid(_) => {
                            "invalid record in the middle of the log, followed by valid records"
                        }
                    },
                });
            }
            if stop != Stop::Zeros || saw_nonzero {
                tracing::warn!(
                    segment = %path.display(),
                    position,
                    commit_log_offset,
                    reason = ?stop,
                    "torn or garbage tail after a crash: cutting it"
                );
                truncate::cut_segments(&log, commit_log_offset)?;
                report.torn_tail_offset = Some(commit_log_offset);
            }
            commit_log_offset
        }
    };
    report.bytes_checked = recovered_end - start;

    // What recovery read may have come from the page cache alone: make it durable before the
    // flushed offset claims it.
    for segment in log.segments() {
        if segment.end_offset() > start && segment.base_offset() < recovered_end {
            segment
                .sync_data()
                .map_err(StoreError::io("fsync commit log", segment.path()))?;
        }
    }
    log.set_write_offset(recovered_end);
    log.set_flushed_offset(recovered_end);
    if log.segment_for(recovered_end).is_none() {
        log.push_segment(Segment::create(
            log.dir(),
            recovered_end,
            config.segment_bytes,
        )?);
    }
    epochs.truncate_from(recovered_end + 1)?;
    for queue in queues.all() {
        queue.sync()?;
    }
    let checkpoint_confirm_offset = checkpoint
        .map_or(0, |c| c.confirm_offset)
        .min(recovered_end);
    Checkpoint {
        flushed_offset: recovered_end,
        dispatched_offset: recovered_end,
        confirm_offset: checkpoint_confirm_offset,
        saved_at_ms: super::now_ms(),
    }
    .save(dir)?;
    report.recovered_end_offset = recovered_end;
    report.duration = started.elapsed();
    Ok(Recovered {
        log,
        queues,
        epochs,
        report,
        checkpoint_confirm_offset,
    })
}
