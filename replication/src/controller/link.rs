//! A broker's link to the controller quorum: registration, heartbeats, and keeping the broker's
//! topics in step with the controller's.
//!
//! The controller is the source of truth for topics (a topic created before a master change
//! exists after it, unlike RocketMQ where topic config lives on brokers). The broker keeps a local
//! copy so that it serves across a controller outage; it fetches the copy again whenever a
//! heartbeat answer carries a metadata revision it has not synced.
//!
//! The link tries one controller address at a time and moves to the next on any failure; every
//! controller forwards to the leader, so any reachable one will do.

use std::sync::Arc;
use std::time::Duration;

use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint};

/// What the broker gives the link: where to put the topics, and its log end for cluster list.
pub trait BrokerMetadata: Send + Sync + 'static {
    /// Makes the broker's topics exactly `topics` (its own `%` topics aside). Durable before it
    /// returns.
    fn sync_topics(&self, topics: &[pb::GroupTopic]) -> Result<(), String>;
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

    /// Registers and syncs the topics, retrying every `retry` until it succeeds. Only a
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
        self.sync_topics().await
    }

    async fn sync_topics(&mut self) -> Result<(), tonic::Status> {
        let answer = self
            .client()
            .group_topics(pb::GroupTopicsRequest {
                group: self.identity.group.clone(),
            })
            .await?
            .into_inner();
        let metadata = self.metadata.clone();
        let topics = answer.topics;
        let count = topics.len();
        tokio::task::spawn_blocking(move || metadata.sync_topics(&topics))
            .await
            .map_err(|err| tonic::Status::internal(err.to_string()))?
            .map_err(tonic::Status::internal)?;
        if self.synced_revision != Some(answer.metadata_revision) {
            tracing::info!(
                revision = answer.metadata_revision,
                topics = count,
                "topics synced from the controller"
            );
        }
        self.synced_revision = Some(answer.metadata_revision);
        Ok(())
    }

    /// One heartbeat, and a topic sync if the controller's metadata moved on.
    pub async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        let request = pb::BrokerHeartbeatRequest {
            group: self.identity.group.clone(),
            broker_id: self.identity.broker_id,
            max_offset: self.metadata.max_offset(),
        };
        let answer = match self.client().broker_heartbeat(request).await {
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
            if let Err(status) = self.sync_topics().await {
                self.next_controller(&status);
                return Err(status);
            }
        }
        Ok(())
    }

    /// Heartbeats every `interval` until the task is aborted. Failures are logged, never fatal:
    /// a broker keeps serving with its last topics while no controller answers.
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
