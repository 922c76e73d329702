//! The flusher: the thread that makes written data durable and moves `flushed_offset`.
//!
//! `SYNC_FLUSH`: it sleeps until the writer publishes more than is flushed, takes the current
//! `write_offset` as its target, fdatasyncs every segment between `flushed_offset` and the target,
//! and publishes the target. One fsync answers every append written before it began (group
//! commit), and the writer keeps writing while it runs.
//!
//! The writer fsyncs itself instead when nothing waits for it and the flusher is not already
//! fsyncing ([`flush_if_idle`]): at light load, handing each group to this thread cost two
//! wake-ups per append (the flusher's, and the runtime's twice instead of once), and the woken
//! flusher pre-empted the writer before it answered. It hands off when work is waiting (so that
//! writing overlaps the fsync under load) and while fsyncs are slow ([`fsync_is_quick`]): a
//! stalled disk must not keep the writer from answering the appends behind it.
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

/// The writer fsyncs its own group only while the last fsync took less than this: a slower
/// disk gets the flusher thread, so that one stalled fsync delays no append's answer.
pub const QUICK_FSYNC: Duration = Duration::from_millis(5);

pub(crate) fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.flush_interval_ms);
    // Appends answered by the last fsync, and when and how long it ran.
    let mut answered = 0u64;
    let mut appends_at_end = shared.appends_written.load(Ordering::Acquire);
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
        // Counted from what fsyncs made durable, not from this thread's last target: the
        // writer's own fsyncs (`flush_if_idle`) answer appends in between.
        let durable_before = shared.appends_flushed.load(Ordering::Acquire);
        if let Err(err) = flush_once(&shared) {
            shared.poison(err);
            return;
        }
        fsync_ended = Instant::now();
        fsync_took = fsync_ended - started;
        answered = shared.appends_flushed.load(Ordering::Acquire) - durable_before;
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

/// The last fsync was quick enough for the writer to run the next one itself.
pub(crate) fn fsync_is_quick(shared: &Shared) -> bool {
    shared.last_fsync_us.load(Ordering::Relaxed) < QUICK_FSYNC.as_micros() as u64
}

/// Under `SYNC_FLUSH`, called by the writer after it wrote and answered a group, with `idle`
/// true when no command waits for it: fsyncs on this thread if the flusher is not fsyncing
/// and fsyncs are quick, else wakes the flusher. A failed fsync poisons the store, as in the
/// flusher.
pub(crate) fn flush_if_idle(shared: &Shared, idle: bool) {
    if idle && fsync_is_quick(shared) {
        // Held by the flusher while it fsyncs: then it covers this group in its next round
        // anyway, once woken below.
        if let Ok(_guard) = shared.flush_lock.try_lock() {
            if let Err(err) = flush_locked(shared) {
                shared.poison(err);
            }
            return;
        }
    }
    shared.flush_signal.notify();
}

/// [`flush_once`] for a caller that holds `flush_lock` (truncation).
pub(crate) fn flush_locked(shared: &Shared) -> Result<(), StoreError> {
    let flushed = shared.log.flushed_offset();
    // Read before `write_offset`: the writer counts an append before it publishes its offset,
    // so every append counted here lies below the target.
    let appends = shared.appends_written.load(Ordering::Acquire);
    let target = shared.log.write_offset();
    if target <= flushed {
        return Ok(());
    }
    // The test-only delay counts as the fsync's own time (see `fsync_is_quick`).
    let started = Instant::now();
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
    let took = started.elapsed();
    shared.observer.flushed(took);
    shared
        .last_fsync_us
        .store(took.as_micros() as u64, Ordering::Relaxed);
    if covered < target {
        return Err(StoreError::OffsetInvalid {
            commit_log_offset: covered,
            reason:
                "no segment holds written data to flush (segment list changed under the flusher)",
        });
    }
    shared.log.set_flushed_offset(target);
    shared.appends_flushed.fetch_max(appends, Ordering::AcqRel);
    super::page_cache::on_flushed(shared);
    // Confirm before answering the appenders, so that a SEND_OK message is already visible.
    shared.on_local_progress();
    shared
        .flush_progress
        .send_modify(|p| p.flushed_offset = target);
    Ok(())
}
