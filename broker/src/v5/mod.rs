//! RocketMQ 5's gRPC API (`apache.rocketmq.v2.MessagingService`), so that applications written
//! against the official clients (Java, Go, Python, Node, Rust) connect unchanged: they change
//! their endpoint and nothing else.
//!
//! Where it runs, and why: every broker of a group serves it on its own port (`v5_listen`). The
//! official clients keep using the endpoints a route gave them and re-read routes only every
//! 30 s, so the endpoint an application holds must stay valid across a failover. A route gives
//! each group's queues one member's address, an alive slave's when the group has one
//! (`route`), and any member hands calls to its group's current master, waiting out an
//! election within the clients' request timeout (`send`). A kill -9 of the master then breaks
//! no client connection at all: the slave it talks to sends through the new master. The state
//! a receive leaves (messages handed out and not yet acknowledged) will live with the master of
//! the queue, where the committed offset that survives a failover lives too; no separate
//! access tier is needed.
//!
//! Answers carry `Status{code, message}` in the body with upstream's numbers
//! (`proto::status::v5_code`); gRPC's own status is OK unless the transport failed. Every call
//! must name its client (`x-mq-client-id`), as upstream's proxy requires.
//!
//! Map:
//! - [`route`]: `QueryRoute`, the controller's route of a topic (or this broker's topics, for a
//!   standalone broker) as RocketMQ 5 queues, and which member's address a group is reached at.
//! - [`send`]: `SendMessage`: NORMAL and FIFO messages through the broker's own send path (same
//!   statuses, same durability), handed to the group's master from any member; [`lane`]
//!   gathers concurrent sends into batches.
//! - [`consume`]: receives, acknowledgements, invisibility and dead letters on the group's
//!   master ([`pop`]: its state per group and queue; [`commit`]: the committed offsets written
//!   a commit per queue at a time; [`receipt`]: the signed handles; [`message`]: a stored
//!   message as clients receive it); [`forward`]: the same calls made on another member,
//!   handed to the master.
//! - [`telemetry`]: the `Telemetry` stream: the server's settings in answer to a client's.
//! - [`status`]: building answers' statuses.
//! - [`access`]: each RPC's permission check (`crate::access` has the table), made before the
//!   call touches anything; a refusal is the body status 40100 / 40300. A call handed to the
//!   master carries the caller's signature ([`forward::Origin`]), so the master checks the same
//!   user. `calls` (private): the consumption calls the master serves itself.
//!
//! Not served yet, each answering `NOT_IMPLEMENTED` with where to read more (docs/CLIENTS.md):
//! `PullMessage` and the offsets' RPCs, transactions, recall and lite topics.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::v5;
use proto::v5::messaging_service_server::MessagingService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use auth::{ClusterKey, Gate};
use forward::{Origin, UserSignature};
use proto::controller::GroupView;
use tokio::sync::watch;
use tonic::Extensions;

use crate::config::BrokerSettings;
use crate::groups::ConsumerGroupState;
use crate::retry::RetryState;
use crate::role::RoleCell;
use crate::service::BrokerService;
use crate::store::{Store, StoreConfig};
use crate::topics::TopicRegistry;

pub mod access;
mod calls;
pub mod commit;
pub mod consume;
pub mod forward;
pub mod lane;
pub mod message;
pub mod pop;
pub mod receipt;
pub mod route;
pub mod send;

pub mod status;
pub mod telemetry;

use status::{not_implemented, status};

/// Metadata key that names the calling client; upstream refuses calls without it.
pub const CLIENT_ID_METADATA_KEY: &str = "x-mq-client-id";

/// The broker's `MessagingService`.
pub struct V5Service {
    send: send::Sender,
    routes: route::Routes,
    settings: telemetry::ServerSettings,
    consumption: consume::Consumption,
    to_master: forward::ToMaster,
    /// Every RPC asks it first (`access`).
    gate: Gate,
}

/// What the v5 API works through: the broker's parts.
pub struct V5Parts {
    /// The broker's own service: sends and reads go through it.
    pub native: Arc<BrokerService>,
    pub store: Arc<Store>,
    /// A standalone broker's routes.
    pub topics: Arc<TopicRegistry>,
    pub groups: Arc<ConsumerGroupState>,
    pub retry: Arc<RetryState>,
    pub role: Arc<RoleCell>,
    /// Signs receipt handles: the cluster key, or a standalone broker's own random one.
    pub key: ClusterKey,
    /// The controller's views of this broker's group; None for a standalone broker.
    pub views: Option<watch::Receiver<Option<GroupView>>>,
    /// Where clients reach this broker's v5 API.
    pub v5_addr: String,
    /// Users' permissions, checked by every RPC.
    pub gate: Gate,
}

