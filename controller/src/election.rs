//! Master elections for controlled broker groups: when a group needs a new master, whom to elect,
//! and the leader's loop that carries it out.
//!
//! The decision is a pure function ([`decide`]) of one group's replicated state, what the leader
//! heard from its brokers (liveness), the time, when this node became leader, the last lease it
//! granted in the group, and a planned switchover if one runs. The loop ([`ElectionLoop`]) only
//! gathers those facts every [`ELECTION_TICK`] (and when something changed), and proposes the
//! decided `Command::ElectMaster` through Raft.
//!
//! Safety rests on three things:
//! - **Leases.** A successor is elected only once the old master's lease has certainly run out:
//!   `lease_wait` (= `broker_lease_ms + lease_margin_ms`) after the last heartbeat this leader
//!   granted a lease on, and after this node became leader (its predecessor may have granted one
//!   just before). Two cases need no wait: a group that never had a master, and a master that
//!   registered again with a new incarnation (the process that held the lease is gone); and a
//!   master that confirmed its resignation has given its lease up.
//! - **The fence.** Between deciding and the election being applied, a heartbeat from the master
//!   could still be granted a lease on the old state. The loop fences the group's master epoch in
//!   the lease table first (refused if a lease was granted since it looked), so it cannot.
//! - **Compare-and-set.** `ElectMaster` carries the master epoch it was decided at, and is
//!   refused if the group moved on: a switchover racing a failover, or a leader that died
//!   mid-election and a successor deciding again, elect at most one master per epoch.
//!
//! Candidates are the alive members of the in-sync set (any alive broker of a group that never
//! had a master), alive meaning heard within `lease_wait` from the registered process. The lost
//! master is not one, unless it restarted and is alive again. Only the candidates of the soundest
//! store tier present stay ([`fittest`]): a verified store, then an unverified one, then one past
//! its disk's high-water mark, then one with a corrupt record; a store that failed to write is
//! never elected. So a corrupt replica is never elected while a sound in-sync one is alive. A
//! master whose own store is unfit (failed write, full disk, corrupt record) while a sounder
//! in-sync broker is alive is moved off by a planned switchover to it, which runs under the
//! switchover's rules above (its resignation, or its lease running out). They are ranked by log epoch, then
//! log end (both highest first), then election priority, then broker id (both lowest first). The
//! new in-sync set is the winner and the other alive members of the old set, never the old master
//! (it rejoins by catching up, like any slave).
//!
//! Why one file of about 770 lines (and its tests): the safety argument above spans the pure
//! decision and the loop that carries it out (the fence between deciding and writing, the
//! compare-and-set), and reads best beside both. The checks that stand alone already live apart
//! (`switchover.rs`, `lease.rs`, `admission.rs`, `gone.rs`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::ServerState;
use tokio::sync::Notify;

use super::config::ControllerConfig;
use super::gone::gone_master_candidates;
use super::lease::{Leases, SwitchoverEnd, SwitchoverPlan};
use super::liveness::{Liveness, Seen};
use super::state::{BrokerGroup, Command, CommandResult};
use super::store::SharedState;
use super::Raft;

/// How often the leader looks at every controlled group. A master is found lost at most this
/// late after its lease wait ends; it costs one pass over the groups in memory.
pub const ELECTION_TICK: Duration = Duration::from_millis(50);

/// The lease settings elections wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// What a heartbeat answer grants a master (`broker_lease_ms`).
    pub broker_lease: Duration,
    /// What the controller adds before it counts a lease as over (`lease_margin_ms`).
    pub lease_margin: Duration,
}

impl Timing {
    pub fn from_config(config: &ControllerConfig) -> Timing {
        Timing {
            broker_lease: Duration::from_millis(config.broker_lease_ms),
            lease_margin: Duration::from_millis(config.lease_margin_ms),
        }
    }

    /// How long after the last granted lease (or a silence began) no successor is elected; also
    /// how recently a broker must have been heard to be a candidate.
    pub fn lease_wait(&self) -> Duration {
        self.broker_lease + self.lease_margin
    }
}

/// Why a group needs a master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The group never had one.
    FirstMaster,
    /// The group had one and has none now.
    NoMaster,
    /// The master was not heard from for the lease wait.
    MasterLost,
    /// The master registered again with a new incarnation: its old process is gone.
    MasterRestarted,
    /// Every alive in-sync slave found the master's host refusing connections: its process is
    /// gone (`gone.rs`).
    MasterGone,
    /// A planned switchover whose master confirmed it resigned.
    SwitchoverResigned,
    /// A planned switchover whose master did not confirm within the lease wait: its last lease
    /// has run out anyway.
    SwitchoverLeaseExpired,
    /// The master's store has a fault (a failed write, a corrupt record, a full disk) and a
    /// sounder in-sync broker is alive: mastership moves to it by a planned switchover.
    MasterStoreFault,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FirstMaster => "first master",
            Reason::NoMaster => "no master",
            Reason::MasterLost => "master lost",
            Reason::MasterRestarted => "master restarted",
            Reason::MasterGone => "master process gone",
            Reason::SwitchoverResigned => "switchover, master resigned",
            Reason::SwitchoverLeaseExpired => "switchover, master lease expired",
            Reason::MasterStoreFault => "master store fault",
        }
    }
}

/// Everything [`decide`] looks at for one group.
pub struct Facts<'a> {
    pub group: &'a BrokerGroup,
    /// What the leader last heard from each broker of the group, by id.
    pub seen: &'a BTreeMap<u64, Seen>,
    pub now: Instant,
    /// When this node became leader.
    pub leader_since: Instant,
    /// The receive time of the last heartbeat in this group this leader granted a lease on.
    pub last_lease_granted_at: Option<Instant>,
    pub switchover: Option<&'a SwitchoverPlan>,
}

