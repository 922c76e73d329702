//! A broker's link to the controller quorum: registration, heartbeats, and keeping the broker's
//! topics and consumer-group settings in step with the controller's.
//!
//! The controller is the source of truth for topics (a topic created before a master change
//! exists after it, unlike RocketMQ where topic config lives on brokers) and for consumer-group
//! settings (max retries, message model). The broker keeps a local copy so that it serves across
//! a controller outage; it fetches both again whenever a heartbeat answer carries a metadata
//! revision it has not synced. Both come in one `GroupTopics` answer under one revision, so a
//! broker never records a revision it has only half applied.
//!
//! The link tries one controller address at a time and moves to the next on any failure; every
//! controller forwards to the leader, so any reachable one will do.
//!
//! For replication, the link also carries the broker's replication progress in every heartbeat
//! (for cluster list), hands the broker its group's view (master, master address, in-sync set)
//! after every answer that carries one, and gives the master an [`InSyncSetProposer`] to ask the
//! controller to change the in-sync set. The link does not decide anything about replication: the
//! broker compares the views and makes the proposals.
//!
//! A broker that stops cleanly ends the link with a last heartbeat that says so
//! ([`ControllerLink::say_stopping`]), so that the controller shows it not alive at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::{ClusterKey, SignedChannel};
use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use tonic::transport::Endpoint;

/// Longest a stopping broker waits for the controller to take its stopping notice: the process
/// is on its way out, and the heartbeat timeout tells the controller anyway.
pub const STOPPING_NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a broker reports about replication in each heartbeat, for cluster list.
#[derive(Clone, Debug, Default)]
pub struct ReplicationReport {
    /// The broker's confirm offset: what its consumers may see.
    pub confirm_offset: u64,
    /// From a master: one entry per slave it knows. Empty from a slave.
    pub replicas: Vec<pb::ReplicaProgress>,
}

/// Why the broker could not apply the controller's topics or consumer-group settings: the
/// broker's own error, kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("applying the controller's metadata: {source}")]
pub struct MetadataSyncError {
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl MetadataSyncError {
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        MetadataSyncError {
            source: source.into(),
        }
    }
}

/// What the broker gives the link: where to put the topics and the consumer-group settings, its
/// log end and replication progress for cluster list, and where to hear of its group's view. The
/// sync methods run on a blocking thread and may block; the others run on the link's async task
/// and must not (read atomics, send on a channel).
pub trait BrokerMetadata: Send + Sync + 'static {
    /// Makes the broker's topics exactly `topics` (its own `%` topics aside). Durable before it
    /// returns.
    fn sync_topics(&self, topics: &[pb::GroupTopic]) -> Result<(), MetadataSyncError>;
    /// Makes the broker's consumer-group settings exactly `settings`: a group missing from it has
    /// no setting on the controller any more and goes back to the broker's own defaults. Called
    /// after `sync_topics` succeeded, with the settings of the same revision.
    fn sync_group_settings(&self, settings: &[pb::GroupSettings]) -> Result<(), MetadataSyncError>;
    /// The commit log's end offset.
    fn max_offset(&self) -> u64;
    /// Replication progress, sent in every heartbeat. The default reports nothing, for a broker
    /// that does not replicate.
    fn replication_report(&self) -> ReplicationReport {
        ReplicationReport::default()
    }
    /// The controller's view of this broker's group, after every successful registration and
    /// every heartbeat answer that carries one, changed or not: the implementor compares with
    /// what it holds (a slave learns its master's address here, a master its in-sync set). Must
    /// not block: it runs on the link's task, between heartbeats.
    fn group_view_changed(&self, _view: &pb::GroupView) {}
    /// The newest epoch in the broker's commit log (0: none), for election ranking.
    fn log_epoch(&self) -> u64 {
        0
    }
    /// The master epoch the broker acts in: the one it is master of, or the one of the master
    /// it follows (0: none yet).
    fn master_epoch(&self) -> u64 {
        0
    }
    /// The broker's store, for the controller's elections and cluster list. The default reports
    /// a sound, verified store, for a broker that does not track one.
    fn store_health(&self) -> pb::StoreHealth {
        pb::StoreHealth {
            verified: true,
            ..pb::StoreHealth::default()
        }
    }
    /// True once a master asked to resign has stopped acknowledging and let its slaves catch up.
    fn resigned(&self) -> bool {
        false
    }
    /// After every heartbeat answer (after `group_view_changed` with its view): the lease it
    /// granted or withheld, and whether it asks this master to resign. Must not block.
    fn lease_answered(&self, _answer: LeaseAnswer) {}
}

