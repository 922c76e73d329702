//! Page-cache release: hands the commit log's page-cache pages back to the kernel once they are
//! flushed and more than `page_cache_keep_bytes` behind the flushed offset, so that the memory
//! the writer fills next is memory it just gave back, not memory touched for the first time.
//!
//! Why: an append-only log otherwise takes a fresh page for every 4 KiB it writes, until the
//! kernel's reclaim starts. On a virtual machine that hands idle free memory back to its host
//! (free page reporting, balloon drivers; this benchmark machine does it), a page touched for the
//! first time in a while costs a host fault inside the copy that fills it: writes into such
//! memory measured about 3x slower than into recycled memory (docs/BENCHMARKS.md). Releasing
//! behind the tail keeps the store's page cache at about `page_cache_keep_bytes` plus one flush
//! interval of writes, and the next writes reuse the pages just released. On a machine that
//! does not hand memory back it saves nothing, and costs only what reading older data costs: a
//! read below the kept window (a consumer or a slave far behind) comes from the disk, as it
//! would once the page cache filled up anyway.
//!
//! Never a durability question: only flushed bytes are released, and the kernel drops only clean
//! pages (a dirty page is left where it is), so no byte that is not on disk leaves memory. A
//! release racing a truncation can only leave pages cached that it could have dropped.
//!
//! Who: the flusher, after publishing a flushed offset, wakes the housekeeping thread when at
//! least [`RELEASE_STEP_BYTES`] more can be released ([`release_due`]); the housekeeping thread
//! does the release ([`release`]), so neither the writer nor an fsync waits for it.
//!
//! PERF: one `posix_fadvise` per segment per step (64 MiB), never per append; the check on the
//! flusher's path is two atomic loads.

use std::sync::atomic::Ordering;

use super::shared::Shared;

/// Least the releasable end must have moved before a release runs: one system call and one
/// wake-up of the housekeeping thread per 64 MiB at most.
pub const RELEASE_STEP_BYTES: u64 = 64 << 20;

/// Where a release should end now, if enough became releasable since the last one: the flushed
/// offset minus the kept window.
pub(crate) fn release_due(shared: &Shared) -> Option<u64> {
    let end = shared
        .log
        .flushed_offset()
        .saturating_sub(shared.config.page_cache_keep_bytes);
    let released = shared.page_cache_released_offset.load(Ordering::Acquire);
    (end >= released.saturating_add(RELEASE_STEP_BYTES)).then_some(end)
}

/// Called by the flusher after it published a flushed offset: wakes the housekeeping thread
/// when a release is due.
pub(crate) fn on_flushed(shared: &Shared) {
    if release_due(shared).is_some() {
        shared.housekeeping_signal.notify();
    }
}

/// Releases the page cache of `[released offset, end)` (flushed bytes, see the module header)
/// and records `end` as released.
pub(crate) fn release(shared: &Shared, end: u64) {
    let from = shared.page_cache_released_offset.load(Ordering::Acquire);
    for segment in shared.log.segments() {
        let start = segment.base_offset().max(from);
        let stop = segment.end_offset().min(end);
        if start < stop {
            segment.release_page_cache(start, stop);
        }
    }
    shared
        .page_cache_released_offset
        .fetch_max(end, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{FlushDiskType, NewMessage, Store, StoreConfig};

    /// Releasing drops only cached pages: every record written before the release still reads
    /// back, CRC-checked, and the release ends at the flushed offset minus the kept window.
    #[tokio::test]
    async fn released_records_still_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let keep_bytes = 1 << 20;
        let store = Store::open(StoreConfig {
            store_path: dir.path().to_path_buf(),
            flush_disk_type: FlushDiskType::AsyncFlush,
            segment_bytes: 32 << 20,
            page_cache_keep_bytes: keep_bytes,
            ..StoreConfig::default()
        })
        .unwrap();
        let body = Bytes::from(vec![7u8; 200_000]);
        let mut offsets = Vec::new();
        while store.write_offset() < RELEASE_STEP_BYTES + keep_bytes + (1 << 20) {
            let written = store
                .append(NewMessage::new("t", 0, body.clone()))
                .await
                .unwrap();
            offsets.push(written.commit_log_offset);
        }
        store.flush().await.unwrap();
        // The flusher wakes the housekeeping thread, which releases up to the flushed offset
        // minus the window, in steps: what is left after the last step is less than one step.
        let shared = &store.shared;
        let kept_end = store.flushed_offset() - keep_bytes;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shared.page_cache_released_offset.load(Ordering::Acquire) + RELEASE_STEP_BYTES
            <= kept_end
        {
            assert!(std::time::Instant::now() < deadline, "nothing was released");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(shared.page_cache_released_offset.load(Ordering::Acquire) <= kept_end);
        assert_eq!(release_due(shared), None, "nothing more is due");
        for offset in offsets {
            let read = store.read_message_at(offset).unwrap();
            assert_eq!(read.body(), body);
        }
    }
}