/// An election to propose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub reason: Reason,
    pub master_id: u64,
    pub in_sync_set: BTreeSet<u64>,
    pub unclean: bool,
    /// The winner's newest log epoch and log end, as it last reported them.
    pub log_epoch: u64,
    pub max_offset: u64,
    /// The old master's last reported log end minus the winner's (0 when not ahead or not known).
    pub possibly_lost_bytes: u64,
}

impl Election {
    /// The kind of election, as `controller_elections_total` counts it: `unclean` (from outside
    /// the in-sync set), `first` (a group's first master), `switchover` (planned) or `failover`
    /// (the master was lost, restarted, or is missing).
    pub fn kind(&self) -> &'static str {
        match self.reason {
            _ if self.unclean => "unclean",
            Reason::FirstMaster => "first",
            Reason::SwitchoverResigned
            | Reason::SwitchoverLeaseExpired
            | Reason::MasterStoreFault => "switchover",
            Reason::NoMaster
            | Reason::MasterLost
            | Reason::MasterRestarted
            | Reason::MasterGone => "failover",
        }
    }
}

/// What to do about one group now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The master is fine.
    Keep,
    /// A master is needed, but a lease may still run until `until`.
    Wait {
        reason: Reason,
        until: Instant,
    },
    /// A master is needed and allowed, but no candidate is alive.
    NoCandidate {
        reason: Reason,
    },
    /// The planned switchover cannot happen any more.
    AbandonSwitchover {
        reason: String,
    },
    /// The master's store has a fault: start a planned switchover to `target`, a sounder alive
    /// member of the in-sync set (the switchover's own rules then run it: the master resigns,
    /// or its lease runs out).
    StartSwitchover {
        target: u64,
        problem: String,
    },
    Elect(Election),
}

/// Whether `broker_id` counts as alive for an election: heard within the lease wait, from the
/// process registered now (a heartbeat of an older incarnation says nothing about the new one).
pub fn is_candidate_alive(
    group: &BrokerGroup,
    seen: &BTreeMap<u64, Seen>,
    broker_id: u64,
    now: Instant,
    timing: &Timing,
) -> bool {
    let Some(broker) = group.brokers.get(&broker_id) else {
        return false;
    };
    seen.get(&broker_id).is_some_and(|s| {
        s.incarnation == broker.incarnation
            && now.saturating_duration_since(s.at) < timing.lease_wait()
    })
}

/// Orders `ids` best first: log epoch, then log end (highest first), then election priority,
/// then broker id (lowest first). A broker never heard from ranks as an empty log.
pub fn rank(group: &BrokerGroup, seen: &BTreeMap<u64, Seen>, ids: &mut [u64]) {
    ids.sort_by_key(|id| {
        let (log_epoch, max_offset) = seen
            .get(id)
            .map(|s| (s.log_epoch, s.max_offset))
            .unwrap_or((0, 0));
        let priority = group
            .brokers
            .get(id)
            .map(|b| b.election_priority)
            .unwrap_or(u32::MAX);
        (Reverse(log_epoch), Reverse(max_offset), priority, *id)
    });
}

/// The store's fitness to be master of a broker heard from (see [`StoreReport::master_tier`]);
/// `None` for a store that cannot write or a broker not heard.
fn tier(seen: &BTreeMap<u64, Seen>, id: u64) -> Option<u8> {
    seen.get(&id).and_then(|s| s.store.master_tier())
}

/// Keeps the candidates of the best store tier present: a broker whose store has a fault is a
/// candidate only while no sounder one is alive (a corrupt replica is never elected over a
/// healthy one), and one whose store cannot write never is.
pub fn fittest(seen: &BTreeMap<u64, Seen>, ids: Vec<u64>) -> Vec<u64> {
    let Some(best) = ids.iter().filter_map(|id| tier(seen, *id)).min() else {
        return Vec::new();
    };
    ids.into_iter()
        .filter(|id| tier(seen, *id) == Some(best))
        .collect()
}

/// The best broker to move mastership to in a planned switchover: an alive member of the in-sync
/// set other than the master, of the soundest store.
pub fn best_switchover_target(
    group: &BrokerGroup,
    seen: &BTreeMap<u64, Seen>,
    now: Instant,
    timing: &Timing,
) -> Option<u64> {
    let ids: Vec<u64> = group
        .in_sync_set
        .iter()
        .copied()
        .filter(|id| Some(*id) != group.master_id)
        .filter(|id| is_candidate_alive(group, seen, *id, now, timing))
        .collect();
    let mut ids = fittest(seen, ids);
    rank(group, seen, &mut ids);
    ids.first().copied()
}

/// When the master (as elected) reports a store unfit for mastership and a sounder in-sync broker
/// is alive: that broker, and the master's problem.
fn store_fault_handover(facts: &Facts, master: u64, timing: &Timing) -> Option<(u64, String)> {
    let group = facts.group;
    let report = facts
        .seen
        .get(&master)
        .filter(|s| s.incarnation == group.master_incarnation)
        .map(|s| &s.store)?;
    if !report.unfit_master() {
        return None;
    }
    let master_tier = report.master_tier().unwrap_or(u8::MAX);
    let target = best_switchover_target(group, facts.seen, facts.now, timing)?;
    let target_report = &facts.seen.get(&target)?.store;
    let sounder = target_report
        .master_tier()
        .is_some_and(|tier| tier < master_tier)
        && !target_report.unfit_master();
    sounder.then(|| (target, report.problem.clone()))
}

/// Decides what one controlled group needs now.
pub fn decide(facts: &Facts, timing: &Timing) -> Decision {
    match facts.switchover {
        Some(plan) => decide_switchover(facts, plan, timing),
        None => decide_failover(facts, timing),
    }
}