/// What one heartbeat answer said about mastership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// The master epoch of the answer's group view.
    pub master_epoch: u64,
    /// When the granted lease ends: the heartbeat's send time plus `lease_ms`, by this process's
    /// monotonic clock. None: no lease granted (not the master, or asked to resign).
    pub valid_until: Option<Instant>,
    /// The controller asks this master to resign (planned switchover).
    pub resign: bool,
}

/// Who this broker is, for registration.
#[derive(Clone, Debug)]
pub struct BrokerIdentity {
    pub cluster: String,
    pub group: String,
    pub broker_id: u64,
    /// Where clients and slaves reach it.
    pub addr: String,
    /// MASTER or SLAVE (static roles) or CONTROLLED.
    pub role: pb::BrokerRole,
    /// Random per process start (see `RegisterBrokerRequest.incarnation`).
    pub incarnation: u64,
    /// Lower wins among equal election candidates.
    pub election_priority: u32,
    /// How it replicates as master (unspecified for a static slave).
    pub replication: pb::ReplicationMode,
}

/// Why the link gave up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The controller refused the registration for good (a second master, a bad name).
    #[error("the controller refused this broker: {0}")]
    Refused(String),
    #[error("no controller address configured")]
    NoAddress,
}

/// The link.
pub struct ControllerLink {
    identity: BrokerIdentity,
    addrs: Vec<String>,
    clients: Vec<ControllerClient<SignedChannel>>,
    current: usize,
    metadata: Arc<dyn BrokerMetadata>,
    synced_revision: Option<u64>,
    /// Notified to heartbeat at once instead of at the next tick.
    wake: Arc<tokio::sync::Notify>,
}

/// Why an in-sync set proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The controller refused it for good: a stale master or master epoch, an in-sync set
    /// changed meanwhile, a set without the master or with unknown brokers. Retrying the same
    /// proposal cannot succeed; the next group view tells what the controller holds.
    #[error("the controller refused the in-sync set change: {0}")]
    Refused(String),
    /// No controller answered within the patience given (no quorum, all unreachable). The
    /// change may or may not have been applied; the next group view tells.
    #[error("no controller answered the in-sync set change in time: {0}")]
    Unavailable(String),
}

/// Longest wait for one controller's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between proposal attempts: long enough not to spin against a controller that answers
/// at once (no leader during an election), short next to an election (a few hundred ms).
const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(100);

fn is_permanent(status: &tonic::Status) -> bool {
    matches!(
        proto::status::error_code(status),
        Some(ErrorCode::Conflict | ErrorCode::BadRequest | ErrorCode::BrokerGroupNotFound)
    )
}

fn is_unregistered(status: &tonic::Status) -> bool {
    proto::status::error_code(status) == Some(ErrorCode::NotFound)
}

