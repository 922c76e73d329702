//! The master's view of its slaves: what each acknowledged, whether it keeps up, the in-sync
//! set, the confirm offset, and the `SYNC_MASTER` wait.
//!
//! - **Caught up.** A slave is caught up at time `t` when it acknowledges everything the master
//!   had written at `t`. The shipper leaves a mark (time, offset) each time it sends up to the
//!   master's end; an acknowledgement covering a mark makes the slave caught up as of that mark's
//!   time. Under continuous load a slave that keeps up covers marks all the time, though it never
//!   equals the moving end.
//! - **The in-sync set** is the controller's (RocketMQ's SyncStateSet). A member that has not
//!   been caught up for `in_sync_lag_max` leaves it, and so does one whose stream has been gone
//!   for `in_sync_gone_max`, one whose store has a fault, and one that says it is stopping (a
//!   planned stop: it leaves before it goes, so no send waits for it); a connected slave that
//!   acknowledged the confirm offset joins it. The master only proposes: a change takes effect
//!   once the controller accepts it, checked against the master epoch and the set's epoch.
//!   While one is in flight, the master waits for the union of the old and the new set. One
//!   change at a time.
//! - **The confirm offset** is the lowest acknowledged offset over the set (the master's own
//!   local durability bounds it in the store): consumers never see what a failover to any
//!   member could take back. Acknowledged means flushed when the group runs `SYNC_FLUSH`,
//!   written otherwise (docs/DURABILITY.md).
//! - **`SYNC_MASTER`.** An append is answered `SEND_OK` once every member of the set (and of a
//!   change in flight) acknowledged it; `FLUSH_SLAVE_TIMEOUT` after `slave_timeout`;
//!   `SLAVE_NOT_AVAILABLE` at once, or as soon as it becomes so while waiting, when the set is
//!   smaller than `min_in_sync_replicas`.
//! - **Deposed.** When the controller elects another master, the broker deposes its tracker:
//!   waits end with [`ReplicaWait::Deposed`] (never `SEND_OK`), shippers close their streams, and
//!   no change is proposed any more. A tracker is never revived; a re-elected master gets a new
//!   one.
//!
//! Why one file of about 615 lines: acknowledgements, the set's reviews, the confirm offset and
//! the `SYNC_MASTER` waits all read and write one `State` under one lock; split, each part would
//! reach into the others' fields. Its tests run against real stores in `broker/tests/shipping.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::authority::{AcceptedSet, InSyncAuthority, ProposalError, ProposedSet};
use super::log::ShippedLog;

/// Marks kept per slave; beyond this the oldest go (the slave is that far behind anyway).
const MARKS_MAX: usize = 256;
/// How often the set is reviewed for members to drop or add.
pub const REVIEW_INTERVAL: Duration = Duration::from_millis(100);

/// How the master replicates.
#[derive(Clone, Debug)]
pub struct InSyncConfig {
    /// This master's broker id.
    pub master_id: u64,
    /// `SYNC_MASTER`: appends wait for the set. `ASYNC_MASTER`: they do not.
    pub sync_master: bool,
    /// The group runs `SYNC_FLUSH`: a slave's acknowledgement counts once flushed.
    pub require_flushed: bool,
    /// The smallest set, the master included, that `SYNC_MASTER` acknowledges with.
    pub min_in_sync_replicas: usize,
    /// Longest `SYNC_MASTER` wait before `FLUSH_SLAVE_TIMEOUT`.
    pub slave_timeout: Duration,
    /// How long a member may go without being caught up before it leaves the set.
    pub lag_max: Duration,
    /// How long a member whose stream is gone stays in the set.
    pub gone_max: Duration,
}

/// How a `SYNC_MASTER` wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaWait {
    /// Every member of the set holds the append.
    Replicated,
    /// Some member did not acknowledge within `slave_timeout`.
    Timeout,
    /// The set is smaller than `min_in_sync_replicas`.
    NotEnoughReplicas,
    /// This broker is no longer the master this tracker served.
    Deposed,
}

