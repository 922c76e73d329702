//! The hand-off of consume-queue entries from the writer to the dispatcher.
//!
//! The writer knows every field of a consume-queue entry when it seals a record (commit-log
//! offset, size, queue offset; the appender computed the tag hash), so it hands the entries of
//! each group commit to the dispatcher instead of making it read the records back from the log
//! and check their CRCs a second time (two passes over every byte: the dispatcher's CPU per
//! message fell by a fifth in `store-async-a64`, docs/BENCHMARKS.md).
//!
//! The log stays the source of truth; this is a shortcut past reading it:
//! - each hand-off covers one written range `[start, end)` of the log exactly, pushed before the
//!   writer publishes `write_offset = end`, so a dispatcher that sees the write offset also finds
//!   its entries here;
//! - the dispatcher applies a range only when it starts exactly at its dispatched offset; any
//!   written range without a hand-off (raw appends from a master, a hand-off refused because the
//!   queue was full) is read from the log as before ([`super::dispatch::dispatch_to`]);
//! - a range that ends at or below the dispatched offset (indexed from the log meanwhile) is
//!   dropped;
//! - a truncation (run by the writer while it holds the dispatch state) empties the hand-off:
//!   nothing written past the cut may be indexed from a stale hand-off;
//! - recovery never sees a hand-off (it is memory): it rebuilds from the log, as before.
//!
//! Bounded: at most [`HANDOFF_ENTRIES_MAX`] entries wait; beyond that the writer drops the
//! hand-off (never waits) and the dispatcher reads that range from the log.
//!
//! PERF: one lock per group commit on each side, never per message; the entries and topic
//! strings move from the appender through the writer to the dispatcher without a copy.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::consume_queue::CqEntry;

/// Most entries waiting for the dispatcher (about 50 ms of the fastest appends measured; 1.5 MB
/// of entries): past it, ranges are read from the log instead.
pub const HANDOFF_ENTRIES_MAX: usize = 64 << 10;

/// Entries of consecutive queue offsets of one queue, as one append request produced them.
#[derive(Debug)]
pub(crate) struct IndexRun {
    pub topic: String,
    pub queue_id: u32,
    pub first_queue_offset: u64,
    pub entries: RunEntries,
}

/// The consume-queue entries of one append request, in order: inline for a single message, so
/// that the common one-message append allocates nothing for its entry (the allocation cost the
/// appenders as much as the hand-off saved the dispatcher).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RunEntries {
    One(CqEntry),
    Many(Vec<CqEntry>),
}

impl RunEntries {
    pub fn as_slice(&self) -> &[CqEntry] {
        match self {
            RunEntries::One(entry) => std::slice::from_ref(entry),
            RunEntries::Many(entries) => entries,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [CqEntry] {
        match self {
            RunEntries::One(entry) => std::slice::from_mut(entry),
            RunEntries::Many(entries) => entries,
        }
    }
}

impl Default for RunEntries {
    fn default() -> Self {
        RunEntries::Many(Vec::new())
    }
}

/// The entries of one written range of the log, in log order.
#[derive(Debug)]
pub(crate) struct WrittenRange {
    pub start: u64,
    pub end: u64,
    pub runs: Vec<IndexRun>,
    pub entry_count: usize,
}

#[derive(Debug, Default)]
struct State {
    ranges: VecDeque<WrittenRange>,
    entries: usize,
}

/// Written ranges waiting for the dispatcher. The writer pushes; the dispatcher (or whoever
/// holds the dispatch state) pops.
#[derive(Debug, Default)]
pub(crate) struct IndexHandoff {
    state: Mutex<State>,
}

impl IndexHandoff {
    /// Hands over one written range; returns it back when the hand-off is full (the dispatcher
    /// will read that range from the log).
    pub fn push(&self, range: WrittenRange) -> Result<(), WrittenRange> {
        let mut state = self.state.lock().expect("index hand-off lock poisoned");
        if state.entries + range.entry_count > HANDOFF_ENTRIES_MAX {
            return Err(range);
        }
        debug_assert!(state
            .ranges
            .back()
            .is_none_or(|last| last.end <= range.start));
        state.entries += range.entry_count;
        state.ranges.push_back(range);
        Ok(())
    }

    /// Takes the oldest range if it ends at or below `target` (a range ending past it was pushed
    /// before its write offset was published, and waits for the next round).
    pub fn pop_until(&self, target: u64) -> Option<WrittenRange> {
        let mut state = self.state.lock().expect("index hand-off lock poisoned");
        if state.ranges.front()?.end > target {
            return None;
        }
        let range = state.ranges.pop_front()?;
        state.entries -= range.entry_count;
        Some(range)
    }

    /// Drops every waiting range (a truncation: they may describe bytes it cuts).
    pub fn clear(&self) {
        let mut state = self.state.lock().expect("index hand-off lock poisoned");
        state.ranges.clear();
        state.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64, entries: usize) -> WrittenRange {
        WrittenRange {
            start,
            end,
            runs: Vec::new(),
            entry_count: entries,
        }
    }

    #[test]
    fn ranges_come_out_in_order_and_only_up_to_the_target() {
        let handoff = IndexHandoff::default();
        handoff.push(range(0, 100, 1)).unwrap();
        handoff.push(range(100, 250, 2)).unwrap();
        assert_eq!(handoff.pop_until(50).map(|r| r.start), None);
        assert_eq!(handoff.pop_until(100).map(|r| r.start), Some(0));
        assert_eq!(handoff.pop_until(200).map(|r| r.start), None);
        assert_eq!(handoff.pop_until(250).map(|r| r.start), Some(100));
        assert!(handoff.pop_until(u64::MAX).is_none());
    }

    #[test]
    fn a_full_hand_off_refuses_and_a_clear_empties_it() {
        let handoff = IndexHandoff::default();
        handoff.push(range(0, 10, HANDOFF_ENTRIES_MAX)).unwrap();
        let refused = handoff.push(range(10, 20, 1)).unwrap_err();
        assert_eq!(refused.start, 10);
        handoff.clear();
        assert!(handoff.pop_until(u64::MAX).is_none());
        handoff.push(range(10, 20, 1)).unwrap();
    }
}