/// When leases granted before now (by this leader, or by its predecessor) have certainly run out.
fn leases_over_at(facts: &Facts, timing: &Timing) -> Instant {
    let wait = timing.lease_wait();
    let since_leader = facts.leader_since + wait;
    match facts.last_lease_granted_at {
        Some(granted) => since_leader.max(granted + wait),
        None => since_leader,
    }
}

fn decide_failover(facts: &Facts, timing: &Timing) -> Decision {
    let group = facts.group;
    let (reason, allowed_at) = match group.master_id {
        None if group.master_epoch == 0 => (Reason::FirstMaster, facts.now),
        None => (Reason::NoMaster, leases_over_at(facts, timing)),
        Some(_) if group.master_restarted() => (Reason::MasterRestarted, facts.now),
        Some(master) => {
            if let Some(candidates) = gone_master_candidates(group, facts.seen, facts.now, timing) {
                return elect_best(facts, Reason::MasterGone, candidates, timing);
            }
            // Silence counts from the master's last heartbeat as the process it was elected
            // in, or from when this node became leader if it has not heard it since.
            let heard_at = facts
                .seen
                .get(&master)
                .filter(|s| s.incarnation == group.master_incarnation)
                .map(|s| s.at.max(facts.leader_since))
                .unwrap_or(facts.leader_since);
            if facts.now.saturating_duration_since(heard_at) < timing.lease_wait() {
                return match store_fault_handover(facts, master, timing) {
                    Some((target, problem)) => Decision::StartSwitchover { target, problem },
                    None => Decision::Keep,
                };
            }
            (
                Reason::MasterLost,
                leases_over_at(facts, timing).max(heard_at + timing.lease_wait()),
            )
        }
    };
    if facts.now < allowed_at {
        return Decision::Wait {
            reason,
            until: allowed_at,
        };
    }
    let pool: Vec<u64> = if group.never_had_master() {
        group.brokers.keys().copied().collect()
    } else {
        group.in_sync_set.iter().copied().collect()
    };
    let candidates: Vec<u64> = pool
        .into_iter()
        .filter(|id| Some(*id) != group.master_id || reason == Reason::MasterRestarted)
        .filter(|id| is_candidate_alive(group, facts.seen, *id, facts.now, timing))
        .collect();
    elect_best(facts, reason, candidates, timing)
}

/// Elects the best of `candidates` (alive ones): the soundest store tier, then by rank.
fn elect_best(facts: &Facts, reason: Reason, candidates: Vec<u64>, timing: &Timing) -> Decision {
    let mut candidates = fittest(facts.seen, candidates);
    rank(facts.group, facts.seen, &mut candidates);
    match candidates.first() {
        Some(winner) => Decision::Elect(election(facts, reason, *winner, false, timing)),
        None => Decision::NoCandidate { reason },
    }
}

fn decide_switchover(facts: &Facts, plan: &SwitchoverPlan, timing: &Timing) -> Decision {
    let group = facts.group;
    if group.master_epoch != plan.master_epoch {
        return Decision::AbandonSwitchover {
            reason: format!(
                "the master epoch moved from {} to {} meanwhile (another election)",
                plan.master_epoch, group.master_epoch
            ),
        };
    }
    if !group.brokers.contains_key(&plan.target) {
        return Decision::AbandonSwitchover {
            reason: format!("broker {} is no longer registered", plan.target),
        };
    }
    if !is_candidate_alive(group, facts.seen, plan.target, facts.now, timing) {
        return Decision::AbandonSwitchover {
            reason: format!(
                "broker {} stopped heartbeating (not heard within {} ms)",
                plan.target,
                timing.lease_wait().as_millis()
            ),
        };
    }
    if !plan.unclean && !group.never_had_master() && !group.in_sync_set.contains(&plan.target) {
        return Decision::AbandonSwitchover {
            reason: format!(
                "broker {} left the in-sync set {:?} meanwhile",
                plan.target, group.in_sync_set
            ),
        };
    }
    let (reason, allowed_at) = match group.master_id {
        // No master to resign: only leases granted earlier matter.
        None if group.master_epoch == 0 => (Reason::SwitchoverLeaseExpired, facts.now),
        None => (
            Reason::SwitchoverLeaseExpired,
            leases_over_at(facts, timing),
        ),
        Some(_) if group.master_restarted() => (Reason::MasterRestarted, facts.now),
        Some(master) => {
            let resigned = facts.seen.get(&master).is_some_and(|s| {
                s.resigned
                    && s.master_epoch == group.master_epoch
                    && s.incarnation == group.master_incarnation
                    && s.at >= plan.started
            });
            if resigned {
                (Reason::SwitchoverResigned, facts.now)
            } else {
                // No lease was granted since the start: the last one ends within the wait.
                (
                    Reason::SwitchoverLeaseExpired,
                    leases_over_at(facts, timing).max(plan.started + timing.lease_wait()),
                )
            }
        }
    };
    if facts.now < allowed_at {
        return Decision::Wait {
            reason,
            until: allowed_at,
        };
    }
    Decision::Elect(election(facts, reason, plan.target, plan.unclean, timing))
}

fn election(
    facts: &Facts,
    reason: Reason,
    winner: u64,
    unclean: bool,
    timing: &Timing,
) -> Election {
    let group = facts.group;
    let in_sync_set: BTreeSet<u64> = if unclean {
        BTreeSet::from([winner])
    } else {
        group
            .in_sync_set
            .iter()
            .copied()
            .filter(|id| Some(*id) != group.master_id)
            .filter(|id| is_candidate_alive(group, facts.seen, *id, facts.now, timing))
            .chain([winner])
            .collect()
    };
    let winner_seen = facts.seen.get(&winner);
    let max_offset = winner_seen.map(|s| s.max_offset).unwrap_or(0);
    let old_master_offset = group
        .master_id
        .filter(|id| *id != winner)
        .and_then(|id| facts.seen.get(&id))
        .map(|s| s.max_offset)
        .unwrap_or(0);
    Election {
        reason,
        master_id: winner,
        in_sync_set,
        unclean,
        log_epoch: winner_seen.map(|s| s.log_epoch).unwrap_or(0),
        max_offset,
        possibly_lost_bytes: old_master_offset.saturating_sub(max_offset),
    }
}

