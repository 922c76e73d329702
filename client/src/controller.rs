//! A connection to the controller quorum, for routing and administration.
//!
//! Any controller answers any request (followers forward to the leader), so the connection uses
//! one address at a time and moves to the next when that one cannot be reached or answers
//! `CONTROLLER_NOT_AVAILABLE` (no leader yet): a controller leader change costs a pause, not an
//! error, as long as it ends within the connection's patience (`ControllerConnection::patience`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use proto::common::ErrorCode;
use proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// The wire types of the controller's answers (routes, cluster list, status).
pub use proto::controller as wire;

/// How long a call keeps trying other controllers before it gives up.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a single attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after every controller was tried once without an answer.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// A connection to the controller quorum.
pub struct ControllerConnection {
    addrs: Vec<String>,
    clients: Mutex<Vec<Option<ControllerClient<Channel>>>>,
    /// The address that answered last: tried first.
    current: AtomicUsize,
    patience: Duration,
}

impl ControllerConnection {
    /// `addrs`: one or more `host:port`, comma-separated. Connects lazily.
    pub fn new(addrs: &str) -> Result<ControllerConnection, ClientError> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Invalid {
                reason: "no controller address given",
            });
        }
        Ok(ControllerConnection {
            clients: Mutex::new(vec![None; addrs.len()]),
            addrs,
            current: AtomicUsize::new(0),
            patience: DEFAULT_PATIENCE,
        })
    }

    /// How long each call keeps trying (default 10 s).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn client(&self, index: usize) -> Result<ControllerClient<Channel>, ClientError> {
        let mut clients = self
            .clients
            .lock()
            .expect("controller client lock poisoned");
        if let Some(client) = &clients[index] {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addrs[index]))
            .map_err(|_| ClientError::Invalid {
                reason: "controller address is not host:port",
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let client = ControllerClient::new(endpoint.connect_lazy());
        clients[index] = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` against a controller, moving to the next one on transport failures and
    /// `CONTROLLER_NOT_AVAILABLE` until the patience runs out. Other errors return at once.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(ControllerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0.. {
            let index = (start + attempt) % self.addrs.len();
            if attempt > 0 && index == start % self.addrs.len() {
                if tokio::time::Instant::now() + ROUND_PAUSE >= deadline {
                    break;
                }
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            let client = self.client(index)?;
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, call(client)).await;
            let err = match result {
                Ok(Ok(response)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => ClientError::from(status),
                Err(_) => ClientError::Timeout {
                    timeout_ms: ATTEMPT_TIMEOUT.as_millis() as u64,
                },
            };
            let try_next = matches!(
                err,
                ClientError::Transport { .. }
                    | ClientError::Timeout { .. }
                    | ClientError::Broker {
                        code: ErrorCode::ControllerNotAvailable,
                        ..
                    }
            );
            if !try_next {
                return Err(err);
            }
            tracing::debug!(addr = %self.addrs[index], error = %err, "controller did not answer; trying the next");
            // Keep the most telling failure: a controller's own answer (no quorum) says more
            // than a refused connection to one that is down.
            if last_error
                .as_ref()
                .is_none_or(|last| rank(&err) >= rank(last))
            {
                last_error = Some(err);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Err(last_error.unwrap_or(ClientError::Invalid {
            reason: "no controller address given",
        }))
    }

    /// The route of a topic.
    pub async fn route(&self, topic: &str) -> Result<wire::TopicRoute, ClientError> {
        let request = wire::GetRouteRequest {
            topic: topic.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_route(request).await }
        })
        .await
    }

    /// Creates a topic with `queues_per_group` queues on each of `groups` (empty: every group).
    pub async fn create_topic(
        &self,
        topic: &str,
        queues_per_group: u32,
        groups: &[String],
    ) -> Result<wire::CreateTopicResponse, ClientError> {
        let request = wire::CreateTopicRequest {
            topic: topic.to_owned(),
            queues_per_group,
            groups: groups.to_vec(),
            perm: 0,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.create_topic(request).await }
        })
        .await
    }

    pub async fn list_topics(&self) -> Result<wire::ListTopicsResponse, ClientError> {
        self.call(|mut c| async move { c.list_topics(wire::ListTopicsRequest {}).await })
            .await
    }

    /// Drains (`true`) or undrains a broker group: whether that changed it, and whether the
    /// group's master applied it before the answer.
    pub async fn set_group_drained(
        &self,
        group: &str,
        drained: bool,
    ) -> Result<wire::SetGroupDrainedResponse, ClientError> {
        let request = wire::SetGroupDrainedRequest {
            group: group.to_owned(),
            drained,
        };
        let answer = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.set_group_drained(request).await }
            })
            .await?;
        Ok(answer)
    }

    pub async fn cluster_list(&self) -> Result<wire::ClusterListResponse, ClientError> {
        self.call(|mut c| async move { c.cluster_list(wire::ClusterListRequest {}).await })
            .await
    }

    pub async fn status(&self) -> Result<wire::ControllerStatusResponse, ClientError> {
        self.call(|mut c| async move { c.status(wire::ControllerStatusRequest {}).await })
            .await
    }

    pub async fn add_controller(&self, id: u64, addr: &str) -> Result<(), ClientError> {
        let request = wire::AddControllerRequest {
            id,
            addr: addr.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.add_controller(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn remove_controller(&self, id: u64) -> Result<(), ClientError> {
        self.call(|mut c| async move {
            c.remove_controller(wire::RemoveControllerRequest { id })
                .await
        })
        .await
        .map(|_| ())
    }
}

/// How much a failure says about the quorum: an answer from a controller, then a timeout, then a
/// connection that failed.
fn rank(error: &ClientError) -> u8 {
    match error {
        ClientError::Broker { .. } => 2,
        ClientError::Timeout { .. } => 1,
        _ => 0,
    }
}
