//! Whether a planned switchover (`cluster-cli cluster elect`) may start, and to whom: a pure
//! check of the request against the group's replicated state and what the leader heard, beside
//! [`election::decide`](super::election::decide), which then runs the switchover.
//!
//! The rules, each a refusal that changes nothing:
//! - only a registered group of `CONTROLLED` brokers has elections;
//! - a named target must be registered, not the master already, alive (heard within the lease
//!   wait from its registered process), with a store that can be master (no failed write, no
//!   corrupt record), and, unless the switchover is unclean, in the in-sync set (a group that
//!   never had a master has no set yet);
//! - without a named target, the best alive in-sync broker other than the master, of the
//!   soundest store ([`best_switchover_target`](super::election::best_switchover_target)).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proto::common::ErrorCode;

use super::election::{best_switchover_target, is_candidate_alive, Timing};
use super::lease::SwitchoverPlan;
use super::liveness::Seen;
use super::state::BrokerGroup;

/// What the operator asked.
#[derive(Clone, Copy, Debug)]
pub struct SwitchoverRequest<'a> {
    pub group: &'a str,
    /// The broker to elect; `None`: the controller's choice.
    pub target: Option<u64>,
    /// Elect the target even outside the in-sync set.
    pub unclean: bool,
}

/// Why a switchover may not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverRefusal {
    #[error("broker group {} is not registered", proto::Echo(.group))]
    GroupNotFound { group: String },
    #[error(
        "broker group {group:?} has static roles (MASTER or SLAVE): its master is the broker \
         configured so; only groups of CONTROLLED brokers have elections"
    )]
    StaticRoles { group: String },
    #[error("broker {broker_id} is not registered in broker group {group:?}")]
    NotRegistered { group: String, broker_id: u64 },
    #[error("broker {broker_id} is already the master of broker group {group:?} (master epoch {master_epoch})")]
    AlreadyMaster {
        group: String,
        broker_id: u64,
        master_epoch: u64,
    },
    #[error(
        "broker {broker_id} is not alive ({}; a master must have been heard within {} ms)",
        .heard_ago.map_or("not heard since this controller became leader".to_owned(), |ago| format!("last heard {} ms ago", ago.as_millis())),
        .lease_wait.as_millis()
    )]
    NotAlive {
        broker_id: u64,
        heard_ago: Option<Duration>,
        lease_wait: Duration,
    },
    #[error("broker {broker_id}'s store has a fault ({problem}): it cannot be master until it is repaired")]
    StoreFault { broker_id: u64, problem: String },
    #[error(
        "broker {broker_id} is not in the in-sync set {in_sync_set:?} of broker group {group:?}: \
         it may lack acknowledged messages; wait until it catches up, or elect it with unclean \
         (which may lose them)"
    )]
    NotInSync {
        group: String,
        broker_id: u64,
        in_sync_set: Vec<u64>,
    },
    #[error(
        "broker group {group:?} has no alive member of its in-sync set {in_sync_set:?} other than \
         the master {master_id:?} to move mastership to"
    )]
    NoTarget {
        group: String,
        in_sync_set: Vec<u64>,
        master_id: Option<u64>,
    },
}

impl SwitchoverRefusal {
    /// The stable code the refusal is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            SwitchoverRefusal::GroupNotFound { .. } => ErrorCode::BrokerGroupNotFound,
            SwitchoverRefusal::NotRegistered { .. } => ErrorCode::NotFound,
            SwitchoverRefusal::StaticRoles { .. }
            | SwitchoverRefusal::AlreadyMaster { .. }
            | SwitchoverRefusal::NotAlive { .. }
            | SwitchoverRefusal::StoreFault { .. }
            | SwitchoverRefusal::NotInSync { .. }
            | SwitchoverRefusal::NoTarget { .. } => ErrorCode::Conflict,
        }
    }
}

/// The switchover to start for `request`, or why none may (see the module documentation).
pub fn plan(
    group: Option<&BrokerGroup>,
    seen: &BTreeMap<u64, Seen>,
    request: SwitchoverRequest<'_>,
    now: Instant,
    timing: &Timing,
) -> Result<SwitchoverPlan, SwitchoverRefusal> {
    let name = request.group.to_owned();
    let Some(group) = group else {
        return Err(SwitchoverRefusal::GroupNotFound { group: name });
    };
    if !group.is_controlled() {
        return Err(SwitchoverRefusal::StaticRoles { group: name });
    }
    let target = match request.target {
        Some(broker_id) => {
            check_target(group, seen, &name, broker_id, request.unclean, now, timing)?;
            broker_id
        }
        None => best_switchover_target(group, seen, now, timing).ok_or_else(|| {
            SwitchoverRefusal::NoTarget {
                group: name.clone(),
                in_sync_set: group.in_sync_set.iter().copied().collect(),
                master_id: group.master_id,
            }
        })?,
    };
    Ok(SwitchoverPlan {
        target,
        unclean: request.unclean,
        started: now,
        master_epoch: group.master_epoch,
    })
}