/// Why an acknowledgement was refused (the stream carrying it is closed).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("acknowledged offset {acked} is beyond the master's write offset {write_offset}")]
    BeyondEnd { acked: u64, write_offset: u64 },
    #[error("flushed offset {flushed} is beyond the written offset {written}")]
    FlushedBeyondWritten { flushed: u64, written: u64 },
    #[error("acknowledged offset went back from {previous} to {acked}")]
    WentBack { previous: u64, acked: u64 },
    #[error("a newer replication stream of this slave replaced this one")]
    Superseded,
}

/// One slave, as the master knows it.
#[derive(Clone, Debug)]
struct Replica {
    addr: String,
    /// Raised by each new stream; an older stream's acknowledgements are refused.
    session: u64,
    connected: bool,
    written: u64,
    flushed: u64,
    caught_up_at: Instant,
    marks: VecDeque<(Instant, u64)>,
    /// Its last acknowledgement said its store has a fault: out of the set until it says not.
    store_fault: bool,
    /// Its last acknowledgement said it is stopping: out of the set, and never back in this
    /// session.
    leaving: bool,
    /// When its stream ended, while it has none: out of the set after `gone_max`.
    gone_since: Option<Instant>,
}

#[derive(Debug)]
struct State {
    master_epoch: u64,
    set: BTreeSet<u64>,
    set_epoch: u64,
    pending: Option<BTreeSet<u64>>,
    replicas: BTreeMap<u64, Replica>,
    sessions: u64,
    /// When this master started tracking: the base of "caught up" for members not heard from.
    started_at: Instant,
}

/// What ha status shows of one slave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub broker_id: u64,
    pub addr: String,
    pub connected: bool,
    pub written_offset: u64,
    pub flushed_offset: u64,
    pub lag_bytes: u64,
    pub lag: Duration,
    pub in_sync: bool,
}

/// What ha status shows of the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InSyncView {
    pub master_epoch: u64,
    pub set: BTreeSet<u64>,
    pub set_epoch: u64,
    pub pending: Option<BTreeSet<u64>>,
    pub replicas: Vec<ReplicaView>,
}

/// The tracker. Shared by the shippers (one per slave stream), the send path and the reviewer.
pub struct InSync<L> {
    config: InSyncConfig,
    log: Arc<L>,
    state: Mutex<State>,
    /// Bumped on every acknowledgement and set change: waiters and shippers watch it.
    changed: watch::Sender<u64>,
    deposed: AtomicBool,
}

impl<L: ShippedLog> InSync<L> {
    /// A master at `master_epoch` whose controller-held set is `set` at `set_epoch`.
    pub fn new(
        config: InSyncConfig,
        log: Arc<L>,
        master_epoch: u64,
        set: BTreeSet<u64>,
        set_epoch: u64,
    ) -> InSync<L> {
        let tracker = InSync {
            config,
            log,
            state: Mutex::new(State {
                master_epoch,
                set,
                set_epoch,
                pending: None,
                replicas: BTreeMap::new(),
                sessions: 0,
                started_at: Instant::now(),
            }),
            changed: watch::Sender::new(0),
            deposed: AtomicBool::new(false),
        };
        tracker.update_confirm(&tracker.lock());
        tracker
    }

    pub fn config(&self) -> &InSyncConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("in-sync lock poisoned")
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes on every acknowledgement and set change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn master_epoch(&self) -> u64 {
        self.lock().master_epoch
    }

    /// This broker is no longer the master this tracker served: every wait ends
    /// [`ReplicaWait::Deposed`], shippers end their streams, the reviewer stops.
    pub fn depose(&self) {
        self.deposed.store(true, Ordering::Release);
        self.bump();
    }

