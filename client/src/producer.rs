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
//! And [`Producer::send_batch`]: messages the application groups itself, all or nothing.
//!
//! A producer reaches the brokers in one of two ways:
//! - [`Producer::connect`]: one broker, directly (a broker without a controller). Its queues are
//!   the topic's queues.
//! - [`Producer::connect_controller`] (or [`Producer::with_routes`] to share a route cache): the
//!   topic's route from the controller ([`crate::routes`]), kept current by the route watch. A
//!   topic's queues are spread over broker groups; each send goes to the master of the queue's
//!   group. With no controller reachable, the cached routes keep serving.
//!
//! Queues are chosen round-robin over the topic's writable queues (per message without batching,
//! per batch with it), skipping the queues of groups whose master the controller reports dead
//! (unless no group has a live one: the controller's view may be old). A send that fails in a
//! retriable way (transport, timeout, broker internal error) is retried on the next queue of
//! another group when there is one, up to `retries` more times. A retried send whose first
//! attempt did land is a duplicate (at least once).
//!
//! **Natural batching** (on by default; `batch_max_messages = 1` turns it off). Concurrent
//! [`Producer::send`] calls for the same topic share `Send` RPCs, as in Kafka's producer but
//! without a linger timer: the topic's lane ([`crate::lane`]) sends a message at once when it has
//! fewer than `batch_max_in_flight` RPCs in flight, and otherwise keeps it until one of them is
//! answered, then sends everything that gathered (up to `batch_max_messages` and about
//! `batch_max_bytes`) in one RPC to one queue, the next of the round-robin. A full batch leaves
//! at once without waiting for a free RPC slot. After an answer, the lane yields to the scheduler
//! while the callers it woke keep sending (never longer: [`GATHER_YIELDS_MAX`]), so that they
//! join the next batch. Batching changes how messages travel, not what a caller is told:
//! - Every caller gets its own [`SendResult`]: its own message id, its own queue offset (the
//!   batch's first plus its index), its own commit-log offset (the broker answers one per
//!   message), and the batch's status (a `FLUSH_DISK_TIMEOUT` of the batch's fsync is true of
//!   each of its messages).
//! - A retriable failure retries the whole batch on the next queue with the same message ids.
//! - A batch the broker refuses for its content (bad input: the broker checks every message
//!   before writing any, so nothing of it was stored) is sent again one message per RPC, on the
//!   same queue with the same ids, so that only the bad message's caller gets the error.
//! - Timeouts: a message waits in its lane at most `send_timeout`; if no RPC has taken it by
//!   then, its caller gets [`ClientError::Timeout`] and the message is never sent. Once taken,
//!   each attempt of its RPC waits at most `send_timeout`, as an unbatched send does: a caller
//!   waits at most `send_timeout` in the lane plus (`retries` + 1) × `send_timeout`, and, if its
//!   batch was refused, as much again for its own resend.
//! - Order: a queue's messages are stored in the order their lane took them, which is the order
//!   of the `send` calls that reached the lane; as without batching, concurrent sends have no
//!   order between them, and a retried batch lands after later ones.
//!
//! PERF: `send` allocates per message only the message's wire form, its lane entry and its
//! answer channel; no lock is held across an `.await`; one spawned task per RPC slot, not per
//! message.
//!
//! Why one file of about 920 lines: sending, retrying on another queue, natural batching and the
//! failover wait share one attempt loop and its bookkeeping (which message went where, with which
//! id); the batching lanes already live apart (`lane.rs`). A split of the attempt loop is planned
//! with the controller-client crate (step 8), which takes the route and failover parts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::error::ClientError;
use crate::lane::{self, BatchLimits, Lane, Pending, Reply};
use crate::message::{new_message_id, Message};
use crate::pool::BrokerChannels;
use crate::routes::{self, QueueRef, Routes};

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
    /// The id the producer gave the message (the first message, for [`Producer::send_batch`]).
    pub message_id: String,
    /// The broker group that stored it; empty when the producer talks to one broker directly.
    pub broker_group: String,
    pub queue_id: u32,
    /// Queue offset of the message (of the first, for [`Producer::send_batch`]: the others
    /// follow consecutively).
    pub queue_offset: u64,
    /// Commit-log offset of the message's record (of the first, for [`Producer::send_batch`]).
    pub commit_log_offset: u64,
}