impl ControllerLink {
    /// `addrs`: controller addresses, comma-separated.
    /// `key` signs the broker's internal calls (registration, heartbeats, topics, in-sync set
    /// changes): controllers refuse them unsigned.
    pub fn new(
        addrs: &str,
        identity: BrokerIdentity,
        metadata: Arc<dyn BrokerMetadata>,
        key: ClusterKey,
    ) -> Result<ControllerLink, LinkError> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Err(LinkError::NoAddress);
        }
        let mut clients = Vec::new();
        for addr in &addrs {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|err| LinkError::Refused(format!("bad controller address {addr}: {err}")))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(CALL_TIMEOUT)
                .tcp_nodelay(true);
            let channel = SignedChannel::new(endpoint.connect_lazy(), key.clone());
            clients.push(ControllerClient::new(channel));
        }
        Ok(ControllerLink {
            identity,
            addrs,
            clients,
            current: 0,
            metadata,
            synced_revision: None,
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// A handle that makes [`ControllerLink::run`] heartbeat at once (a master that finished
    /// resigning, a broker whose role changed), instead of at its next tick.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    fn client(&self) -> ControllerClient<SignedChannel> {
        self.clients[self.current].clone()
    }

    /// A handle for the master's in-sync set proposals, usable from any task while the link
    /// heartbeats. It starts with the controller the link uses now.
    pub fn in_sync_set_proposer(&self) -> InSyncSetProposer {
        InSyncSetProposer {
            controllers: self
                .addrs
                .iter()
                .cloned()
                .zip(self.clients.iter().cloned())
                .collect(),
            current: Arc::new(AtomicUsize::new(self.current)),
        }
    }

    fn tell_group_view(&self, view: Option<&pb::GroupView>) {
        if let Some(view) = view {
            self.metadata.group_view_changed(view);
        }
    }

    fn tell_lease(&self, answer: &pb::BrokerHeartbeatResponse, sent_at: Instant) {
        let Some(view) = answer.group.as_ref() else {
            return;
        };
        self.metadata.lease_answered(LeaseAnswer {
            master_epoch: view.master_epoch,
            valid_until: (answer.lease_ms > 0)
                .then(|| sent_at + Duration::from_millis(answer.lease_ms)),
            resign: answer.resign,
        });
    }

    fn next_controller(&mut self, error: &tonic::Status) {
        tracing::debug!(controller = %self.addrs[self.current], error = %error, "controller call failed; trying the next");
        self.current = (self.current + 1) % self.clients.len();
    }

    /// Registers and syncs the metadata, retrying every `retry` until it succeeds. Only a
    /// permanent refusal (a second master, a bad name) ends it with an error.
    pub async fn register(&mut self, retry: Duration) -> Result<(), LinkError> {
        let mut attempts = 0u64;
        loop {
            match self.try_register().await {
                Ok(()) => return Ok(()),
                Err(status) if is_permanent(&status) => {
                    return Err(LinkError::Refused(status.message().to_owned()))
                }
                Err(status) => {
                    attempts += 1;
                    // Loud at first, then every tenth attempt: a broker started before its
                    // controllers waits for them.
                    if attempts <= 3 || attempts % 10 == 0 {
                        tracing::warn!(controller = %self.addrs[self.current], attempts, error = %status.message(), "cannot register with the controller yet; retrying");
                    }
                    self.next_controller(&status);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn try_register(&mut self) -> Result<(), tonic::Status> {
        let id = &self.identity;
        let answer = self
            .client()
            .register_broker(pb::RegisterBrokerRequest {
                cluster: id.cluster.clone(),
                group: id.group.clone(),
                broker_id: id.broker_id,
                addr: id.addr.clone(),
                role: id.role as i32,
                incarnation: id.incarnation,
                election_priority: id.election_priority,
                replication: id.replication as i32,
                log_epoch: self.metadata.log_epoch(),
                max_offset: self.metadata.max_offset(),
            })
            .await?
            .into_inner();
        tracing::info!(group = %id.group, broker_id = id.broker_id, view = ?answer.group, "registered with the controller");
        self.tell_group_view(answer.group.as_ref());
        self.sync_metadata().await
    }

    /// Fetches the group's topics and the consumer-group settings and hands both to the broker;
    /// the revision counts as synced only once both are applied, so a failure retries both.
    async fn sync_metadata(&mut self) -> Result<(), tonic::Status> {
        let answer = self
            .client()
            .group_topics(pb::GroupTopicsRequest {
                group: self.identity.group.clone(),
            })
            .await?
            .into_inner();
        let metadata = self.metadata.clone();
        let topics = answer.topics;
        let consumer_groups = answer.consumer_groups;
        let (topic_count, group_count) = (topics.len(), consumer_groups.len());
        tokio::task::spawn_blocking(move || {
            metadata.sync_topics(&topics)?;
            metadata.sync_group_settings(&consumer_groups)
        })
        .await
        .map_err(|err| tonic::Status::internal(proto::bounded_message(err.to_string())))?
        .map_err(|err| tonic::Status::internal(proto::bounded_message(err.to_string())))?;
        if self.synced_revision != Some(answer.metadata_revision) {
            tracing::info!(
                revision = answer.metadata_revision,
                topics = topic_count,
                consumer_groups = group_count,
                "topics and consumer-group settings synced from the controller"
            );
        }
        self.synced_revision = Some(answer.metadata_revision);
        Ok(())
    }

    /// One heartbeat, and a metadata sync if the controller's metadata moved on.
    pub async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        let report = self.metadata.replication_report();
        let request = pb::BrokerHeartbeatRequest {
            group: self.identity.group.clone(),
            broker_id: self.identity.broker_id,
            max_offset: self.metadata.max_offset(),
            synced_revision: self.synced_revision.unwrap_or(0),
            confirm_offset: report.confirm_offset,
            replicas: report.replicas,
            incarnation: self.identity.incarnation,
            log_epoch: self.metadata.log_epoch(),
            master_epoch: self.metadata.master_epoch(),
            resigned: self.metadata.resigned(),
            stopping: false,
            store: Some(self.metadata.store_health()),
        };
        // The lease counts from before the request left: the controller's own count starts
        // when it arrives, which is later.
        let sent_at = Instant::now();
        let answer = match self.client().broker_heartbeat(request.clone()).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if is_unregistered(&status) => {
                // The controller does not know this broker (its state was rebuilt): join again.
                tracing::warn!("the controller does not know this broker; registering again");
                return self.try_register().await;
            }
            Err(status) => {
                self.next_controller(&status);
                return Err(status);
            }
        };
        self.tell_group_view(answer.group.as_ref());
        self.tell_lease(&answer, sent_at);
        if self.synced_revision != Some(answer.metadata_revision) {
            if let Err(status) = self.sync_metadata().await {
                self.next_controller(&status);
                return Err(status);
            }
            // Tell the controller at once: a topic creation waits for it.
            let report = pb::BrokerHeartbeatRequest {
                synced_revision: self.synced_revision.unwrap_or(0),
                ..request
            };
            let sent_at = Instant::now();
            match self.client().broker_heartbeat(report).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    self.tell_group_view(answer.group.as_ref());
                    self.tell_lease(&answer, sent_at);
                }
                Err(status) => {
                    self.next_controller(&status);
                    return Err(status);
                }
            }
        }
        Ok(())
    }

    /// Tells the controller that this broker process is stopping: its last heartbeat, with
    /// `stopping` set, so that it is shown not alive at once instead of after the heartbeat
    /// timeout. Best effort within [`STOPPING_NOTICE_TIMEOUT`]: a controller that does not hear
    /// it learns the same from the silence.
    pub async fn say_stopping(&mut self) {
        let request = pb::BrokerHeartbeatRequest {
            group: self.identity.group.clone(),
            broker_id: self.identity.broker_id,
            incarnation: self.identity.incarnation,
            stopping: true,
            ..Default::default()
        };
        let mut client = self.client();
        let told = client.broker_heartbeat(request);
        match tokio::time::timeout(STOPPING_NOTICE_TIMEOUT, told).await {
            Ok(Ok(_)) => tracing::info!("told the controller this broker is stopping"),
            Ok(Err(status)) => {
                tracing::info!(error = %status.message(), "could not tell the controller this broker is stopping")
            }
            Err(_) => tracing::info!(
                "the controller did not answer the stopping notice in time; it learns it from the silence"
            ),
        }
    }

    /// Heartbeats every `interval` until `stop` completes (or the task is aborted); then tells
    /// the controller this broker is stopping ([`Self::say_stopping`]), after any heartbeat in
    /// flight, so that no heartbeat follows the notice. Failures are logged, never fatal: a
    /// broker keeps serving with its last topics and group settings while no controller answers.
    pub async fn run(mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<tokio::time::Instant> = None;
        let wake = self.wake.clone();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = wake.notified() => ticks.reset(),
                () = &mut stop => {
                    self.say_stopping().await;
                    return;
                }
            }
            match self.heartbeat().await {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "controller reachable again"
                        );
                    }
                }
                Err(status) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %status.message(), "controller heartbeat failed; serving with the last known topics");
                        failing_since = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }
}

