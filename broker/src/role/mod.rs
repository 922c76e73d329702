//! The broker's role in its group, and how it changes.
//!
//! - A **master** appends, ships its log to its slaves, keeps the in-sync set through the
//!   controller and answers sends by it (`SYNC_MASTER`) or at once (`ASYNC_MASTER`).
//! - A **slave** replicates its master's log, refuses writes with `NOT_MASTER` (naming the
//!   master when it knows it), and serves reads up to the confirm offset its master sent.
//!
//! With a **static** role (`broker_role` `ASYNC_MASTER`, `SYNC_MASTER` or `SLAVE`, as in
//! RocketMQ 4) the broker keeps it for life: no failover. A **controlled** broker (the default
//! with a controller) starts as a slave with no master and takes whatever role the controller's
//! group view names, in order, one change at a time ([`RoleCell::apply_view`]):
//!
//! - **Elected** at epoch E (newer than every epoch in its log): it stops replicating, begins E
//!   in its log, takes writes, and tracks a new in-sync set. A broker whose log already holds E
//!   was master of E before it restarted: it waits for the controller to elect again, because
//!   its log may have lost the unflushed tail its slaves hold.
//! - **Deposed** (another master at a newer epoch): it stops acknowledging at once (waits end
//!   [`ReplicaWait::Deposed`], streams to its slaves close), then replicates from the new master,
//!   whose handshake cuts the tail this log holds beyond their last common epoch.
//!
//! **Fencing.** A controlled master acknowledges only while it holds a lease from the controller
//! (docs/ARCHITECTURE.md, "Failover"): checked before it appends and again after the in-sync set
//! acknowledged, just before `SEND_OK`. A paused master that wakes after its lease ran out
//! answers an error, never `SEND_OK`; the controller elects no successor before the lease ran out.
//!
//! **Resigning** (planned switchover): asked by the controller, the master stops acknowledging,
//! waits (briefly) until its set holds its whole log, then says so in its next heartbeat, sent
//! at once.
//!
//! **Leaving** (a slave's planned stop): its acknowledgements say it is stopping, its master
//! proposes the set without it, and the broker stops once the controller's view no longer holds
//! it ([`RoleCell::leave_in_sync_set`]), so the master never waits for a slave that is gone.
//!
//! **Repairing** a corrupt record (found by a read, recovery or the scrubber): the store's
//! health says so in every heartbeat (the controller moves a master off by a switchover, and
//! elects no corrupt broker while a sound one is alive) and in every acknowledgement (the master
//! takes the slave out of the in-sync set); once out of the set, the slave cuts the range and
//! copies it again from its master ([`RoleCell::apply_view`]).
//!
//! Why one file of about 645 lines: every role change goes through [`RoleCell`] under one
//! transition lock (becoming master or slave, resigning, repairing, leaving), and its unit
//! tests live with the pure decision in `crate::transition`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use controller_client::broker_link::LeaseAnswer;
use proto::controller as pb;
use replication::ship::{replica, AcceptedSet, InSync, MasterLocation, ReplicaStatus};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::authority::ControllerAuthority;
use crate::error::BrokerError;
use crate::lease::MasterLease;
use crate::store::Store;
use crate::transition::{decide, RoleFacts, Transition, ViewFacts};

/// How long a resigning master waits for its set to hold its whole log before it says it
/// resigned anyway (what the set lacks was never acknowledged).
const RESIGN_PATIENCE: Duration = Duration::from_secs(1);

pub use kinds::{InitialRole, MasterRole, Role, RoleContext, SlaveRole};

mod kinds;