/// Longest pause between two attempts while a failover moves a group's master: the route watch
/// usually says sooner.
const FAILOVER_POLL: Duration = Duration::from_millis(200);
/// First pause after a broker answered `NOT_MASTER` during a failover, doubling up to
/// [`TAKEOVER_POLL_MAX`]: the route may already name it (the controller elected it), and it
/// takes over at its next heartbeat answer, a few milliseconds later. No route change follows
/// then, so waiting for one would sit out a whole `FAILOVER_POLL`. Each try costs one refused
/// RPC.
const TAKEOVER_POLL: Duration = Duration::from_millis(5);
const TAKEOVER_POLL_MAX: Duration = Duration::from_millis(40);

/// Most messages one `Send` RPC may carry (the broker's limit).
pub const BATCH_MESSAGES_LIMIT: usize = 1024;

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Longest wait for one attempt's answer. Above the broker's `sync_flush_timeout_ms` (5 s),
    /// so that a slow fsync comes back as `FLUSH_DISK_TIMEOUT` instead of a client timeout and a
    /// resend (which would store the message twice). With batching, also the longest a message
    /// waits in its lane for an RPC to take it: past that its caller gets a timeout and the
    /// message is not sent.
    pub send_timeout: Duration,
    /// Extra attempts after a retriable failure (RocketMQ's retryTimesWhenSendFailed, 2).
    pub retries: u32,
    /// Most messages of concurrent [`Producer::send`] calls (and `send_async`, `send_oneway`)
    /// gathered into one RPC (natural batching; see the module documentation), 1 to 1024. 1
    /// turns batching off: one RPC per message, queues round-robin per message. Batching adds
    /// no timer: a topic with a free RPC slot sends at once, so this only caps how much gathers
    /// while its RPCs are busy; a batch that reaches it leaves at once.
    pub batch_max_messages: usize,
    /// About the most request bytes one gathered RPC carries (bodies, properties and framing,
    /// counted generously); a single larger message still goes, alone. Default 1 MiB: below
    /// what a broker's transport accepts in one request (its `batch_bytes_max`, 8 MiB by
    /// default and at least the largest record, plus 1 MiB), so gathering never makes a request
    /// too large to arrive. The store also refuses a batch whose records exceed
    /// `batch_bytes_max`; a broker configured below about 1.5 MiB may do so, as bad input, and
    /// the producer then resends that batch's messages one by one (correct, only slower): keep
    /// this below the broker's `batch_bytes_max`.
    pub batch_max_bytes: usize,
    /// RPCs with a partial batch a topic may have in flight at once, at least 1 (full batches
    /// do not count against it). With 1, messages wait for the topic's one RPC and leave
    /// together in the next; 2 shortens that wait at the cost of smaller batches, which
    /// measured slower under `SYNC_FLUSH` (two fsyncs for the same messages) and about equal
    /// under `ASYNC_FLUSH`, on a 2-vCPU machine with 64 senders (docs/BENCHMARKS.md).
    pub batch_max_in_flight: usize,
    /// The user every call to brokers (and the controller) is signed as: its access key and
    /// secret key (`auth::Credentials::from_env`, `from_file`). None: anonymous, which a broker
    /// with `acl_enabled` refuses.
    pub credentials: Option<auth::Credentials>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            send_timeout: Duration::from_secs(6),
            retries: 2,
            batch_max_messages: 64,
            batch_max_bytes: 1 << 20,
            batch_max_in_flight: 1,
            credentials: None,
        }
    }
}

impl ProducerConfig {
    /// Checks the ranges of the settings; returns the first broken one.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.send_timeout.is_zero() {
            return Err(ClientError::Invalid {
                reason: "send_timeout must be above 0",
            });
        }
        if !(1..=BATCH_MESSAGES_LIMIT).contains(&self.batch_max_messages) {
            return Err(ClientError::Invalid {
                reason: "batch_max_messages must be 1 to 1024",
            });
        }
        if self.batch_max_bytes == 0 {
            return Err(ClientError::Invalid {
                reason: "batch_max_bytes must be above 0",
            });
        }
        if self.batch_max_in_flight == 0 {
            return Err(ClientError::Invalid {
                reason: "batch_max_in_flight must be at least 1",
            });
        }
        Ok(())
    }

    fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_messages: self.batch_max_messages,
            max_bytes: self.batch_max_bytes,
            max_in_flight: self.batch_max_in_flight,
        }
    }
}

