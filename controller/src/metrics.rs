//! The controller's metrics (docs/METRICS.md): their names, the election counter the election
//! loop bumps, and the sampler that sets the gauges at each scrape of the `/metrics` endpoint
//! ([`exporter`]).
//!
//! Every controller reports its Raft term, whether it leads, and the elections it carried out.
//! The per-group gauges come from the leader only: liveness lives in the leader's memory, and
//! one reporter keeps sums over the quorum right (a follower's copy of the state may also lag).

use std::sync::Arc;

use ::metrics::{counter, describe_counter, describe_gauge, gauge};
use openraft::ServerState;

use super::liveness::Liveness;
use super::store::SharedState;
use super::Raft;
use exporter::Sampler;

/// Gauge: the Raft term this controller is in.
pub const RAFT_TERM: &str = "controller_raft_term";
/// Gauge: 1 while this controller is the Raft leader, else 0.
pub const IS_LEADER: &str = "controller_is_leader";
/// Gauge: 1 while this controller's Raft can make progress, 0 when its core stopped or its vote
/// is poisoned (`controller status` says which).
pub const RAFT_HEALTHY: &str = "controller_raft_healthy";
/// Counter: Raft messages refused before they reached openraft (a sender outside the
/// membership, an impossible term).
pub const RAFT_REFUSED: &str = "controller_raft_refused_total";
/// Counter by `broker_group` and `kind`: masters this controller elected as leader.
pub const ELECTIONS: &str = "controller_elections_total";
/// Gauge by `broker_group` (leader only): registered brokers heard within the heartbeat timeout.
pub const BROKERS_ALIVE: &str = "controller_brokers_alive";
/// Gauge (leader only): broker groups that have no master now.
pub const GROUPS_WITHOUT_MASTER: &str = "controller_groups_without_master";
/// Gauge by `broker_group` (leader only): members of the group's in-sync set, master included.
pub const IN_SYNC_SET_SIZE: &str = "controller_in_sync_set_size";
/// Gauge by `broker_group` (leader only): the group's master epoch.
pub const MASTER_EPOCH: &str = "controller_master_epoch";

/// Gives every metric its help text (once, after the recorder is installed).
pub fn describe() {
    describe_gauge!(RAFT_TERM, "The Raft term this controller is in.");
    describe_gauge!(
        IS_LEADER,
        "1 while this controller is the Raft leader, else 0."
    );
    describe_gauge!(
        RAFT_HEALTHY,
        "1 while this controller's Raft can make progress; 0 when its core stopped or its vote \
         is poisoned (controller status names the problem)."
    );
    describe_counter!(
        RAFT_REFUSED,
        "Raft messages refused before they reached Raft: a sender outside the membership, or a \
         term no election reaches."
    );
    auth::describe_metrics();
    describe_counter!(
        ELECTIONS,
        "Masters elected by this controller while leader, by broker group and kind (first, \
         failover, switchover, unclean)."
    );
    describe_gauge!(
        BROKERS_ALIVE,
        "Registered brokers of the group heard within broker_heartbeat_timeout_ms (leader only)."
    );
    describe_gauge!(
        GROUPS_WITHOUT_MASTER,
        "Broker groups without a master now (leader only)."
    );
    describe_gauge!(
        IN_SYNC_SET_SIZE,
        "Members of the group's in-sync set, the master included (leader only)."
    );
    describe_gauge!(MASTER_EPOCH, "The group's master epoch (leader only).");
}

/// Counts one election this leader wrote (`kind` from [`super::election::Election::kind`]).
pub fn count_election(group: &str, kind: &'static str) {
    counter!(ELECTIONS, "broker_group" => group.to_owned(), "kind" => kind).increment(1);
}

/// Sets the controller's gauges from Raft, the applied state and liveness.
pub struct ControllerSampler {
    raft: Raft,
    state: SharedState,
    liveness: Arc<Liveness>,
}

impl ControllerSampler {
    pub fn new(raft: Raft, state: SharedState, liveness: Arc<Liveness>) -> ControllerSampler {
        ControllerSampler {
            raft,
            state,
            liveness,
        }
    }
}

/// One group as the gauges show it.
struct GroupFacts {
    name: String,
    broker_ids: Vec<u64>,
    has_master: bool,
    in_sync_set_size: usize,
    master_epoch: u64,
}

impl Sampler for ControllerSampler {
    async fn sample(&self) {
        let (term, leader, healthy) = {
            let metrics = self.raft.metrics();
            let core_running = metrics.has_changed().is_ok();
            let metrics = metrics.borrow();
            (
                metrics.current_term,
                metrics.state == ServerState::Leader,
                super::admission::health(&metrics, core_running).is_none(),
            )
        };
        gauge!(RAFT_TERM).set(term as f64);
        gauge!(RAFT_HEALTHY).set(if healthy { 1.0 } else { 0.0 });
        gauge!(IS_LEADER).set(if leader { 1.0 } else { 0.0 });
        if !leader {
            return;
        }
        let groups: Vec<GroupFacts> = self.state.read(|data| {
            data.state
                .groups
                .iter()
                .map(|(name, group)| GroupFacts {
                    name: name.clone(),
                    broker_ids: group.brokers.keys().copied().collect(),
                    has_master: group.master_id.is_some(),
                    in_sync_set_size: group.in_sync_set.len(),
                    master_epoch: group.master_epoch,
                })
                .collect()
        });
        let without_master = groups.iter().filter(|g| !g.has_master).count();
        gauge!(GROUPS_WITHOUT_MASTER).set(without_master as f64);
        for group in groups {
            let alive = group
                .broker_ids
                .iter()
                .filter(|id| self.liveness.is_alive(&group.name, **id))
                .count();
            gauge!(BROKERS_ALIVE, "broker_group" => group.name.clone()).set(alive as f64);
            gauge!(IN_SYNC_SET_SIZE, "broker_group" => group.name.clone())
                .set(group.in_sync_set_size as f64);
            gauge!(MASTER_EPOCH, "broker_group" => group.name).set(group.master_epoch as f64);
        }
    }
}