impl V5Service {
    pub fn new(
        parts: V5Parts,
        settings: &BrokerSettings,
        store: &StoreConfig,
    ) -> Result<V5Service, route::RouteSourceError> {
        let consumption = consume::Consumption::new(&parts);
        Ok(V5Service {
            send: send::Sender::new(
                parts.native.clone(),
                parts.topics.clone(),
                store.max_message_bytes,
            ),
            routes: route::Routes::new(
                &settings.controller_addr,
                &parts.key,
                parts.topics,
                settings.broker_name.clone(),
                parts.v5_addr.clone(),
            )?,
            settings: telemetry::ServerSettings::new(settings, store, Some(parts.retry.clone())),
            consumption,
            to_master: forward::ToMaster::new(parts.views),
            gate: parts.gate,
        })
    }
}

/// How long before a client's deadline a long poll ends, for the answer to reach it (and a
/// non-master member's hop to the master).
const DEADLINE_MARGIN: Duration = Duration::from_millis(1000);

/// The deadline a gRPC client gave its call (its `grpc-timeout` header: digits and a unit).
fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The client that made `request`, or why the call is refused.
fn client_id<T>(request: &Request<T>) -> Result<String, v5::Status> {
    match request
        .metadata()
        .get(CLIENT_ID_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty())
    {
        Some(id) => Ok(id.to_owned()),
        None => Err(status(
            v5::Code::ClientIdRequired,
            format!("a call must name its client in the {CLIENT_ID_METADATA_KEY} header"),
        )),
    }
}

impl V5Service {
    /// The call's origin once the caller is admitted by `need` and the call names its client;
    /// else the refusal, for the answer's body.
    fn admit<T>(
        &self,
        request: &Request<T>,
        need: impl FnOnce(&Gate, &Extensions) -> Result<(), Status>,
    ) -> Result<Origin, v5::Status> {
        need(&self.gate, request.extensions()).map_err(access::refusal)?;
        Ok(Origin {
            client_id: client_id(request)?,
            signature: UserSignature::of(request.metadata(), request.extensions()),
        })
    }
}

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A server stream of one item.
fn one<T: Send + 'static>(item: T) -> ServerStream<T> {
    Box::pin(tokio_stream::once(Ok(item)))
}

/// A receive's answer that is only a status.
fn receive_status(status: v5::Status) -> v5::ReceiveMessageResponse {
    v5::ReceiveMessageResponse {
        content: Some(v5::receive_message_response::Content::Status(status)),
    }
}