/// A producer, connected to one broker or routed through the controller.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

/// Where a producer's messages go.
enum Target {
    /// One broker at this address, no controller.
    Broker { addr: String },
    /// The masters of the broker groups the controller's routes name.
    Cluster { routes: Arc<Routes> },
}

struct Inner {
    target: Target,
    brokers: BrokerChannels,
    config: ProducerConfig,
    /// Known topics: their lane and, with one broker, their queue count (asked of the broker
    /// once per topic).
    routes: Mutex<HashMap<String, Arc<TopicRoute>>>,
    /// Queue choices so far (the round-robin position).
    next_queue: AtomicU64,
    /// One-way sends not yet finished, for `close`.
    oneway_in_flight: AtomicUsize,
    oneway_done: Notify,
    /// `Send` RPCs started (every attempt) and the messages they carried, for [`SendStats`].
    rpcs_sent: AtomicU64,
    messages_sent: AtomicU64,
}

/// How many `Send` RPCs a producer started and how many messages they carried (retries and
/// resends included): their ratio is the average batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    pub rpcs: u64,
    pub messages: u64,
}

/// A topic as the producer sends to it.
struct TopicRoute {
    topic: String,
    /// The broker's queue count, for a producer on one broker (a routed producer reads its
    /// queues from the route at each choice).
    queue_count: u32,
    /// Where its messages gather when batching.
    lane: Lane,
}

impl TopicRoute {
    fn new(topic: String, queue_count: u32) -> TopicRoute {
        TopicRoute {
            topic,
            queue_count,
            lane: Lane::default(),
        }
    }
}

/// Where one RPC goes: a queue of a broker group, and that group's master.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Destination {
    /// Empty for a producer on one broker.
    group: String,
    queue_id: u32,
    addr: String,
}

/// A failed series of attempts, and where the last one went.
struct Failed {
    error: ClientError,
    destination: Destination,
}

impl Producer {
    /// Connects to the broker at `addr` (`host:port`), with no controller.
    pub async fn connect(addr: &str, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let brokers = BrokerChannels::new(config.credentials.clone());
        brokers.connect(addr).await?;
        Ok(Producer::new(
            Target::Broker {
                addr: addr.to_owned(),
            },
            brokers,
            config,
        ))
    }

    /// A producer routed through the controller quorum at `controllers` (`host:port`,
    /// comma-separated: any of them will do). Connects lazily: the first send of a topic asks
    /// for its route.
    pub async fn connect_controller(
        controllers: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        let connection = crate::routes::controller_connection(controllers, &config.credentials)?;
        Producer::with_routes(
            Routes::start_as(Arc::new(connection), config.credentials.clone()),
            config,
        )
    }

    /// A producer routed by an existing route cache (shared with other producers and consumers
    /// of the same process).
    pub fn with_routes(
        routes: Arc<Routes>,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        config.validate()?;
        Ok(Producer::new(
            Target::Cluster { routes },
            BrokerChannels::new(config.credentials.clone()),
            config,
        ))
    }

    fn new(target: Target, brokers: BrokerChannels, config: ProducerConfig) -> Producer {
        Producer {
            inner: Arc::new(Inner {
                target,
                brokers,
                config,
                routes: Mutex::new(HashMap::new()),
                next_queue: AtomicU64::new(u64::from(rand::random::<u32>())),
                oneway_in_flight: AtomicUsize::new(0),
                oneway_done: Notify::new(),
                rpcs_sent: AtomicU64::new(0),
                messages_sent: AtomicU64::new(0),
            }),
        }
    }

