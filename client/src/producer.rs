//! The producer: sends with RocketMQ's statuses, retries what may succeed elsewhere, never
//! reports a success it did not get.
//!
//! Three ways to send, as in RocketMQ:
//! - [`Producer::send`]: waits for the broker's answer and returns the [`SendResult`]. For
//!   messages that must not be lost, check that its status is [`SendStatus::SendOk`]: any other
//!   status means "stored, but less durable than asked".
//! - [`Producer::send_async`]: starts the send and returns a handle to await later.
//! - [`Producer::send_oneway`]: sends and forgets. Nothing tells whether the message arrived:
//!   for logs and metrics, never for payments or orders.
//!
//! Queues are chosen round-robin over the topic's queues; a send that fails in a retriable way
//! (transport, timeout, broker internal error) is retried on the next queue, up to `retries`
//! more times. A retried send whose first attempt did land is a duplicate (at least once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::client::broker_client::BrokerClient;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::message::{new_message_id, Message};

/// Largest response the client accepts (a pull of many large messages).
pub(crate) const RESPONSE_BYTES_MAX: usize = 32 << 20;

/// How durable a sent message is (RocketMQ's SendStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Stored as durably as the broker promises (flushed under SYNC_FLUSH, replicated under
    /// SYNC_MASTER).
    SendOk,
    /// Stored on the master, but the fsync did not finish in time.
    FlushDiskTimeout,
    /// Stored on the master, but the in-sync slaves did not acknowledge in time.
    FlushSlaveTimeout,
    /// Stored on the master, but too few replicas were in sync.
    SlaveNotAvailable,
}

impl SendStatus {
    fn from_wire(status: i32) -> Result<SendStatus, ClientError> {
        use proto::common::SendStatus as Wire;
        match Wire::try_from(status) {
            Ok(Wire::SendOk) => Ok(SendStatus::SendOk),
            Ok(Wire::FlushDiskTimeout) => Ok(SendStatus::FlushDiskTimeout),
            Ok(Wire::FlushSlaveTimeout) => Ok(SendStatus::FlushSlaveTimeout),
            Ok(Wire::SlaveNotAvailable) => Ok(SendStatus::SlaveNotAvailable),
            _ => Err(ClientError::Invalid {
                reason: "broker answered an unknown send status",
            }),
        }
    }

    /// RocketMQ's name, for output.
    pub fn name(self) -> &'static str {
        match self {
            SendStatus::SendOk => "SEND_OK",
            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        }
    }
}

/// The broker's answer to a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    /// The id the producer gave the (first) message.
    pub message_id: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Longest wait for one attempt's answer. Above the broker's `sync_flush_timeout_ms` (5 s),
    /// so that a slow fsync comes back as `FLUSH_DISK_TIMEOUT` instead of a client timeout and a
    /// resend (which would store the message twice).
    pub send_timeout: Duration,
    /// Extra attempts after a retriable failure (RocketMQ's retryTimesWhenSendFailed, 2).
    pub retries: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            send_timeout: Duration::from_secs(6),
            retries: 2,
        }
    }
}

/// A producer connected to one broker (routes through the controller come with step 3).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    client: BrokerClient<Channel>,
    config: ProducerConfig,
    queue_counts: Mutex<HashMap<String, u32>>,
    next_queue: AtomicU32,
    /// One-way sends not yet finished, for `close`.
    oneway_in_flight: AtomicUsize,
    oneway_done: Notify,
}

impl Producer {
    /// Connects to the broker at `addr` (`host:port`).
    pub async fn connect(addr: &str, config: ProducerConfig) -> Result<Producer, ClientError> {
        let client = BrokerClient::connect(format!("http://{addr}"))
            .await?
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        Ok(Producer {
            inner: Arc::new(Inner {
                client,
                config,
                queue_counts: Mutex::new(HashMap::new()),
                next_queue: AtomicU32::new(rand::random::<u32>()),
                oneway_in_flight: AtomicUsize::new(0),
                oneway_done: Notify::new(),
            }),
        })
    }