    pub fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::Acquire)
    }

    /// Waits until every member of the set (and of a change in flight) acknowledged
    /// `end_offset`, whatever the replication mode, for at most `patience`: a resigning master
    /// lets its successor catch up before it says it resigned. True if they did.
    pub async fn wait_members_hold(&self, end_offset: u64, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let mut changes = self.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let state = self.lock();
                let held = self.required(&state).all(|id| {
                    state
                        .replicas
                        .get(&id)
                        .is_some_and(|r| self.acked(r) >= end_offset)
                });
                if held {
                    return true;
                }
            }
            if self.is_deposed() {
                return false;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The offset that counts for a slave under this group's flush mode.
    fn acked(&self, replica: &Replica) -> u64 {
        if self.config.require_flushed {
            replica.flushed
        } else {
            replica.written
        }
    }

    /// Members the master waits for now: the set and a change in flight, the master aside (a
    /// member of both is named twice; every caller asks "all" or "lowest", which a repeat does
    /// not change). Without allocating: the send path asks on every wake-up.
    fn required<'a>(&self, state: &'a State) -> impl Iterator<Item = u64> + 'a {
        let master_id = self.config.master_id;
        state
            .set
            .iter()
            .chain(state.pending.iter().flatten())
            .copied()
            .filter(move |id| *id != master_id)
    }

    /// Lets consumers read what every required member holds.
    fn update_confirm(&self, state: &State) {
        let target = self
            .required(state)
            .map(|id| state.replicas.get(&id).map_or(0, |r| self.acked(r)))
            .min()
            .unwrap_or(u64::MAX);
        self.log.allow_confirm_offset(target);
    }

    /// A slave opened a stream and its log now ends at `start_offset`. Answers the session
    /// its acknowledgements must carry.
    pub fn connect(&self, broker_id: u64, addr: &str, start_offset: u64) -> u64 {
        let mut state = self.lock();
        state.sessions += 1;
        let session = state.sessions;
        let base = state.started_at;
        let replica = state.replicas.entry(broker_id).or_insert_with(|| Replica {
            addr: addr.to_owned(),
            session,
            connected: true,
            written: start_offset,
            flushed: start_offset,
            caught_up_at: base,
            marks: VecDeque::new(),
            store_fault: false,
            leaving: false,
            gone_since: None,
        });
        replica.addr = addr.to_owned();
        replica.session = session;
        replica.connected = true;
        // A new stream is a new start: a slave that stopped and came back may join again.
        replica.leaving = false;
        replica.gone_since = None;
        replica.written = start_offset;
        // What it flushed before a truncation to `start_offset` is still flushed below it.
        replica.flushed = replica.flushed.min(start_offset);
        replica.marks.clear();
        self.update_confirm(&state);
        drop(state);
        self.bump();
        session
    }

    /// The stream of `session` ended.
    pub fn disconnect(&self, broker_id: u64, session: u64) {
        let mut state = self.lock();
        if let Some(replica) = state.replicas.get_mut(&broker_id) {
            if replica.session == session {
                replica.connected = false;
                replica.gone_since = Some(Instant::now());
                replica.marks.clear();
            }
        }
        drop(state);
        self.bump();
    }

    /// Whether `session` is still the slave's current stream.
    pub fn is_current(&self, broker_id: u64, session: u64) -> bool {
        self.lock()
            .replicas
            .get(&broker_id)
            .is_some_and(|r| r.session == session && r.connected)
    }

    /// What the slave acknowledged as written (the shipper's flow control).
    pub fn written(&self, broker_id: u64) -> u64 {
        self.lock()
            .replicas
            .get(&broker_id)
            .map_or(0, |r| r.written)
    }

    /// The shipper sent the slave everything up to `sent_end`, which was the master's write
    /// offset when it read it.
    pub fn note_sent_to_end(&self, broker_id: u64, session: u64, sent_end: u64) {
        let mut state = self.lock();
        if let Some(replica) = state.replicas.get_mut(&broker_id) {
            if replica.session == session {
                if replica.marks.len() == MARKS_MAX {
                    replica.marks.pop_front();
                }
                replica.marks.push_back((Instant::now(), sent_end));
            }
        }
    }

    /// A slave's acknowledgement; `store_fault`: its store has a fault (it leaves the set at
    /// the next review, and joins again only without one); `leaving`: it is stopping (it leaves
    /// the set at the next review, and does not join again in this session).
    pub fn ack(
        &self,
        broker_id: u64,
        session: u64,
        written: u64,
        flushed: u64,
        store_fault: bool,
        leaving: bool,
    ) -> Result<(), AckError> {
        let write_offset = self.log.write_offset();
        if written > write_offset {
            return Err(AckError::BeyondEnd {
                acked: written,
                write_offset,
            });
        }
        if flushed > written {
            return Err(AckError::FlushedBeyondWritten { flushed, written });
        }
        let mut state = self.lock();
        let Some(replica) = state.replicas.get_mut(&broker_id) else {
            return Err(AckError::Superseded);
        };
        if replica.session != session || !replica.connected {
            return Err(AckError::Superseded);
        }
        if written < replica.written {
            return Err(AckError::WentBack {
                previous: replica.written,
                acked: written,
            });
        }
        replica.written = written;
        replica.flushed = replica.flushed.max(flushed);
        if replica.store_fault != store_fault {
            tracing::warn!(
                broker_id,
                store_fault,
                "{}",
                if store_fault {
                    "the slave reports a store fault: it leaves the in-sync set"
                } else {
                    "the slave's store is sound again"
                }
            );
            replica.store_fault = store_fault;
        }
        if leaving && !replica.leaving {
            tracing::info!(
                broker_id,
                "the slave is stopping: it leaves the in-sync set"
            );
            replica.leaving = true;
        }
        let now = Instant::now();
        if written >= write_offset {
            replica.caught_up_at = now;
            replica.marks.clear();
        } else {
            while let Some(&(at, offset)) = replica.marks.front() {
                if offset > written {
                    break;
                }
                replica.caught_up_at = replica.caught_up_at.max(at);
                replica.marks.pop_front();
            }
        }
        self.update_confirm(&state);
        drop(state);
        self.bump();
        Ok(())
    }

    /// The set as the controller now holds it (from a heartbeat answer or a proposal's answer).
    /// Ignored when it is older than what the master knows, or of another master epoch (a
    /// master elected again gets a new tracker).
    pub fn apply_view(&self, accepted: &AcceptedSet) {
        let mut state = self.lock();
        let newer =
            accepted.master_epoch == state.master_epoch && accepted.set_epoch > state.set_epoch;
        if !newer {
            return;
        }
        tracing::info!(
            master_epoch = accepted.master_epoch,
            set_epoch = accepted.set_epoch,
            old = ?state.set,
            new = ?accepted.set,
            "in-sync set changed"
        );
        state.master_epoch = accepted.master_epoch;
        state.set = accepted.set.clone();
        state.set_epoch = accepted.set_epoch;
        state.pending = None;
        self.update_confirm(&state);
        drop(state);
        self.bump();
    }

    /// Waits until every member holds everything below `end_offset` (only under
    /// `SYNC_MASTER`; `ASYNC_MASTER` answers `Replicated` at once).
    pub async fn wait_replicated(&self, end_offset: u64) -> ReplicaWait {
        if self.is_deposed() {
            return ReplicaWait::Deposed;
        }
        if !self.config.sync_master {
            return ReplicaWait::Replicated;
        }
        let deadline = tokio::time::Instant::now() + self.config.slave_timeout;
        let mut changes = self.subscribe();
        loop {
            changes.borrow_and_update();
            if self.is_deposed() {
                return ReplicaWait::Deposed;
            }
            {
                let state = self.lock();
                if state.set.len() < self.config.min_in_sync_replicas {
                    return ReplicaWait::NotEnoughReplicas;
                }
                let held = self.required(&state).all(|id| {
                    state
                        .replicas
                        .get(&id)
                        .is_some_and(|r| self.acked(r) >= end_offset)
                });
                if held {
                    return ReplicaWait::Replicated;
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return ReplicaWait::Timeout,
            }
        }
    }

    /// The change the set needs now, if any and none is in flight; marks it in flight.
    pub fn plan_change(&self) -> Option<ProposedSet> {
        let mut state = self.lock();
        if state.pending.is_some() || self.is_deposed() {
            return None;
        }
        let now = Instant::now();
        let confirm = self.log.confirm_offset();
        let mut next = state.set.clone();
        for id in state.set.iter().filter(|id| **id != self.config.master_id) {
            let caught_up_at = state
                .replicas
                .get(id)
                .map_or(state.started_at, |r| r.caught_up_at);
            // A slave gone for `gone_max` is not waited for any longer: sends would only time
            // out on it (it joins again once it is back and caught up).
            let unfit = state.replicas.get(id).is_some_and(|r| {
                r.store_fault
                    || r.leaving
                    || r.gone_since
                        .is_some_and(|at| now.duration_since(at) > self.config.gone_max)
            });
            if unfit || now.duration_since(caught_up_at) > self.config.lag_max {
                next.remove(id);
            }
        }
        for (id, replica) in &state.replicas {
            let keeps_up = now.duration_since(replica.caught_up_at) <= self.config.lag_max;
            if !state.set.contains(id)
                && replica.connected
                && !replica.store_fault
                && !replica.leaving
                && keeps_up
                && self.acked(replica) >= confirm
            {
                next.insert(*id);
            }
        }
        if next == state.set {
            return None;
        }
        let proposal = ProposedSet {
            master_id: self.config.master_id,
            master_epoch: state.master_epoch,
            set_epoch: state.set_epoch,
            set: next.clone(),
        };
        state.pending = Some(next);
        drop(state);
        self.bump();
        Some(proposal)
    }

    /// The controller answered (or not) the change in flight.
    pub fn finish_change(&self, outcome: Result<AcceptedSet, ProposalError>) {
        match outcome {
            Ok(accepted) => self.apply_view(&accepted),
            Err(err) => {
                tracing::warn!(error = %err, "in-sync set change not accepted; the set stays as it was");
            }
        }
        // Whatever happened, nothing is in flight any more (a view already applied cleared it).
        let mut state = self.lock();
        if state.pending.take().is_some() {
            self.update_confirm(&state);
        }
        drop(state);
        self.bump();
    }

    /// Reviews the set every [`REVIEW_INTERVAL`] and proposes each needed change to
    /// `authority`, until the task is aborted.
    pub async fn review(self: Arc<Self>, authority: impl InSyncAuthority) {
        let mut ticks = tokio::time::interval(REVIEW_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.is_deposed() {
                return;
            }
            if let Some(change) = self.plan_change() {
                tracing::info!(set = ?change.set, set_epoch = change.set_epoch, "proposing an in-sync set change to the controller");
                let outcome = authority.propose(change).await;
                self.finish_change(outcome);
            }
        }
    }

    /// What ha status shows.
    pub fn view(&self) -> InSyncView {
        let state = self.lock();
        let write_offset = self.log.write_offset();
        let now = Instant::now();
        InSyncView {
            master_epoch: state.master_epoch,
            set: state.set.clone(),
            set_epoch: state.set_epoch,
            pending: state.pending.clone(),
            replicas: state
                .replicas
                .iter()
                .map(|(id, r)| ReplicaView {
                    broker_id: *id,
                    addr: r.addr.clone(),
                    connected: r.connected,
                    written_offset: r.written,
                    flushed_offset: r.flushed,
                    lag_bytes: write_offset.saturating_sub(r.written),
                    lag: if r.written >= write_offset {
                        Duration::ZERO
                    } else {
                        now.duration_since(r.caught_up_at)
                    },
                    in_sync: state.set.contains(id),
                })
                .collect(),
        }
    }
}
