//! Failover bounded by evidence: when a `SYNC` group's master is known gone, its successor is
//! elected at once instead of after the master's lease has run out (`election.rs` waits
//! `broker_lease_ms + lease_margin_ms` since the last lease it granted: 1.2 s by default).
//!
//! **The evidence.** A slave whose log stream from the master ended tries one TCP connection to
//! the master's address. When the master's host refuses it (nothing listens on the port), the
//! master process is gone: a killed or crashed process's sockets are closed by its kernel. A
//! paused process (SIGSTOP) still has its listening socket, whose kernel completes the
//! connection; a master cut off by the network, or whose whole host died, does not answer at
//! all. So only a process that is gone from a host that is up gives this evidence; every other
//! silence goes by the lease, as before. The slave says so in each heartbeat while it holds
//! (`BrokerHeartbeatRequest.master_gone`), naming the master and its master epoch.
//!
//! **The rule** ([`gone_master_candidates`]): the controller elects without waiting when
//! - the group's master registered `replication_mode = SYNC`;
//! - the in-sync set holds at least one member besides the master, and every such member is
//!   alive (heard within the lease wait, from its registered process): a member not heard from
//!   may be slow to start or cut off, and electing without it would shrink the set, so the
//!   lease rules then;
//! - every such member's latest heartbeat says the master (same id, same master epoch) is gone;
//! - and each of those heartbeats arrived after the master's own last heartbeat (a master heard
//!   after the evidence is not gone).
//!
//! **Why this is safe even when the evidence is wrong.** A firewall that answers with a reset
//! instead of dropping could make a live master look gone. Nothing acknowledged is lost even
//! then, because of how a `SYNC` master acknowledges:
//! 1. A `SYNC` master answers `SEND_OK` only once every member of its in-sync set (and of a
//!    change in flight) acknowledged the message (`replication::ship::insync`). The set is the
//!    controller's: the master changes it only by a proposal the controller accepts at the
//!    master's epoch, and a member joins only once it holds the confirm offset, so every member
//!    holds every message the master acknowledged.
//! 2. The winner is such a member: `ElectMaster` is refused unless the winner is in the group's
//!    set when it is applied, so a proposal that took the winner out first voids the election.
//! 3. After the election, the old master's epoch is over: its proposals are refused, so its set
//!    keeps the winner, and each of its acknowledgements still needs the winner's. The winner
//!    acknowledges it only while it still follows it, before it begins its own epoch at the end
//!    of its log: whatever the old master acknowledged is in that log, before anything the new
//!    master writes.
//!
//! The lease fence still applies (`elect` fences the old epoch before writing the election), so
//! no lease is granted to the old master from the decision on.
//!
//! What the evidence does not give: "no two masters acknowledge in overlapping time" holds by
//! the lease only. On a wrong evidence, the old master may acknowledge (messages the winner
//! holds, per the above) until the winner learns it is master, a few heartbeats at most. The
//! faults the tests exercise (SIGSTOP, a link cut by dropping packets) give no evidence, and go
//! by the lease. An `ASYNC` master acknowledges alone, so point 1 does not hold: its groups
//! always wait out the lease.

use std::collections::BTreeMap;
use std::time::Instant;

use super::election::{is_candidate_alive, Timing};
use super::liveness::Seen;
use super::state::{BrokerGroup, ReplicationMode};

/// What a slave said of its master in a heartbeat: which master it found gone, at which epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoneReport {
    pub master_id: u64,
    pub master_epoch: u64,
}

impl GoneReport {
    pub fn from_wire(wire: Option<&proto::controller::MasterGone>) -> Option<GoneReport> {
        wire.map(|gone| GoneReport {
            master_id: gone.master_id,
            master_epoch: gone.master_epoch,
        })
    }
}