    /// Sends one message and returns the broker's answer.
    pub async fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        self.send_batch(vec![message]).await
    }

    /// Sends messages of one topic together, to one queue: one answer for all, consecutive
    /// queue offsets.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<SendResult, ClientError> {
        let Some(topic) = messages.first().map(|m| m.topic.clone()) else {
            return Err(ClientError::Invalid {
                reason: "empty batch",
            });
        };
        if messages.iter().any(|m| m.topic != topic) {
            return Err(ClientError::Invalid {
                reason: "every message of a batch must have the same topic",
            });
        }
        // Ids are fixed before the first attempt: a retry resends the same ids, so a consumer
        // can tell a duplicate.
        let ids: Vec<String> = messages.iter().map(|_| new_message_id()).collect();
        let wire: Vec<_> = messages
            .into_iter()
            .zip(ids.iter().cloned())
            .map(|(m, id)| m.into_wire(id))
            .collect();
        let queue_count = self.queue_count(&topic).await?;
        let mut last_error = None;
        for _attempt in 0..=self.inner.config.retries {
            let queue_id = self.inner.next_queue.fetch_add(1, Ordering::Relaxed) % queue_count;
            match self.attempt(&topic, queue_id, wire.clone()).await {
                Ok(result) => return Ok(result),
                Err(err) if err.is_retriable() => {
                    tracing::debug!(topic, queue_id, error = %err, "send failed; retrying on the next queue");
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    /// Starts a send and returns a handle to await its answer; the send goes on even if the
    /// handle is dropped.
    pub fn send_async(
        &self,
        message: Message,
    ) -> tokio::task::JoinHandle<Result<SendResult, ClientError>> {
        let producer = self.clone();
        tokio::spawn(async move { producer.send(message).await })
    }

    /// Sends and forgets: no answer, no error, no retry. NOT for messages that must not be lost:
    /// nothing tells whether this one arrived.
    pub fn send_oneway(&self, message: Message) {
        let producer = self.clone();
        self.inner.oneway_in_flight.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(err) = producer.send(message).await {
                tracing::debug!(error = %err, "one-way send failed (nobody is told)");
            }
            if producer
                .inner
                .oneway_in_flight
                .fetch_sub(1, Ordering::AcqRel)
                == 1
            {
                producer.inner.oneway_done.notify_waiters();
            }
        });
    }

    /// Waits until every one-way send started so far has left (answered or failed), so that a
    /// process can exit without dropping them.
    pub async fn close(&self) {
        loop {
            let done = self.inner.oneway_done.notified();
            if self.inner.oneway_in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }

    async fn attempt(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<proto::client::Message>,
    ) -> Result<SendResult, ClientError> {
        let message_id = messages[0].message_id.clone();
        let request = proto::client::SendRequest {
            topic: topic.to_owned(),
            queue_id,
            messages,
        };
        let timeout = self.inner.config.send_timeout;
        let mut client = self.inner.client.clone();
        let response = tokio::time::timeout(timeout, client.send(request))
            .await
            .map_err(|_| ClientError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            })??
            .into_inner();
        Ok(SendResult {
            status: SendStatus::from_wire(response.status)?,
            message_id,
            queue_id: response.queue_id,
            queue_offset: response.queue_offset,
            commit_log_offset: response.commit_log_offset,
        })
    }

    /// The topic's queue count, asked of the broker once and cached.
    async fn queue_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(count) = self.inner.queue_counts.lock().expect("lock").get(topic) {
            return Ok(*count);
        }
        let mut client = self.inner.client.clone();
        let topics = client
            .list_topics(proto::client::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics;
        let mut counts = self.inner.queue_counts.lock().expect("lock");
        for status in topics {
            counts.insert(status.topic, status.queue_count.max(1));
        }
        // An unknown topic goes to queue 0: the broker answers TOPIC_NOT_FOUND, or creates it
        // when auto-creation is on.
        Ok(counts.get(topic).copied().unwrap_or(1))
    }
}