fn check_target(
    group: &BrokerGroup,
    seen: &BTreeMap<u64, Seen>,
    name: &str,
    broker_id: u64,
    unclean: bool,
    now: Instant,
    timing: &Timing,
) -> Result<(), SwitchoverRefusal> {
    if !group.brokers.contains_key(&broker_id) {
        return Err(SwitchoverRefusal::NotRegistered {
            group: name.to_owned(),
            broker_id,
        });
    }
    if group.master_id == Some(broker_id) {
        return Err(SwitchoverRefusal::AlreadyMaster {
            group: name.to_owned(),
            broker_id,
            master_epoch: group.master_epoch,
        });
    }
    if !is_candidate_alive(group, seen, broker_id, now, timing) {
        return Err(SwitchoverRefusal::NotAlive {
            broker_id,
            heard_ago: seen.get(&broker_id).map(|s| now.duration_since(s.at)),
            lease_wait: timing.lease_wait(),
        });
    }
    if let Some(store) = seen.get(&broker_id).map(|s| &s.store) {
        if store.master_tier().is_none_or(|tier| tier >= 3) {
            return Err(SwitchoverRefusal::StoreFault {
                broker_id,
                problem: store.problem.clone(),
            });
        }
    }
    let in_sync = group.never_had_master() || group.in_sync_set.contains(&broker_id);
    if !unclean && !in_sync {
        return Err(SwitchoverRefusal::NotInSync {
            group: name.to_owned(),
            broker_id,
            in_sync_set: group.in_sync_set.iter().copied().collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::liveness::StoreReport;
    use crate::state::{ConfiguredRole, ReplicationMode};

    const TIMING: Timing = Timing {
        broker_lease: Duration::from_millis(1_000),
        lease_margin: Duration::from_millis(200),
    };

    /// Brokers 0 (master, epoch 3), 1 (in sync), 2 (not in sync); incarnations 100 + id.
    fn group() -> BrokerGroup {
        BrokerGroup {
            in_sync_set: BTreeSet::from([0, 1]),
            ..crate::fixtures::three_brokers(ReplicationMode::Sync)
        }
    }

    fn heard(id: u64, at: Instant, store: StoreReport) -> (u64, Seen) {
        let (id, seen) = crate::fixtures::heard(id, at);
        (id, Seen { store, ..seen })
    }

    fn ask(target: Option<u64>, unclean: bool) -> SwitchoverRequest<'static> {
        SwitchoverRequest {
            group: "broker-a",
            target,
            unclean,
        }
    }

    #[test]
    fn a_switchover_goes_to_the_named_or_the_best_in_sync_broker() {
        let group = group();
        let now = Instant::now();
        let seen = BTreeMap::from([
            heard(0, now, StoreReport::default()),
            heard(1, now, StoreReport::default()),
            heard(2, now, StoreReport::default()),
        ]);
        let planned = plan(Some(&group), &seen, ask(Some(1), false), now, &TIMING).unwrap();
        assert_eq!((planned.target, planned.master_epoch), (1, 3));
        let chosen = plan(Some(&group), &seen, ask(None, false), now, &TIMING).unwrap();
        assert_eq!(chosen.target, 1, "the only other member of the set");
        let unclean = plan(Some(&group), &seen, ask(Some(2), true), now, &TIMING).unwrap();
        assert!(unclean.unclean);
    }

    #[test]
    fn every_refusal_names_its_reason_and_code() {
        let group = group();
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(5);
        let corrupt = StoreReport {
            corrupt_offset: Some(7),
            problem: "corrupt record at commit-log offset 7".into(),
            ..StoreReport::default()
        };
        let seen = BTreeMap::from([
            heard(0, now, StoreReport::default()),
            heard(1, long_ago, StoreReport::default()),
            heard(2, now, corrupt),
        ]);
        let refused = |group: Option<&BrokerGroup>, request| {
            plan(group, &seen, request, now, &TIMING).unwrap_err()
        };
        let cases = [
            (
                refused(None, ask(Some(1), false)),
                ErrorCode::BrokerGroupNotFound,
            ),
            (
                refused(Some(&group), ask(Some(9), false)),
                ErrorCode::NotFound,
            ),
            (
                refused(Some(&group), ask(Some(0), false)),
                ErrorCode::Conflict,
            ),
            (
                refused(Some(&group), ask(Some(1), false)),
                ErrorCode::Conflict,
            ),
            (
                refused(Some(&group), ask(Some(2), true)),
                ErrorCode::Conflict,
            ),
            (refused(Some(&group), ask(None, false)), ErrorCode::Conflict),
        ];
        for (refusal, code) in &cases {
            assert_eq!(refusal.code(), *code, "{refusal}");
        }
        assert!(matches!(
            cases[2].0,
            SwitchoverRefusal::AlreadyMaster { .. }
        ));
        assert!(
            cases[3].0.to_string().contains("last heard 5000 ms ago"),
            "{}",
            cases[3].0
        );
        assert!(matches!(cases[4].0, SwitchoverRefusal::StoreFault { .. }));
        assert!(matches!(cases[5].0, SwitchoverRefusal::NoTarget { .. }));
        // Not in the set, and not unclean.
        let seen = BTreeMap::from([heard(2, now, StoreReport::default())]);
        let refusal = plan(Some(&group), &seen, ask(Some(2), false), now, &TIMING).unwrap_err();
        assert!(
            matches!(refusal, SwitchoverRefusal::NotInSync { .. }),
            "{refusal}"
        );
        // A static group has no elections.
        let mut fixed = group.clone();
        for broker in fixed.brokers.values_mut() {
            broker.configured_role = ConfiguredRole::Master;
        }
        let refusal = plan(Some(&fixed), &seen, ask(Some(2), true), now, &TIMING).unwrap_err();
        assert!(
            matches!(refusal, SwitchoverRefusal::StaticRoles { .. }),
            "{refusal}"
        );
    }
}
