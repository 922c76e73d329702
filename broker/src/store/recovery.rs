//! Recovery: bringing the store back to a consistent state when it opens.
//!
//! In order:
//! 1. open the segments (checking headers and contiguity), the consume queues and the epochs;
//! 2. finish an interrupted truncation (`truncate.intent`), before anything is read;
//! 3. re-dispatch from the checkpoint (`min(flushed, dispatched)`, a durable record boundary; the
//!    oldest segment when there is no checkpoint or the consume queues are gone): cut every
//!    consume queue there; and CRC-check every record from the lower of that and the
//!    checkpoint's verified offset (see [`super::verified`]) to the end, after a clean shutdown
//!    too, rebuilding consume-queue entries from the re-dispatch start in the same pass. Below
//!    the verified offset the scrubber re-checks in the background, so a restart stays fast;
//! 4. at each position that is not a valid record, decide (pure: [`judge`]):
//!    - below the re-dispatch start: a corrupt record in a range the consume queues already
//!      index. It is reported (store health) and checking goes on from the re-dispatch start;
//!    - followed by a valid record anywhere later in the log, or below the checkpoint's flushed
//!      offset (fsynced data cannot be a torn write): a corrupt record in the middle of the log.
//!      It is reported, and the store opens anyway so that the replica can repair the range from
//!      a healthy one (the broker truncates the log to it and catches up). Nothing is cut: the
//!      log end stays where the log ends (the end of the last valid record, or the checkpoint's
//!      flushed offset when nothing valid follows), the consume queues stay built up to the
//!      corrupt record and the dispatcher stops there ([`super::dispatch`]): consumers see
//!      nothing past it and appends are refused until the cut, since its queue and queue offset
//!      are unreadable. Records after it are still CRC-checked (checking resumes at the next
//!      valid record) to find the end; a read of the corrupt record itself fails with
//!      [`StoreError::Corrupt`] as before;
//!    - otherwise a torn or garbage tail from a crash mid-write: it is zeroed once, with a
//!      warning. (A power loss can leave unflushed pages written out of order, a hole before
//!      valid records past the checkpoint; that counts as corruption in the middle, above.)
//! 5. fsync the recovered range (it may have been read from the page cache only), save a fresh
//!    checkpoint (its verified offset below any corrupt record found, so the next open finds it
//!    again), and drop epochs that start beyond the recovered end.
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
use super::health::Corruption;
use super::scan::{self, ScanEnd, Stop};
use super::segment::Segment;
use super::truncate;
use super::verified::VerifiedRange;

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
    /// Where CRC checking started: the lower of the checkpoint's verified offset and the
    /// re-dispatch start.
    pub checked_from_offset: u64,
    /// Records CRC-checked and re-dispatched.
    pub records_checked: u64,
    /// Bytes CRC-checked.
    pub bytes_checked: u64,
    /// The end of the valid log: the new write offset.
    pub recovered_end_offset: u64,
    /// A torn or garbage tail was cut at this offset.
    pub torn_tail_offset: Option<u64>,
    /// The lowest corrupt record found (reported in the store's health; nothing was cut).
    pub corrupt_offset: Option<u64>,
    /// The consume queues stop before this corrupt record until a truncation cuts it.
    pub dispatch_stop_offset: Option<u64>,
    pub duration: Duration,
}

