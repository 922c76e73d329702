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
//! The link goes through a [`ControllerConnection`]: one controller address at a time, moving to
//! the next on any failure; every controller forwards to the leader, so any reachable one will
//! do. The link's own loop sets the pace (a heartbeat per interval, a registration per retry), so
//! each of its calls is a single attempt.
//!
//! For replication, the link also carries the broker's replication progress in every heartbeat
//! (for cluster list), hands the broker its group's view (master, master address, in-sync set)
//! after every answer that carries one, and gives the master an [`InSyncSetProposer`] to ask the
//! controller to change the in-sync set. The link does not decide anything about replication: the
//! broker compares the views and makes the proposals.
//!
//! A broker that stops cleanly ends the link with a last heartbeat that says so
//! ([`ControllerLink::say_stopping`]), so that the controller shows it not alive at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::ClusterKey;
use proto::common::ErrorCode;
use proto::controller as pb;

use crate::error::ControllerError;
pub use crate::master_calls::{Handover, InSyncSetProposer, ProposeError};
use crate::quorum::ControllerConnection;

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
    /// From a slave: the master it found gone (its log stream ended and its host refuses
    /// connections to it). While this holds (for up to 3 s), the link heartbeats every
    /// [`GONE_HEARTBEAT_INTERVAL`], so that the controller hears it at once. Must not block.
    fn master_gone(&self) -> Option<pb::MasterGone> {
        None
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
    /// Where RocketMQ 5 clients reach it (empty: it does not serve the v5 API).
    pub v5_addr: String,
}

/// Why the link gave up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The controller refused the registration for good (a second master, a bad name).
    #[error("the controller refused this broker: {0}")]
    Refused(String),
    #[error("controller addresses: {0}")]
    BadAddress(#[from] proto::dial::AddressError),
}

/// The link.
pub struct ControllerLink {
    identity: BrokerIdentity,
    conn: ControllerConnection,
    metadata: Arc<dyn BrokerMetadata>,
    synced_revision: Option<u64>,
    /// Notified to heartbeat at once instead of at the next tick.
    wake: Arc<tokio::sync::Notify>,
}

/// How often a slave that found its master gone heartbeats until the group's view names another
/// master: the controller may elect as soon as every in-sync slave said so.
pub const GONE_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(20);
/// How long such a slave heartbeats that often: longer than the lease wait, after which the
/// controller elects anyway if it can.
const GONE_FAST_FOR: Duration = Duration::from_secs(3);
/// Pause before the group watch is opened again.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for one controller's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for the answer to a handover: the controller's own switchover wait (8 s) plus
/// forwarding and an election.
const HANDOVER_CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// The refusals that end a registration or a proposal: retrying the same request cannot change
/// them.
pub(crate) const FINAL_REFUSALS: &[ErrorCode] = &[
    ErrorCode::Conflict,
    ErrorCode::BadRequest,
    ErrorCode::BrokerGroupNotFound,
];

