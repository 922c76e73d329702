//! The Rust client: a producer with RocketMQ's send statuses, a pull consumer, and topic
//! administration.
//!
//! Map:
//! - [`producer`]: `send` (waits for the answer), `send_async` (a handle), `send_oneway` (not for
//!   messages that must not be lost); round-robin queues; retries of retriable failures.
//! - [`consumer`]: `PullConsumer` (a queue from an offset, long polling) and `Admin` (topics).
//! - [`push`]: `PushConsumer`, a consumer-group member in clustering mode: queues dealt out by
//!   heartbeat, offsets on the broker, a listener whose failures (`ReconsumeLater`, `Err`,
//!   panic) hand the message back for retry.
//! - [`message`]: `Message` (to send), `ReceivedMessage`, unique message ids.
//! - [`error`]: `ClientError`, a broker's stable error code turned back into a typed error.
//!
//! `client` depends on `proto` only, never on `broker`. Routing through the controller comes
//! with step 3.

pub mod consumer;
pub mod error;
pub mod message;
pub mod producer;
pub mod push;

pub use consumer::{Admin, PullConsumer, PullResult};
pub use error::ClientError;
pub use message::{Message, ReceivedMessage};
pub use producer::{Producer, ProducerConfig, SendResult, SendStatus};
pub use proto::client::PullStatus;
pub use proto::common::ErrorCode;
pub use push::{
    ConsumeFrom, ConsumeMode, ConsumeResult, Listener, ListenerError, MessageModel, PushConsumer,
    PushConsumerConfig,
};