pub(crate) struct Recovered {
    pub log: CommitLog,
    pub queues: ConsumeQueues,
    pub epochs: EpochHistory,
    pub report: RecoveryReport,
    /// The confirm offset the last checkpoint saved, capped at the recovered end.
    pub checkpoint_confirm_offset: u64,
    pub verified: VerifiedRange,
    /// The lowest corrupt record found, for the store's health.
    pub corruption: Option<Corruption>,
    /// Recovery checked every record the log holds (from its first offset): the store is
    /// verified from the start, unless it found corruption.
    pub checked_whole_log: bool,
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
            verified: VerifiedRange::at_open(0, 0),
            corruption: None,
            checked_whole_log: true,
        });
    };
    let min_offset = log.min_offset();
    let last_end = last.end_offset();
    queues.set_log_begins_late(min_offset > 0);
    let checkpoint = Checkpoint::load(dir)?;
    let queue_start = match checkpoint {
        Some(checkpoint) if queues_existed => {
            checkpoint.recovery_start().clamp(min_offset, last_end)
        }
        _ => min_offset,
    };
    let check_start = checkpoint
        .map_or(min_offset, |c| c.verified_offset)
        .clamp(min_offset, last_end)
        .min(queue_start);
    report.checked_from_offset = check_start;
    for queue in queues.all() {
        queue.recover_to(queue_start)?;
        // Retention may have deleted segments since these files were written.
        queue.delete_before(min_offset)?;
    }

    let checked = check_log(
        &log,
        &queues,
        Bounds {
            check_start,
            queue_start,
            durable_end: checkpoint.map_or(0, |c| c.flushed_offset),
            last_end,
        },
    )?;
    let recovered_end = checked.end;
    report.records_checked = checked.records;
    report.bytes_checked = checked.bytes;
    report.torn_tail_offset = checked.torn_tail_offset;
    report.corrupt_offset = checked.corruption.as_ref().map(|c| c.commit_log_offset);
    report.dispatch_stop_offset = checked.dispatch_stop_offset;

    settle_log(&log, config, check_start, recovered_end)?;
    epochs.truncate_from(recovered_end + 1)?;
    for queue in queues.all() {
        queue.sync()?;
    }
    let checkpoint_confirm_offset = checkpoint
        .map_or(0, |c| c.confirm_offset)
        .min(recovered_end);
    let verified = VerifiedRange::at_open(
        report.corrupt_offset.unwrap_or(recovered_end),
        recovered_end,
    );
    Checkpoint {
        flushed_offset: recovered_end,
        dispatched_offset: checked
            .dispatch_stop_offset
            .map_or(recovered_end, |stop| stop.min(recovered_end)),
        confirm_offset: checkpoint_confirm_offset,
        saved_at_ms: super::now_ms(),
        verified_offset: verified.verified_offset(recovered_end, report.corrupt_offset),
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
        verified,
        corruption: checked.corruption,
        checked_whole_log: check_start <= min_offset,
    })
}

/// Makes the recovered log the running log: fsyncs what recovery read (it may have come from the
/// page cache alone) before the flushed offset claims it, sets both offsets to the end, and makes
/// sure a segment holds the end (the next write goes there).
fn settle_log(
    log: &CommitLog,
    config: &StoreConfig,
    check_start: u64,
    recovered_end: u64,
) -> Result<()> {
    for segment in log.segments() {
        if segment.end_offset() > check_start && segment.base_offset() < recovered_end {
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
    Ok(())
}

/// Where [`check_log`] works.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// First record to CRC-check.
    check_start: u64,
    /// First record to re-dispatch into the consume queues (at or above `check_start`).
    queue_start: u64,
    /// The checkpoint's flushed offset: every byte below it was fsynced.
    durable_end: u64,
    /// End of the last segment.
    last_end: u64,
}

/// What [`check_log`] found.
#[derive(Debug, Default)]
struct Checked {
    /// The end of the log: the new write offset.
    end: u64,
    records: u64,
    bytes: u64,
    torn_tail_offset: Option<u64>,
    /// The lowest corrupt record (the first one met: checking goes forward).
    corruption: Option<Corruption>,
    /// The first corrupt record at or past the re-dispatch start: the consume queues stop there.
    dispatch_stop_offset: Option<u64>,
}

/// What a position that holds no valid record is, by the rules of step 4 (module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// A corrupt record in a range the consume queues already index: go on at the re-dispatch
    /// start.
    CorruptIndexed,
    /// A corrupt record before the valid record at this offset: the queues stop here, checking
    /// goes on there.
    CorruptBefore { next_valid_offset: u64 },
    /// Fsynced data lost, with nothing valid after it: the log ends at the checkpoint's flushed
    /// offset, and the queues stop here.
    CorruptToDurableEnd,
    /// A torn or garbage tail from a crash mid-write: the log ends here.
    TornTail,
}

/// Judges a position that holds no valid record (pure). `next_valid_offset`: the first valid
/// record after it, anywhere in the log.
pub fn judge(
    commit_log_offset: u64,
    queue_start: u64,
    durable_end: u64,
    next_valid_offset: Option<u64>,
) -> Damage {
    if commit_log_offset < queue_start {
        Damage::CorruptIndexed
    } else if let Some(next_valid_offset) = next_valid_offset {
        Damage::CorruptBefore { next_valid_offset }
    } else if commit_log_offset < durable_end {
        Damage::CorruptToDurableEnd
    } else {
        Damage::TornTail
    }
}

