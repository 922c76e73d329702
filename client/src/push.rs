//! The push consumer: a member of a consumer group in clustering mode. Each queue of the topic
//! (and of the group's retry topic) is consumed by exactly one live member; the listener is
//! called for each message, and a message is counted as consumed only when the listener returned
//! `ConsumeSuccess`.
//!
//! - Membership: a heartbeat every `heartbeat_interval` returns the sorted list of live members;
//!   every member assigns queues the same way (queue index modulo member count), so they agree
//!   without a coordinator. A member that stops heartbeating is dropped by the broker and its
//!   queues move at the others' next heartbeat.
//! - Offsets: kept on the broker (committed after each handled batch, and when a queue is given
//!   up), so a restarted or replacing member resumes where the group left off. At least once: a
//!   batch handled but not yet committed when a member dies is delivered again.
//! - Failure: `ReconsumeLater`, an `Err`, or a panic in the listener hands the message back to
//!   the broker (retry topic after a delay level, dead-letter topic after too many tries). The
//!   offset moves past a message only once it was handled or handed back; if the hand-back
//!   fails, the queue waits and tries again, and never skips the message.
//! - Orderly mode handles a queue's messages strictly in order: a failed message is tried again
//!   in place, and the queue waits for it. Broadcasting mode gives every member every queue,
//!   keeps offsets in the member, and retries failures in place too (nothing is handed back).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::{
    CommitOffsetRequest, HeartbeatRequest, PullStatus, QueryOffsetRequest, SendBackRequest,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::consumer::{Admin, PullConsumer};
use crate::error::ClientError;
use crate::message::{new_message_id, ReceivedMessage};

/// What a listener says of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Handled: the group may move past it.
    ConsumeSuccess,
    /// Not handled: deliver it again later (RocketMQ's RECONSUME_LATER).
    ReconsumeLater,
}

/// The error type a listener may return; any error counts as `ReconsumeLater`.
pub type ListenerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles messages. Called on a blocking thread, one message at a time per queue.
pub trait Listener: Send + Sync + 'static {
    fn consume(&self, message: &ReceivedMessage) -> Result<ConsumeResult, ListenerError>;
}

impl<F> Listener for F
where
    F: Fn(&ReceivedMessage) -> Result<ConsumeResult, ListenerError> + Send + Sync + 'static,
{
    fn consume(&self, message: &ReceivedMessage) -> Result<ConsumeResult, ListenerError> {
        self(message)
    }
}

/// Where a group with no committed offset starts on a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// The oldest message still kept.
    First,
    /// Only messages arriving from now on (RocketMQ's default, CONSUME_FROM_LAST_OFFSET).
    Last,
}

/// How a group shares a topic (RocketMQ's MessageModel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageModel {
    /// Each queue is consumed by one member; offsets on the broker; failures handed back for
    /// retry through the retry topic.
    Clustering,
    /// Every member consumes every queue; offsets kept by the member (in memory: a restarted
    /// member starts from `consume_from`); a failed message is retried in place.
    Broadcasting,
}

/// How messages of one queue are handled (RocketMQ's concurrently / orderly listeners).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeMode {
    /// A failed message is handed back and the queue goes on.
    Concurrently,
    /// Messages of a queue are handled strictly in order: a failed message is retried in place
    /// after a pause, and nothing after it is handled before it succeeds.
    Orderly,
}

/// Push consumer settings.
#[derive(Clone, Debug)]
pub struct PushConsumerConfig {
    pub group: String,
    pub topic: String,
    pub message_model: MessageModel,
    pub consume_mode: ConsumeMode,
    /// "*" or "a || b".
    pub tag_expression: String,
    pub consume_from: ConsumeFrom,
    pub heartbeat_interval: Duration,
    /// Messages per pull (RocketMQ's pullBatchSize, 32).
    pub pull_batch: u32,
    /// Long-polling wait of each pull.
    pub poll_timeout: Duration,
}

impl PushConsumerConfig {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        PushConsumerConfig {
            group: group.into(),
            topic: topic.into(),
            message_model: MessageModel::Clustering,
            consume_mode: ConsumeMode::Concurrently,
            tag_expression: "*".into(),
            consume_from: ConsumeFrom::Last,
            heartbeat_interval: Duration::from_secs(1),
            pull_batch: 32,
            poll_timeout: Duration::from_secs(1),
        }
    }
}