/// A master's handle for in-sync set proposals: the link's controller clients, shared. Cheap to
/// clone; clones share which controller answered last.
#[derive(Clone)]
pub struct InSyncSetProposer {
    /// (address, client) per controller.
    controllers: Arc<[(String, ControllerClient<SignedChannel>)]>,
    /// Index of the controller to try first: the last one that did not fail.
    current: Arc<AtomicUsize>,
}

impl InSyncSetProposer {
    /// Asks the controller to make `request.in_sync_set` the group's in-sync set, and answers the
    /// group's view once it is accepted (its new in-sync set and epoch). Tries the controllers in
    /// turn, each for at most 3 s, pausing 100 ms between attempts, until `patience` runs out
    /// ([`ProposeError::Unavailable`]); a refusal (CONFLICT, BAD_REQUEST,
    /// BROKER_GROUP_NOT_FOUND) ends it at once ([`ProposeError::Refused`]).
    ///
    /// An attempt that timed out may still have been applied; its retry then carries an old
    /// in-sync set epoch and is refused as changed meanwhile. Either way the caller learns the
    /// truth from the next group view, and must not apply the set before an accepted answer.
    pub async fn propose(
        &self,
        request: pb::AlterInSyncSetRequest,
        patience: Duration,
    ) -> Result<pb::GroupView, ProposeError> {
        let deadline = tokio::time::Instant::now() + patience;
        let count = self.controllers.len();
        loop {
            let index = self.current.load(Ordering::Relaxed) % count;
            let (addr, client) = &self.controllers[index];
            let call_timeout =
                CALL_TIMEOUT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let mut client = client.clone();
            let attempt = client.alter_in_sync_set(request.clone());
            let failure = match tokio::time::timeout(call_timeout, attempt).await {
                Ok(Ok(answer)) => match answer.into_inner().group {
                    Some(view) => return Ok(view),
                    // Every controller fills it for an accepted change; one that does not is
                    // broken, and another may answer properly.
                    None => "accepted, but the answer carried no group view".to_owned(),
                },
                Ok(Err(status)) if is_permanent(&status) => {
                    return Err(ProposeError::Refused(status.message().to_owned()))
                }
                Ok(Err(status)) => status.message().to_owned(),
                Err(_) => format!("no answer within {} ms", call_timeout.as_millis()),
            };
            tracing::debug!(controller = %addr, error = %failure, "in-sync set proposal failed; trying the next controller");
            // Only the first of concurrent failures moves on, so that two proposals failing at
            // once do not skip a controller.
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if tokio::time::Instant::now() + PROPOSE_RETRY_PAUSE >= deadline {
                return Err(ProposeError::Unavailable(format!(
                    "gave up after {} ms; last, controller {addr}: {failure}",
                    patience.as_millis()
                )));
            }
            tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use super::*;
    use crate::controller::config::ControllerConfig;
    use crate::controller::node::ControllerNode;

    /// A broker that remembers what the link handed it, and reports what the test sets.
    #[derive(Default)]
    struct RecordingBroker {
        settings: Mutex<Vec<pb::GroupSettings>>,
        settings_syncs: Mutex<u32>,
        views: Mutex<Vec<pb::GroupView>>,
        max_offset: AtomicU64,
        report: Mutex<ReplicationReport>,
    }

    impl RecordingBroker {
        fn last_view(&self) -> pb::GroupView {
            self.views
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("the link handed over no group view")
        }
    }

    impl BrokerMetadata for RecordingBroker {
        fn sync_topics(&self, _topics: &[pb::GroupTopic]) -> Result<(), MetadataSyncError> {
            Ok(())
        }

        fn sync_group_settings(
            &self,
            settings: &[pb::GroupSettings],
        ) -> Result<(), MetadataSyncError> {
            *self.settings.lock().unwrap() = settings.to_vec();
            *self.settings_syncs.lock().unwrap() += 1;
            Ok(())
        }

        fn max_offset(&self) -> u64 {
            self.max_offset.load(Ordering::Relaxed)
        }

        fn replication_report(&self) -> ReplicationReport {
            self.report.lock().unwrap().clone()
        }

        fn group_view_changed(&self, view: &pb::GroupView) {
            self.views.lock().unwrap().push(view.clone());
        }
    }

    /// A broker that implements only the required methods: the replication ones have defaults,
    /// so brokers written before replication still compile and link.
    struct PlainBroker;

    impl BrokerMetadata for PlainBroker {
        fn sync_topics(&self, _topics: &[pb::GroupTopic]) -> Result<(), MetadataSyncError> {
            Ok(())
        }

        fn sync_group_settings(
            &self,
            _settings: &[pb::GroupSettings],
        ) -> Result<(), MetadataSyncError> {
            Ok(())
        }

        fn max_offset(&self) -> u64 {
            0
        }
    }

    /// A one-node controller on a free loopback port, in `dir`.
    async fn start_controller(dir: &std::path::Path) -> ControllerNode {
        ControllerNode::start(ControllerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            // A quorum of one never dials its own address, so the port need not be known yet.
            peers: "1=127.0.0.1:1".to_owned(),
            data_dir: dir.to_path_buf(),
            cluster_secret: TEST_SECRET.to_owned(),
            ..ControllerConfig::default()
        })
        .await
        .unwrap()
    }

    const TEST_SECRET: &str = "link-test-cluster-secret";

    fn key() -> ClusterKey {
        ClusterKey::new(TEST_SECRET).unwrap()
    }

    fn identity(broker_id: u64, role: pb::BrokerRole) -> BrokerIdentity {
        BrokerIdentity {
            cluster: "DefaultCluster".to_owned(),
            group: "broker-a".to_owned(),
            broker_id,
            addr: format!("127.0.0.1:{}", 10911 + broker_id),
            role,
            incarnation: 1,
            election_priority: 0,
            replication: pb::ReplicationMode::Unspecified,
        }
    }

    fn proposal(view: &pb::GroupView, in_sync_set: &[u64]) -> pb::AlterInSyncSetRequest {
        pb::AlterInSyncSetRequest {
            group: view.name.clone(),
            master_id: view.master_id.expect("the group has a master"),
            master_epoch: view.master_epoch,
            in_sync_set_epoch: view.in_sync_set_epoch,
            in_sync_set: in_sync_set.to_vec(),
        }
    }

    #[test]
    fn the_proposer_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<InSyncSetProposer>();
    }