    /// Sends one message and returns the broker's answer. With batching on, it may travel in one
    /// RPC with other callers' messages to the same topic; the answer is still this message's
    /// own (see the module documentation).
    pub async fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        let config = &self.inner.config;
        if config.batch_max_messages <= 1 {
            return self.send_batch(vec![message]).await;
        }
        let route = self.route(&message.topic).await?;
        let wire = message.into_wire(new_message_id());
        let size_bytes = lane::wire_size_bytes(&wire);
        let (reply, mut answer) = oneshot::channel();
        let lane = &route.lane;
        let (seq, batch) = lane.push(wire, size_bytes, reply, config.batch_limits());
        if let Some(batch) = batch {
            tokio::spawn(self.clone().drive_lane(route.clone(), batch));
        }
        let timeout = config.send_timeout;
        if let Ok(answered) = tokio::time::timeout(timeout, &mut answer).await {
            return answered.unwrap_or_else(|_| Err(lost_answer()));
        }
        if lane.cancel(seq) {
            // No RPC took it: it is not sent, and the caller hears so within its timeout.
            return Err(ClientError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            });
        }
        // In an RPC already: that RPC's attempts are bounded by `send_timeout` each.
        answer.await.unwrap_or_else(|_| Err(lost_answer()))
    }

    /// Sends messages of one topic together, to one queue, all or nothing: one answer for all
    /// (the first message's id and offsets), consecutive queue offsets. Never gathered with
    /// other sends.
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
        if messages.len() > BATCH_MESSAGES_LIMIT {
            return Err(ClientError::Invalid {
                reason: "a batch holds at most 1024 messages",
            });
        }
        // Ids are fixed before the first attempt: a retry resends the same ids, so a consumer
        // can tell a duplicate.
        let wire: Vec<_> = messages
            .into_iter()
            .map(|m| m.into_wire(new_message_id()))
            .collect();
        let message_id = wire[0].message_id.clone();
        let route = self.route(&topic).await?;
        let destination = self.destination(&route, None).await?;
        let (response, destination) = self
            .attempts(&route, destination, &wire)
            .await
            .map_err(|failed| failed.error)?;
        Ok(SendResult {
            status: SendStatus::from_wire(response.status)?,
            message_id,
            broker_group: destination.group,
            queue_id: response.queue_id,
            queue_offset: response.queue_offset,
            commit_log_offset: response.commit_log_offset,
        })
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

    /// `Send` RPCs started so far and the messages they carried.
    pub fn send_stats(&self) -> SendStats {
        SendStats {
            rpcs: self.inner.rpcs_sent.load(Ordering::Relaxed),
            messages: self.inner.messages_sent.load(Ordering::Relaxed),
        }
    }

    /// Sends a lane's batches on one RPC slot until the lane has nothing waiting for it; each
    /// batch to the next queue (round-robin).
    async fn drive_lane(self, route: Arc<TopicRoute>, first: Vec<Pending>) {
        let limits = self.inner.config.batch_limits();
        let mut batch = first;
        loop {
            match self.destination(&route, None).await {
                Ok(destination) => self.deliver(&route, destination, batch).await,
                Err(error) => {
                    for pending in batch {
                        let _ = pending.reply.send(Err(error.clone()));
                    }
                }
            }
            gather_returning_callers(&route.lane, limits).await;
            match route.lane.next_batch(limits) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// Sends one gathered batch (with retries) and answers each of its callers. A batch the
    /// broker refused is sent again one message at a time.
    async fn deliver(
        &self,
        route: &Arc<TopicRoute>,
        destination: Destination,
        batch: Vec<Pending>,
    ) {
        let (messages, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.message, p.reply)).unzip();
        match self.attempts(route, destination, &messages).await {
            Ok((response, destination)) => {
                answer_batch(messages, replies, &destination.group, &response)
            }
            Err(Failed { error, destination }) if messages.len() > 1 && is_refusal(&error) => {
                tracing::debug!(
                    topic = route.topic,
                    group = destination.group,
                    queue_id = destination.queue_id,
                    messages = messages.len(),
                    error = %error,
                    "batch refused; sending its messages one by one"
                );
                let alone: Vec<_> = messages
                    .into_iter()
                    .zip(replies)
                    .map(|(message, reply)| {
                        let (producer, route) = (self.clone(), route.clone());
                        let destination = destination.clone();
                        tokio::spawn(async move {
                            producer
                                .deliver_alone(&route, destination, message, reply)
                                .await
                        })
                    })
                    .collect();
                for task in alone {
                    // A panicked task dropped its reply; its caller hears `lost_answer`.
                    let _ = task.await;
                }
            }
            Err(Failed { error, .. }) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Sends one message of a refused batch on its own (same id, same queue) and answers it.
    async fn deliver_alone(
        &self,
        route: &TopicRoute,
        destination: Destination,
        message: proto::client::Message,
        reply: Reply,
    ) {
        let messages = [message];
        match self.attempts(route, destination, &messages).await {
            Ok((response, destination)) => {
                answer_batch(messages.into(), vec![reply], &destination.group, &response)
            }
            Err(Failed { error, .. }) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Sends `messages` as one RPC to `first`, then, after each retriable failure, to the next
    /// queue (of another broker group when there is one), up to `retries` more times, always
    /// with the same message ids. Returns where the answered attempt went.
    ///
    /// A routed producer also rides out a failover: while the failure says the group's master
    /// is gone (unreachable, `NOT_MASTER`), it waits for the route to change (at most
    /// [`FAILOVER_POLL`] at a time) and tries again, beyond `retries`, until `send_timeout` has
    /// passed since the first attempt: the caller sees a pause, then `SEND_OK` from the new
    /// master or a definite error.
    async fn attempts(
        &self,
        route: &TopicRoute,
        first: Destination,
        messages: &[proto::client::Message],
    ) -> Result<(proto::client::SendResponse, Destination), Failed> {
        let deadline = tokio::time::Instant::now() + self.inner.config.send_timeout;
        let mut updates = match &self.inner.target {
            Target::Cluster { routes } => Some(routes.updates()),
            Target::Broker { .. } => None,
        };
        let mut destination = first;
        let mut attempt = 0;
        let mut takeover_pause = TAKEOVER_POLL;
        loop {
            let error = match self
                .attempt_unless_moved(route, &destination, messages)
                .await
            {
                Ok(response) => return Ok((response, destination)),
                Err(error) => error,
            };
            if !error.is_retriable() {
                return Err(Failed { error, destination });
            }
            let master_gone = error.is_master_gone() && updates.is_some();
            if attempt < self.inner.config.retries {
                attempt += 1;
            } else if !(master_gone && tokio::time::Instant::now() < deadline) {
                return Err(Failed { error, destination });
            }
            tracing::debug!(
                topic = route.topic,
                group = destination.group,
                queue_id = destination.queue_id,
                error = %error,
                "send failed; retrying on the next queue"
            );
            if master_gone && !self.master_moved(route, &destination).await {
                if let Some(updates) = updates.as_mut() {
                    let pause = if error.is_not_master() {
                        let pause = takeover_pause;
                        takeover_pause = (takeover_pause * 2).min(TAKEOVER_POLL_MAX);
                        pause
                    } else {
                        FAILOVER_POLL
                    };
                    let until = deadline.min(tokio::time::Instant::now() + pause);
                    let _ = tokio::time::timeout_at(until, updates.changed()).await;
                }
            }
            match self.destination(route, Some(&destination.group)).await {
                Ok(next) => destination = next,
                Err(_) if master_gone && tokio::time::Instant::now() < deadline => {}
                Err(_) => return Err(Failed { error, destination }),
            }
        }
    }

    /// One attempt; for a routed producer, given up as soon as the route names another master
    /// for the destination's group: a paused or cut-off master never answers, and waiting for
    /// its `send_timeout` would hold the send long after its successor serves. The message may
    /// have landed on the old master anyway; the retry resends it with the same id, as after
    /// any lost answer (at least once).
    async fn attempt_unless_moved(
        &self,
        route: &TopicRoute,
        destination: &Destination,
        messages: &[proto::client::Message],
    ) -> Result<proto::client::SendResponse, ClientError> {
        let attempt = self.attempt(&route.topic, destination, messages.to_vec());
        let Target::Cluster { routes } = &self.inner.target else {
            return attempt.await;
        };
        let moved = async {
            let mut updates = routes.updates();
            loop {
                if updates.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if self.master_moved(route, destination).await {
                    return;
                }
            }
        };
        tokio::select! {
            answer = attempt => answer,
            () = moved => Err(ClientError::Transport {
                message: format!(
                    "the master of broker group {} moved while the send to {} waited for its answer",
                    destination.group, destination.addr
                ),
                source: None,
            }),
        }
    }

    /// Whether the cached route already names another master for `failed`'s broker group: the
    /// update may have come between choosing `failed` and this attempt's wait for updates,
    /// which would then sit out a whole [`FAILOVER_POLL`] for nothing.
    async fn master_moved(&self, route: &TopicRoute, failed: &Destination) -> bool {
        let Target::Cluster { routes } = &self.inner.target else {
            return false;
        };
        let Ok(now) = routes.get(&route.topic).await else {
            return false;
        };
        routes::writable_queues(&now)
            .iter()
            .any(|q| q.group == failed.group && q.master_alive && q.master_addr != failed.addr)
    }

    /// One `Send` RPC, bounded by `send_timeout`.
    async fn attempt(
        &self,
        topic: &str,
        destination: &Destination,
        messages: Vec<proto::client::Message>,
    ) -> Result<proto::client::SendResponse, ClientError> {
        let mut client = self.inner.brokers.broker(&destination.addr)?;
        self.inner.rpcs_sent.fetch_add(1, Ordering::Relaxed);
        self.inner
            .messages_sent
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let request = proto::client::SendRequest {
            topic: topic.to_owned(),
            queue_id: destination.queue_id,
            messages,
        };
        let timeout = self.inner.config.send_timeout;
        Ok(tokio::time::timeout(timeout, client.send(request))
            .await
            .map_err(|_| ClientError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            })??
            .into_inner())
    }

    /// The next queue of the round-robin (per message without batching, per batch with it);
    /// after a failure in group `failed_group`, the next of another group if there is one.
    async fn destination(
        &self,
        route: &TopicRoute,
        failed_group: Option<&str>,
    ) -> Result<Destination, ClientError> {
        let turn = self.inner.next_queue.fetch_add(1, Ordering::Relaxed);
        match &self.inner.target {
            Target::Broker { addr } => Ok(Destination {
                group: String::new(),
                queue_id: (turn % u64::from(route.queue_count.max(1))) as u32,
                addr: addr.clone(),
            }),
            Target::Cluster { routes } => {
                let queues = routes::writable_queues(&*routes.get(&route.topic).await?);
                let chosen = choose_queue(&queues, failed_group, turn).ok_or_else(|| {
                    ClientError::NoRoute {
                        topic: route.topic.clone(),
                        reason: "no writable queue has a master",
                    }
                })?;
                Ok(Destination {
                    group: chosen.group.clone(),
                    queue_id: chosen.queue_id,
                    addr: chosen.master_addr.clone(),
                })
            }
        }
    }

    /// The topic's lane and, on one broker, its queue count (asked of the broker once and
    /// cached). A routed producer checks that the controller knows the topic.
    async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        if let Some(route) = self.inner.routes.lock().expect("lock").get(topic) {
            return Ok(route.clone());
        }
        let addr = match &self.inner.target {
            Target::Broker { addr } => addr,
            Target::Cluster { routes } => {
                routes.get(topic).await?;
                let mut known = self.inner.routes.lock().expect("lock");
                let route = known
                    .entry(topic.to_owned())
                    .or_insert_with(|| Arc::new(TopicRoute::new(topic.to_owned(), 0)));
                return Ok(route.clone());
            }
        };
        let mut client = self.inner.brokers.broker(addr)?;
        let topics = client
            .list_topics(proto::client::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics;
        let Some(status) = topics.into_iter().find(|t| t.topic == topic) else {
            // An unknown topic goes to queue 0, not cached: the broker answers TOPIC_NOT_FOUND,
            // or creates it when auto-creation is on, and the next send learns its queues.
            return Ok(Arc::new(TopicRoute::new(topic.to_owned(), 1)));
        };
        let mut routes = self.inner.routes.lock().expect("lock");
        let route = routes
            .entry(status.topic.clone())
            .or_insert_with(|| Arc::new(TopicRoute::new(status.topic, status.queue_count.max(1))));
        Ok(route.clone())
    }

    /// Messages waiting in the topic's lane, for tests.
    #[cfg(test)]
    fn lane_waiting(&self, topic: &str) -> usize {
        self.inner
            .routes
            .lock()
            .expect("lock")
            .get(topic)
            .map_or(0, |route| route.lane.waiting_len())
    }
}

/// Most times a lane yields to the scheduler after an answer, waiting for the callers it woke.
const GATHER_YIELDS_MAX: usize = 8;

/// The queue to send to at round-robin position `turn`: among the queues whose group has a
/// master the controller reports alive, preferring groups other than `failed_group`; if no
/// group's master is alive, among all queues with a known master (the controller's view may be
/// older than the brokers'). `None` when no queue has a master.
fn choose_queue<'a>(
    queues: &'a [QueueRef],
    failed_group: Option<&str>,
    turn: u64,
) -> Option<&'a QueueRef> {
    // Tier 0: alive elsewhere; 1: alive; 2: any with a master.
    let in_tier = |q: &QueueRef, tier: u8| {
        !q.master_addr.is_empty()
            && (tier == 2 || q.master_alive)
            && (tier >= 1 || Some(q.group.as_str()) != failed_group)
    };
    // Counted, not collected: this runs for every batch.
    (0..3u8).find_map(|tier| {
        let count = queues.iter().filter(|q| in_tier(q, tier)).count();
        let nth = (turn % count.max(1) as u64) as usize;
        queues.iter().filter(|q| in_tier(q, tier)).nth(nth)
    })
}

/// After an RPC was answered, lets the callers it woke run before the lane takes its next batch:
/// most of them send their next message at once, and so join the next batch instead of
/// trickling into the ones after it (with 64 callers in a closed loop this nearly doubles the
/// batch size: docs/BENCHMARKS.md). Not a timer: it yields to the scheduler while messages keep
/// arriving, and stops at the first yield during which none arrived (or when a batch is full,
/// or after [`GATHER_YIELDS_MAX`] yields). A lone caller loses a few microseconds at most.
async fn gather_returning_callers(lane: &Lane, limits: BatchLimits) {
    let mut waiting = lane.waiting_len();
    for _ in 0..GATHER_YIELDS_MAX {
        if waiting >= limits.max_messages {
            return;
        }
        tokio::task::yield_now().await;
        let now = lane.waiting_len();
        if now == waiting {
            return;
        }
        waiting = now;
    }
}

/// True when the broker refused the request as bad input: a stable code of the 4xxxx family
/// (RocketMQ 5's client errors) that is not retriable. The broker checks every message of a
/// request before it writes any, so such a batch stored nothing and may be resent message by
/// message. Not the 5xxxx family (a persistence or replication failure may come after the write)
/// and not errors the client found in an answer (those batches were stored).
fn is_refusal(error: &ClientError) -> bool {
    match error {
        ClientError::Broker { code, .. } => {
            (40_000..50_000).contains(&(*code as i32)) && !error.is_retriable()
        }
        _ => false,
    }
}

/// Answers each caller of a batch the broker stored: the batch's status, the caller's own id,
/// queue offset and commit-log offset.
fn answer_batch(
    messages: Vec<proto::client::Message>,
    replies: Vec<Reply>,
    broker_group: &str,
    response: &proto::client::SendResponse,
) {
    debug_assert_eq!(messages.len(), replies.len());
    let status = SendStatus::from_wire(response.status);
    let commit_log_offsets: &[u64] =
        if response.commit_log_offsets.is_empty() && messages.len() == 1 {
            // A broker from before per-message offsets: the one message's is the first.
            std::slice::from_ref(&response.commit_log_offset)
        } else {
            &response.commit_log_offsets
        };
    let complete = commit_log_offsets.len() == messages.len()
        && (response.message_ids.is_empty()
            || (response.message_ids.len() == messages.len()
                && response
                    .message_ids
                    .iter()
                    .zip(&messages)
                    .all(|(id, message)| *id == message.message_id)));
    for (index, (message, reply)) in messages.into_iter().zip(replies).enumerate() {
        let result = match (&status, complete) {
            (Ok(status), true) => Ok(SendResult {
                status: *status,
                message_id: message.message_id,
                broker_group: broker_group.to_owned(),
                queue_id: response.queue_id,
                queue_offset: response.queue_offset + index as u64,
                commit_log_offset: commit_log_offsets[index],
            }),
            (Err(err), _) => Err(err.clone()),
            (Ok(_), false) => Err(ClientError::Invalid {
                reason: "broker answered a batch without each message's id and commit-log offset",
            }),
        };
        let _ = reply.send(result);
    }
}

/// The error of a caller whose batch task ended without answering (it panicked).
fn lost_answer() -> ClientError {
    ClientError::Transport {
        message: "the task sending this message's batch ended without an answer".to_owned(),
        source: None,
    }
}

#[cfg(test)]
#[path = "producer_tests.rs"]
mod tests;