/// What the service and the election loop share on the leader.
#[derive(Clone)]
pub struct ElectionContext {
    pub leases: Arc<Leases>,
    pub timing: Timing,
    /// Wakes the loop at once: a master resigned, a switchover started.
    pub wake: Arc<Notify>,
}

impl ElectionContext {
    pub fn new(timing: Timing) -> ElectionContext {
        ElectionContext {
            leases: Arc::new(Leases::new()),
            timing,
            wake: Arc::new(Notify::new()),
        }
    }
}

/// The leader's election task. Runs on every controller and acts only while it leads.
pub struct ElectionLoop {
    raft: Raft,
    state: SharedState,
    liveness: Arc<Liveness>,
    context: ElectionContext,
    /// Per group, the situation last warned about, so that a group without candidates is
    /// reported once per situation and not every tick.
    warned: HashMap<String, (u64, u64, Reason)>,
}

impl ElectionLoop {
    pub fn new(
        raft: Raft,
        state: SharedState,
        liveness: Arc<Liveness>,
        context: ElectionContext,
    ) -> ElectionLoop {
        ElectionLoop {
            raft,
            state,
            liveness,
            context,
            warned: HashMap::new(),
        }
    }

    /// Reviews every controlled group each tick and whenever the state, liveness, or a
    /// switchover changed, until the task is aborted.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(ELECTION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state_changes = self.state.changes();
        let mut liveness_changes = self.liveness.changes();
        let wake = self.context.wake.clone();
        // The earliest instant a group waits for (a lease running out): the loop looks again
        // right then, not up to a tick later.
        let mut next_wait: Option<Instant> = None;
        loop {
            let wait_over = async {
                match next_wait {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
                () = wait_over => {}
                changed = state_changes.changed() => if changed.is_err() { return },
                changed = liveness_changes.changed() => if changed.is_err() { return },
            }
            let leader_since = match self.liveness.leader_since() {
                Some(since) if self.raft.metrics().borrow().state == ServerState::Leader => since,
                _ => {
                    self.warned.clear();
                    continue;
                }
            };
            let groups: Vec<(String, BrokerGroup)> = self.state.read(|data| {
                data.state
                    .groups
                    .iter()
                    .filter(|(_, group)| group.is_controlled())
                    .map(|(name, group)| (name.clone(), group.clone()))
                    .collect()
            });
            next_wait = None;
            for (name, group) in groups {
                if let Some(until) = self.review(&name, &group, leader_since).await {
                    next_wait = Some(next_wait.map_or(until, |next| next.min(until)));
                }
            }
        }
    }

    /// Decides for one group and acts; when the decision is to wait, until when.
    async fn review(
        &mut self,
        name: &str,
        group: &BrokerGroup,
        leader_since: Instant,
    ) -> Option<Instant> {
        let leases = &self.context.leases;
        let seen = self.liveness.seen_group(name);
        let last_lease_granted_at = leases.last_granted_at(name);
        let switchover = leases.switchover(name);
        let decision = decide(
            &Facts {
                group,
                seen: &seen,
                now: Instant::now(),
                leader_since,
                last_lease_granted_at,
                switchover: switchover.as_ref().map(|(_, plan)| plan),
            },
            &self.context.timing,
        );
        let switchover_id = switchover.map(|(id, _)| id);
        match decision {
            Decision::Keep => {
                self.warned.remove(name);
            }
            Decision::Wait { until, .. } => return Some(until),
            Decision::NoCandidate { reason } => self.warn_no_candidate(name, group, &seen, reason),
            Decision::AbandonSwitchover { reason } => {
                tracing::warn!(group = %name, reason = %reason, "planned switchover abandoned");
                if let Some(id) = switchover_id {
                    leases.end_switchover(name, id, SwitchoverEnd::Abandoned { reason });
                }
            }
            Decision::StartSwitchover { target, problem } => {
                let plan = SwitchoverPlan {
                    target,
                    unclean: false,
                    started: Instant::now(),
                    master_epoch: group.master_epoch,
                };
                // Nobody waits on the outcome: the group's view tells the brokers.
                if leases.start_switchover(name, plan).is_ok() {
                    tracing::warn!(
                        group = %name,
                        master_id = ?group.master_id,
                        master_epoch = group.master_epoch,
                        target,
                        problem = %problem,
                        "the master's store has a fault: moving mastership to a sounder in-sync \
                         broker (planned switchover)"
                    );
                    self.context.wake.notify_one();
                }
            }
            Decision::Elect(election) => {
                self.elect(name, group, election, last_lease_granted_at, switchover_id)
                    .await
            }
        }
        None
    }

