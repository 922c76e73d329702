//! What a master remembers of one (consumer group, topic, queue) for RocketMQ 5's server-side
//! consumption ("pop"): the messages handed out and not acknowledged yet, each with the deadline
//! after which it is handed out again, and what was acknowledged past the group's committed
//! offset. A pure state: no I/O, no clock (the caller passes the time), unit-tested alone.
//!
//! Invariants (`check` asserts them in tests):
//! - `low <= next`; every offset in `[low, next)` is in exactly one of `inflight` and `done`;
//!   `low` itself is never in `done` (it would have been passed).
//! - `low`, the first offset neither acknowledged nor filtered out, is what the group commits:
//!   a failover redelivers from there (at least once) and never skips a message nobody
//!   acknowledged.
//! - A delivery is named by its nonce: an acknowledgement or a renewal must name the current
//!   delivery of its offset; one naming an earlier delivery (the message was handed out again
//!   since) changes nothing.

use std::collections::{BTreeMap, BTreeSet};

/// One delivery of a message still in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub commit_log_offset: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub nonce: u64,
    /// Unix ms after which the message is handed out again.
    pub deadline_ms: u64,
}

/// Why an acknowledgement or renewal changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The offset is not in flight (acknowledged already, or never handed out here).
    NotInFlight,
    /// It was handed out again since the handle was made.
    Redelivered,
}

#[derive(Clone, Debug, Default)]
pub struct PopQueue {
    low: u64,
    next: u64,
    inflight: BTreeMap<u64, Delivery>,
    /// Acknowledged or filtered out, at or above `low`.
    done: BTreeSet<u64>,
    /// The message group of each message in flight that has one (FIFO consumer groups).
    groups: BTreeMap<u64, String>,
}

impl PopQueue {
    /// A queue whose group has committed `committed` (its next offset to consume).
    pub fn starting_at(committed: u64) -> PopQueue {
        PopQueue {
            low: committed,
            next: committed,
            ..PopQueue::default()
        }
    }

    /// The offset the group commits.
    pub fn low(&self) -> u64 {
        self.low
    }