    #[tokio::test]
    async fn the_master_changes_the_in_sync_set_only_with_current_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let node = start_controller(dir.path()).await;
        let addr = node.local_addr.to_string();
        let master = Arc::new(RecordingBroker::default());
        let slave = Arc::new(RecordingBroker::default());
        let mut master_link = ControllerLink::new(
            &addr,
            identity(0, pb::BrokerRole::Master),
            master.clone(),
            key(),
        )
        .unwrap();
        master_link
            .register(Duration::from_millis(50))
            .await
            .unwrap();
        let mut slave_link = ControllerLink::new(
            &addr,
            identity(1, pb::BrokerRole::Slave),
            slave.clone(),
            key(),
        )
        .unwrap();
        slave_link
            .register(Duration::from_millis(50))
            .await
            .unwrap();

        // Registration hands over the view: the slave learns where its master is.
        let seen_by_slave = slave.last_view();
        assert_eq!(seen_by_slave.master_id, Some(0));
        assert_eq!(seen_by_slave.master_addr, "127.0.0.1:10911");
        assert_eq!(seen_by_slave.in_sync_set, vec![0]);
        master_link.heartbeat().await.unwrap();
        let before = master.last_view();
        assert_eq!(before.master_addr, "127.0.0.1:10911");

        let proposer = master_link.in_sync_set_proposer();
        let patience = Duration::from_secs(5);
        let accepted = proposer
            .propose(proposal(&before, &[0, 1]), patience)
            .await
            .unwrap();
        assert_eq!(accepted.in_sync_set, vec![0, 1]);
        assert_eq!(accepted.in_sync_set_epoch, before.in_sync_set_epoch + 1);
        assert_eq!(accepted.master_epoch, before.master_epoch);
        assert_eq!(accepted.master_addr, "127.0.0.1:10911");

