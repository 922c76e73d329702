//! The flusher: the thread that makes written data durable and moves `flushed_offset`.
//!
//! `SYNC_FLUSH`: it sleeps until the writer publishes more than is flushed, takes the current
//! `write_offset` as its target, fdatasyncs every segment between `flushed_offset` and the target,
//! and publishes the target. One fsync answers every append written before it began (group
//! commit), and the writer keeps writing while it runs.
//!
//! Gathering: an fsync costs about the same for 16 KiB as for 64 KiB, so the more appends one
//! fsync covers, the better. The appends answered by one fsync usually come back (their
//! producers send the next message) within a round trip, and if the flusher started its next
//! fsync at once it would split them over two. So after answering N appends it waits until N
//! more appends were written since, at most as long as its last fsync took (and never more than
//! [`GATHER_WAIT_MAX`]): the worst case adds one fsync's duration to latency; the usual case
//! doubles the appends per fsync. A single producer is never delayed (N = 1 is met at once).
//!
//! `ASYNC_FLUSH`: every `flush_interval_ms`, when asked (`Store::flush`), and at shutdown.
//!
//! A failed fsync poisons the store: after one, the kernel may have dropped the dirty pages and
//! marked them clean, so a retry could report success for data that is gone.
//!
//! PERF: one lock (`flush_lock`, uncontended but for truncation) and one segment-list copy per
//! fsync, never per message.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::FlushDiskType;
use super::error::StoreError;
use super::shared::Shared;

/// Longest the flusher waits for answered appends to come back before its next fsync.
pub const GATHER_WAIT_MAX: Duration = Duration::from_millis(2);

pub(crate) fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.flush_interval_ms);
    // Appends answered by the last fsync, and when and how long it ran.
    let mut answered = 0u64;
    let mut appends_at_target = shared.appends_written.load(Ordering::Acquire);
    let mut appends_at_end = appends_at_target;
    let mut fsync_ended = Instant::now();
    let mut fsync_took = Duration::ZERO;
    loop {
        let stopping = match shared.flush_disk_type() {
            FlushDiskType::SyncFlush => shared.flush_signal.wait(None, || {
                shared.log.write_offset() > shared.log.flushed_offset()
            }),
            FlushDiskType::AsyncFlush => shared.flush_signal.wait(Some(interval), || {
                let requested = shared.flush_requested_offset.load(Ordering::Acquire);
                requested.min(shared.log.write_offset()) > shared.log.flushed_offset()
            }),
        };
        #[cfg(test)]
        shared.flusher_rounds.fetch_add(1, Ordering::Relaxed);
        if shared.poisoned().is_some() {
            return;
        }
        if !stopping && shared.flush_disk_type() == FlushDiskType::SyncFlush && answered > 1 {
            let want = appends_at_end + answered;
            let deadline = fsync_ended + fsync_took.min(GATHER_WAIT_MAX);
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                shared.flush_signal.wait(Some(left), || {
                    shared.appends_written.load(Ordering::Acquire) >= want
                });
            }
        }
        let started = Instant::now();
        let target_count = shared.appends_written.load(Ordering::Acquire);
        if let Err(err) = flush_once(&shared) {
            shared.poison(err);
            return;
        }
        fsync_ended = Instant::now();
        fsync_took = fsync_ended - started;
        answered = target_count - appends_at_target;
        appends_at_target = target_count;
        appends_at_end = shared.appends_written.load(Ordering::Acquire);
        if stopping {
            return;
        }
    }
}

/// Fsyncs everything written so far and publishes the new `flushed_offset`.
pub(crate) fn flush_once(shared: &Shared) -> Result<(), StoreError> {
    let _guard = shared.flush_lock.lock().expect("flush lock poisoned");
    flush_locked(shared)
}

/// [`flush_once`] for a caller that holds `flush_lock` (truncation).
pub(crate) fn flush_locked(shared: &Shared) -> Result<(), StoreError> {
    let flushed = shared.log.flushed_offset();
    let target = shared.log.write_offset();
    if target <= flushed {
        return Ok(());
    }
    #[cfg(test)]
    {
        let delay = shared.fsync_delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
    }
    // The segments synced must cover [flushed, target) without a gap: publishing an offset
    // whose bytes were not all fsynced would acknowledge data that is not durable.
    let mut covered = flushed;
    let started = Instant::now();
    for segment in shared.log.segments() {
        if segment.end_offset() > flushed && segment.base_offset() < target {
            if segment.base_offset() > covered {
                break;
            }
            segment
                .sync_data()
                .map_err(StoreError::io("fsync commit log", segment.path()))?;
            covered = segment.end_offset();
        }
    }
    shared.observer.flushed(started.elapsed());
    if covered < target {
        return Err(StoreError::OffsetInvalid {
            commit_log_offset: covered,
            reason:
                "no segment holds written data to flush (segment list changed under the flusher)",
        });
    }
    shared.log.set_flushed_offset(target);
    super::page_cache::on_flushed(shared);
    // Confirm before answering the appenders, so that a SEND_OK message is already visible.
    shared.on_local_progress();
    shared
        .flush_progress
        .send_modify(|p| p.flushed_offset = target);
    Ok(())
}