/// The candidates for `group`'s master when its current master is known gone (see the module
/// documentation), or `None` when the evidence does not hold and the lease rules.
pub fn gone_master_candidates(
    group: &BrokerGroup,
    seen: &BTreeMap<u64, Seen>,
    now: Instant,
    timing: &Timing,
) -> Option<Vec<u64>> {
    let master = group.master_id?;
    if group.brokers.get(&master)?.replication != ReplicationMode::Sync {
        return None;
    }
    let master_heard_at = seen
        .get(&master)
        .filter(|s| s.incarnation == group.master_incarnation)
        .map(|s| s.at);
    let gone = GoneReport {
        master_id: master,
        master_epoch: group.master_epoch,
    };
    let members: Vec<u64> = group
        .in_sync_set
        .iter()
        .copied()
        .filter(|id| *id != master)
        .collect();
    let all_say_gone = members.iter().all(|id| {
        is_candidate_alive(group, seen, *id, now, timing)
            && seen.get(id).is_some_and(|s| {
                s.master_gone == Some(gone) && master_heard_at.is_none_or(|heard| s.at > heard)
            })
    });
    (!members.is_empty() && all_say_gone).then_some(members)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing {
            broker_lease: Duration::from_millis(1000),
            lease_margin: Duration::from_millis(200),
        }
    }

    fn group(replication: ReplicationMode) -> BrokerGroup {
        crate::fixtures::three_brokers(replication)
    }

    fn heard(id: u64, at: Instant, gone: Option<GoneReport>) -> (u64, Seen) {
        let (id, seen) = crate::fixtures::heard(id, at);
        (
            id,
            Seen {
                master_gone: gone,
                ..seen
            },
        )
    }

    const GONE: Option<GoneReport> = Some(GoneReport {
        master_id: 0,
        master_epoch: 3,
    });

    #[test]
    fn every_in_sync_slave_saying_the_master_is_gone_is_evidence_in_a_sync_group() {
        let t0 = Instant::now();
        let g = group(ReplicationMode::Sync);
        let seen = BTreeMap::from([
            heard(0, t0, None),
            heard(1, t0 + MS, GONE),
            heard(2, t0 + 2 * MS, GONE),
        ]);
        assert_eq!(
            gone_master_candidates(&g, &seen, t0 + 3 * MS, &timing()),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn no_evidence_when_it_does_not_hold_everywhere_or_is_not_about_this_master() {
        let t0 = Instant::now();
        let g = group(ReplicationMode::Sync);
        let now = t0 + 3 * MS;
        let check = |one: Option<GoneReport>, two: Option<GoneReport>| {
            let seen = BTreeMap::from([
                heard(0, t0, None),
                heard(1, t0 + MS, one),
                heard(2, t0 + 2 * MS, two),
            ]);
            gone_master_candidates(&g, &seen, now, &timing())
        };
        // One in-sync slave still reaches the master.
        assert_eq!(check(GONE, None), None);
        // About an older master epoch, or another master.
        let old_epoch = Some(GoneReport {
            master_id: 0,
            master_epoch: 2,
        });
        assert_eq!(check(GONE, old_epoch), None);
        let other = Some(GoneReport {
            master_id: 1,
            master_epoch: 3,
        });
        assert_eq!(check(other, GONE), None);
    }

    #[test]
    fn a_master_heard_after_the_evidence_is_not_gone() {
        let t0 = Instant::now();
        let g = group(ReplicationMode::Sync);
        let seen = BTreeMap::from([
            heard(0, t0 + 5 * MS, None),
            heard(1, t0 + MS, GONE),
            heard(2, t0 + 2 * MS, GONE),
        ]);
        assert_eq!(
            gone_master_candidates(&g, &seen, t0 + 6 * MS, &timing()),
            None
        );
        // A heartbeat from another process of the master says nothing of the elected one.
        let mut restarted = seen.clone();
        restarted.get_mut(&0).unwrap().incarnation = 999;
        assert_eq!(
            gone_master_candidates(&g, &restarted, t0 + 6 * MS, &timing()),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn an_async_group_always_waits_out_the_lease() {
        let t0 = Instant::now();
        let g = group(ReplicationMode::Async);
        let seen = BTreeMap::from([
            heard(0, t0, None),
            heard(1, t0 + MS, GONE),
            heard(2, t0 + 2 * MS, GONE),
        ]);
        assert_eq!(
            gone_master_candidates(&g, &seen, t0 + 3 * MS, &timing()),
            None
        );
    }

    #[test]
    fn a_silent_member_or_a_set_of_the_master_alone_is_no_evidence() {
        let t0 = Instant::now();
        let g = group(ReplicationMode::Sync);
        // Broker 2 was last heard long ago (it may be starting, or cut off): the lease rules,
        // so that the election does not shrink the set without need.
        let long_ago = t0;
        let now = t0 + Duration::from_secs(5);
        let seen = BTreeMap::from([
            heard(0, now - 10 * MS, None),
            heard(1, now - MS, GONE),
            heard(2, long_ago, GONE),
        ]);
        assert_eq!(gone_master_candidates(&g, &seen, now, &timing()), None);
        // Out of the set, it does not count.
        let mut without_2 = g.clone();
        without_2.in_sync_set = BTreeSet::from([0, 1]);
        assert_eq!(
            gone_master_candidates(&without_2, &seen, now, &timing()),
            Some(vec![1])
        );
        // A set of the master alone has nobody to give evidence.
        let mut alone = g.clone();
        alone.in_sync_set = BTreeSet::from([0]);
        assert_eq!(gone_master_candidates(&alone, &seen, now, &timing()), None);
    }
}