        // The same proposal again carries the old in-sync set epoch: refused, not retried.
        let err = proposer
            .propose(proposal(&before, &[0, 1]), patience)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::Refused(m) if m.contains("changed meanwhile")),
            "{err}"
        );
        // A master epoch that is not the group's: a deposed master must not change the set.
        let stale = pb::AlterInSyncSetRequest {
            master_epoch: before.master_epoch - 1,
            ..proposal(&accepted, &[0])
        };
        let err = proposer.propose(stale, patience).await.unwrap_err();
        assert!(
            matches!(&err, ProposeError::Refused(m) if m.contains("stale master")),
            "{err}"
        );

        // A malformed proposal is refused by the service before it reaches the Raft log.
        let err = proposer
            .propose(proposal(&accepted, &[]), patience)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::Refused(m) if m.contains("at least the master")),
            "{err}"
        );

        // Every heartbeat answer hands the view over again, now with the accepted set.
        slave_link.heartbeat().await.unwrap();
        let seen_by_slave = slave.last_view();
        assert_eq!(seen_by_slave.in_sync_set, vec![0, 1]);
        assert_eq!(seen_by_slave.in_sync_set_epoch, accepted.in_sync_set_epoch);
        node.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn heartbeats_carry_replication_progress_to_cluster_list() {
        let dir = tempfile::tempdir().unwrap();
        let node = start_controller(dir.path()).await;
        let addr = node.local_addr.to_string();
        let master = Arc::new(RecordingBroker::default());
        let slave = Arc::new(RecordingBroker::default());
        let mut master_link = ControllerLink::new(
            &addr,
            identity(0, pb::BrokerRole::Master),
            master.clone(),
            key(),
        )
        .unwrap();
        master_link
            .register(Duration::from_millis(50))
            .await
            .unwrap();
        let mut slave_link = ControllerLink::new(
            &addr,
            identity(1, pb::BrokerRole::Slave),
            slave.clone(),
            key(),
        )
        .unwrap();
        slave_link
            .register(Duration::from_millis(50))
            .await
            .unwrap();
        let mut admin = ControllerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let brokers = |list: pb::ClusterListResponse| {
            let group = list.groups.into_iter().next().expect("one group");
            let mut brokers = group.brokers.into_iter();
            (brokers.next().unwrap(), brokers.next().unwrap())
        };

        // No report on the slave from its master yet: lag from the two commit-log ends.
        master.max_offset.store(600, Ordering::Relaxed);
        *master.report.lock().unwrap() = ReplicationReport {
            confirm_offset: 500,
            replicas: Vec::new(),
        };
        slave.max_offset.store(450, Ordering::Relaxed);
        *slave.report.lock().unwrap() = ReplicationReport {
            confirm_offset: 440,
            replicas: Vec::new(),
        };
        master_link.heartbeat().await.unwrap();
        slave_link.heartbeat().await.unwrap();
        let list = admin.cluster_list(pb::ClusterListRequest {}).await.unwrap();
        let (master_view, slave_view) = brokers(list.into_inner());
        assert_eq!(master_view.broker_id, 0);
        assert_eq!(
            (master_view.confirm_offset, master_view.lag_bytes),
            (500, 0)
        );
        assert_eq!(master_view.lag_ms, None);
        assert!(!master_view.replica_connected);
        assert_eq!(slave_view.confirm_offset, 440);
        assert_eq!(slave_view.lag_bytes, 150);
        assert_eq!(slave_view.lag_ms, None);
        assert!(!slave_view.replica_connected);

        // The master reports on its slave: its numbers win.
        master.report.lock().unwrap().replicas = vec![pb::ReplicaProgress {
            broker_id: 1,
            acked_offset: 500,
            lag_bytes: 100,
            lag_ms: 25,
            connected: true,
        }];
        master_link.heartbeat().await.unwrap();
        let list = admin.cluster_list(pb::ClusterListRequest {}).await.unwrap();
        let (master_view, slave_view) = brokers(list.into_inner());
        assert_eq!(master_view.lag_bytes, 0);
        assert_eq!(slave_view.lag_bytes, 100);
        assert_eq!(slave_view.lag_ms, Some(25));
        assert!(slave_view.replica_connected);
        node.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_proposal_with_no_controller_reachable_gives_up_after_its_patience() {
        // Port 1 on loopback refuses connections at once: every attempt fails fast, so the loop
        // and not a single call's timeout is what ends.
        let link = ControllerLink::new(
            "127.0.0.1:1",
            identity(0, pb::BrokerRole::Master),
            Arc::new(PlainBroker),
            key(),
        )
        .unwrap();
        let request = pb::AlterInSyncSetRequest {
            group: "broker-a".to_owned(),
            master_id: 0,
            master_epoch: 1,
            in_sync_set_epoch: 1,
            in_sync_set: vec![0],
        };
        let started = tokio::time::Instant::now();
        let err = link
            .in_sync_set_proposer()
            .propose(request, Duration::from_millis(350))
            .await
            .unwrap_err();
        assert!(matches!(err, ProposeError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn group_settings_set_on_the_controller_reach_the_broker_at_the_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let node = start_controller(dir.path()).await;
        let addr = node.local_addr.to_string();
        let broker = Arc::new(RecordingBroker::default());
        let identity = identity(0, pb::BrokerRole::Master);
        let mut link = ControllerLink::new(&addr, identity, broker.clone(), key()).unwrap();
        // Retries until the controller has elected itself.
        link.register(Duration::from_millis(50)).await.unwrap();
        assert!(broker.settings.lock().unwrap().is_empty());
        assert_eq!(*broker.settings_syncs.lock().unwrap(), 1);

        let settings = pb::GroupSettings {
            group: "orders-consumers".to_owned(),
            max_retries: 2,
            message_model: pb::MessageModel::Clustering as i32,
        };
        let mut admin = ControllerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        admin
            .set_group_settings(pb::SetGroupSettingsRequest {
                settings: Some(settings.clone()),
            })
            .await
            .unwrap();
        link.heartbeat().await.unwrap();
        assert_eq!(*broker.settings.lock().unwrap(), vec![settings]);
        assert_eq!(*broker.settings_syncs.lock().unwrap(), 2);

        // The revision did not move: the heartbeat fetches nothing.
        link.heartbeat().await.unwrap();
        assert_eq!(*broker.settings_syncs.lock().unwrap(), 2);
        node.shutdown().await.unwrap();
    }
}
