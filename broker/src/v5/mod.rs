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
//!   statuses, same durability), handed to the group's master from any member.
//! - [`telemetry`]: the `Telemetry` stream: the server's settings in answer to a client's.
//! - [`status`]: building answers' statuses.
//!
//! Not served yet, each answering `NOT_IMPLEMENTED` with where to read more (docs/CLIENTS.md):
//! the consuming RPCs (`QueryAssignment`, `ReceiveMessage`, `AckMessage`,
//! `ChangeInvisibleDuration`, `ForwardMessageToDeadLetterQueue`, `PullMessage`, the offsets),
//! transactions, recall and lite topics.

use std::pin::Pin;
use std::sync::Arc;

use proto::v5;
use proto::v5::messaging_service_server::MessagingService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::BrokerSettings;
use crate::service::BrokerService;
use crate::store::StoreConfig;
use crate::topics::TopicRegistry;

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
}

impl V5Service {
    /// `native`: the broker's own service, which sends go through; `topics`: a standalone
    /// broker's routes; `v5_addr`: where clients reach this broker's v5 API.
    pub fn new(
        native: Arc<BrokerService>,
        topics: Arc<TopicRegistry>,
        settings: &BrokerSettings,
        store: &StoreConfig,
        v5_addr: String,
    ) -> Result<V5Service, route::RouteSourceError> {
        Ok(V5Service {
            send: send::Sender::new(native, store.max_message_bytes),
            routes: route::Routes::new(
                &settings.controller_addr,
                topics,
                settings.broker_name.clone(),
                v5_addr,
            )?,
            settings: telemetry::ServerSettings::new(settings, store),
        })
    }
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

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A server stream of one item.
fn one<T: Send + 'static>(item: T) -> ServerStream<T> {
    Box::pin(tokio_stream::once(Ok(item)))
}

#[tonic::async_trait]
impl MessagingService for V5Service {
    async fn query_route(
        &self,
        request: Request<v5::QueryRouteRequest>,
    ) -> Result<Response<v5::QueryRouteResponse>, Status> {
        let answer = match client_id(&request) {
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
        let status = match client_id(&request) {
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
        let answer = match client_id(&request) {
            Err(refused) => v5::SendMessageResponse {
                status: Some(refused),
                entries: Vec::new(),
            },
            Ok(_) => self.send.send(request.into_inner()).await,
        };
        Ok(Response::new(answer))
    }

    async fn query_assignment(
        &self,
        _request: Request<v5::QueryAssignmentRequest>,
    ) -> Result<Response<v5::QueryAssignmentResponse>, Status> {
        Ok(Response::new(v5::QueryAssignmentResponse {
            status: Some(not_implemented("QueryAssignment")),
            assignments: Vec::new(),
        }))
    }

    type ReceiveMessageStream = ServerStream<v5::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _request: Request<v5::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        Ok(Response::new(one(v5::ReceiveMessageResponse {
            content: Some(v5::receive_message_response::Content::Status(
                not_implemented("ReceiveMessage"),
            )),
        })))
    }

    async fn ack_message(
        &self,
        _request: Request<v5::AckMessageRequest>,
    ) -> Result<Response<v5::AckMessageResponse>, Status> {
        Ok(Response::new(v5::AckMessageResponse {
            status: Some(not_implemented("AckMessage")),
            entries: Vec::new(),
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _request: Request<v5::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<v5::ForwardMessageToDeadLetterQueueResponse>, Status> {
        Ok(Response::new(v5::ForwardMessageToDeadLetterQueueResponse {
            status: Some(not_implemented("ForwardMessageToDeadLetterQueue")),
        }))
    }

    type PullMessageStream = ServerStream<v5::PullMessageResponse>;

    async fn pull_message(
        &self,
        _request: Request<v5::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        Ok(Response::new(one(v5::PullMessageResponse {
            content: Some(v5::pull_message_response::Content::Status(not_implemented(
                "PullMessage",
            ))),
        })))
    }

    async fn update_offset(
        &self,
        _request: Request<v5::UpdateOffsetRequest>,
    ) -> Result<Response<v5::UpdateOffsetResponse>, Status> {
        Ok(Response::new(v5::UpdateOffsetResponse {
            status: Some(not_implemented("UpdateOffset")),
        }))
    }

    async fn get_offset(
        &self,
        _request: Request<v5::GetOffsetRequest>,
    ) -> Result<Response<v5::GetOffsetResponse>, Status> {
        Ok(Response::new(v5::GetOffsetResponse {
            status: Some(not_implemented("GetOffset")),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        _request: Request<v5::QueryOffsetRequest>,
    ) -> Result<Response<v5::QueryOffsetResponse>, Status> {
        Ok(Response::new(v5::QueryOffsetResponse {
            status: Some(not_implemented("QueryOffset")),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        _request: Request<v5::EndTransactionRequest>,
    ) -> Result<Response<v5::EndTransactionResponse>, Status> {
        Ok(Response::new(v5::EndTransactionResponse {
            status: Some(not_implemented("EndTransaction")),
        }))
    }

    type TelemetryStream = ServerStream<v5::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<v5::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let refused = client_id(&request).err();
        Ok(Response::new(
            self.settings.answer(request.into_inner(), refused),
        ))
    }

    async fn notify_client_termination(
        &self,
        request: Request<v5::NotifyClientTerminationRequest>,
    ) -> Result<Response<v5::NotifyClientTerminationResponse>, Status> {
        let status = match client_id(&request) {
            Err(refused) => refused,
            Ok(_) => status::ok(),
        };
        Ok(Response::new(v5::NotifyClientTerminationResponse {
            status: Some(status),
        }))
    }

    async fn change_invisible_duration(
        &self,
        _request: Request<v5::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<v5::ChangeInvisibleDurationResponse>, Status> {
        Ok(Response::new(v5::ChangeInvisibleDurationResponse {
            status: Some(not_implemented("ChangeInvisibleDuration")),
            receipt_handle: String::new(),
        }))
    }

    async fn recall_message(
        &self,
        _request: Request<v5::RecallMessageRequest>,
    ) -> Result<Response<v5::RecallMessageResponse>, Status> {
        Ok(Response::new(v5::RecallMessageResponse {
            status: Some(not_implemented("RecallMessage")),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<v5::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<v5::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(v5::SyncLiteSubscriptionResponse {
            status: Some(not_implemented("SyncLiteSubscription")),
        }))
    }
}