    fn warn_no_candidate(
        &mut self,
        name: &str,
        group: &BrokerGroup,
        seen: &BTreeMap<u64, Seen>,
        reason: Reason,
    ) {
        let situation = (group.master_epoch, group.in_sync_set_epoch, reason);
        if self.warned.get(name) == Some(&situation) {
            return;
        }
        self.warned.insert(name.to_owned(), situation);
        let now = Instant::now();
        let mut outside: Vec<u64> = group
            .brokers
            .keys()
            .copied()
            .filter(|id| !group.in_sync_set.contains(id))
            .filter(|id| is_candidate_alive(group, seen, *id, now, &self.context.timing))
            .collect();
        rank(group, seen, &mut outside);
        let outside: Vec<String> = outside
            .iter()
            .map(|id| {
                let end = seen.get(id).map(|s| s.max_offset).unwrap_or(0);
                format!("{id} (log end {end})")
            })
            .collect();
        let master_end = group
            .master_id
            .and_then(|id| seen.get(&id))
            .map(|s| s.max_offset);
        tracing::warn!(
            group = %name,
            reason = reason.as_str(),
            master_id = ?group.master_id,
            master_epoch = group.master_epoch,
            in_sync_set = ?group.in_sync_set,
            alive_outside_in_sync_set = ?outside,
            "no member of the in-sync set is alive: no master can be elected without risk; \
             `cluster-cli cluster elect {name} --broker-id N --unclean --yes` would elect broker \
             N from outside the set, losing the acknowledged messages it lacks (up to the old \
             master's last log end {} minus N's)",
            master_end.map(|end| end.to_string()).unwrap_or_else(|| "(unknown)".to_owned()),
        );
    }

