//! The broker's role in its group (static, from `broker_role`, as in RocketMQ 4):
//! - a **master** appends, ships its log to its slaves, keeps the in-sync set through the
//!   controller and answers sends by it (`SYNC_MASTER`) or at once (`ASYNC_MASTER`);
//! - a **slave** replicates its master's log, refuses writes with `NOT_MASTER` (naming the
//!   master), and serves reads up to the confirm offset its master sent.
//!
//! Also here: the controller's group view turned into what each role needs (the master's
//! epoch and in-sync set; the slave's master location), and the in-sync set authority that
//! proposes changes through the controller link.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proto::controller as pb;
use replication::controller::link::{InSyncSetProposer, ProposeError};
use replication::ship::{
    AcceptedSet, InSync, InSyncAuthority, MasterLocation, ProposedSet, ReplicaStatus, ReplicaWait,
};
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::store::Store;

/// How long a proposal to the controller may keep trying.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(3);

/// What this broker is in its group.
pub enum Role {
    Master {
        in_sync: Arc<InSync<Store>>,
        /// `ASYNC_MASTER` or `SYNC_MASTER`.
        replication: &'static str,
    },
    Slave {
        /// Where the master is, as the controller last said.
        master: watch::Sender<Option<MasterLocation>>,
        status: Arc<ReplicaStatus>,
    },
}

impl Role {
    /// Refuses writes on a slave, naming the master when it is known.
    pub fn check_writable(&self) -> Result<(), BrokerError> {
        match self {
            Role::Master { .. } => Ok(()),
            Role::Slave { master, .. } => Err(BrokerError::NotMaster {
                master_addr: master.borrow().as_ref().map(|m| m.addr.clone()),
            }),
        }
    }

    /// Waits until the in-sync set holds everything below `end_offset` (`SYNC_MASTER`).
    pub async fn wait_replicated(&self, end_offset: u64) -> ReplicaWait {
        match self {
            Role::Master { in_sync, .. } => in_sync.wait_replicated(end_offset).await,
            // A slave never appends.
            Role::Slave { .. } => ReplicaWait::NotEnoughReplicas,
        }
    }

    /// `ASYNC_MASTER`, `SYNC_MASTER` or `SLAVE`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Master { replication, .. } => replication,
            Role::Slave { .. } => "SLAVE",
        }
    }

    /// Takes in the controller's view of the group. A master begins the view's epoch in its
    /// log (when newer than the log's newest) before adopting it, so that every record it
    /// ships from then on carries it; a slave follows the master's location.
    pub async fn apply_group_view(&self, store: &Store, broker_id: u64, view: &pb::GroupView) {
        match self {
            Role::Master { in_sync, .. } => {
                if view.master_id != Some(broker_id) {
                    tracing::warn!(
                        master_id = ?view.master_id,
                        "the controller names another master of this group; this static master \
                         keeps its role (step 5 hands roles to the controller)"
                    );
                    return;
                }
                let newest = store.epoch_history().last().map_or(0, |e| e.epoch);
                if view.master_epoch > newest {
                    match store.begin_epoch(view.master_epoch).await {
                        Ok(offset) => {
                            tracing::info!(epoch = view.master_epoch, offset, "master epoch begins")
                        }
                        Err(err) => {
                            tracing::error!(error = %err, epoch = view.master_epoch, "cannot begin the master epoch");
                            return;
                        }
                    }
                }
                in_sync.apply_view(&accepted(view));
            }
            Role::Slave { master, .. } => {
                let location = match view.master_id {
                    Some(master_id) if !view.master_addr.is_empty() => Some(MasterLocation {
                        addr: view.master_addr.clone(),
                        master_id,
                        master_epoch: view.master_epoch,
                    }),
                    _ => None,
                };
                master.send_if_modified(|current| {
                    let changed = *current != location;
                    if changed {
                        tracing::info!(master = ?location, "the group's master changed");
                        current.clone_from(&location);
                    }
                    changed
                });
            }
        }
    }

    /// Replication progress for the controller's cluster list: a master reports each slave.
    pub fn progress_report(&self) -> Vec<pb::ReplicaProgress> {
        match self {
            Role::Master { in_sync, .. } => in_sync
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
            Role::Slave { .. } => Vec::new(),
        }
    }
}

fn accepted(view: &pb::GroupView) -> AcceptedSet {
    AcceptedSet {
        master_epoch: view.master_epoch,
        set: view.in_sync_set.iter().copied().collect::<BTreeSet<u64>>(),
        set_epoch: view.in_sync_set_epoch,
    }
}

/// The controller as the authority over the in-sync set.
pub struct ControllerAuthority {
    pub group: String,
    pub proposer: InSyncSetProposer,
}

impl InSyncAuthority for ControllerAuthority {
    async fn propose(&self, change: ProposedSet) -> Result<AcceptedSet, String> {
        let request = pb::AlterInSyncSetRequest {
            group: self.group.clone(),
            master_id: change.master_id,
            master_epoch: change.master_epoch,
            in_sync_set_epoch: change.set_epoch,
            in_sync_set: change.set.into_iter().collect(),
        };
        match self.proposer.propose(request, PROPOSE_PATIENCE).await {
            Ok(view) => Ok(accepted(&view)),
            Err(ProposeError::Refused(reason)) => Err(format!("refused: {reason}")),
            Err(ProposeError::Unavailable(reason)) => {
                Err(format!("no controller answered: {reason}"))
            }
        }
    }
}
