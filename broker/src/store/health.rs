//! What the store can be trusted with now: the broker's role and the controller act on it.
//!
//! Three faults, each with its own way back:
//! - **write failed**: a write or fsync failed (a full file system, EIO). The store takes no
//!   more writes until it is reopened ([`StoreError::Poisoned`](super::StoreError)): after a
//!   failed fsync the kernel may have dropped dirty pages, and a retry could acknowledge data
//!   that is not on disk. The broker gives mastership up and reopens the store.
//! - **corrupt**: a record failed verification (its CRC, its framing) where the log must be
//!   intact, found by a read, a raw read, recovery, the dispatcher or the scrubber. The lowest
//!   such commit-log offset is kept. The store still takes writes past it, unless the dispatcher
//!   stopped at it (see `dispatch`); the broker leaves the in-sync set, gives mastership up, and
//!   repairs the range from a healthy replica: a truncation at or below the corrupt offset
//!   removes it (`truncate_to` accepts the corrupt record's own offset), and clears the fault, as
//!   does retention deleting its segment.
//! - **disk full**: the file system holding the store is used past the high-water mark
//!   (`disk_high_water_ratio`, or less than two segments free): client sends are refused with
//!   a clear status before the file system fails, and taken again once space returns. Writes the
//!   broker makes itself (offset commits, retries) and replication go on, into the headroom.
//!
//! `verified` says whether every record the store held when it opened has been checked since
//! (by recovery or a full scrubber pass) and no corrupt record is known: until then a replica is
//! not preferred in elections. It is set at open when recovery checked the whole log, else by the
//! scrubber at the end of a pass that found nothing; any corruption reported clears it, and only
//! a later clean pass sets it again (after the repair's cut).
//!
//! Who moves what: the writer, flusher and truncation set `write_failed` (through
//! `Shared::poison`); reads, recovery, the dispatcher and the scrubber report corruption
//! (`Shared::report_corrupt`), truncation and retention forget it; the housekeeping thread
//! measures the disk; recovery and the scrubber set `verified`. Everyone publishes through one
//! watch channel.

use std::path::Path;
use std::time::Duration;

use super::retention::{disk_usage, DiskUsage};
use super::shared::Shared;

/// How often the housekeeping thread measures the disk: a writer at 200 MB/s fills two 1 GiB
/// segments of headroom in ten seconds, so a second leaves room to spare.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The store's faults and verification, as published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Why the first failed write or fsync failed; `None` while writes work.
    pub write_failed: Option<String>,
    /// The lowest commit-log offset at which a record failed verification, and why.
    pub corrupt: Option<Corruption>,
    /// The disk is used past the high-water mark: client sends are refused.
    pub disk_full: bool,
    /// Every record held at open has been verified since (recovery or a full scrubber pass), and
    /// no corrupt record is known.
    pub verified: bool,
}

/// A record that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Where the bad record starts, or the first offset known bad in it.
    pub commit_log_offset: u64,
    pub reason: String,
}

impl StoreHealth {
    /// True when the store may serve as a master's or an in-sync replica's: no write failure and
    /// no corruption (a full disk still serves reads and replication).
    pub fn is_sound(&self) -> bool {
        self.write_failed.is_none() && self.corrupt.is_none()
    }

    /// One line for logs and `cluster list`; empty when sound and not full.
    pub fn problem(&self) -> String {
        let mut parts = Vec::new();
        if let Some(reason) = &self.write_failed {
            parts.push(format!("write failed: {reason}"));
        }
        if let Some(corruption) = &self.corrupt {
            parts.push(format!(
                "corrupt record at commit-log offset {}: {}",
                corruption.commit_log_offset, corruption.reason
            ));
        }
        if self.disk_full {
            parts.push("disk above the high-water mark: client sends refused".to_owned());
        }
        parts.join("; ")
    }

    /// Keeps the lower of the known corrupt offset and `found`; returns whether it lowered it.
    pub(crate) fn note_corrupt(&mut self, found: Corruption) -> bool {
        match &self.corrupt {
            Some(known) if known.commit_log_offset <= found.commit_log_offset => false,
            _ => {
                self.corrupt = Some(found);
                true
            }
        }
    }
}

/// Whether the disk under `dir` is past the high-water mark: used above `high_water_ratio` of
/// what a writer can have (used plus available, as `df` counts), or with less than
/// `headroom_bytes` available (two segments: the next one is made ahead
/// of time, and the broker's own writes go on past the mark). `None` when it cannot be read.
pub fn disk_full(dir: &Path, high_water_ratio: f64, headroom_bytes: u64) -> Option<bool> {
    disk_usage(dir).map(|usage| past_high_water(usage, high_water_ratio, headroom_bytes))
}

/// Measures the disk and publishes `disk_full` when it changed (the housekeeping thread).
pub(crate) fn check_disk(shared: &Shared) {
    let headroom = shared.config.segment_bytes.saturating_mul(2);
    let Some(full) = disk_full(&shared.dir, shared.config.disk_high_water_ratio, headroom) else {
        return;
    };
    let changed = shared.health.send_if_modified(|h| {
        let changed = h.disk_full != full;
        h.disk_full = full;
        changed
    });
    if changed && full {
        tracing::warn!(
            store = %shared.dir.display(),
            disk_high_water_ratio = shared.config.disk_high_water_ratio,
            "disk above the high-water mark: client sends are refused until space returns"
        );
    } else if changed {
        tracing::info!(store = %shared.dir.display(), "disk below the high-water mark again: client sends are taken");
    }
}

/// The rule of [`disk_full`], pure.
pub fn past_high_water(usage: DiskUsage, high_water_ratio: f64, headroom_bytes: u64) -> bool {
    if usage.usable_bytes() == 0 {
        return false;
    }
    usage.used_bytes as f64 >= usage.usable_bytes() as f64 * high_water_ratio
        || usage.available_bytes < headroom_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_counts_the_ratio_and_the_headroom() {
        let usage = |total: u64, available: u64| DiskUsage {
            used_bytes: total - available,
            available_bytes: available,
        };
        assert!(!past_high_water(usage(1000, 500), 0.9, 100));
        assert!(past_high_water(usage(1000, 100), 0.9, 50), "90 % used");
        assert!(
            past_high_water(usage(1000, 400), 0.9, 500),
            "below the headroom"
        );
        assert!(!past_high_water(usage(0, 0), 0.9, 100), "unknown size");
    }

    #[test]
    fn the_lowest_corrupt_offset_is_kept() {
        let mut health = StoreHealth::default();
        let at = |offset: u64| Corruption {
            commit_log_offset: offset,
            reason: "crc".into(),
        };
        assert!(health.note_corrupt(at(500)));
        assert!(!health.note_corrupt(at(700)));
        assert!(health.note_corrupt(at(100)));
        assert_eq!(health.corrupt.as_ref().unwrap().commit_log_offset, 100);
        assert!(!health.is_sound());
        assert!(health.problem().contains("offset 100"));
    }
}