/// A running push consumer; stop it with [`PushConsumer::shutdown`].
pub struct PushConsumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    client_id: String,
    assigned: watch::Receiver<Vec<(String, u32)>>,
}

struct Shared {
    config: PushConsumerConfig,
    client_id: String,
    groups: ConsumerGroupsClient<Channel>,
    puller: PullConsumer,
    admin: Admin,
    listener: Arc<dyn Listener>,
    /// Offsets of a broadcasting member, which keeps its own.
    local_offsets: std::sync::Mutex<HashMap<(String, u32), u64>>,
}

impl PushConsumer {
    /// Joins the group and starts consuming.
    pub async fn start(
        addr: &str,
        config: PushConsumerConfig,
        listener: impl Listener,
    ) -> Result<PushConsumer, ClientError> {
        let groups = ConsumerGroupsClient::connect(format!("http://{addr}")).await?;
        let client_id = format!("{}-{}", config.group, new_message_id());
        let shared = Arc::new(Shared {
            config,
            client_id: client_id.clone(),
            groups,
            puller: PullConsumer::connect(addr).await?,
            admin: Admin::connect(addr).await?,
            listener: Arc::new(listener),
            local_offsets: std::sync::Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let (assigned_tx, assigned) = watch::channel(Vec::new());
        let task = tokio::spawn(run(shared, stopped, assigned_tx));
        Ok(PushConsumer {
            stop,
            task,
            client_id,
            assigned,
        })
    }

    /// The (topic, queue id) pairs this member consumes now.
    pub fn assigned_queues(&self) -> Vec<(String, u32)> {
        self.assigned.borrow().clone()
    }

    /// This member's id in its group.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Stops pulling, lets the batches in hand finish, commits, and leaves.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The membership loop: heartbeat, assign, start and stop queue workers.
async fn run(
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    assigned_tx: watch::Sender<Vec<(String, u32)>>,
) {
    let retry_topic = format!("%RETRY%{}", shared.config.group);
    let mut workers: HashMap<(String, u32), (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    loop {
        match assignment(&shared, &retry_topic).await {
            Ok(assigned) => {
                let gone: Vec<_> = workers
                    .keys()
                    .filter(|q| !assigned.contains(q))
                    .cloned()
                    .collect();
                for queue in gone {
                    if let Some((stop, task)) = workers.remove(&queue) {
                        let _ = stop.send(true);
                        let _ = task.await;
                    }
                }
                assigned_tx.send_replace(assigned.clone());
                for queue in assigned {
                    workers.entry(queue.clone()).or_insert_with(|| {
                        let (stop, stopped) = watch::channel(false);
                        let task =
                            tokio::spawn(consume_queue(shared.clone(), queue.0, queue.1, stopped));
                        (stop, task)
                    });
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "heartbeat failed; keeping the current queues")
            }
        }
        if tokio::time::timeout(shared.config.heartbeat_interval, stopped.changed())
            .await
            .is_ok()
        {
            break;
        }
    }
    for (_, (stop, task)) in workers {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

/// This member's queues: for the topic and for the retry topic separately, queue ids dealt out
/// modulo the number of live members. Separately, so that the retry topic appearing (at the
/// first hand-back) moves none of the topic's queues.
async fn assignment(shared: &Shared, retry_topic: &str) -> Result<Vec<(String, u32)>, ClientError> {
    let mut groups = shared.groups.clone();
    let members = groups
        .heartbeat(HeartbeatRequest {
            group: shared.config.group.clone(),
            client_id: shared.client_id.clone(),
        })
        .await?
        .into_inner()
        .members;
    let (me, count) = match shared.config.message_model {
        MessageModel::Clustering => (
            members
                .iter()
                .position(|m| *m == shared.client_id)
                .unwrap_or(0) as u32,
            members.len().max(1) as u32,
        ),
        // Every member takes every queue (and no retry topic: nothing is handed back).
        MessageModel::Broadcasting => (0, 1),
    };
    let retry_topic = match shared.config.message_model {
        MessageModel::Clustering => retry_topic,
        MessageModel::Broadcasting => "",
    };
    let mut queues = Vec::new();
    for topic in shared.admin.list_topics().await? {
        if topic.topic == shared.config.topic || topic.topic == retry_topic {
            queues.extend(
                (0..topic.queue_count)
                    .filter(|q| q % count == me)
                    .map(|q| (topic.topic.clone(), q)),
            );
        }
    }
    queues.sort();
    Ok(queues)
}

/// Consumes one queue until told to stop.
async fn consume_queue(
    shared: Arc<Shared>,
    topic: String,
    queue_id: u32,
    mut stopped: watch::Receiver<bool>,
) {
    let is_retry = topic.starts_with("%RETRY%");
    let filter = if is_retry {
        "*".to_owned()
    } else {
        shared.config.tag_expression.clone()
    };
    let mut offset = None;
    while !*stopped.borrow() {
        let current = match offset {
            Some(current) => current,
            None => match start_offset(&shared, &topic, queue_id).await {
                Ok(start) => {
                    offset = Some(start);
                    start
                }
                Err(err) => {
                    tracing::warn!(topic, queue_id, error = %err, "cannot find where to start; retrying");
                    pause(&mut stopped).await;
                    continue;
                }
            },
        };
        let pulled = shared
            .puller
            .pull(
                &topic,
                queue_id,
                current,
                shared.config.pull_batch,
                &filter,
                shared.config.poll_timeout,
            )
            .await;
        let result = match pulled {
            Ok(result) => result,
            Err(err) => {
                tracing::debug!(topic, queue_id, error = %err, "pull failed; retrying");
                pause(&mut stopped).await;
                continue;
            }
        };
        if result.messages.is_empty() {
            if matches!(
                result.status,
                PullStatus::OffsetTooSmall
                    | PullStatus::OffsetOverflow
                    | PullStatus::NoMatchedMessage
            ) {
                offset = Some(result.next_queue_offset);
            }
            continue;
        }
        let in_place = shared.config.consume_mode == ConsumeMode::Orderly
            || shared.config.message_model == MessageModel::Broadcasting;
        let finished = if in_place {
            handle_in_place(&shared, &result.messages, &mut stopped).await
        } else {
            handle_and_hand_back(&shared, &result.messages, &mut stopped).await
        };
        if let Err(first_unfinished) = finished {
            // Stopped in the middle: commit up to the first message not dealt with, so that the
            // next owner starts there (it is delivered again: at least once).
            let _ = commit(&shared, &topic, queue_id, first_unfinished).await;
            return;
        }
        offset = Some(result.next_queue_offset);
        if let Err(err) = commit(&shared, &topic, queue_id, result.next_queue_offset).await {
            tracing::debug!(topic, queue_id, error = %err, "offset commit failed; the next one covers it");
        }
    }
}

/// Concurrently: handles the batch; hands back every failed message. Never moves past a message
/// neither handled nor handed back: on a stop in the middle, returns the queue offset of the
/// first such message.
async fn handle_and_hand_back(
    shared: &Shared,
    messages: &[ReceivedMessage],
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), u64> {
    let outcomes = handle(shared, messages.to_vec()).await;
    for (message, outcome) in messages.iter().zip(outcomes) {
        if outcome == ConsumeResult::ReconsumeLater {
            while let Err(err) = send_back(shared, message).await {
                if !err.is_retriable() {
                    // The broker will never take this one back: retry it in place instead,
                    // still never moving past it unhandled.
                    tracing::warn!(message_id = message.message_id, error = %err, "hand-back refused; retrying in place");
                    handle_in_place(shared, std::slice::from_ref(message), stopped).await?;
                    break;
                }
                tracing::warn!(message_id = message.message_id, error = %err, "hand-back failed; retrying");
                if *stopped.borrow() {
                    return Err(message.queue_offset);
                }
                pause(stopped).await;
            }
        }
    }
    Ok(())
}

/// Orderly (and broadcasting): one message at a time; a failed one is tried again in place after
/// a pause that grows to 30 s, and nothing after it runs first. On a stop, returns the queue
/// offset of the message not yet handled.
async fn handle_in_place(
    shared: &Shared,
    messages: &[ReceivedMessage],
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), u64> {
    for message in messages {
        let mut attempt = 0u32;
        loop {
            if *stopped.borrow() {
                return Err(message.queue_offset);
            }
            let outcome = handle(shared, vec![message.clone()]).await[0];
            if outcome == ConsumeResult::ConsumeSuccess {
                break;
            }
            attempt += 1;
            let suspend =
                Duration::from_millis(100 * 2u64.pow(attempt.min(9))).min(Duration::from_secs(30));
            tracing::debug!(
                message_id = message.message_id,
                attempt,
                "suspending the queue before trying again"
            );
            let _ = tokio::time::timeout(suspend, stopped.changed()).await;
        }
    }
    Ok(())
}

async fn pause(stopped: &mut watch::Receiver<bool>) {
    let _ = tokio::time::timeout(Duration::from_millis(500), stopped.changed()).await;
}

async fn start_offset(shared: &Shared, topic: &str, queue_id: u32) -> Result<u64, ClientError> {
    if shared.config.message_model == MessageModel::Broadcasting {
        let key = (topic.to_owned(), queue_id);
        let local = shared
            .local_offsets
            .lock()
            .expect("offsets lock")
            .get(&key)
            .copied();
        if let Some(offset) = local {
            return Ok(offset);
        }
        let probe = shared
            .puller
            .pull(topic, queue_id, 0, 1, "*", Duration::ZERO)
            .await?;
        return Ok(match shared.config.consume_from {
            ConsumeFrom::First => probe.min_queue_offset,
            ConsumeFrom::Last => probe.max_queue_offset,
        });
    }
    let mut groups = shared.groups.clone();
    let committed = groups
        .query_offset(QueryOffsetRequest {
            group: shared.config.group.clone(),
            topic: topic.to_owned(),
            queue_id,
        })
        .await?
        .into_inner();
    if committed.found {
        return Ok(committed.queue_offset);
    }
    // A retry topic is always read from its start: everything in it is for this group.
    let from = if topic.starts_with("%RETRY%") {
        ConsumeFrom::First
    } else {
        shared.config.consume_from
    };
    let probe = shared
        .puller
        .pull(topic, queue_id, 0, 1, "*", Duration::ZERO)
        .await?;
    let start = match from {
        ConsumeFrom::First => probe.min_queue_offset,
        ConsumeFrom::Last => probe.max_queue_offset,
    };
    // Committed at once: a member that dies during its first batch must not leave the next owner
    // to start from "last" again, past the messages that arrived in between.
    commit(shared, topic, queue_id, start).await?;
    Ok(start)
}

/// Runs the listener over a batch on a blocking thread; an `Err` or a panic counts as
/// `ReconsumeLater`.
async fn handle(shared: &Shared, messages: Vec<ReceivedMessage>) -> Vec<ConsumeResult> {
    let listener = shared.listener.clone();
    let count = messages.len();
    tokio::task::spawn_blocking(move || {
        messages
            .iter()
            .map(|message| match catch_unwind(AssertUnwindSafe(|| listener.consume(message))) {
                Ok(Ok(result)) => result,
                Ok(Err(err)) => {
                    tracing::debug!(message_id = message.message_id, error = %err, "listener failed");
                    ConsumeResult::ReconsumeLater
                }
                Err(_) => {
                    tracing::warn!(message_id = message.message_id, "listener panicked");
                    ConsumeResult::ReconsumeLater
                }
            })
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![ConsumeResult::ReconsumeLater; count])
}

async fn send_back(shared: &Shared, message: &ReceivedMessage) -> Result<(), ClientError> {
    let mut groups = shared.groups.clone();
    groups
        .send_back(SendBackRequest {
            group: shared.config.group.clone(),
            commit_log_offset: message.commit_log_offset,
            topic: message.topic.clone(),
            queue_offset: message.queue_offset,
        })
        .await?;
    Ok(())
}

async fn commit(
    shared: &Shared,
    topic: &str,
    queue_id: u32,
    queue_offset: u64,
) -> Result<(), ClientError> {
    if shared.config.message_model == MessageModel::Broadcasting {
        shared
            .local_offsets
            .lock()
            .expect("offsets lock")
            .insert((topic.to_owned(), queue_id), queue_offset);
        return Ok(());
    }
    let mut groups = shared.groups.clone();
    groups
        .commit_offset(CommitOffsetRequest {
            group: shared.config.group.clone(),
            topic: topic.to_owned(),
            queue_id,
            queue_offset,
        })
        .await?;
    Ok(())
}
