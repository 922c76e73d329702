//! The flusher: the thread that makes written data durable and moves `flushed_offset`.
//!
//! `SYNC_FLUSH`: it sleeps until the writer publishes more than is flushed, then takes the current
//! `write_offset` as its target, fdatasyncs every segment between `flushed_offset` and the target,
//! and publishes the target. Appends that arrive during an fsync are covered by the next one, so
//! one fsync answers every append written before it started (group commit), and writing the next
//! batch overlaps with syncing the previous one.
//!
//! `ASYNC_FLUSH`: the same, every `flush_interval_ms`, when asked (`Store::flush`), and at
//! shutdown.
//!
//! A failed fsync poisons the store: after one, the kernel may have dropped the dirty pages and
//! marked them clean, so a retry could report success for data that is gone.
//!
//! PERF: one lock (`flush_lock`, uncontended but for truncation) and one segment-list copy per
//! fsync, never per message.

use std::sync::Arc;
use std::time::Duration;

use super::config::FlushDiskType;
use super::error::StoreError;
use super::shared::Shared;

pub(crate) fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.flush_interval_ms);
    loop {
        let stopping = match shared.flush_disk_type() {
            FlushDiskType::SyncFlush => shared.flush_signal.wait(None, || {
                shared.log.write_offset() > shared.log.flushed_offset()
            }),
            FlushDiskType::AsyncFlush => shared.flush_signal.wait(Some(interval), || {
                shared
                    .flush_requested_offset
                    .load(std::sync::atomic::Ordering::Acquire)
                    > shared.log.flushed_offset()
            }),
        };
        if shared.poisoned().is_some() {
            return;
        }
        if let Err(err) = flush_once(&shared) {
            shared.poison(err);
            return;
        }
        if stopping {
            return;
        }
    }
}

/// Fsyncs everything written so far and publishes the new `flushed_offset`.
pub(crate) fn flush_once(shared: &Shared) -> Result<(), StoreError> {
    let _guard = shared.flush_lock.lock().expect("flush lock poisoned");
    let flushed = shared.log.flushed_offset();
    let target = shared.log.write_offset();
    if target <= flushed {
        return Ok(());
    }
    #[cfg(test)]
    {
        let delay = shared
            .fsync_delay_ms
            .load(std::sync::atomic::Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
    }
    for segment in shared.log.segments() {
        if segment.end_offset() > flushed && segment.base_offset() < target {
            segment
                .sync_data()
                .map_err(StoreError::io("fsync commit log", segment.path()))?;
        }
    }
    shared.log.set_flushed_offset(target);
    // Confirm before answering the appenders, so that a SEND_OK message is already visible.
    shared.on_local_progress();
    shared
        .flush_progress
        .send_modify(|p| p.flushed_offset = target);
    Ok(())
}