    /// The first offset never handed out: where reading goes on.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Messages in flight whose deadline has passed at `now_ms`, oldest offset first, at most
    /// `max`: they are handed out again.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<(u64, Delivery)> {
        self.inflight
            .iter()
            .filter(|(_, d)| d.deadline_ms <= now_ms)
            .take(max)
            .map(|(offset, d)| (*offset, *d))
            .collect()
    }

    /// The earliest deadline in flight, to wake up for.
    pub fn earliest_deadline(&self) -> Option<u64> {
        self.inflight.values().map(|d| d.deadline_ms).min()
    }

    /// Hands out `offset` (new, at `next`, or due again) as `delivery`.
    pub fn hand_out(&mut self, offset: u64, delivery: Delivery) {
        debug_assert!(offset >= self.low);
        if offset >= self.next {
            // Offsets skipped on the way (filtered out by the reader) are done.
            for skipped in self.next..offset {
                self.done.insert(skipped);
            }
            self.next = offset + 1;
        }
        self.inflight.insert(offset, delivery);
        self.advance();
    }

    /// Records that the message in flight at `offset` belongs to `group`.
    pub fn set_group(&mut self, offset: u64, group: String) {
        if self.inflight.contains_key(&offset) {
            self.groups.insert(offset, group);
        }
    }

    /// The message groups with a message in flight: a FIFO consumer group gets no further
    /// message of them until that one is acknowledged (or dead-lettered).
    pub fn busy_groups(&self) -> BTreeSet<String> {
        self.groups.values().cloned().collect()
    }

    /// Everything below `offset` that was never handed out is done (the reader skipped it:
    /// filtered out by tag).
    pub fn skip_to(&mut self, offset: u64) {
        for skipped in self.next..offset {
            self.done.insert(skipped);
        }
        self.next = self.next.max(offset);
        self.advance();
    }

    /// Acknowledges the delivery `nonce` of `offset`: true when the committed offset moved.
    pub fn ack(&mut self, offset: u64, nonce: u64) -> Result<bool, Stale> {
        self.current(offset, nonce)?;
        self.inflight.remove(&offset);
        self.groups.remove(&offset);
        self.done.insert(offset);
        let before = self.low;
        self.advance();
        Ok(self.low != before)
    }

    /// Gives the delivery `nonce` of `offset` a new deadline (and a new nonce): renewed
    /// invisibility, or a nack with the next backoff.
    pub fn renew(
        &mut self,
        offset: u64,
        nonce: u64,
        deadline_ms: u64,
        new_nonce: u64,
    ) -> Result<Delivery, Stale> {
        self.current(offset, nonce)?;
        let delivery = self
            .inflight
            .get_mut(&offset)
            .expect("current() found it in flight");
        delivery.deadline_ms = deadline_ms;
        delivery.nonce = new_nonce;
        Ok(*delivery)
    }

    /// Whether `nonce` names the current delivery of `offset`.
    pub fn current(&self, offset: u64, nonce: u64) -> Result<(), Stale> {
        match self.inflight.get(&offset) {
            None => Err(Stale::NotInFlight),
            Some(d) if d.nonce != nonce => Err(Stale::Redelivered),
            Some(_) => Ok(()),
        }
    }

    fn advance(&mut self) {
        while self.low < self.next && self.done.remove(&self.low) {
            self.low += 1;
        }
    }

    /// The invariants of the module documentation.
    #[cfg(test)]
    fn check(&self) {
        assert!(self.low <= self.next);
        assert!(!self.done.contains(&self.low));
        for offset in self.low..self.next {
            assert!(
                self.inflight.contains_key(&offset) ^ self.done.contains(&offset),
                "offset {offset} is in exactly one of in flight and done: {self:?}"
            );
        }
        assert!(self
            .inflight
            .keys()
            .chain(&self.done)
            .all(|o| *o >= self.low && *o < self.next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(nonce: u64, deadline_ms: u64) -> Delivery {
        Delivery {
            commit_log_offset: 0,
            attempt: 1,
            nonce,
            deadline_ms,
        }
    }

    #[test]
    fn the_committed_offset_is_the_lowest_unacknowledged_one() {
        let mut q = PopQueue::starting_at(10);
        for offset in 10..14 {
            q.hand_out(offset, delivery(offset, 1_000));
        }
        q.check();
        // Acks in any order: the committed offset moves only past a gapless prefix.
        assert_eq!(q.ack(12, 12), Ok(false));
        assert_eq!(q.ack(11, 11), Ok(false));
        assert_eq!(q.low(), 10);
        assert_eq!(q.ack(10, 10), Ok(true));
        assert_eq!(q.low(), 13);
        q.check();
        assert_eq!(q.ack(10, 10), Err(Stale::NotInFlight), "acked twice");
        assert_eq!(q.ack(13, 13), Ok(true));
        assert_eq!((q.low(), q.next(), q.in_flight()), (14, 14, 0));
        q.check();
    }

    #[test]
    fn a_message_whose_deadline_passed_is_due_and_its_old_handle_is_stale() {
        let mut q = PopQueue::starting_at(0);
        q.hand_out(0, delivery(1, 1_000));
        q.hand_out(1, delivery(2, 5_000));
        assert!(q.due(999, 10).is_empty());
        assert_eq!(q.due(1_000, 10).len(), 1);
        assert_eq!(q.earliest_deadline(), Some(1_000));
        // Handed out again: the first handle no longer acknowledges it.
        q.hand_out(
            0,
            Delivery {
                attempt: 2,
                ..delivery(3, 9_000)
            },
        );
        assert_eq!(q.ack(0, 1), Err(Stale::Redelivered));
        assert_eq!(q.renew(0, 1, 20_000, 4), Err(Stale::Redelivered));
        let renewed = q.renew(0, 3, 20_000, 4).unwrap();
        assert_eq!((renewed.deadline_ms, renewed.attempt), (20_000, 2));
        assert_eq!(q.ack(0, 4), Ok(true));
        q.check();
    }

    #[test]
    fn a_message_group_is_busy_while_one_of_it_is_in_flight() {
        let mut q = PopQueue::starting_at(0);
        q.hand_out(0, delivery(1, 1_000));
        q.set_group(0, "order-1".into());
        q.hand_out(1, delivery(2, 1_000));
        q.set_group(1, "order-2".into());
        assert_eq!(q.busy_groups().len(), 2);
        assert_eq!(q.ack(0, 1), Ok(true));
        assert_eq!(
            q.busy_groups().into_iter().collect::<Vec<_>>(),
            vec!["order-2".to_owned()]
        );
        // Not in flight: nothing to record.
        q.set_group(7, "order-3".into());
        assert_eq!(q.busy_groups().len(), 1);
    }

    #[test]
    fn filtered_out_offsets_count_as_done() {
        let mut q = PopQueue::starting_at(0);
        // The reader skipped 0 and 1 (another tag) and handed out 2.
        q.hand_out(2, delivery(2, 1_000));
        q.check();
        assert_eq!(q.low(), 2);
        q.skip_to(7);
        q.check();
        assert_eq!(q.ack(2, 2), Ok(true));
        assert_eq!(q.low(), 7);
        q.check();
    }
}