fn name_of(resource: &Option<v5::Resource>) -> String {
    resource
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl MessagingService for V5Service {
    async fn query_route(
        &self,
        request: Request<v5::QueryRouteRequest>,
    ) -> Result<Response<v5::QueryRouteResponse>, Status> {
        let topic = &request.get_ref().topic;
        let answer = match self.admit(&request, |g, e| access::route(g, e, topic)) {
            Err(refused) => v5::QueryRouteResponse {
                status: Some(refused),
                message_queues: Vec::new(),
            },
            Ok(_) => self.routes.query(request.into_inner()).await,
        };
        Ok(Response::new(answer))
    }

    async fn heartbeat(
        &self,
        request: Request<v5::HeartbeatRequest>,
    ) -> Result<Response<v5::HeartbeatResponse>, Status> {
        let group = &request.get_ref().group;
        let status = match self.admit(&request, |g, e| access::heartbeat(g, e, group)) {
            Err(refused) => refused,
            Ok(_) => status::ok(),
        };
        Ok(Response::new(v5::HeartbeatResponse {
            status: Some(status),
        }))
    }

    async fn send_message(
        &self,
        request: Request<v5::SendMessageRequest>,
    ) -> Result<Response<v5::SendMessageResponse>, Status> {
        let messages = &request.get_ref().messages;
        let answer = match self.admit(&request, |g, e| access::send(g, e, messages)) {
            Err(refused) => v5::SendMessageResponse {
                status: Some(refused),
                entries: Vec::new(),
            },
            Ok(origin) => self.send.send(request.into_inner(), origin.signature).await,
        };
        Ok(Response::new(answer))
    }

    async fn query_assignment(
        &self,
        request: Request<v5::QueryAssignmentRequest>,
    ) -> Result<Response<v5::QueryAssignmentResponse>, Status> {
        let r = request.get_ref();
        if let Err(refused) = self.admit(&request, |g, e| access::consume(g, e, &r.topic, &r.group))
        {
            return Ok(Response::new(v5::QueryAssignmentResponse {
                status: Some(refused),
                assignments: Vec::new(),
            }));
        }
        let request = request.into_inner();
        // Server-side consumption: every consumer of a group receives from every broker group
        // that has readable queues, and that group's master hands each message to one of them.
        // One assignment per broker group, with queue id -1 as upstream's proxy answers: a
        // receive is served from every queue of the topic there.
        let route = self
            .routes
            .query(v5::QueryRouteRequest {
                topic: request.topic,
                endpoints: request.endpoints,
            })
            .await;
        let mut assignments: Vec<v5::Assignment> = Vec::new();
        for mut queue in route.message_queues {
            let readable = queue.permission == v5::Permission::Read as i32
                || queue.permission == v5::Permission::ReadWrite as i32;
            let broker = queue.broker.as_ref().map(|b| b.name.clone());
            let seen = assignments.iter().any(|a| {
                a.message_queue
                    .as_ref()
                    .and_then(|q| q.broker.as_ref())
                    .map(|b| &b.name)
                    == broker.as_ref()
            });
            if readable && !seen {
                queue.id = -1;
                assignments.push(v5::Assignment {
                    message_queue: Some(queue),
                });
            }
        }
        Ok(Response::new(v5::QueryAssignmentResponse {
            status: route.status,
            assignments,
        }))
    }

    type ReceiveMessageStream = ServerStream<v5::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<v5::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let r = request.get_ref();
        let admitted = self.admit(&request, |g, e| {
            access::consume_queue(g, e, &r.message_queue, &r.group)
        });
        let items = match admitted {
            Err(refused) => vec![receive_status(refused)],
            Ok(origin) => {
                let deadline = client_deadline(request.metadata());
                self.receive(request.into_inner(), &origin, deadline).await
            }
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn ack_message(
        &self,
        request: Request<v5::AckMessageRequest>,
    ) -> Result<Response<v5::AckMessageResponse>, Status> {
        let r = request.get_ref();
        let answer = match self.admit(&request, |g, e| access::consume(g, e, &r.topic, &r.group)) {
            Err(refused) => v5::AckMessageResponse {
                status: Some(refused),
                entries: Vec::new(),
            },
            Ok(origin) if !self.consumption.is_master() => {
                self.to_master.ack(request.into_inner(), &origin).await
            }
            Ok(_) => self.ack(request.into_inner()).await,
        };
        Ok(Response::new(answer))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<v5::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<v5::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let r = request.get_ref();
        let answer = match self.admit(&request, |g, e| access::consume(g, e, &r.topic, &r.group)) {
            Err(refused) => v5::ForwardMessageToDeadLetterQueueResponse {
                status: Some(refused),
            },
            Ok(origin) if !self.consumption.is_master() => {
                self.to_master
                    .dead_letter(request.into_inner(), &origin)
                    .await
            }
            Ok(_) => {
                let request = request.into_inner();
                let (group, topic) = (name_of(&request.group), name_of(&request.topic));
                v5::ForwardMessageToDeadLetterQueueResponse {
                    status: Some(
                        self.consumption
                            .dead_letter(&group, &topic, &request.receipt_handle)
                            .await,
                    ),
                }
            }
        };
        Ok(Response::new(answer))
    }

    type PullMessageStream = ServerStream<v5::PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<v5::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        let r = request.get_ref();
        let answer = self
            .admit(&request, |g, e| {
                access::consume_queue(g, e, &r.message_queue, &r.group)
            })
            .err()
            .unwrap_or_else(|| not_implemented("PullMessage"));
        Ok(Response::new(one(v5::PullMessageResponse {
            content: Some(v5::pull_message_response::Content::Status(answer)),
        })))
    }

    async fn update_offset(
        &self,
        request: Request<v5::UpdateOffsetRequest>,
    ) -> Result<Response<v5::UpdateOffsetResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .admit(&request, |g, e| {
                access::consume_queue(g, e, &r.message_queue, &r.group)
            })
            .err()
            .unwrap_or_else(|| not_implemented("UpdateOffset"));
        Ok(Response::new(v5::UpdateOffsetResponse {
            status: Some(answer),
        }))
    }

    async fn get_offset(
        &self,
        request: Request<v5::GetOffsetRequest>,
    ) -> Result<Response<v5::GetOffsetResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .admit(&request, |g, e| {
                access::consume_queue(g, e, &r.message_queue, &r.group)
            })
            .err()
            .unwrap_or_else(|| not_implemented("GetOffset"));
        Ok(Response::new(v5::GetOffsetResponse {
            status: Some(answer),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        request: Request<v5::QueryOffsetRequest>,
    ) -> Result<Response<v5::QueryOffsetResponse>, Status> {
        let queue = &request.get_ref().message_queue;
        let answer = self
            .admit(&request, |g, e| access::consume_topic_of(g, e, queue))
            .err()
            .unwrap_or_else(|| not_implemented("QueryOffset"));
        Ok(Response::new(v5::QueryOffsetResponse {
            status: Some(answer),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        request: Request<v5::EndTransactionRequest>,
    ) -> Result<Response<v5::EndTransactionResponse>, Status> {
        let topic = &request.get_ref().topic;
        let answer = self
            .admit(&request, |g, e| access::send_to(g, e, topic))
            .err()
            .unwrap_or_else(|| not_implemented("EndTransaction"));
        Ok(Response::new(v5::EndTransactionResponse {
            status: Some(answer),
        }))
    }

    type TelemetryStream = ServerStream<v5::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<v5::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let refused = self.admit(&request, |g, e| g.check_user(e)).err();
        Ok(Response::new(
            self.settings.answer(request.into_inner(), refused),
        ))
    }

    async fn notify_client_termination(
        &self,
        request: Request<v5::NotifyClientTerminationRequest>,
    ) -> Result<Response<v5::NotifyClientTerminationResponse>, Status> {
        let status = match self.admit(&request, |g, e| g.check_user(e)) {
            Err(refused) => refused,
            Ok(_) => status::ok(),
        };
        Ok(Response::new(v5::NotifyClientTerminationResponse {
            status: Some(status),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<v5::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<v5::ChangeInvisibleDurationResponse>, Status> {
        let r = request.get_ref();
        let answer = match self.admit(&request, |g, e| access::consume(g, e, &r.topic, &r.group)) {
            Err(refused) => v5::ChangeInvisibleDurationResponse {
                status: Some(refused),
                receipt_handle: String::new(),
            },
            Ok(origin) if !self.consumption.is_master() => {
                self.to_master
                    .change_invisible(request.into_inner(), &origin)
                    .await
            }
            Ok(_) => self.change_invisible(request.into_inner()).await,
        };
        Ok(Response::new(answer))
    }

    async fn recall_message(
        &self,
        request: Request<v5::RecallMessageRequest>,
    ) -> Result<Response<v5::RecallMessageResponse>, Status> {
        let topic = &request.get_ref().topic;
        let answer = self
            .admit(&request, |g, e| access::send_to(g, e, topic))
            .err()
            .unwrap_or_else(|| not_implemented("RecallMessage"));
        Ok(Response::new(v5::RecallMessageResponse {
            status: Some(answer),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        request: Request<v5::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<v5::SyncLiteSubscriptionResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .admit(&request, |g, e| access::consume(g, e, &r.topic, &r.group))
            .err()
            .unwrap_or_else(|| not_implemented("SyncLiteSubscription"));
        Ok(Response::new(v5::SyncLiteSubscriptionResponse {
            status: Some(answer),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline_of(value: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        client_deadline(&metadata)
    }

    #[test]
    fn a_clients_deadline_is_read_from_its_grpc_timeout() {
        assert_eq!(deadline_of("23S"), Some(Duration::from_secs(23)));
        assert_eq!(deadline_of("2999m"), Some(Duration::from_millis(2999)));
        assert_eq!(deadline_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline_of("5"), None);
        assert_eq!(deadline_of("S"), None);
        assert_eq!(deadline_of("99999999999999999999H"), None);
        assert_eq!(client_deadline(&tonic::metadata::MetadataMap::new()), None);
    }
}