    async fn elect(
        &mut self,
        name: &str,
        group: &BrokerGroup,
        election: Election,
        last_lease_granted_at: Option<Instant>,
        switchover_id: Option<u64>,
    ) {
        let leases = &self.context.leases;
        // No lease at the old epoch from here on; refused if one was granted since the facts
        // were gathered: decide again at the next pass.
        let Ok(previous_fence) = leases.fence(name, group.master_epoch, last_lease_granted_at)
        else {
            return;
        };
        let command = Command::ElectMaster {
            group: name.to_owned(),
            master_epoch: group.master_epoch,
            master_id: election.master_id,
            in_sync_set: election.in_sync_set.clone(),
            unclean: election.unclean,
        };
        let end = match self.raft.client_write(command).await {
            Ok(response) => match response.data {
                CommandResult::Done { .. } => {
                    tracing::info!(
                        group = %name,
                        reason = election.reason.as_str(),
                        master_id = election.master_id,
                        old_master_id = ?group.master_id,
                        master_epoch = group.master_epoch + 1,
                        log_epoch = election.log_epoch,
                        max_offset = election.max_offset,
                        in_sync_set = ?election.in_sync_set,
                        unclean = election.unclean,
                        // Only an unclean election can lose what was acknowledged; for a clean
                        // one the difference of two reported log ends (one of them maybe stale)
                        // is what was never acknowledged.
                        possibly_lost_bytes =
                            if election.unclean { election.possibly_lost_bytes } else { 0 },
                        "master elected"
                    );
                    super::metrics::count_election(name, election.kind());
                    self.warned.remove(name);
                    SwitchoverEnd::Elected {
                        master_epoch: group.master_epoch + 1,
                        // A clean election keeps everything acknowledged: a difference in the
                        // reported log ends is what was never acknowledged.
                        possibly_lost_bytes: if election.unclean {
                            election.possibly_lost_bytes
                        } else {
                            0
                        },
                    }
                }
                CommandResult::Refused(err) => {
                    // The group moved on (or the decision was made on a state not yet current):
                    // the master keeps its role, so it must get leases again.
                    leases.unfence(name, previous_fence);
                    tracing::info!(group = %name, master_id = election.master_id, error = %err, "election refused; deciding again");
                    SwitchoverEnd::Abandoned {
                        reason: format!("the election was refused: {err}"),
                    }
                }
            },
            Err(err) => {
                // Leadership moved or Raft is stopping: the entry may still commit, so the fence
                // stays (the next leader waits out every lease anyway).
                let reason = match err {
                    RaftError::APIError(err) => err.to_string(),
                    RaftError::Fatal(err) => err.to_string(),
                };
                tracing::warn!(group = %name, master_id = election.master_id, error = %reason, "election not written");
                SwitchoverEnd::Abandoned {
                    reason: format!("the election could not be written: {reason}"),
                }
            }
        };
        if let Some(id) = switchover_id {
            leases.end_switchover(name, id, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::StoreReport;
    use crate::state::ReplicationMode;

    const TIMING: Timing = Timing {
        broker_lease: Duration::from_millis(1_000),
        lease_margin: Duration::from_millis(200),
    };
    const WAIT: Duration = Duration::from_millis(1_200);
    const MS: Duration = Duration::from_millis(1);

    /// Controlled brokers 0, 1, 2 (incarnations 100, 101, 102); master 0 at master epoch 3,
    /// elected with incarnation 100; everybody in sync.
    fn group() -> BrokerGroup {
        crate::fixtures::three_brokers(ReplicationMode::Unknown)
    }

    fn heard(id: u64, at: Instant, log_epoch: u64, max_offset: u64) -> (u64, Seen) {
        let (id, seen) = crate::fixtures::heard(id, at);
        (
            id,
            Seen {
                log_epoch,
                max_offset,
                ..seen
            },
        )
    }

    /// Facts with the leader in office long enough that its own start holds nothing back.
    fn facts<'a>(
        group: &'a BrokerGroup,
        seen: &'a BTreeMap<u64, Seen>,
        t0: Instant,
        now: Instant,
    ) -> Facts<'a> {
        Facts {
            group,
            seen,
            now,
            leader_since: t0.checked_sub(Duration::from_secs(60)).unwrap_or(t0),
            last_lease_granted_at: None,
            switchover: None,
        }
    }

    fn elected(decision: Decision) -> Election {
        match decision {
            Decision::Elect(election) => election,
            other => panic!("expected an election, got {other:?}"),
        }
    }

    #[test]
    fn candidates_rank_by_log_epoch_then_log_end_then_priority_then_id() {
        let mut group = group();
        let t0 = Instant::now();
        group.brokers.get_mut(&2).unwrap().election_priority = 0;
        group.brokers.get_mut(&1).unwrap().election_priority = 5;
        let seen = BTreeMap::from([
            heard(0, t0, 3, 900),
            heard(1, t0, 3, 500),
            heard(2, t0, 3, 500),
        ]);
        let mut ids = vec![1, 2, 0];
        rank(&group, &seen, &mut ids);
        assert_eq!(ids, vec![0, 2, 1], "log end, then priority");
        // A newer log epoch wins over a longer log.
        let seen = BTreeMap::from([heard(0, t0, 2, 900), heard(1, t0, 3, 10)]);
        let mut ids = vec![0, 1];
        rank(&group, &seen, &mut ids);
        assert_eq!(ids, vec![1, 0]);
        // All equal: the lowest id.
        let mut ids = vec![2, 1];
        group.brokers.get_mut(&1).unwrap().election_priority = 0;
        rank(&group, &BTreeMap::new(), &mut ids);
        assert_eq!(ids, vec![1, 2]);
    }

    /// `heard` with a store report.
    fn heard_with(id: u64, at: Instant, max_offset: u64, store: StoreReport) -> (u64, Seen) {
        let (id, mut seen) = heard(id, at, 3, max_offset);
        seen.store = store;
        (id, seen)
    }

    fn sound() -> StoreReport {
        StoreReport {
            verified: true,
            ..StoreReport::default()
        }
    }

    fn corrupt() -> StoreReport {
        StoreReport {
            corrupt_offset: Some(4096),
            problem: "corrupt record".into(),
            ..sound()
        }
    }

    #[test]
    fn a_corrupt_replica_is_never_elected_while_a_sound_one_is_alive() {
        let group = group();
        let t0 = Instant::now();
        let later = t0 + WAIT;
        // The master (0) is lost; 1 holds more but has a corrupt record; 2 is sound.
        let seen = BTreeMap::from([
            heard(0, t0, 3, 900),
            heard_with(1, later, 900, corrupt()),
            heard_with(2, later, 800, sound()),
        ]);
        let election = elected(decide(&facts(&group, &seen, t0, later), &TIMING));
        assert_eq!(election.master_id, 2, "the sound one, though shorter");
        // With no sound one alive, the corrupt one is better than none.
        let seen = BTreeMap::from([heard(0, t0, 3, 900), heard_with(1, later, 900, corrupt())]);
        let election = elected(decide(&facts(&group, &seen, t0, later), &TIMING));
        assert_eq!(election.master_id, 1);
        // A store that failed to write is never elected.
        let failed = StoreReport {
            write_failed: true,
            ..sound()
        };
        let seen = BTreeMap::from([heard(0, t0, 3, 900), heard_with(1, later, 900, failed)]);
        assert_eq!(
            decide(&facts(&group, &seen, t0, later), &TIMING),
            Decision::NoCandidate {
                reason: Reason::MasterLost
            }
        );
        // A verified store ranks above an unverified one of the same health.
        let seen = BTreeMap::from([
            heard(0, t0, 3, 900),
            heard_with(1, later, 900, StoreReport::default()),
            heard_with(2, later, 800, sound()),
        ]);
        let election = elected(decide(&facts(&group, &seen, t0, later), &TIMING));
        assert_eq!(election.master_id, 2);
    }

    #[test]
    fn a_master_with_an_unfit_store_is_moved_to_a_sounder_in_sync_broker() {
        let group = group();
        let t0 = Instant::now();
        let full = StoreReport {
            disk_full: true,
            problem: "disk above the high-water mark".into(),
            ..sound()
        };
        let seen = BTreeMap::from([
            heard_with(0, t0, 900, full.clone()),
            heard_with(1, t0, 900, sound()),
            heard_with(2, t0, 800, corrupt()),
        ]);
        assert_eq!(
            decide(&facts(&group, &seen, t0, t0), &TIMING),
            Decision::StartSwitchover {
                target: 1,
                problem: "disk above the high-water mark".into()
            }
        );
        // No sounder broker alive: the master stays (refusing client sends, but serving).
        let seen = BTreeMap::from([
            heard_with(0, t0, 900, full),
            heard_with(2, t0, 800, corrupt()),
        ]);
        assert_eq!(
            decide(&facts(&group, &seen, t0, t0), &TIMING),
            Decision::Keep
        );
        // An unverified master is fit: nobody is moved for a scrubber still running.
        let seen = BTreeMap::from([
            heard_with(0, t0, 900, StoreReport::default()),
            heard_with(1, t0, 900, sound()),
        ]);
        assert_eq!(
            decide(&facts(&group, &seen, t0, t0), &TIMING),
            Decision::Keep
        );
        // A fault reported by an earlier process of the master says nothing of this one.
        let mut seen = BTreeMap::from([
            heard_with(0, t0, 900, corrupt()),
            heard_with(1, t0, 900, sound()),
        ]);
        seen.get_mut(&0).unwrap().incarnation = 99;
        assert_ne!(
            std::mem::discriminant(&decide(&facts(&group, &seen, t0, t0), &TIMING)),
            std::mem::discriminant(&Decision::StartSwitchover {
                target: 1,
                problem: String::new()
            })
        );
    }

    #[test]
    fn a_group_that_never_had_a_master_elects_at_once_among_all_alive_brokers() {
        let mut group = group();
        group.master_id = None;
        group.master_epoch = 0;
        group.in_sync_set.clear();
        group.in_sync_set_epoch = 0;
        let t0 = Instant::now();
        let seen = BTreeMap::from([heard(1, t0, 0, 0), heard(2, t0, 0, 0)]);
        // This node became leader this very instant: nothing to wait for in a new group.
        let facts = Facts {
            leader_since: t0,
            ..facts(&group, &seen, t0, t0)
        };
        let election = elected(decide(&facts, &TIMING));
        assert_eq!(election.reason, Reason::FirstMaster);
        assert_eq!(election.master_id, 1, "0 was never heard");
        assert_eq!(election.in_sync_set, BTreeSet::from([1]));
        assert!(!election.unclean);
    }

    #[test]
    fn a_silent_master_is_replaced_only_after_the_lease_wait() {
        let group = group();
        let t0 = Instant::now();
        let seen = BTreeMap::from([
            heard(0, t0, 3, 900),
            heard(1, t0 + WAIT, 3, 700),
            heard(2, t0 + WAIT, 3, 800),
        ]);
        let early = facts(&group, &seen, t0, t0 + WAIT - MS);
        assert_eq!(decide(&early, &TIMING), Decision::Keep);
        let election = elected(decide(&facts(&group, &seen, t0, t0 + WAIT), &TIMING));
        assert_eq!(election.reason, Reason::MasterLost);
        assert_eq!(election.master_id, 2, "the longest log in sync");
        assert_eq!(
            election.in_sync_set,
            BTreeSet::from([1, 2]),
            "without the lost master"
        );
        assert_eq!((election.log_epoch, election.max_offset), (3, 800));
        assert_eq!(election.possibly_lost_bytes, 100);
    }

    #[test]
    fn a_lease_granted_after_the_last_heartbeat_seen_holds_the_election_back() {
        let group = group();
        let t0 = Instant::now();
        let seen = BTreeMap::from([heard(0, t0, 3, 900), heard(1, t0 + WAIT, 3, 900)]);
        let granted = t0 + Duration::from_millis(100);
        let facts = Facts {
            last_lease_granted_at: Some(granted),
            ..facts(&group, &seen, t0, t0 + WAIT)
        };
        assert_eq!(
            decide(&facts, &TIMING),
            Decision::Wait {
                reason: Reason::MasterLost,
                until: granted + WAIT
            }
        );
    }

    #[test]
    fn a_new_leader_waits_out_leases_its_predecessor_may_have_granted() {
        let group = group();
        let t0 = Instant::now();
        // The master has not been heard since this node became leader at t0.
        let seen = BTreeMap::from([heard(1, t0 + WAIT, 3, 900)]);
        let at = |now| Facts {
            leader_since: t0,
            ..facts(&group, &seen, t0, now)
        };
        assert_eq!(decide(&at(t0 + WAIT - MS), &TIMING), Decision::Keep);
        let election = elected(decide(&at(t0 + WAIT), &TIMING));
        assert_eq!(
            (election.reason, election.master_id),
            (Reason::MasterLost, 1)
        );
    }

    #[test]
    fn a_restarted_master_is_replaced_at_once_and_may_win_again() {
        let mut group = group();
        group.brokers.get_mut(&0).unwrap().incarnation = 999;
        let t0 = Instant::now();
        let mut restarted = heard(0, t0, 3, 900);
        restarted.1.incarnation = 999;
        let seen = BTreeMap::from([restarted, heard(1, t0, 3, 800), heard(2, t0, 3, 800)]);
        // Just became leader and just granted a lease: neither holds back this election, since
        // the process that held the lease is gone.
        let facts = Facts {
            leader_since: t0,
            last_lease_granted_at: Some(t0),
            ..facts(&group, &seen, t0, t0)
        };
        let election = elected(decide(&facts, &TIMING));
        assert_eq!(election.reason, Reason::MasterRestarted);
        assert_eq!(election.master_id, 0, "it still holds the longest log");
        assert_eq!(election.in_sync_set, BTreeSet::from([0, 1, 2]));

        // Not heard from in its new process yet: the others are the candidates.
        let seen_old: BTreeMap<u64, Seen> =
            BTreeMap::from([heard(0, t0, 3, 900), heard(1, t0, 3, 800)]);
        let facts = Facts {
            leader_since: t0,
            ..facts_at(&group, &seen_old, t0)
        };
        let election = elected(decide(&facts, &TIMING));
        assert_eq!(election.master_id, 1);
        assert_eq!(election.in_sync_set, BTreeSet::from([1]));
    }

    fn facts_at<'a>(
        group: &'a BrokerGroup,
        seen: &'a BTreeMap<u64, Seen>,
        now: Instant,
    ) -> Facts<'a> {
        facts(group, seen, now, now)
    }

    #[test]
    fn brokers_outside_the_in_sync_set_silent_or_of_an_old_incarnation_are_not_candidates() {
        let mut group = group();
        group.in_sync_set = BTreeSet::from([0, 1]);
        let t0 = Instant::now();
        let now = t0 + WAIT;
        // 1 (in sync) silent; 2 alive but not in sync.
        let seen_map = BTreeMap::from([
            heard(0, t0, 3, 900),
            heard(1, t0, 3, 900),
            heard(2, now, 3, 900),
        ]);
        assert_eq!(
            decide(&facts(&group, &seen_map, t0, now), &TIMING),
            Decision::NoCandidate {
                reason: Reason::MasterLost
            }
        );
        // 1 heard, but from a process other than the registered one.
        let mut old = heard(1, now, 3, 900);
        old.1.incarnation = 7;
        let seen_map = BTreeMap::from([heard(0, t0, 3, 900), old]);
        assert_eq!(
            decide(&facts(&group, &seen_map, t0, now), &TIMING),
            Decision::NoCandidate {
                reason: Reason::MasterLost
            }
        );
    }

    fn plan(target: u64, unclean: bool, started: Instant) -> SwitchoverPlan {
        SwitchoverPlan {
            target,
            unclean,
            started,
            master_epoch: 3,
        }
    }

    #[test]
    fn a_switchover_elects_its_target_as_soon_as_the_master_resigned() {
        let group = group();
        let t0 = Instant::now();
        let started = t0 + 10 * MS;
        let plan = plan(1, false, started);
        let with_master = |master: (u64, Seen)| {
            BTreeMap::from([master, heard(1, t0, 3, 900), heard(2, t0, 3, 900)])
        };
        let resigned = |at: Instant, master_epoch: u64| {
            let mut m = heard(0, at, 3, 900);
            m.1.resigned = true;
            m.1.master_epoch = master_epoch;
            m
        };
        let now = started + 20 * MS;
        let decide_with = |seen: &BTreeMap<u64, Seen>| {
            decide(
                &Facts {
                    switchover: Some(&plan),
                    last_lease_granted_at: Some(t0),
                    ..facts(&group, seen, t0, now)
                },
                &TIMING,
            )
        };
        // Confirmed at the current epoch after the start: at once.
        let election = elected(decide_with(&with_master(resigned(started + MS, 3))));
        assert_eq!(election.reason, Reason::SwitchoverResigned);
        assert_eq!(election.master_id, 1);
        assert_eq!(election.in_sync_set, BTreeSet::from([1, 2]));
        // Not confirmed, confirmed before the start (an older switchover), or at another epoch:
        // wait for the lease to run out.
        let until = started + WAIT;
        for master in [
            heard(0, started + MS, 3, 900),
            resigned(t0, 3),
            resigned(started + MS, 2),
        ] {
            assert_eq!(
                decide_with(&with_master(master)),
                Decision::Wait {
                    reason: Reason::SwitchoverLeaseExpired,
                    until
                }
            );
        }
        let late = decide(
            &Facts {
                switchover: Some(&plan),
                last_lease_granted_at: Some(t0),
                ..facts(&group, &with_master(heard(0, until, 3, 900)), t0, until)
            },
            &TIMING,
        );
        // The target must still be heard: here it was last heard at t0, longer ago than the wait.
        assert!(
            matches!(late, Decision::AbandonSwitchover { .. }),
            "{late:?}"
        );
        let alive = BTreeMap::from([heard(0, until, 3, 900), heard(1, until, 3, 900)]);
        let election = elected(decide(
            &Facts {
                switchover: Some(&plan),
                last_lease_granted_at: Some(t0),
                ..facts(&group, &alive, t0, until)
            },
            &TIMING,
        ));
        assert_eq!(
            (election.reason, election.master_id),
            (Reason::SwitchoverLeaseExpired, 1)
        );
    }

    #[test]
    fn an_unclean_switchover_elects_outside_the_set_alone_and_counts_what_may_be_lost() {
        let mut group = group();
        group.in_sync_set = BTreeSet::from([0, 1]);
        let t0 = Instant::now();
        let mut master = heard(0, t0, 3, 900);
        master.1.resigned = true;
        let seen = BTreeMap::from([master, heard(1, t0, 3, 900), heard(2, t0, 3, 650)]);
        let clean = plan(2, false, t0);
        let decision = decide(
            &Facts {
                switchover: Some(&clean),
                ..facts_at(&group, &seen, t0)
            },
            &TIMING,
        );
        assert!(
            matches!(&decision, Decision::AbandonSwitchover { reason } if reason.contains("left the in-sync set")),
            "{decision:?}"
        );
        let unclean = plan(2, true, t0);
        let election = elected(decide(
            &Facts {
                switchover: Some(&unclean),
                ..facts_at(&group, &seen, t0)
            },
            &TIMING,
        ));
        assert!(election.unclean);
        assert_eq!(election.in_sync_set, BTreeSet::from([2]));
        assert_eq!(election.possibly_lost_bytes, 250);
    }

    #[test]
    fn a_switchover_is_abandoned_once_another_election_moved_the_epoch() {
        let mut group = group();
        group.master_epoch = 4;
        group.master_id = Some(2);
        let t0 = Instant::now();
        let seen = BTreeMap::from([heard(1, t0, 3, 900), heard(2, t0, 3, 900)]);
        let plan = plan(1, false, t0);
        let decision = decide(
            &Facts {
                switchover: Some(&plan),
                ..facts_at(&group, &seen, t0)
            },
            &TIMING,
        );
        assert!(
            matches!(&decision, Decision::AbandonSwitchover { reason } if reason.contains("from 3 to 4")),
            "{decision:?}"
        );
    }

    #[test]
    fn elections_are_counted_by_kind_with_unclean_first() {
        let election = |reason, unclean| Election {
            reason,
            master_id: 1,
            in_sync_set: BTreeSet::from([1]),
            unclean,
            log_epoch: 0,
            max_offset: 0,
            possibly_lost_bytes: 0,
        };
        assert_eq!(election(Reason::FirstMaster, false).kind(), "first");
        for reason in [
            Reason::NoMaster,
            Reason::MasterLost,
            Reason::MasterRestarted,
        ] {
            assert_eq!(election(reason, false).kind(), "failover");
        }
        for reason in [Reason::SwitchoverResigned, Reason::SwitchoverLeaseExpired] {
            assert_eq!(election(reason, false).kind(), "switchover");
            assert_eq!(election(reason, true).kind(), "unclean");
        }
    }

    #[test]
    fn the_best_switchover_target_is_an_alive_in_sync_member_other_than_the_master() {
        let mut group = group();
        group.in_sync_set = BTreeSet::from([0, 1]);
        let t0 = Instant::now();
        let seen_map = BTreeMap::from([
            heard(0, t0, 3, 999),
            heard(1, t0, 3, 10),
            heard(2, t0, 3, 900),
        ]);
        assert_eq!(
            best_switchover_target(&group, &seen_map, t0, &TIMING),
            Some(1)
        );
        assert_eq!(
            best_switchover_target(&group, &seen_map, t0 + WAIT, &TIMING),
            None,
            "nobody heard within the wait"
        );
    }
}
