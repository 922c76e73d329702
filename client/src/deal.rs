//! What a push consumer's deal of queues remembers from one heartbeat round to the next, so that
//! a broker switch (a failover, or a master that cannot be reached) moves no queue between the
//! members of the group. Moving a queue restarts it from the group's committed offset, which may
//! be older than what its last owner handled: every such move redelivers.
//!
//! - Members: a broker that just became the one answering for its group (a new master, or a
//!   slave standing in) knows only the members that have sent it a heartbeat since; membership
//!   lives in each broker's memory and does not replicate. So a member listed by any answer
//!   stays in the deal for [`MEMBER_GRACE_ROUNDS`] heartbeat intervals, by which time each live
//!   member has reached the new broker. A member that really left is dropped that much later.
//! - Retry queues: listed by whichever broker of the group answered; a group whose brokers
//!   cannot list them this round keeps last round's.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::push::AssignedQueue;

/// What the deal remembers from one round to the next, so that a broker switch (a failover, or
/// a master that cannot be reached) moves no queue between members.
#[derive(Default)]
pub(crate) struct DealMemory {
    /// Members by when an answer last listed them. A broker that just became the one answering
    /// for its group (a new master, or a slave standing in) knows only the members that have
    /// sent it a heartbeat since; the others are kept for [`MEMBER_GRACE_ROUNDS`] heartbeat
    /// intervals, by which time each live one has reached it.
    pub(crate) members: HashMap<String, Instant>,
    /// Each group's retry queues as last listed: kept while its brokers cannot list them.
    pub(crate) retry_queues: HashMap<String, Vec<AssignedQueue>>,
}

/// Heartbeat intervals a member stays in the deal after the last answer that listed it.
const MEMBER_GRACE_ROUNDS: u32 = 3;
/// The least time a member stays in the deal after the last answer that listed it, whatever
/// the heartbeat interval: a failover now completes within tens of milliseconds, before every
/// member's heartbeat round has reached the new master, and with a short interval (200 ms in
/// `tests/tests/push_failover.rs`) three rounds were sometimes not enough for the last member
/// to reach it (its queues then moved to another member and started again from the committed
/// offset: 29-44 redeliveries).
const MEMBER_GRACE_MIN: Duration = Duration::from_secs(3);

impl DealMemory {
    /// This round's members: those listed now, and those listed within the grace.
    pub(crate) fn members(
        &mut self,
        listed: BTreeSet<String>,
        now: Instant,
        heartbeat_interval: Duration,
    ) -> BTreeSet<String> {
        for member in listed {
            self.members.insert(member, now);
        }
        let grace = (heartbeat_interval * MEMBER_GRACE_ROUNDS).max(MEMBER_GRACE_MIN);
        self.members
            .retain(|_, seen| now.saturating_duration_since(*seen) <= grace);
        self.members.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn a_member_missing_from_a_new_brokers_answer_stays_for_the_grace() {
        let mut memory = DealMemory::default();
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        assert_eq!(
            memory.members(names(&["a", "b"]), start, interval),
            names(&["a", "b"])
        );
        // The new master has heard only from "a" so far.
        let next = start + interval;
        assert_eq!(
            memory.members(names(&["a"]), next, interval),
            names(&["a", "b"])
        );
        // "b" reached it too.
        let later = next + interval;
        assert_eq!(
            memory.members(names(&["a", "b"]), later, interval),
            names(&["a", "b"])
        );
    }

    #[test]
    fn a_member_that_left_is_dropped_after_the_grace() {
        let mut memory = DealMemory::default();
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        memory.members(names(&["a", "b"]), start, interval);
        let mut now = start;
        for _ in 0..MEMBER_GRACE_ROUNDS {
            now += interval;
            assert!(memory.members(names(&["a"]), now, interval).contains("b"));
        }
        now += interval;
        assert_eq!(memory.members(names(&["a"]), now, interval), names(&["a"]));
    }

    #[test]
    fn a_short_heartbeat_interval_keeps_a_member_for_the_least_grace() {
        let mut memory = DealMemory::default();
        let interval = Duration::from_millis(200);
        let start = Instant::now();
        memory.members(names(&["a", "b"]), start, interval);
        // Three rounds of 200 ms have passed, the least grace has not.
        let now = start + MEMBER_GRACE_MIN - interval;
        assert!(memory.members(names(&["a"]), now, interval).contains("b"));
        let now = start + MEMBER_GRACE_MIN + interval;
        assert_eq!(memory.members(names(&["a"]), now, interval), names(&["a"]));
    }
}
