//! The Rust client: a producer with RocketMQ's send statuses, a pull consumer, and topic
//! administration.
//!
//! Map:
//! - [`producer`]: `send` (waits for the answer), `send_async` (a handle), `send_oneway` (not for
//!   messages that must not be lost), `send_batch` (all or nothing); round-robin queues; retries
//!   of retriable failures; natural batching of concurrent sends to the same topic into one RPC
//!   (to one queue, round-robin per batch), each caller still getting its own answer.
//! - `lane` (private): the per-topic waiting line that batching gathers from.
//! - [`consumer`]: `PullConsumer` (a queue from an offset, long polling) and `Admin` (topics).
//! - [`push`]: `PushConsumer`, a consumer-group member in clustering mode: queues dealt out by
//!   heartbeat, offsets on the broker, a listener whose failures (`ReconsumeLater`, `Err`,
//!   panic) hand the message back for retry.
//! - `deal` (private): what a push consumer's deal of queues keeps between heartbeat rounds
//!   (members a new broker has not heard from yet, retry queues that could not be listed).
//! - `resume` (private): whether a push consumer's queue position carries over to a new master
//!   (the new master must hold the last message handled).
//! - [`routes`]: topic routes from the controller, cached and kept current by the route watch
//!   stream; the queues a producer may write and a consumer may read.
//! - [`message`]: `Message` (to send), `ReceivedMessage`, unique message ids.
//! - [`error`]: `ClientError`, a broker's stable error code turned back into a typed error.
//!
//! - `pool` (private): one channel per broker address, made on first use, every call signed
//!   with the client's credentials when it has some (`ProducerConfig::credentials`,
//!   `PushConsumerConfig::credentials`, `PullConsumer::connect_as`, `Admin::connect_as`), as a
//!   broker with `acl_enabled` requires.
//! - [`tls`]: TLS for every connection of the process ([`tls::trust_ca`]: the cluster CA).
//!
//! Producers and push consumers reach either one broker directly or, through the controller's
//! routes, every broker group's master. `client` depends on `proto` and `controller-client`
//! (the quorum seen as one service, re-exported as [`controller`]), never on `broker`.

pub mod consumer;
mod deal;
pub mod error;
mod lane;
pub mod message;
mod pool;
pub mod producer;
pub mod push;
mod resume;
pub mod routes;
pub mod tls;

pub use consumer::{Admin, PullConsumer, PullResult};
/// The controller quorum seen as one service: routes and administration.
pub use controller_client as controller;
pub use error::ClientError;
pub use message::{Message, ReceivedMessage};
pub use producer::{
    Producer, ProducerConfig, SendResult, SendStats, SendStatus, BATCH_MESSAGES_LIMIT,
};
pub use proto::client::PullStatus;
pub use proto::common::ErrorCode;
pub use push::{
    AssignedQueue, ConsumeFrom, ConsumeMode, ConsumeResult, Listener, ListenerError, MessageModel,
    PushConsumer, PushConsumerConfig,
};
