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

use std::sync::Arc;
use std::time::Duration;

use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint};

/// What the broker gives the link: where to put the topics and the consumer-group settings, and
/// its log end for cluster list. The sync methods run on a blocking thread and may block.
pub trait BrokerMetadata: Send + Sync + 'static {
    /// Makes the broker's topics exactly `topics` (its own `%` topics aside). Durable before it
    /// returns.
    fn sync_topics(&self, topics: &[pb::GroupTopic]) -> Result<(), String>;
    /// Makes the broker's consumer-group settings exactly `settings`: a group missing from it has
    /// no setting on the controller any more and goes back to the broker's own defaults. Called
    /// after `sync_topics` succeeded, with the settings of the same revision.
    fn sync_group_settings(&self, settings: &[pb::GroupSettings]) -> Result<(), String>;
    /// The commit log's end offset.
    fn max_offset(&self) -> u64;
}

/// Who this broker is, for registration.
#[derive(Clone, Debug)]
pub struct BrokerIdentity {
    pub cluster: String,
    pub group: String,
    pub broker_id: u64,
    /// Where clients and slaves reach it.
    pub addr: String,
    pub role: pb::BrokerRole,
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
    clients: Vec<ControllerClient<Channel>>,
    current: usize,
    metadata: Arc<dyn BrokerMetadata>,
    synced_revision: Option<u64>,
}

/// Longest wait for one controller's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn is_permanent(status: &tonic::Status) -> bool {
    let code = status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .and_then(|v| ErrorCode::try_from(v).ok());
    matches!(
        code,
        Some(ErrorCode::Conflict | ErrorCode::BadRequest | ErrorCode::BrokerGroupNotFound)
    )
}

fn is_unregistered(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == (ErrorCode::NotFound as i32).to_string())
}

impl ControllerLink {
    /// `addrs`: controller addresses, comma-separated.
    pub fn new(
        addrs: &str,
        identity: BrokerIdentity,
        metadata: Arc<dyn BrokerMetadata>,
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
            clients.push(ControllerClient::new(endpoint.connect_lazy()));
        }
        Ok(ControllerLink {
            identity,
            addrs,
            clients,
            current: 0,
            metadata,
            synced_revision: None,
        })
    }

    fn client(&self) -> ControllerClient<Channel> {
        self.clients[self.current].clone()
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
            })
            .await?
            .into_inner();
        tracing::info!(group = %id.group, broker_id = id.broker_id, view = ?answer.group, "registered with the controller");
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
        .map_err(|err| tonic::Status::internal(err.to_string()))?
        .map_err(tonic::Status::internal)?;
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
        let request = pb::BrokerHeartbeatRequest {
            group: self.identity.group.clone(),
            broker_id: self.identity.broker_id,
            max_offset: self.metadata.max_offset(),
            synced_revision: self.synced_revision.unwrap_or(0),
        };
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
            if let Err(status) = self.client().broker_heartbeat(report).await {
                self.next_controller(&status);
                return Err(status);
            }
        }
        Ok(())
    }

    /// Heartbeats every `interval` until the task is aborted. Failures are logged, never fatal:
    /// a broker keeps serving with its last topics and group settings while no controller answers.
    pub async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            ticks.tick().await;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::controller::config::ControllerConfig;
    use crate::controller::node::ControllerNode;

    /// A broker that remembers what the link handed it.
    #[derive(Default)]
    struct RecordingBroker {
        settings: Mutex<Vec<pb::GroupSettings>>,
        settings_syncs: Mutex<u32>,
    }

    impl BrokerMetadata for RecordingBroker {
        fn sync_topics(&self, _topics: &[pb::GroupTopic]) -> Result<(), String> {
            Ok(())
        }

        fn sync_group_settings(&self, settings: &[pb::GroupSettings]) -> Result<(), String> {
            *self.settings.lock().unwrap() = settings.to_vec();
            *self.settings_syncs.lock().unwrap() += 1;
            Ok(())
        }

        fn max_offset(&self) -> u64 {
            0
        }
    }

    #[tokio::test]
    async fn group_settings_set_on_the_controller_reach_the_broker_at_the_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let node = ControllerNode::start(ControllerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            // A quorum of one never dials its own address, so the port need not be known yet.
            peers: "1=127.0.0.1:1".to_owned(),
            data_dir: dir.path().to_path_buf(),
            ..ControllerConfig::default()
        })
        .await
        .unwrap();
        let addr = node.local_addr.to_string();
        let broker = Arc::new(RecordingBroker::default());
        let identity = BrokerIdentity {
            cluster: "DefaultCluster".to_owned(),
            group: "broker-a".to_owned(),
            broker_id: 0,
            addr: "127.0.0.1:10911".to_owned(),
            role: pb::BrokerRole::Master,
        };
        let mut link = ControllerLink::new(&addr, identity, broker.clone()).unwrap();
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
