//! Retention: deleting whole segments from the front of the log, by age and by disk usage.
//!
//! [`plan`] is pure: given the segments, the clock and the disk, it says how many of the oldest
//! segments to delete. [`run_once`] gathers those facts and carries the plan out. Rules:
//! - only a prefix of the log is deleted, so it stays contiguous;
//! - never the segment being written, and never a segment holding anything not yet flushed,
//!   dispatched or confirmed;
//! - a pass holds the dispatch mutex, as truncation does, so the two never interleave;
//! - by age: a segment whose file was last modified `file_retention_hours` ago or more;
//! - by disk: while the disk is fuller than `disk_max_used_ratio`, the oldest segments go first
//!   whatever their age (RocketMQ does the same; a full disk would stop every write).
//!
//! Consume queues follow: their minimum queue offset moves to the first entry still in the log,
//! and their files that point only into deleted segments are removed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::error::{Result, StoreError};
use super::meta_file;
use super::page_cache;
use super::shared::Shared;

/// What [`plan`] needs to know of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    pub end_offset: u64,
    /// Last modification of the file, Unix milliseconds.
    pub modified_ms: u64,
    /// Bytes the file takes on disk.
    pub file_bytes: u64,
}

/// Space used and available on the disk holding the store, as `df` counts them: blocks
/// reserved for root are neither (a file system with 5 % reserved shows 100 % used when a
/// non-root writer can write no more), so fractions are of `used + available`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub used_bytes: u64,
    pub available_bytes: u64,
}

impl DiskUsage {
    /// The space a writer can have: used plus available.
    pub fn usable_bytes(&self) -> u64 {
        self.used_bytes.saturating_add(self.available_bytes)
    }
}

/// The limits from the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetentionPolicy {
    pub retention_ms: u64,
    pub disk_max_used_ratio: f64,
}

/// Number of oldest segments to delete. `deletable_end`: no segment ending after it may go.
pub fn plan(
    segments: &[SegmentInfo],
    deletable_end: u64,
    now_ms: u64,
    policy: RetentionPolicy,
    disk: Option<DiskUsage>,
) -> usize {
    // Never the last segment: it is the one being written.
    let candidates = segments
        .iter()
        .take(segments.len().saturating_sub(1))
        .take_while(|s| s.end_offset <= deletable_end)
        .count();
    let by_age = segments[..candidates]
        .iter()
        .take_while(|s| now_ms.saturating_sub(s.modified_ms) >= policy.retention_ms)
        .count();
    let mut by_disk = 0;
    if let Some(disk) = disk.filter(|d| d.usable_bytes() > 0) {
        let limit = (disk.usable_bytes() as f64 * policy.disk_max_used_ratio) as u64;
        let mut used = disk.used_bytes;
        while used > limit && by_disk < candidates {
            used = used.saturating_sub(segments[by_disk].file_bytes);
            by_disk += 1;
        }
    }
    by_age.max(by_disk)
}

/// What one retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    /// The log's first offset after the pass.
    pub min_offset: u64,
}

/// Reads the disk usage of the file system holding `path`.
pub fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    let fragment = stat.f_frsize as u64;
    Some(DiskUsage {
        used_bytes: (stat.f_blocks as u64).saturating_sub(stat.f_bfree as u64) * fragment,
        available_bytes: stat.f_bavail as u64 * fragment,
    })
}

