//! The controller leader's memory of the master leases it granted and of planned switchovers.
//! Leader memory only, like liveness: a new leader starts empty and makes up for what it does not
//! know by waiting one lease plus margin before it elects a successor to a master that may hold a
//! lease from its predecessor (`election.rs`).
//!
//! The lease rule (docs/ARCHITECTURE.md, "Master leases"): a heartbeat answer may grant the
//! group's master a lease of `broker_lease_ms`, which the master counts from when it SENT that
//! heartbeat, by its own monotonic clock. The leader records when it RECEIVED each heartbeat it
//! granted a lease on (always later than the send), and elects a successor only once
//! `broker_lease_ms + lease_margin_ms` have passed since the last one. The margin covers the two
//! clocks running at slightly different rates and the master's delay between checking its lease
//! and acknowledging.
//!
//! Three things here are decided under one lock, so that no lease slips in between a decision and
//! the act it relies on:
//! - a grant, and whether a planned switchover asks the master to resign instead;
//! - a fence: once the election loop has decided to replace a master at some master epoch, no
//!   heartbeat answer grants a lease at that epoch any more, even one whose handler read the
//!   group before the election was applied;
//! - the start of a switchover, after which the master is granted nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use super::state::ClusterState;

/// The master epoch a heartbeat of broker `broker_id` (process `incarnation`) of `group` may be
/// granted a lease on: only the master of a controlled group, at the incarnation it was elected
/// with, which is also its registered one (a restarted master's new process holds no lease: the
/// controller elects again). `None`: no lease.
pub fn lease_eligible_epoch(
    state: &ClusterState,
    group: &str,
    broker_id: u64,
    incarnation: u64,
) -> Option<u64> {
    let g = state.groups.get(group)?;
    let registered = g.brokers.get(&broker_id)?.incarnation;
    (g.is_controlled()
        && g.master_id == Some(broker_id)
        && g.master_incarnation == incarnation
        && registered == incarnation)
        .then_some(g.master_epoch)
}

/// What a heartbeat from a group's current master (at the incarnation it was elected with) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantDecision {
    /// A lease, recorded as granted at the heartbeat's receive time.
    Granted,
    /// No lease: a planned switchover asks this master to resign.
    Resign,
    /// No lease: the election loop is replacing this master.
    Fenced,
}

/// A planned switchover (`cluster-cli cluster elect`), as the election loop needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchoverPlan {
    /// The broker to elect.
    pub target: u64,
    /// Elect it even outside the in-sync set.
    pub unclean: bool,
    /// When the leader recorded the switchover: from here on the master is granted no lease.
    pub started: Instant,
    /// The master epoch the switchover moves away from.
    pub master_epoch: u64,
}

/// How a switchover ended, for the `ElectMaster` call waiting on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchoverEnd {
    /// The target is master now.
    Elected {
        master_epoch: u64,
        /// The old master's last reported log end minus the target's (0 when not ahead).
        possibly_lost_bytes: u64,
    },
    /// Given up; the reason says why, for the operator.
    Abandoned { reason: String },
}

/// A lease was granted after the caller read the last grant: its decision must be made again.
#[derive(Debug, PartialEq, Eq)]
pub struct StaleGrant;

struct Switchover {
    id: u64,
    plan: SwitchoverPlan,
    done: oneshot::Sender<SwitchoverEnd>,
}

#[derive(Default)]
struct Inner {
    /// Per group: the receive time of the last heartbeat granted a lease.
    granted_at: HashMap<String, Instant>,
    /// Per group: master epochs up to this one get no lease (their master is being replaced).
    fenced_epoch: HashMap<String, u64>,
    switchovers: HashMap<String, Switchover>,
}

/// The leader's lease and switchover memory.
#[derive(Default)]
pub struct Leases {
    inner: Mutex<Inner>,
    next_switchover_id: AtomicU64,
}

impl Leases {
    pub fn new() -> Leases {
        Leases::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lease table lock poisoned")
    }