fn is_permanent(status: &tonic::Status) -> bool {
    matches!(proto::status::error_code(status), Some(code) if FINAL_REFUSALS.contains(&code))
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
        let conn = match ControllerConnection::member(addrs, key) {
            Ok(conn) => conn.with_attempt_timeout(CALL_TIMEOUT),
            Err(ControllerError::BadAddress(err)) => return Err(LinkError::BadAddress(err)),
            Err(err) => return Err(LinkError::Refused(err.to_string())),
        };
        Ok(ControllerLink {
            identity,
            conn,
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

    /// A handle for handing mastership over before this broker stops (a planned switchover),
    /// usable from any task while the link heartbeats.
    pub fn handover(&self) -> Handover {
        Handover {
            conn: self
                .conn
                .clone()
                .with_attempt_timeout(HANDOVER_CALL_TIMEOUT),
            group: self.identity.group.clone(),
        }
    }

    /// A handle for the master's in-sync set proposals, usable from any task while the link
    /// heartbeats. It shares the link's connection, so both start with the controller that
    /// answered last.
    pub fn in_sync_set_proposer(&self) -> InSyncSetProposer {
        InSyncSetProposer {
            conn: self.conn.clone(),
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
        let (index, addr, _) = self.conn.current();
        tracing::debug!(controller = %addr, error = %error, "controller call failed; trying the next");
        self.conn.move_past(index);
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
                        tracing::warn!(controller = %self.conn.current().1, attempts, error = %status.message(), "cannot register with the controller yet; retrying");
                    }
                    self.next_controller(&status);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn try_register(&mut self) -> Result<(), tonic::Status> {
        let id = &self.identity;
        let request = pb::RegisterBrokerRequest {
            cluster: id.cluster.clone(),
            group: id.group.clone(),
            broker_id: id.broker_id,
            addr: id.addr.clone(),
            role: id.role as i32,
            incarnation: id.incarnation,
            election_priority: id.election_priority,
            replication: id.replication as i32,
            v5_addr: id.v5_addr.clone(),
            log_epoch: self.metadata.log_epoch(),
            max_offset: self.metadata.max_offset(),
        };
        let answer = self
            .conn
            .once(|mut client| async move { client.register_broker(request).await })
            .await?;
        tracing::info!(group = %id.group, broker_id = id.broker_id, view = ?answer.group, "registered with the controller");
        self.tell_group_view(answer.group.as_ref());
        self.sync_metadata().await
    }

    /// Fetches the group's topics and the consumer-group settings and hands both to the broker;
    /// the revision counts as synced only once both are applied, so a failure retries both.
    async fn sync_metadata(&mut self) -> Result<(), tonic::Status> {
        let request = pb::GroupTopicsRequest {
            group: self.identity.group.clone(),
        };
        let answer = self
            .conn
            .once(|mut client| async move { client.group_topics(request).await })
            .await?;
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
            master_gone: self.metadata.master_gone(),
        };
        // The lease counts from before the request left: the controller's own count starts
        // when it arrives, which is later.
        let sent_at = Instant::now();
        let sent = request.clone();
        let answer = match self
            .conn
            .once(|mut client| async move { client.broker_heartbeat(sent).await })
            .await
        {
            Ok(answer) => answer,
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
            let answer = self
                .conn
                .once(|mut client| async move { client.broker_heartbeat(report).await })
                .await;
            match answer {
                Ok(answer) => {
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
        let (_, _, mut client) = self.conn.current();
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
        let watch = tokio::spawn(watch_group(
            self.conn.clone(),
            self.identity.group.clone(),
            self.identity.broker_id,
            self.metadata.clone(),
        ));
        let _watch = AbortOnDrop(watch);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<tokio::time::Instant> = None;
        let wake = self.wake.clone();
        // Since when this slave has said its master is gone: it heartbeats fast for a while
        // only, in case no election follows (a group whose other in-sync members are silent
        // waits out the lease; one with no candidate waits for an operator).
        let mut gone_since: Option<tokio::time::Instant> = None;
        loop {
            gone_since = match (self.metadata.master_gone(), gone_since) {
                (None, _) => None,
                (Some(_), None) => Some(tokio::time::Instant::now()),
                (Some(_), since) => since,
            };
            let gone = gone_since.is_some_and(|since| since.elapsed() < GONE_FAST_FOR);
            tokio::select! {
                _ = ticks.tick() => {}
                () = wake.notified() => ticks.reset(),
                () = tokio::time::sleep(GONE_HEARTBEAT_INTERVAL), if gone => ticks.reset(),
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

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a `WatchGroup` stream open on the controller leader and hands every view it pushes to
/// the broker, as heartbeat answers do: a broker elected master takes over when the election
/// is written, not at its next heartbeat. Reopened after [`REWATCH_PAUSE`] when it ends (a
/// leader change, the broker not registered yet).
async fn watch_group(
    conn: ControllerConnection,
    group: String,
    broker_id: u64,
    metadata: Arc<dyn BrokerMetadata>,
) {
    let request = pb::WatchGroupRequest { group, broker_id };
    loop {
        for (addr, mut client) in conn.clients() {
            let opened = tokio::time::timeout(CALL_TIMEOUT, client.watch_group(request.clone()));
            let mut stream = match opened.await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    tracing::debug!(controller = %addr, error = %status.message(), "group watch refused");
                    continue;
                }
                Err(_) => continue,
            };
            while let Ok(Some(view)) = stream.message().await {
                metadata.group_view_changed(&view);
            }
            break;
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}