/// The current role, and the one place that changes it.
pub struct RoleCell {
    ctx: RoleContext,
    current: watch::Sender<Arc<Role>>,
    /// The master's tracker, for the log-shipping service (None while not master).
    in_sync: watch::Sender<Option<Arc<InSync<Store>>>>,
    /// The current role's tasks (replication, offset snapshots, the delay schedule, ...).
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serializes role changes.
    transition: tokio::sync::Mutex<()>,
    lease: MasterLease,
    authority: OnceLock<ControllerAuthority>,
    /// Makes the controller link heartbeat at once.
    wake: OnceLock<Arc<Notify>>,
    /// The controller drained the group for maintenance: sends are refused.
    drained: AtomicBool,
    /// Whether the controller's last group view held this broker in the in-sync set.
    in_sync_member: watch::Sender<bool>,
    /// The broker began its planned stop: a slave role it takes from now on says it is leaving
    /// from its first acknowledgement.
    stopping: AtomicBool,
}

/// How a slave's leaving the in-sync set ended ([`RoleCell::leave_in_sync_set`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaving {
    /// Nothing to leave: a master, or a slave out of the set.
    NotMember,
    /// The controller's view no longer holds it, after this long.
    Left(Duration),
    /// The view still held it when the wait ran out.
    TimedOut,
}

impl RoleCell {
    /// The cell with its first role, whose tasks start with [`RoleCell::start`].
    pub fn new(ctx: RoleContext, initial: InitialRole) -> Arc<RoleCell> {
        let role = match initial {
            InitialRole::StaticMaster => {
                ctx.store.set_replica_only(false);
                let epoch = newest_epoch(&ctx.store);
                let in_sync = Arc::new(InSync::new(
                    ctx.in_sync.clone(),
                    ctx.store.clone(),
                    epoch,
                    BTreeSet::from([ctx.broker_id]),
                    0,
                ));
                Role::Master(MasterRole {
                    in_sync,
                    epoch,
                    leased: false,
                })
            }
            InitialRole::Slave => {
                ctx.store.set_replica_only(true);
                Role::Slave(SlaveRole {
                    master: watch::Sender::new(None),
                    status: Arc::new(ReplicaStatus::default()),
                })
            }
        };
        let in_sync = match &role {
            Role::Master(m) => Some(m.in_sync.clone()),
            Role::Slave(_) => None,
        };
        Arc::new(RoleCell {
            ctx,
            current: watch::Sender::new(Arc::new(role)),
            in_sync: watch::Sender::new(in_sync),
            tasks: Mutex::new(Vec::new()),
            transition: tokio::sync::Mutex::new(()),
            lease: MasterLease::default(),
            authority: OnceLock::new(),
            wake: OnceLock::new(),
            drained: AtomicBool::new(false),
            in_sync_member: watch::Sender::new(false),
            stopping: AtomicBool::new(false),
        })
    }