/// One retention pass at `now_ms`.
pub(crate) fn run_once(shared: &Shared, now_ms: u64) -> Result<RetentionReport> {
    // Truncation holds the dispatch mutex while it changes the segment list: holding it here
    // keeps the list this pass plans on the list it deletes from.
    let dispatch = shared.dispatch.lock().expect("dispatch lock poisoned");
    let segments = shared.log.segments();
    let mut infos = Vec::with_capacity(segments.len());
    for segment in &segments {
        let meta = std::fs::metadata(segment.path())
            .map_err(StoreError::io("stat segment", segment.path()))?;
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now_ms, |d| d.as_millis() as u64);
        infos.push(SegmentInfo {
            base_offset: segment.base_offset(),
            end_offset: segment.end_offset(),
            modified_ms,
            file_bytes: meta.len(),
        });
    }
    let deletable_end = shared
        .log
        .flushed_offset()
        .min(dispatch.dispatched_offset)
        .min(shared.confirm_offset());
    let policy = RetentionPolicy {
        retention_ms: shared.config.file_retention_hours.saturating_mul(3_600_000),
        disk_max_used_ratio: shared.config.disk_max_used_ratio,
    };
    let count = plan(
        &infos,
        deletable_end,
        now_ms,
        policy,
        disk_usage(&shared.dir),
    );
    if count == 0 {
        return Ok(RetentionReport {
            deleted_segments: 0,
            min_offset: shared.log.min_offset(),
        });
    }
    let new_min = infos[count].base_offset;
    // Out of the list first, so that no reader finds them; then off the disk.
    shared.log.retain_segments(|s| s.base_offset() >= new_min);
    shared.queues.set_log_begins_late(new_min > 0);
    for segment in &segments[..count] {
        tracing::info!(segment = %segment.path().display(), "retention deletes segment");
        std::fs::remove_file(segment.path())
            .map_err(StoreError::io("remove segment", segment.path()))?;
    }
    meta_file::sync_dir(shared.log.dir())?;
    shared.forget_corruption_before(new_min);
    for queue in shared.queues.all() {
        queue.delete_before(new_min)?;
    }
    Ok(RetentionReport {
        deleted_segments: count,
        min_offset: new_min,
    })
}

/// The housekeeping thread: a retention pass every `retention_check_interval_ms`, a look at the
/// disk's high-water mark every second (`health`), and a page-cache release whenever the flusher
/// says one is due (see `page_cache`).
pub(crate) fn run(shared: std::sync::Arc<Shared>) {
    let interval = std::time::Duration::from_millis(shared.config.retention_check_interval_ms);
    let mut next_pass = std::time::Instant::now() + interval;
    let mut next_disk_check = std::time::Instant::now();
    loop {
        if std::time::Instant::now() >= next_disk_check {
            super::health::check_disk(&shared);
            next_disk_check = std::time::Instant::now() + super::health::DISK_CHECK_INTERVAL;
        }
        let wait = next_pass
            .min(next_disk_check)
            .saturating_duration_since(std::time::Instant::now());
        if shared
            .housekeeping_signal
            .wait(Some(wait), || page_cache::release_due(&shared).is_some())
        {
            return;
        }
        if let Some(end) = page_cache::release_due(&shared) {
            page_cache::release(&shared, end);
        }
        if std::time::Instant::now() >= next_pass {
            next_pass += interval;
            if let Err(err) = run_once(&shared, super::now_ms()) {
                tracing::warn!(error = %err, "retention pass failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;
    const POLICY: RetentionPolicy = RetentionPolicy {
        retention_ms: 72 * HOUR_MS,
        disk_max_used_ratio: 0.75,
    };

    fn segments(ages_hours: &[u64], now_ms: u64) -> Vec<SegmentInfo> {
        ages_hours
            .iter()
            .enumerate()
            .map(|(i, age)| SegmentInfo {
                base_offset: i as u64 * 100,
                end_offset: (i as u64 + 1) * 100,
                modified_ms: now_ms - age * HOUR_MS,
                file_bytes: 100,
            })
            .collect()
    }

    #[test]
    fn old_segments_go_but_never_the_tail() {
        let now = 1_000 * HOUR_MS;
        let all_old = segments(&[100, 90, 80], now);
        assert_eq!(plan(&all_old, u64::MAX, now, POLICY, None), 2);
        let mixed = segments(&[100, 10, 80, 1], now);
        assert_eq!(
            plan(&mixed, u64::MAX, now, POLICY, None),
            1,
            "only a prefix is deleted"
        );
    }

    #[test]
    fn nothing_unflushed_or_undispatched_is_deleted() {
        let now = 1_000 * HOUR_MS;
        let old = segments(&[100, 90, 80, 70], now);
        assert_eq!(plan(&old, 150, now, POLICY, None), 1);
    }

    #[test]
    fn a_full_disk_deletes_young_segments_oldest_first() {
        let now = 1_000 * HOUR_MS;
        let young = segments(&[3, 2, 1, 0], now);
        let disk = DiskUsage {
            used_bytes: 950,
            available_bytes: 50,
        };
        // 950 used, limit 750: two segments of 100 bring it down to the limit.
        assert_eq!(plan(&young, u64::MAX, now, POLICY, Some(disk)), 2);
        let roomy = DiskUsage {
            used_bytes: 100,
            available_bytes: 900,
        };
        assert_eq!(plan(&young, u64::MAX, now, POLICY, Some(roomy)), 0);
    }
}