/// Step 3 and 4: CRC-checks every record from `check_start`, re-dispatches from `queue_start`,
/// and judges every position that holds no valid record.
fn check_log(log: &CommitLog, queues: &ConsumeQueues, bounds: Bounds) -> Result<Checked> {
    let mut checked = Checked::default();
    let mut pending = PendingEntries::default();
    let mut at = bounds.check_start;
    loop {
        let dispatch_from = match checked.dispatch_stop_offset {
            Some(_) => u64::MAX,
            None => bounds.queue_start,
        };
        let mut records = 0u64;
        let end = scan::scan(log, at, bounds.last_end, SCAN_CHUNK_BYTES, |header, raw| {
            records += 1;
            if header.commit_log_offset < dispatch_from {
                return Ok(());
            }
            let topic =
                std::str::from_utf8(&raw[header.topic_range()]).expect("checked by check_message");
            pending.add(queues, header, topic)
        })?;
        checked.records += records;
        let (offset, path, position, stop) = match end {
            ScanEnd::Limit { commit_log_offset } => {
                checked.bytes += commit_log_offset - at;
                checked.end = commit_log_offset;
                break;
            }
            ScanEnd::Stopped {
                commit_log_offset,
                path,
                position,
                stop,
            } => (commit_log_offset, path, position, stop),
        };
        checked.bytes += offset - at;
        let (next_valid, saw_nonzero) = if offset < bounds.queue_start {
            (None, true)
        } else {
            scan::find_valid_record_after(log, offset, SCAN_CHUNK_BYTES)?
        };
        let damage = judge(offset, bounds.queue_start, bounds.durable_end, next_valid);
        let reason = match stop {
            Stop::Zeros => "zeros where a record must be",
            Stop::Invalid(reason) => reason,
        };
        if damage != Damage::TornTail {
            tracing::error!(
                segment = %path.display(),
                position,
                commit_log_offset = offset,
                reason,
                damage = ?damage,
                "corrupt record in the commit log: reported, opening anyway so that the range \
                 is repaired from a healthy replica"
            );
            checked.corruption.get_or_insert(Corruption {
                commit_log_offset: offset,
                reason: reason.to_owned(),
            });
        }
        match damage {
            Damage::CorruptIndexed => at = bounds.queue_start,
            Damage::CorruptBefore { next_valid_offset } => {
                checked.dispatch_stop_offset.get_or_insert(offset);
                at = next_valid_offset;
            }
            Damage::CorruptToDurableEnd => {
                checked.dispatch_stop_offset.get_or_insert(offset);
                // Nothing valid lies past the durable end: zero whatever is there, as for a torn
                // tail, so that the writer continues on zeros.
                let end = bounds.durable_end.min(bounds.last_end);
                truncate::cut_segments(log, end)?;
                checked.end = end;
                break;
            }
            Damage::TornTail => {
                if stop != Stop::Zeros || saw_nonzero {
                    tracing::warn!(
                        segment = %path.display(),
                        position,
                        commit_log_offset = offset,
                        reason,
                        "torn or garbage tail after a crash: cutting it"
                    );
                    truncate::cut_segments(log, offset)?;
                    checked.torn_tail_offset = Some(offset);
                }
                checked.end = offset;
                break;
            }
        }
    }
    pending.write_out()?;
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_judged_by_where_it_is_and_what_follows() {
        // queue_start 1000, durable_end 2000.
        assert_eq!(judge(500, 1000, 2000, None), Damage::CorruptIndexed);
        assert_eq!(
            judge(500, 1000, 2000, Some(600)),
            Damage::CorruptIndexed,
            "below the re-dispatch start, whatever follows"
        );
        assert_eq!(
            judge(1500, 1000, 2000, Some(1700)),
            Damage::CorruptBefore {
                next_valid_offset: 1700
            }
        );
        assert_eq!(
            judge(2500, 1000, 2000, Some(2700)),
            Damage::CorruptBefore {
                next_valid_offset: 2700
            },
            "a hole before valid records past the checkpoint"
        );
        assert_eq!(judge(1500, 1000, 2000, None), Damage::CorruptToDurableEnd);
        assert_eq!(judge(2000, 1000, 2000, None), Damage::TornTail);
        assert_eq!(judge(2500, 1000, 2000, None), Damage::TornTail);
    }
}
