//! The verified offset: how much of the commit log is known to hold exactly the bytes that were
//! written, so that recovery re-checks only the rest and the scrubber knows what it proved.
//!
//! A record counts as verified when it was CRC-checked against the bytes on disk (by recovery, by
//! the scrubber, or by an earlier run below the verified offset it saved), or when this run's
//! writer wrote it: the writer seals records it encoded itself and a raw append checks every
//! record before writing it, so what they write was checked in memory. Bytes that rot on disk
//! after that are the scrubber's to find.
//!
//! [`VerifiedRange`] keeps two facts, and [`VerifiedRange::verified_offset`] turns them into the
//! one offset the checkpoint saves:
//! - `checked_end`: every record in `[log min offset, checked_end)` was checked;
//! - `written_from`: every record in `[written_from, write_offset)` was written by this run.
//!
//! The verified offset is the end of the verified prefix of the log, never past the flushed
//! offset (recovery must re-check whatever a crash may have torn) and never past a record known
//! to be corrupt (so that the next open finds it again, even after a clean shutdown). When the
//! two ranges meet, the whole log is verified and the offset follows the flushed offset; until
//! the scrubber closes the gap between them (recovery stopped at a corrupt record, retention
//! deleted part of the checked range), it stays at `checked_end`.
//!
//! Who moves what: recovery sets both at open; the scrubber raises `checked_end` as it proves
//! ranges; a truncation lowers both to the cut; the dispatcher saves the result with each
//! checkpoint. The state sits behind a mutex held only for these few comparisons, never across
//! I/O.

/// What of the log is known verified; see the module header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VerifiedRange {
    checked_end: u64,
    written_from: u64,
}

impl VerifiedRange {
    /// After recovery: `[min, checked_end)` was checked (by it or an earlier run) and this run
    /// writes from `recovered_end` on.
    pub fn at_open(checked_end: u64, recovered_end: u64) -> VerifiedRange {
        debug_assert!(checked_end <= recovered_end);
        VerifiedRange {
            checked_end,
            written_from: recovered_end,
        }
    }

    /// The offset to save: the end of the verified prefix, at most `flushed_offset`, and below
    /// `corrupt_offset`, the lowest record known corrupt.
    pub fn verified_offset(&self, flushed_offset: u64, corrupt_offset: Option<u64>) -> u64 {
        let prefix_end = if self.checked_end >= self.written_from {
            flushed_offset
        } else {
            self.checked_end.min(flushed_offset)
        };
        corrupt_offset.map_or(prefix_end, |corrupt| prefix_end.min(corrupt))
    }

    /// The scrubber checked every record in `[from, to)` and found them sound. Raises
    /// `checked_end` when the range starts inside the verified prefix (`min_offset`: the log's
    /// first offset now, since retention may have deleted the start of the checked range).
    pub fn on_checked(&mut self, from: u64, to: u64, min_offset: u64) {
        if from <= self.checked_end.max(min_offset) && to > self.checked_end {
            self.checked_end = to;
        }
    }

    /// The log was cut at `commit_log_offset`: nothing past it is verified, and what refills it
    /// is written by this run.
    pub fn on_truncate(&mut self, commit_log_offset: u64) {
        self.checked_end = self.checked_end.min(commit_log_offset);
        self.written_from = self.written_from.min(commit_log_offset);
    }

    /// The empty log now begins at `commit_log_offset` (`Store::start_at`): it holds nothing
    /// unverified.
    pub fn on_start_at(&mut self, commit_log_offset: u64) {
        self.checked_end = commit_log_offset;
        self.written_from = commit_log_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fully_checked_log_is_verified_up_to_the_flushed_offset() {
        let range = VerifiedRange::at_open(1000, 1000);
        assert_eq!(range.verified_offset(1000, None), 1000);
        // What this run writes and flushes is verified too.
        assert_eq!(range.verified_offset(5000, None), 5000);
        // Never past a record known corrupt.
        assert_eq!(range.verified_offset(5000, Some(3000)), 3000);
        assert_eq!(range.verified_offset(5000, Some(400)), 400);
    }

    #[test]
    fn a_gap_keeps_the_verified_offset_until_the_scrubber_closes_it() {
        // Recovery stopped checking at 400 (a corrupt record); it wrote from 1000 on.
        let mut range = VerifiedRange::at_open(400, 1000);
        assert_eq!(range.verified_offset(5000, None), 400);
        // A range that does not start inside the prefix proves nothing about the gap.
        range.on_checked(600, 900, 0);
        assert_eq!(range.verified_offset(5000, None), 400);
        range.on_checked(0, 700, 0);
        assert_eq!(range.verified_offset(5000, None), 700);
        range.on_checked(700, 1000, 0);
        assert_eq!(range.verified_offset(5000, None), 5000);
    }

    #[test]
    fn retention_past_the_checked_end_lets_the_scrubber_start_again_at_the_log_start() {
        let mut range = VerifiedRange::at_open(400, 1000);
        // Retention deleted everything below 800: the scrubber's next pass starts there.
        range.on_checked(800, 900, 800);
        assert_eq!(range.verified_offset(5000, None), 900);
    }

    #[test]
    fn a_truncation_lowers_both_ends() {
        let mut range = VerifiedRange::at_open(1000, 1000);
        range.on_truncate(600);
        assert_eq!(range.verified_offset(600, None), 600);
        assert_eq!(
            range.verified_offset(900, None),
            900,
            "refilled by this run"
        );
        let mut gap = VerifiedRange::at_open(400, 1000);
        gap.on_truncate(600);
        assert_eq!(gap.verified_offset(900, None), 400);
        gap.on_truncate(300);
        assert_eq!(gap.verified_offset(900, None), 900);
    }
}
