//! The broker's side of its controller link: what the link reads and writes on this broker
//! ([`LinkedBroker`], the `BrokerMetadata` the `controller-client` crate asks for), and the
//! tasks that register, heartbeat and apply each group view the controller answers with.
//!
//! A permanent refusal (a second master for the group, a bad name, another replication mode
//! than the group's) ends the link and is reported to [`crate::server::Broker`], which stops:
//! a broker must not serve a group it does not belong to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use controller_client::broker_link::{
    BrokerIdentity, BrokerMetadata, ControllerLink, Handover, LeaseAnswer, LinkError,
    MetadataSyncError, ReplicationReport,
};
use proto::controller::{BrokerRole, GroupSettings, GroupTopic, GroupView, ReplicationMode};
use tokio::sync::{oneshot, watch};

use crate::authority::ControllerAuthority;
use crate::config::{BrokerConfig, BrokerRoleKind};
use crate::retry::RetryState;
use crate::role::RoleCell;
use crate::store::Store;
use crate::topics::TopicRegistry;

/// Why the link could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkStartError {
    #[error("cluster_secret is required with controller_addr")]
    NoClusterSecret,
    #[error("cluster_secret: {0}")]
    Key(#[from] auth::KeyError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// What the controller link reads and writes on this broker.
pub struct LinkedBroker {
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    retry: Arc<RetryState>,
    role: Arc<RoleCell>,
    /// The controller's latest view of the group, applied by a task of its own (applying may
    /// write the epoch file, and the link's calls must not block).
    views: watch::Sender<Option<GroupView>>,
}

impl BrokerMetadata for LinkedBroker {
    fn sync_topics(&self, topics: &[GroupTopic]) -> Result<(), MetadataSyncError> {
        let wanted: BTreeMap<String, u32> = topics
            .iter()
            .map(|t| (t.topic.clone(), t.queue_count))
            .collect();
        self.topics.sync(&wanted).map_err(MetadataSyncError::new)
    }

    fn sync_group_settings(&self, settings: &[GroupSettings]) -> Result<(), MetadataSyncError> {
        // The message model needs nothing here: a broadcasting group's consumers keep their own
        // offsets and retry in place, never sending back, so max retries and FIFO consumption
        // (RocketMQ 5 consumers) are what change what the broker does.
        let table: HashMap<String, u32> = settings
            .iter()
            .map(|s| (s.group.clone(), s.max_retries))
            .collect();
        self.retry.sync_group_max_retries(table);
        self.retry.sync_fifo_groups(
            settings
                .iter()
                .filter(|s| s.fifo)
                .map(|s| s.group.clone())
                .collect(),
        );
        Ok(())
    }

    fn max_offset(&self) -> u64 {
        self.store.write_offset()
    }

    fn replication_report(&self) -> ReplicationReport {
        ReplicationReport {
            confirm_offset: self.store.confirm_offset(),
            replicas: self.role.progress_report(),
        }
    }

    fn group_view_changed(&self, view: &GroupView) {
        // Views come from heartbeat answers and from the group watch: a heartbeat answer
        // written before an election may arrive after the watch pushed the election. Epochs
        // only rise, so an older view is stale and must not move the role back.
        let stale = |current: &GroupView| {
            (view.master_epoch, view.in_sync_set_epoch)
                < (current.master_epoch, current.in_sync_set_epoch)
        };
        if self.views.borrow().as_ref().is_some_and(stale) {
            return;
        }
        self.role.set_drained(view.drained);
        self.views.send_if_modified(|current| {
            if current.as_ref().is_some_and(stale) {
                return false;
            }
            let changed = current.as_ref() != Some(view);
            if changed {
                *current = Some(view.clone());
            }
            changed
        });
    }

    fn log_epoch(&self) -> u64 {
        self.role.log_epoch()
    }

    fn master_epoch(&self) -> u64 {
        self.role.master_epoch()
    }

    fn resigned(&self) -> bool {
        self.role.resigned()
    }

    fn master_gone(&self) -> Option<proto::controller::MasterGone> {
        self.role.master_gone()
    }

    fn store_health(&self) -> proto::controller::StoreHealth {
        let health = self.store.health().borrow().clone();
        proto::controller::StoreHealth {
            write_failed: health.write_failed.is_some(),
            corrupt_offset: health.corrupt.as_ref().map(|c| c.commit_log_offset),
            disk_full: health.disk_full,
            verified: health.verified,
            problem: health.problem(),
        }
    }

    fn lease_answered(&self, answer: LeaseAnswer) {
        self.role.lease_answered(answer);
    }
}

/// The controller link's tasks: the one applying group views, and the link itself.
pub struct StartedLink {
    pub views: tokio::task::JoinHandle<()>,
    pub link: LinkTask,
    /// Answers once if the controller refused this broker for good; the link has ended then.
    pub refused: oneshot::Receiver<LinkError>,
    /// The controller's latest view of this broker's group (the v5 API hands calls to the
    /// master it names).
    pub group_views: watch::Receiver<Option<GroupView>>,
}

/// The task that registers and heartbeats, and how to end it.
pub struct LinkTask {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    handover: Handover,
}

impl LinkTask {
    /// A handle for handing mastership over before this broker stops.
    pub fn handover(&self) -> Handover {
        self.handover.clone()
    }

    /// Ends the heartbeats with the stopping notice (`ControllerLink::say_stopping`), waiting at
    /// most a little longer than the notice may take.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        let grace =
            controller_client::broker_link::STOPPING_NOTICE_TIMEOUT + Duration::from_millis(500);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Registers with the controller (waiting for it if it is not up yet), then heartbeats; applies
/// each group view the controller answers with, in order (the role changes there); a master
/// proposes its in-sync set changes to the controller. The broker serves meanwhile with the
/// topics it last synced. A permanent refusal ends the link and answers on
/// [`StartedLink::refused`].
pub async fn start_controller_link(
    config: &BrokerConfig,
    advertised: String,
    v5_advertised: String,
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    retry: Arc<RetryState>,
    role: Arc<RoleCell>,
) -> Result<StartedLink, LinkStartError> {
    let settings = &config.broker;
    let identity = BrokerIdentity {
        cluster: settings.broker_cluster_name.clone(),
        group: settings.broker_name.clone(),
        broker_id: settings.broker_id,
        addr: advertised,
        role: match settings.role() {
            BrokerRoleKind::Controlled => BrokerRole::Controlled,
            BrokerRoleKind::Slave => BrokerRole::Slave,
            BrokerRoleKind::AsyncMaster | BrokerRoleKind::SyncMaster => BrokerRole::Master,
        },
        incarnation: new_incarnation(),
        election_priority: settings.election_priority,
        v5_addr: v5_advertised,
        replication: if settings.is_slave() {
            ReplicationMode::Unspecified
        } else if settings.sync_master() {
            ReplicationMode::SyncMaster
        } else {
            ReplicationMode::AsyncMaster
        },
    };
    let interval = Duration::from_millis(settings.controller_heartbeat_interval_ms);
    let (views, mut view_rx) = watch::channel(None::<GroupView>);
    let metadata = Arc::new(LinkedBroker {
        store: store.clone(),
        topics,
        retry,
        role: role.clone(),
        views,
    });
    let key = settings
        .cluster_key()?
        .ok_or(LinkStartError::NoClusterSecret)?;
    let mut link = ControllerLink::new(&settings.controller_addr, identity, metadata, key)?;
    role.start(
        Some(ControllerAuthority {
            group: settings.broker_name.clone(),
            proposer: link.in_sync_set_proposer(),
        }),
        Some(link.wake_handle()),
    )
    .await;
    let mut health = store.health();
    let group_views = view_rx.clone();
    let views = tokio::spawn(async move {
        loop {
            // A change of the store's health is looked at against the current view too: a
            // corrupt slave repairs itself once the view shows it out of the in-sync set.
            tokio::select! {
                changed = view_rx.changed() => if changed.is_err() { break },
                changed = health.changed() => if changed.is_err() { break },
            }
            let view = view_rx.borrow_and_update().clone();
            if let Some(view) = view {
                role.apply_view(&view).await;
            }
        }
    });
    let handover = link.handover();
    let (stop, mut stop_rx) = watch::channel(false);
    let (refuse, refused) = oneshot::channel();
    let task = tokio::spawn(async move {
        // A broker stopped before it registered has nothing to tell.
        tokio::select! {
            registered = link.register(interval) => {
                if let Err(err) = registered {
                    tracing::error!(error = %err, "the controller refused this broker; stopping");
                    let _ = refuse.send(err);
                    return;
                }
            }
            _ = stop_rx.wait_for(|stop| *stop) => return,
        }
        link.run(interval, async move {
            // The sender goes only with the process; either way the link ends.
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
        .await;
    });
    Ok(StartedLink {
        views,
        link: LinkTask {
            task,
            stop,
            handover,
        },
        refused,
        group_views,
    })
}

/// A number no earlier run of this broker used (see `RegisterBrokerRequest.incarnation`):
/// std's randomly seeded hasher over the wall clock and the process id. Never 0.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}