    /// The broker begins its planned stop: a slave role it takes from now on (a master that
    /// hands over becomes one) says it is leaving from its first acknowledgement, so that it
    /// never joins an in-sync set on its way out.
    pub fn begin_planned_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether this broker is a controlled master now (one the controller may move by a
    /// switchover).
    pub fn is_controlled_master(&self) -> bool {
        self.ctx.controlled && matches!(self.current().as_ref(), Role::Master(_))
    }

    /// Returns once this broker is no longer master (true), or after `wait` (false).
    pub async fn wait_until_not_master(&self, wait: Duration) -> bool {
        let mut current = self.current.subscribe();
        tokio::time::timeout(
            wait,
            current.wait_for(|role| !matches!(role.as_ref(), Role::Master(_))),
        )
        .await
        .is_ok_and(|out| out.is_ok())
    }

    /// A slave that is stopping leaves the in-sync set first: its acknowledgements say so, its
    /// master proposes the set without it, and this returns once the controller's view no
    /// longer holds it, or after `wait` (a master that cannot be reached). A master, or a slave
    /// out of the set, returns at once.
    pub async fn leave_in_sync_set(&self, wait: Duration) -> Leaving {
        let role = self.current();
        let Role::Slave(slave) = role.as_ref() else {
            return Leaving::NotMember;
        };
        let mut member = self.in_sync_member.subscribe();
        if !*member.borrow_and_update() {
            return Leaving::NotMember;
        }
        let started = Instant::now();
        slave.status.leave();
        let left = tokio::time::timeout(wait, member.wait_for(|held| !*held))
            .await
            .is_ok_and(|out| out.is_ok());
        if left {
            Leaving::Left(started.elapsed())
        } else {
            Leaving::TimedOut
        }
    }

    /// Starts the first role's tasks. `authority`: the controller, for a master's in-sync set
    /// changes (None without a controller); `wake`: makes the link heartbeat at once.
    pub async fn start(&self, authority: Option<ControllerAuthority>, wake: Option<Arc<Notify>>) {
        let _transition = self.transition.lock().await;
        if let Some(authority) = authority {
            let _ = self.authority.set(authority);
        }
        if let Some(wake) = wake {
            let _ = self.wake.set(wake);
        }
        let role = self.current();
        if let Role::Slave(slave) = role.as_ref() {
            self.tell_link_of_gone_master(&slave.status);
        }
        self.start_tasks(&role);
    }

    /// A slave that finds its master gone wakes the link, which tells the controller at once
    /// (see [`RoleCell::master_gone`]).
    fn tell_link_of_gone_master(&self, status: &ReplicaStatus) {
        if let Some(wake) = self.wake.get() {
            status.notify_on_master_gone(wake.clone());
        }
    }

    /// From a slave: the master it found gone (its stream ended and its host refuses
    /// connections), for the controller, which may then elect without waiting out the lease.
    pub fn master_gone(&self) -> Option<pb::MasterGone> {
        match self.current().as_ref() {
            Role::Slave(slave) => slave.status.master_gone().map(|gone| pb::MasterGone {
                master_id: gone.master_id,
                master_epoch: gone.master_epoch,
            }),
            Role::Master(_) => None,
        }
    }

    pub fn current(&self) -> Arc<Role> {
        self.current.borrow().clone()
    }

    /// The master's tracker while this broker is master, for the log-shipping service.
    pub fn in_sync_watch(&self) -> watch::Receiver<Option<Arc<InSync<Store>>>> {
        self.in_sync.subscribe()
    }

    /// The role if this broker may take a write now: a master (holding its lease, when
    /// controlled). Otherwise `NOT_MASTER`, naming the master when known.
    pub fn writable(&self) -> Result<Arc<Role>, BrokerError> {
        let role = self.current();
        match role.as_ref() {
            Role::Master(m) => self.check_lease(m)?,
            Role::Slave(_) => {
                return Err(BrokerError::NotMaster {
                    master_addr: role.master_addr(),
                })
            }
        }
        Ok(role)
    }

    /// What the controller says of the group's drain (every group view carries it).
    pub fn set_drained(&self, drained: bool) {
        if self.drained.swap(drained, Ordering::AcqRel) != drained {
            tracing::warn!(
                drained,
                "the controller {} this broker's group",
                if drained { "drained" } else { "undrained" }
            );
        }
    }

    /// `FORBIDDEN` while the group is drained: a producer whose route is not updated yet must
    /// not add messages to a group taken out for maintenance.
    pub fn check_not_drained(&self) -> Result<(), BrokerError> {
        if self.drained.load(Ordering::Acquire) {
            return Err(BrokerError::Drained {
                group: self.ctx.replica.group.clone(),
            });
        }
        Ok(())
    }

    /// Whether `role` (from [`RoleCell::writable`]) may still acknowledge: it is still the
    /// current role, and its lease still runs. Asked after the in-sync set acknowledged, just
    /// before `SEND_OK`.
    pub fn may_acknowledge(&self, role: &Arc<Role>) -> Result<(), BrokerError> {
        let current = self.current();
        match role.as_ref() {
            Role::Master(m) if Arc::ptr_eq(role, &current) => self.check_lease(m),
            Role::Master(m) => Err(BrokerError::CannotAcknowledge {
                reason: format!(
                    "this broker stopped being master of epoch {} meanwhile",
                    m.epoch
                ),
            }),
            Role::Slave(_) => Err(BrokerError::NotMaster {
                master_addr: current.master_addr(),
            }),
        }
    }

    fn check_lease(&self, master: &MasterRole) -> Result<(), BrokerError> {
        if master.in_sync.is_deposed() {
            return Err(BrokerError::CannotAcknowledge {
                reason: format!("master epoch {} was superseded", master.epoch),
            });
        }
        if !master.leased {
            return Ok(());
        }
        self.lease.check(master.epoch, Instant::now())
    }

    /// A heartbeat answer's word on mastership (from the controller link's task).
    pub fn lease_answered(self: &Arc<Self>, answer: LeaseAnswer) {
        let role = self.current();
        let master = match role.as_ref() {
            Role::Master(master) => Some(master),
            Role::Slave(_) => None,
        };
        if !self.lease.answered(answer, master.map(|m| m.epoch)) {
            return;
        }
        let Some(master) = master else {
            return;
        };
        tracing::info!(
            epoch = answer.master_epoch,
            "asked to resign: acknowledging stopped; letting the in-sync set catch up"
        );
        let cell = self.clone();
        let in_sync = master.in_sync.clone();
        let epoch = master.epoch;
        tokio::spawn(async move {
            let end = cell.ctx.store.write_offset();
            let held = in_sync.wait_members_hold(end, RESIGN_PATIENCE).await;
            if cell.lease.finish_resigning(epoch) {
                tracing::info!(
                    epoch,
                    end,
                    caught_up = held,
                    "resigned: telling the controller"
                );
                cell.wake_link();
            }
        });
    }

    /// True once a master asked to resign has done so (for the next heartbeat).
    pub fn resigned(&self) -> bool {
        match self.current().as_ref() {
            Role::Master(master) => self.lease.resigned(master.epoch),
            Role::Slave(_) => false,
        }
    }

    /// The master epoch this broker acts in: the one it is master of, or its master's.
    pub fn master_epoch(&self) -> u64 {
        match self.current().as_ref() {
            Role::Master(m) => m.epoch,
            Role::Slave(s) => s.master.borrow().as_ref().map_or(0, |m| m.master_epoch),
        }
    }

    /// The newest epoch in the commit log.
    pub fn log_epoch(&self) -> u64 {
        newest_epoch(&self.ctx.store)
    }

    fn wake_link(&self) {
        if let Some(wake) = self.wake.get() {
            wake.notify_one();
        }
    }

    /// Takes in the controller's view of the group: follows a new master, or becomes master, or
    /// stops being master (controlled brokers only), or takes a new in-sync set.
    pub async fn apply_view(&self, view: &pb::GroupView) {
        self.in_sync_member
            .send_replace(view.in_sync_set.contains(&self.ctx.broker_id));
        let _transition = self.transition.lock().await;
        let role = self.current();
        let facts = RoleFacts {
            broker_id: self.ctx.broker_id,
            master_of: match role.as_ref() {
                Role::Master(m) => Some(m.epoch),
                Role::Slave(_) => None,
            },
            controlled: self.ctx.controlled,
            log_epoch: newest_epoch(&self.ctx.store),
            corrupt: self.ctx.store.health().borrow().corrupt.is_some(),
        };
        let view_facts = ViewFacts {
            master_id: view.master_id,
            master_epoch: view.master_epoch,
            in_sync_set: &view.in_sync_set,
        };
        match (decide(&view_facts, &facts), role.as_ref()) {
            (Transition::TakeInSyncSet, Role::Master(m)) => m.in_sync.apply_view(&accepted(view)),
            (Transition::BecomeMaster, _) => {
                tracing::info!(epoch = view.master_epoch, "elected master");
                self.become_master(view).await;
            }
            (Transition::KeepStaticMaster, Role::Master(m)) => {
                tracing::warn!(
                    master_id = ?view.master_id,
                    epoch = m.epoch,
                    "the controller names another master of this group; this static master \
                     keeps its role (static roles have no failover)"
                );
            }
            (Transition::Deposed { then_repair }, Role::Master(m)) => {
                tracing::warn!(
                    epoch = m.epoch,
                    new_epoch = view.master_epoch,
                    new_master = ?view.master_id,
                    "deposed: another master was elected; replicating from it"
                );
                self.become_slave(view).await;
                if then_repair {
                    self.repair().await;
                }
            }
            (Transition::WaitForNewElection, _) => {
                // Master of this epoch before a restart: the log may lack the unflushed tail
                // the slaves hold. The controller elects again (new incarnation).
                tracing::info!(
                    epoch = view.master_epoch,
                    log_epoch = facts.log_epoch,
                    "named master of an epoch this log already holds; waiting for a new \
                     election"
                );
            }
            (Transition::Follow { then_repair }, Role::Slave(slave)) => {
                follow(slave, view);
                if then_repair {
                    self.repair().await;
                }
            }
            // The decision was made from this very role: the pairs left cannot occur.
            (Transition::Ignore, _)
            | (Transition::TakeInSyncSet, _)
            | (Transition::KeepStaticMaster, _)
            | (Transition::Deposed { .. }, _)
            | (Transition::Follow { .. }, _) => {}
        }
    }

    /// Repairs a corrupt record, once [`decide`] allows it (out of the in-sync set, a master to
    /// copy from): cuts the log back to the corrupt record (or its segment's start) and copies
    /// the range again from the master.
    async fn repair(&self) {
        let Some(corruption) = self.ctx.store.health().borrow().corrupt.clone() else {
            return;
        };
        self.stop_tasks().await;
        match self
            .ctx
            .store
            .cut_for_repair(corruption.commit_log_offset)
            .await
        {
            Ok(cut_to) => tracing::warn!(
                corrupt_offset = corruption.commit_log_offset,
                cut_to,
                "corrupt range cut: copying it again from the master"
            ),
            Err(err) => tracing::error!(
                corrupt_offset = corruption.commit_log_offset,
                error = %err,
                "could not cut the corrupt range; replicating on, out of the in-sync set"
            ),
        }
        let role = self.current();
        self.start_tasks(&role);
    }

    async fn become_master(&self, view: &pb::GroupView) {
        let epoch = view.master_epoch;
        let store = &self.ctx.store;
        if let Role::Master(old) = self.current().as_ref() {
            old.in_sync.depose();
        }
        self.stop_tasks().await;
        if epoch > newest_epoch(store) {
            if let Err(err) = store.begin_epoch(epoch).await {
                // The log cannot be written: a master that cannot write its epoch can write
                // nothing. Stopping lets the controller elect another.
                tracing::error!(error = %err, epoch, "cannot begin the master epoch; stopping");
                eprintln!("broker: cannot begin master epoch {epoch}: {err}");
                std::process::exit(3);
            }
        }
        store.set_replica_only(false);
        self.ctx.groups.promote().await;
        let in_sync = Arc::new(InSync::new(
            self.ctx.in_sync.clone(),
            store.clone(),
            epoch,
            accepted(view).set,
            view.in_sync_set_epoch,
        ));
        let role = Arc::new(Role::Master(MasterRole {
            in_sync: in_sync.clone(),
            epoch,
            leased: self.ctx.controlled,
        }));
        self.current.send_replace(role.clone());
        self.in_sync.send_replace(Some(in_sync));
        tracing::info!(
            epoch,
            offset = store.write_offset(),
            in_sync_set = ?view.in_sync_set,
            "master epoch begins"
        );
        self.start_tasks(&role);
        self.wake_link();
    }

    async fn become_slave(&self, view: &pb::GroupView) {
        let status = Arc::new(ReplicaStatus::default());
        if self.stopping.load(Ordering::Acquire) {
            // A master that handed over on its way out: it must never join its successor's
            // in-sync set, or the successor would wait for a broker about to be gone.
            status.leave();
        }
        self.tell_link_of_gone_master(&status);
        let slave = SlaveRole {
            master: watch::Sender::new(None),
            status,
        };
        follow(&slave, view);
        let role = Arc::new(Role::Slave(slave));
        // Writes are refused from here on; the old tracker ends every wait without SEND_OK.
        let old = self.current.send_replace(role.clone());
        self.in_sync.send_replace(None);
        if let Role::Master(old) = old.as_ref() {
            old.in_sync.depose();
        }
        self.stop_tasks().await;
        self.ctx.store.set_replica_only(true);
        self.start_tasks(&role);
        self.wake_link();
    }

    fn start_tasks(&self, role: &Arc<Role>) {
        let mut tasks = self.tasks.lock().expect("role tasks lock poisoned");
        match role.as_ref() {
            Role::Master(m) => {
                if let Some(authority) = self.authority.get() {
                    tasks.push(tokio::spawn(m.in_sync.clone().review(authority.clone())));
                }
                // Only a master writes its log: the offset snapshots and the delay schedule.
                tasks.push(tokio::spawn(
                    self.ctx
                        .groups
                        .clone()
                        .snapshot_every(self.ctx.offset_snapshot_interval),
                ));
                tasks.extend(self.ctx.retry.start_scheduler());
            }
            Role::Slave(s) => {
                tasks.push(tokio::spawn(self.ctx.groups.clone().follow()));
                tasks.push(tokio::spawn(replica::run(
                    self.ctx.store.clone(),
                    self.ctx.replica.clone(),
                    s.master.subscribe(),
                    s.status.clone(),
                )));
            }
        }
    }

    async fn stop_tasks(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("role tasks lock poisoned"));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Stops the role's tasks (at shutdown).
    pub async fn shutdown(&self) {
        let _transition = self.transition.lock().await;
        if let Role::Master(m) = self.current().as_ref() {
            m.in_sync.depose();
        }
        self.stop_tasks().await;
    }

    /// Replication progress for the controller's cluster list: a master reports each slave.
    pub fn progress_report(&self) -> Vec<pb::ReplicaProgress> {
        match self.current().as_ref() {
            Role::Master(m) => m
                .in_sync
                .view()
                .replicas
                .into_iter()
                .map(|r| pb::ReplicaProgress {
                    broker_id: r.broker_id,
                    acked_offset: r.written_offset,
                    lag_bytes: r.lag_bytes,
                    lag_ms: r.lag.as_millis() as u64,
                    connected: r.connected,
                })
                .collect(),
            Role::Slave(_) => Vec::new(),
        }
    }
}

/// A slave follows the master the view names.
fn follow(slave: &SlaveRole, view: &pb::GroupView) {
    let location = match view.master_id {
        Some(master_id) if !view.master_addr.is_empty() => Some(MasterLocation {
            addr: view.master_addr.clone(),
            master_id,
            master_epoch: view.master_epoch,
        }),
        _ => None,
    };
    slave.master.send_if_modified(|current| {
        let changed = *current != location;
        if changed {
            tracing::info!(master = ?location, "the group's master changed");
            current.clone_from(&location);
        }
        changed
    });
}

fn newest_epoch(store: &Store) -> u64 {
    store.epoch_history().last().map_or(0, |e| e.epoch)
}

/// The controller's in-sync set, from a group view.
pub(crate) fn accepted(view: &pb::GroupView) -> AcceptedSet {
    AcceptedSet {
        master_epoch: view.master_epoch,
        set: view.in_sync_set.iter().copied().collect::<BTreeSet<u64>>(),
        set_epoch: view.in_sync_set_epoch,
    }
}
