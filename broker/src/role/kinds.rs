//! The roles a broker can have in its group, and what every role needs to run. `RoleCell`
//! (`role/mod.rs`) holds the current one and is the one place that changes it.

use std::sync::Arc;
use std::time::Duration;

use replication::ship::{
    InSync, InSyncConfig, MasterLocation, ReplicaConfig, ReplicaStatus, ReplicaWait,
};
use tokio::sync::watch;

use crate::groups::ConsumerGroupState;
use crate::retry::RetryState;
use crate::store::Store;

/// What this broker is in its group now.
pub enum Role {
    Master(MasterRole),
    Slave(SlaveRole),
}

pub struct MasterRole {
    pub in_sync: Arc<InSync<Store>>,
    /// The master epoch this broker is master of.
    pub epoch: u64,
    /// A controlled master acknowledges only under a lease; a static one has none to check.
    pub(super) leased: bool,
}

pub struct SlaveRole {
    /// Where the master is, as the controller last said (None: no master known).
    pub master: watch::Sender<Option<MasterLocation>>,
    pub status: Arc<ReplicaStatus>,
}

impl Role {
    /// `ASYNC_MASTER`, `SYNC_MASTER` or `SLAVE`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Master(m) if m.in_sync.config().sync_master => "SYNC_MASTER",
            Role::Master(_) => "ASYNC_MASTER",
            Role::Slave(_) => "SLAVE",
        }
    }

    /// Waits until the in-sync set holds everything below `end_offset` (`SYNC_MASTER`).
    pub async fn wait_replicated(&self, end_offset: u64) -> ReplicaWait {
        match self {
            Role::Master(m) => m.in_sync.wait_replicated(end_offset).await,
            // A slave never appends.
            Role::Slave(_) => ReplicaWait::Deposed,
        }
    }

    pub(super) fn master_addr(&self) -> Option<String> {
        match self {
            Role::Slave(s) => s.master.borrow().as_ref().map(|m| m.addr.clone()),
            Role::Master(_) => None,
        }
    }
}

/// Everything a role needs to run, whichever it is.
pub struct RoleContext {
    pub store: Arc<Store>,
    pub groups: Arc<ConsumerGroupState>,
    pub retry: Arc<RetryState>,
    pub broker_id: u64,
    /// The controller assigns the role (`broker_role = CONTROLLED`).
    pub controlled: bool,
    /// How this broker replicates when master.
    pub in_sync: InSyncConfig,
    /// How it replicates when slave.
    pub replica: ReplicaConfig,
    /// How often a master writes every committed offset again.
    pub offset_snapshot_interval: Duration,
}

/// The role to start with.
pub enum InitialRole {
    /// A static master, at the newest epoch of its log until the controller's view says more.
    StaticMaster,
    /// A static slave, or a controlled broker waiting for the controller.
    Slave,
}