    /// Leadership changed: forget everything. Switchovers in progress end (their callers learn
    /// that leadership moved); their masters get leases again from whichever node leads next.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.granted_at.clear();
        inner.fenced_epoch.clear();
        for (_, switchover) in inner.switchovers.drain() {
            let _ = switchover.done.send(SwitchoverEnd::Abandoned {
                reason: "controller leadership moved before the election".to_owned(),
            });
        }
    }

    /// Decides the lease of a heartbeat the caller has checked comes from `group`'s master at
    /// `master_epoch`, with the incarnation it was elected with, received at `received_at`.
    pub fn grant(&self, group: &str, master_epoch: u64, received_at: Instant) -> GrantDecision {
        let mut inner = self.lock();
        if inner.switchovers.contains_key(group) {
            return GrantDecision::Resign;
        }
        if inner
            .fenced_epoch
            .get(group)
            .is_some_and(|fenced| master_epoch <= *fenced)
        {
            return GrantDecision::Fenced;
        }
        let granted = inner
            .granted_at
            .entry(group.to_owned())
            .or_insert(received_at);
        *granted = (*granted).max(received_at);
        GrantDecision::Granted
    }

    /// The receive time of the last heartbeat of `group` granted a lease by this leader.
    pub fn last_granted_at(&self, group: &str) -> Option<Instant> {
        self.lock().granted_at.get(group).copied()
    }

    /// Stops granting leases at `master_epoch` in `group`, provided no lease was granted since
    /// the caller read `expected_last_grant` (else the decision it made is stale: false, and
    /// nothing changes). Answers the previous fence, for [`Leases::unfence`].
    pub fn fence(
        &self,
        group: &str,
        master_epoch: u64,
        expected_last_grant: Option<Instant>,
    ) -> Result<Option<u64>, StaleGrant> {
        let mut inner = self.lock();
        if inner.granted_at.get(group).copied() != expected_last_grant {
            return Err(StaleGrant);
        }
        Ok(inner.fenced_epoch.insert(group.to_owned(), master_epoch))
    }

    /// Undoes [`Leases::fence`] after the election was refused without the epoch moving (the
    /// master keeps its role, so it must get leases again).
    pub fn unfence(&self, group: &str, previous: Option<u64>) {
        let mut inner = self.lock();
        match previous {
            Some(epoch) => inner.fenced_epoch.insert(group.to_owned(), epoch),
            None => inner.fenced_epoch.remove(group),
        };
    }

    /// Records a switchover; refused with the running one's plan if the group has one already.
    /// Its start is set here, under the lock: no lease is granted in the group after it.
    pub fn start_switchover(
        &self,
        group: &str,
        mut plan: SwitchoverPlan,
    ) -> Result<(u64, oneshot::Receiver<SwitchoverEnd>), SwitchoverPlan> {
        let mut inner = self.lock();
        if let Some(running) = inner.switchovers.get(group) {
            return Err(running.plan.clone());
        }
        plan.started = Instant::now();
        let id = self.next_switchover_id.fetch_add(1, Ordering::Relaxed);
        let (done, outcome) = oneshot::channel();
        inner
            .switchovers
            .insert(group.to_owned(), Switchover { id, plan, done });
        Ok((id, outcome))
    }

    /// The switchover running in `group`, with its id.
    pub fn switchover(&self, group: &str) -> Option<(u64, SwitchoverPlan)> {
        self.lock()
            .switchovers
            .get(group)
            .map(|s| (s.id, s.plan.clone()))
    }

    /// Ends switchover `id` of `group` (if it is still the running one) and tells its caller.
    pub fn end_switchover(&self, group: &str, id: u64, end: SwitchoverEnd) {
        let mut inner = self.lock();
        if inner.switchovers.get(group).is_some_and(|s| s.id == id) {
            let switchover = inner.switchovers.remove(group).expect("checked above");
            let _ = switchover.done.send(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_the_elected_process_of_a_controlled_master_is_eligible_for_a_lease() {
        use crate::state::{BrokerGroup, BrokerInfo, ConfiguredRole, ReplicationMode};
        let broker = |id: u64, role| BrokerInfo {
            id,
            addr: format!("127.0.0.1:{}", 10911 + id),
            configured_role: role,
            incarnation: 100 + id,
            election_priority: 0,
            replication: ReplicationMode::Sync,
            v5_addr: String::new(),
        };
        let mut state = ClusterState::default();
        state.groups.insert(
            "g".into(),
            BrokerGroup {
                cluster: "c".into(),
                brokers: [0, 1]
                    .into_iter()
                    .map(|id| (id, broker(id, ConfiguredRole::Controlled)))
                    .collect(),
                master_id: Some(0),
                master_epoch: 4,
                in_sync_set: [0, 1].into(),
                in_sync_set_epoch: 2,
                master_incarnation: 100,
                drained: false,
            },
        );
        assert_eq!(lease_eligible_epoch(&state, "g", 0, 100), Some(4));
        assert_eq!(
            lease_eligible_epoch(&state, "g", 0, 999),
            None,
            "another process"
        );
        assert_eq!(
            lease_eligible_epoch(&state, "g", 1, 101),
            None,
            "not the master"
        );
        assert_eq!(
            lease_eligible_epoch(&state, "h", 0, 100),
            None,
            "no such group"
        );
        // Registered again with a new incarnation: the elected process is gone.
        state
            .groups
            .get_mut("g")
            .unwrap()
            .brokers
            .get_mut(&0)
            .unwrap()
            .incarnation = 200;
        assert_eq!(lease_eligible_epoch(&state, "g", 0, 100), None);
        assert_eq!(lease_eligible_epoch(&state, "g", 0, 200), None);
        // A static group (no CONTROLLED broker) has no leases.
        let group = state.groups.get_mut("g").unwrap();
        group.brokers.insert(0, broker(0, ConfiguredRole::Master));
        group.brokers.insert(1, broker(1, ConfiguredRole::Slave));
        assert_eq!(lease_eligible_epoch(&state, "g", 0, 100), None);
    }

    fn plan(now: Instant) -> SwitchoverPlan {
        SwitchoverPlan {
            target: 1,
            unclean: false,
            started: now,
            master_epoch: 3,
        }
    }

    #[test]
    fn grants_keep_the_latest_receive_time() {
        let leases = Leases::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(leases.grant("a", 3, t1), GrantDecision::Granted);
        assert_eq!(leases.grant("a", 3, t0), GrantDecision::Granted);
        assert_eq!(leases.last_granted_at("a"), Some(t1));
        assert_eq!(leases.last_granted_at("b"), None);
    }

    #[test]
    fn a_fence_stops_grants_at_its_epoch_and_is_refused_after_a_newer_grant() {
        let leases = Leases::new();
        let t0 = Instant::now();
        leases.grant("a", 3, t0);
        // A grant arrived after the caller looked: its decision is stale.
        assert!(leases.fence("a", 3, None).is_err());
        let previous = leases.fence("a", 3, Some(t0)).unwrap();
        assert_eq!(previous, None);
        assert_eq!(
            leases.grant("a", 3, t0 + Duration::from_millis(1)),
            GrantDecision::Fenced
        );
        assert_eq!(leases.last_granted_at("a"), Some(t0), "nothing recorded");
        assert_eq!(leases.grant("a", 4, t0), GrantDecision::Granted);
        leases.unfence("a", previous);
        assert_eq!(leases.grant("a", 3, t0), GrantDecision::Granted);
    }

    #[test]
    fn a_switchover_asks_for_resignation_and_runs_once_per_group() {
        let leases = Leases::new();
        let now = Instant::now();
        let (id, mut outcome) = leases.start_switchover("a", plan(now)).unwrap();
        let (running_id, running) = leases.switchover("a").unwrap();
        assert_eq!((running_id, running.target), (id, 1));
        assert!(running.started >= now, "started when recorded");
        assert_eq!(
            leases.start_switchover("a", plan(now)).unwrap_err(),
            running
        );
        assert_eq!(leases.grant("a", 3, now), GrantDecision::Resign);
        assert_eq!(leases.last_granted_at("a"), None);
        // Ending another (older) switchover's id changes nothing.
        leases.end_switchover("a", id + 1, SwitchoverEnd::Abandoned { reason: "x".into() });
        assert!(outcome.try_recv().is_err());
        let end = SwitchoverEnd::Elected {
            master_epoch: 4,
            possibly_lost_bytes: 0,
        };
        leases.end_switchover("a", id, end.clone());
        assert_eq!(outcome.try_recv(), Ok(end));
        assert_eq!(leases.switchover("a"), None);
        assert_eq!(leases.grant("a", 4, now), GrantDecision::Granted);
    }

    #[test]
    fn clearing_ends_switchovers_and_forgets_grants() {
        let leases = Leases::new();
        let now = Instant::now();
        leases.grant("a", 3, now);
        let (_, mut outcome) = leases.start_switchover("b", plan(now)).unwrap();
        leases.clear();
        assert_eq!(leases.last_granted_at("a"), None);
        assert!(matches!(
            outcome.try_recv(),
            Ok(SwitchoverEnd::Abandoned { .. })
        ));
    }
}
