//! RocketMQ 5's server-side consumption on a broker group's master: `ReceiveMessage` hands out,
//! from any queue of the topic there, messages a group has not had yet (or whose invisibility
//! ran out), `AckMessage` marks them done in any order, `ChangeInvisibleDuration` renews or hands back, and
//! `ForwardMessageToDeadLetterQueue` gives up on one.
//!
//! State per (group, topic, queue) is a [`PopQueue`] in this master's memory, built from the
//! group's committed offset the first time the queue is touched in this master epoch. The
//! committed offset is the lowest offset neither acknowledged nor filtered out; it is written
//! through the consumer groups' offsets (`crate::groups`), so it replicates and fails over like
//! every offset: after a failover the new master starts from it, so messages handed out and not
//! acknowledged come again (at least once, counted as duplicates), and none is skipped.
//!
//! A message whose deliveries ran out (the group's max retries plus one) goes to the group's
//! dead-letter topic, as a native consumer's would. A FIFO group (its setting on the
//! controller) gets no message of a message group while an earlier one of it is in flight:
//! reading a queue stops at such a message until it is free (the queue waits behind the busy
//! group, so no message is skipped or reordered).
//!
//! Why one file of about 650 lines: 580 of code (receive, acknowledge, renew and dead-letter
//! share one state per queue and its lock) and 70 of the receive validation's unit tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::ClusterKey;
use proto::client as wire;
use proto::v5;
use tokio::sync::Mutex as AsyncMutex;

use super::commit::{Committer, QueueKey};
use super::message::{millis_of, to_v5, Delivered};
use super::pop::{Delivery, PopQueue, Stale};
use super::receipt::Receipt;
use super::send::PROPERTY_MESSAGE_GROUP;
use super::status::{ok, refused, status};
use super::V5Parts;
use crate::error::BrokerError;
use crate::groups::ConsumerGroupState;
use crate::retry::RetryState;
use crate::role::RoleCell;
use crate::service::BrokerService;
use crate::store::{now_ms, Store};
use crate::topics::TopicRegistry;

/// Invisibility when the client leaves it to the server (a push consumer that asks for
/// automatic renewal: it acknowledges within this, or the message comes again).
const DEFAULT_INVISIBLE: Duration = Duration::from_secs(60);
/// Shortest and longest invisibility a receive may ask for (upstream's bounds).
const INVISIBLE_MIN: Duration = Duration::from_secs(1);
const INVISIBLE_MAX: Duration = Duration::from_secs(12 * 3600);
/// Longest long poll (a longer one asked for is cut to it); the clients' deadline is their
/// request timeout (3 s) beyond it.
pub const LONG_POLLING_MAX: Duration = Duration::from_secs(30);
/// Long poll when the client names none.
const LONG_POLLING_DEFAULT: Duration = Duration::from_secs(20);
/// Most messages one receive hands out.
pub const RECEIVE_BATCH_MAX: i32 = 32;
/// Most entries one acknowledgement carries.
pub const ACK_ENTRIES_MAX: usize = 1024;

/// The states of one master epoch: the epoch, and per queue its state.
type EpochQueues = (u64, HashMap<QueueKey, Arc<AsyncMutex<PopQueue>>>);

/// The master's consumption state and what it reads and writes through.
pub struct Consumption {
    native: Arc<BrokerService>,
    store: Arc<Store>,
    groups: Arc<ConsumerGroupState>,
    retry: Arc<RetryState>,
    role: Arc<RoleCell>,
    key: ClusterKey,
    store_host: String,
    /// The master epoch the states were built in, and the states: a new epoch starts afresh.
    queues: Mutex<EpochQueues>,
    /// Woken by every acknowledgement: a FIFO group's next message may be free now.
    acked: tokio::sync::Notify,
    /// The topics and their queue counts: a receive reads every queue of its topic.
    topics: Arc<TopicRegistry>,
    /// Where the next receive's pass starts (modulo the queue count).
    next_queue: AtomicU32,
    /// Writes the committed offsets, a commit per queue at a time.
    committer: Committer,
}

/// A receive, validated. It names no queue: every queue of the topic on this broker serves it.
pub struct Receive {
    pub group: String,
    pub topic: String,
    pub batch: usize,
    pub invisible: Duration,
    pub long_polling: Duration,
    pub tag_expression: String,
}

impl Consumption {
    /// Works through the broker's `parts`; receipts name `parts.v5_addr` as the store host.
    pub fn new(parts: &V5Parts) -> Consumption {
        Consumption {
            native: parts.native.clone(),
            store: parts.store.clone(),
            groups: parts.groups.clone(),
            retry: parts.retry.clone(),
            role: parts.role.clone(),
            key: parts.key.clone(),
            store_host: parts.v5_addr.clone(),
            queues: Mutex::new((0, HashMap::new())),
            acked: tokio::sync::Notify::new(),
            topics: parts.topics.clone(),
            next_queue: AtomicU32::new(0),
            committer: Committer::new(parts.groups.clone()),
        }
    }

    /// Whether this broker may serve consumption now: it is the master, with its lease.
    pub fn is_master(&self) -> bool {
        self.role.writable().is_ok()
    }

    /// The state of one queue in this master epoch, built from the committed offset.
    async fn queue(&self, group: &str, topic: &str, queue_id: u32) -> Arc<AsyncMutex<PopQueue>> {
        let epoch = self.role.master_epoch();
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        {
            let mut queues = self.queues.lock().expect("pop queues lock poisoned");
            if queues.0 != epoch {
                *queues = (epoch, HashMap::new());
            }
            if let Some(queue) = queues.1.get(&key) {
                return queue.clone();
            }
        }
        let committed = self.groups.query(group, topic, queue_id).await.unwrap_or(0);
        let mut queues = self.queues.lock().expect("pop queues lock poisoned");
        queues
            .1
            .entry(key)
            .or_insert_with(|| Arc::new(AsyncMutex::new(PopQueue::starting_at(committed))))
            .clone()
    }

    /// Hands out up to `receive.batch` messages, waiting up to its long poll for one.
    pub async fn receive(&self, receive: &Receive) -> Result<Vec<v5::Message>, v5::Status> {
        let deadline = tokio::time::Instant::now() + receive.long_polling;
        let mut readable = self.store.subscribe_readable_offset();
        loop {
            let (messages, wake_at_ms) = self.take(receive).await?;
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(messages);
            }
            // Until something is written, a delivery's invisibility runs out, or the poll ends.
            let mut until = deadline;
            if let Some(at_ms) = wake_at_ms {
                let wait = Duration::from_millis(at_ms.saturating_sub(now_ms()));
                until = until.min(tokio::time::Instant::now() + wait);
            }
            let _ = tokio::time::timeout_at(until, async {
                tokio::select! {
                    _ = readable.changed() => {}
                    () = self.acked.notified() => {}
                }
            })
            .await;
        }
    }

    /// One pass over every queue of the topic on this broker, as upstream's proxy pops from
    /// every queue of the broker a receive names: a consumer that picks queues at random (the
    /// official SimpleConsumer does) finds what is there without waiting out a long poll on each
    /// empty queue. Each pass starts at the next queue, so that none waits behind the others.
    /// Also answers the earliest deadline in flight, to wake up for.
    async fn take(&self, receive: &Receive) -> Result<(Vec<v5::Message>, Option<u64>), v5::Status> {
        let queue_count = self
            .topics
            .get(&receive.topic)
            .map_or(0, |topic| topic.queue_count);
        if queue_count == 0 {
            let err = BrokerError::TopicNotFound {
                topic: receive.topic.clone(),
            };
            return Err(refused(err.code(), err.to_string()));
        }
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed) % queue_count;
        let (mut out, mut wake) = (Vec::new(), None::<u64>);
        for i in 0..queue_count {
            let want = receive.batch - out.len();
            if want == 0 {
                break;
            }
            let queue_id = (start + i) % queue_count;
            match self.take_from(receive, queue_id, want).await {
                Ok((messages, at)) => {
                    out.extend(messages);
                    wake = match (wake, at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(refusal) if out.is_empty() => return Err(refusal),
                // What this pass handed out goes to the client; the queue that failed is
                // read again at the next receive.
                Err(refusal) => {
                    tracing::warn!(
                        group = %receive.group,
                        topic = %receive.topic,
                        queue_id,
                        code = refusal.code,
                        message = %refusal.message,
                        "a v5 receive could not read a queue"
                    );
                    break;
                }
            }
        }
        Ok((out, wake))
    }

    /// One queue's part of a pass: up to `want` messages, due redeliveries first, then new
    /// ones. Also answers the queue's earliest deadline in flight.
    async fn take_from(
        &self,
        receive: &Receive,
        queue_id: u32,
        want: usize,
    ) -> Result<(Vec<v5::Message>, Option<u64>), v5::Status> {
        let queue = self.queue(&receive.group, &receive.topic, queue_id).await;
        let mut q = queue.lock().await;
        let low_before = q.low();
        let max_attempts = self.retry.max_retries(&receive.group).saturating_add(1);
        // A FIFO group gets no message of a message group that has one in flight from an
        // earlier receive; reading stops there, so that none is skipped or reordered.
        let busy = if self.retry.is_fifo(&receive.group) {
            Some(q.busy_groups())
        } else {
            None
        };
        let now = now_ms();
        let deadline_ms = now + receive.invisible.as_millis() as u64;
        let mut out = Vec::new();
        for (offset, due) in q.due(now, want) {
            if due.attempt >= max_attempts {
                self.retry
                    .dead_letter(
                        &receive.group,
                        due.commit_log_offset,
                        &receive.topic,
                        offset,
                    )
                    .await
                    .map_err(|err| refused(err.code(), err.to_string()))?;
                let _ = q.ack(offset, due.nonce);
                continue;
            }
            let stored = match self.store.read_message_at(due.commit_log_offset) {
                Ok(stored) => crate::service::to_wire_message(&stored),
                Err(err) => {
                    let err = BrokerError::from(err);
                    return Err(refused(err.code(), err.to_string()));
                }
            };
            let delivery = Delivery {
                attempt: due.attempt + 1,
                nonce: rand::random(),
                deadline_ms,
                ..due
            };
            q.hand_out(offset, delivery);
            out.push(self.deliver(receive, queue_id, stored, offset, delivery));
        }
        // Nothing written past what was handed out: no read needed.
        let written = self
            .store
            .queue_offsets(&receive.topic, queue_id)
            .map_or(0, |(_, max)| max);
        if out.len() < want && q.next() < written {
            let pulled = self
                .native
                .pull(wire::PullRequest {
                    topic: receive.topic.clone(),
                    queue_id,
                    queue_offset: q.next(),
                    max_messages: (want - out.len()) as u32,
                    max_bytes: 0,
                    tag_expression: receive.tag_expression.clone(),
                    poll_timeout_ms: 0,
                })
                .await
                .map_err(|err| refused(err.code(), err.to_string()))?;
            let mut held_back = false;
            for stored in pulled.messages {
                let group = stored.properties.get(PROPERTY_MESSAGE_GROUP).cloned();
                if let (Some(busy), Some(group)) = (&busy, &group) {
                    if busy.contains(group) {
                        held_back = true;
                        break;
                    }
                }
                let offset = stored.queue_offset;
                let delivery = Delivery {
                    commit_log_offset: stored.commit_log_offset,
                    attempt: 1,
                    nonce: rand::random(),
                    deadline_ms,
                };
                q.hand_out(offset, delivery);
                if let (Some(_), Some(group)) = (&busy, group) {
                    q.set_group(offset, group);
                }
                out.push(self.deliver(receive, queue_id, stored, offset, delivery));
            }
            if !held_back {
                // Filtered out, or below what retention kept: nothing to hand out there.
                q.skip_to(pulled.next_queue_offset);
            }
        }
        let (low, wake) = (q.low(), q.earliest_deadline());
        tracing::debug!(
            group = %receive.group,
            topic = %receive.topic,
            queue_id,
            handed_out = out.len(),
            next = q.next(),
            low,
            in_flight = q.in_flight(),
            "v5 receive pass"
        );
        drop(q);
        if low != low_before {
            self.commit(&receive.group, &receive.topic, queue_id, low)
                .await;
        }
        Ok((out, wake))
    }

    fn deliver(
        &self,
        receive: &Receive,
        queue_id: u32,
        stored: wire::StoredMessage,
        offset: u64,
        delivery: Delivery,
    ) -> v5::Message {
        let receipt = Receipt {
            master_epoch: self.role.master_epoch(),
            group: receive.group.clone(),
            topic: receive.topic.clone(),
            queue_id,
            queue_offset: offset,
            commit_log_offset: delivery.commit_log_offset,
            nonce: delivery.nonce,
            deadline_ms: delivery.deadline_ms,
            attempt: delivery.attempt,
        };
        to_v5(
            stored,
            &Delivered {
                receipt_handle: receipt.encode(&self.key),
                attempt: delivery.attempt,
                invisible_ms: receive.invisible.as_millis() as u64,
                store_host: &self.store_host,
            },
        )
    }

    /// The receipt of `handle` for (`group`, `topic`), if it is current: signed by this
    /// cluster, made in this master epoch, for that group and topic.
    fn receipt(&self, handle: &str, group: &str, topic: &str) -> Result<Receipt, v5::Status> {
        let invalid = |why: &str| status(v5::Code::InvalidReceiptHandle, why.to_owned());
        let receipt = Receipt::decode(handle, &self.key)
            .ok_or_else(|| invalid("the receipt handle was not made by this cluster"))?;
        if receipt.group != group || receipt.topic != topic {
            return Err(invalid("the receipt handle is for another group or topic"));
        }
        if receipt.master_epoch != self.role.master_epoch() {
            return Err(invalid(
                "the receipt handle is from before a master change; the message comes again",
            ));
        }
        Ok(receipt)
    }

    /// Acknowledges one delivery.
    pub async fn ack(&self, group: &str, topic: &str, handles: &[&str]) -> Vec<v5::Status> {
        // Every entry first, then one commit per queue that moved: an acknowledgement of many
        // messages waits for one offset write, not one each.
        let mut statuses = Vec::with_capacity(handles.len());
        let mut moved: HashMap<u32, u64> = HashMap::new();
        // Each queue's state looked up once per request, not once per entry.
        let mut queues: HashMap<u32, Arc<AsyncMutex<PopQueue>>> = HashMap::new();
        for handle in handles {
            let receipt = match self.receipt(handle, group, topic) {
                Ok(receipt) => receipt,
                Err(status) => {
                    statuses.push(status);
                    continue;
                }
            };
            let queue = match queues.get(&receipt.queue_id) {
                Some(queue) => queue.clone(),
                None => {
                    let queue = self.queue(group, topic, receipt.queue_id).await;
                    queues.insert(receipt.queue_id, queue.clone());
                    queue
                }
            };
            let mut q = queue.lock().await;
            match q.ack(receipt.queue_offset, receipt.nonce) {
                Ok(true) => {
                    moved.insert(receipt.queue_id, q.low());
                    statuses.push(ok());
                }
                Ok(false) => statuses.push(ok()),
                Err(stale) => statuses.push(stale_status(stale)),
            }
        }
        self.acked.notify_waiters();
        for (queue_id, low) in moved {
            self.commit(group, topic, queue_id, low).await;
        }
        statuses
    }

    /// Gives one delivery `invisible` more from now; answers its new handle.
    pub async fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        handle: &str,
        invisible: Duration,
    ) -> Result<String, v5::Status> {
        let receipt = self.receipt(handle, group, topic)?;
        let queue = self.queue(group, topic, receipt.queue_id).await;
        let mut q = queue.lock().await;
        let deadline_ms = now_ms() + invisible.as_millis() as u64;
        let renewed = q
            .renew(
                receipt.queue_offset,
                receipt.nonce,
                deadline_ms,
                rand::random(),
            )
            .map_err(stale_status)?;
        Ok(Receipt {
            nonce: renewed.nonce,
            deadline_ms,
            ..receipt
        }
        .encode(&self.key))
    }

    /// Moves one delivered message to the group's dead-letter topic and marks it done.
    pub async fn dead_letter(&self, group: &str, topic: &str, handle: &str) -> v5::Status {
        let receipt = match self.receipt(handle, group, topic) {
            Ok(receipt) => receipt,
            Err(status) => return status,
        };
        let queue = self.queue(group, topic, receipt.queue_id).await;
        let mut q = queue.lock().await;
        // Current first: a stale handle must not dead-letter a message handed out again.
        if let Err(stale) = q.current(receipt.queue_offset, receipt.nonce) {
            return stale_status(stale);
        }
        if let Err(err) = self
            .retry
            .dead_letter(
                group,
                receipt.commit_log_offset,
                topic,
                receipt.queue_offset,
            )
            .await
        {
            return refused(err.code(), err.to_string());
        }
        let moved = q.ack(receipt.queue_offset, receipt.nonce) == Ok(true);
        let low = q.low();
        drop(q);
        if moved {
            self.commit(group, topic, receipt.queue_id, low).await;
        }
        ok()
    }

    /// Returns once the group's committed offset of one queue is at least `low` (see
    /// [`Committer`]).
    async fn commit(&self, group: &str, topic: &str, queue_id: u32, low: u64) {
        let epoch = self.role.master_epoch();
        let pop = self.queue(group, topic, queue_id).await;
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        self.committer.commit(epoch, &key, low, &pop).await;
    }
}

fn stale_status(stale: Stale) -> v5::Status {
    let why = match stale {
        Stale::NotInFlight => "the message was acknowledged already, or not handed out here",
        Stale::Redelivered => "the message was handed out again since this receipt handle",
    };
    status(v5::Code::InvalidReceiptHandle, why)
}

/// `given`, or `default` when absent; None when it is outside `range`.
fn bounded(
    given: Option<&prost_types::Duration>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Option<Duration> {
    match given {
        None => Some(default),
        Some(d) => millis_of(d)
            .map(Duration::from_millis)
            .filter(|d| range.contains(d)),
    }
}

/// A receive request, checked; or the status that refuses it.
pub fn validate(request: &v5::ReceiveMessageRequest) -> Result<Receive, v5::Status> {
    let group = request
        .group
        .as_ref()
        .map(|g| g.name.clone())
        .unwrap_or_default();
    crate::groups::check_group(&group)
        .map_err(|err| status(v5::Code::IllegalConsumerGroup, err.to_string()))?;
    let queue = request
        .message_queue
        .as_ref()
        .ok_or_else(|| status(v5::Code::BadRequest, "the receive names no queue"))?;
    let topic = queue
        .topic
        .as_ref()
        .map(|t| t.name.clone())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| status(v5::Code::IllegalTopic, "the queue names no topic"))?;
    // The queue's id is not read: a receive is served from every queue of the topic on this
    // broker (upstream's assignments name queue -1 for that).
    let batch = match request.batch_size {
        0 => RECEIVE_BATCH_MAX,
        n if (1..=RECEIVE_BATCH_MAX).contains(&n) => n,
        _ => {
            return Err(status(
                v5::Code::BadRequest,
                format!("batch_size must be 1 to {RECEIVE_BATCH_MAX}"),
            ))
        }
    };
    let invisible = bounded(
        request.invisible_duration.as_ref(),
        DEFAULT_INVISIBLE,
        INVISIBLE_MIN..=INVISIBLE_MAX,
    )
    .ok_or_else(|| {
        status(
            v5::Code::IllegalInvisibleTime,
            "invisible_duration must be 1 s to 12 h",
        )
    })?;
    // Longer than the most this broker waits is waited that long, as upstream's proxy clamps
    // it (the official Rust client asks for 40 s); a negative one is malformed.
    let long_polling = match request.long_polling_timeout.as_ref() {
        None => LONG_POLLING_DEFAULT,
        Some(given) => millis_of(given)
            .map(|ms| Duration::from_millis(ms).min(LONG_POLLING_MAX))
            .ok_or_else(|| {
                status(
                    v5::Code::IllegalPollingTime,
                    "long_polling_timeout must be a duration of 0 s or more",
                )
            })?,
    };
    let tag_expression = match &request.filter_expression {
        None => String::new(),
        Some(filter) if filter.r#type == v5::FilterType::Sql as i32 => {
            return Err(status(
                v5::Code::IllegalFilterExpression,
                "SQL filters are not served; filter by tag",
            ))
        }
        Some(filter) => filter.expression.clone(),
    };
    Ok(Receive {
        group,
        topic,
        // At most 32.
        batch: batch as usize,
        invisible,
        long_polling,
        tag_expression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> v5::ReceiveMessageRequest {
        v5::ReceiveMessageRequest {
            group: Some(v5::Resource {
                resource_namespace: String::new(),
                name: "payments".into(),
            }),
            message_queue: Some(v5::MessageQueue {
                topic: Some(v5::Resource {
                    resource_namespace: String::new(),
                    name: "orders".into(),
                }),
                id: 1,
                ..Default::default()
            }),
            batch_size: 16,
            ..Default::default()
        }
    }

    fn code(request: &v5::ReceiveMessageRequest) -> i32 {
        validate(request).err().map_or(20000, |s| s.code)
    }

    #[test]
    fn absurd_receives_are_refused_with_their_codes() {
        let good = validate(&request()).unwrap();
        assert_eq!((good.batch, good.invisible), (16, DEFAULT_INVISIBLE));
        let mut r = request();
        r.batch_size = 10_000;
        assert_eq!(code(&r), v5::Code::BadRequest as i32);
        let mut r = request();
        r.invisible_duration = Some(prost_types::Duration {
            seconds: 86_400 * 365,
            nanos: 0,
        });
        assert_eq!(code(&r), v5::Code::IllegalInvisibleTime as i32);
        let mut r = request();
        r.long_polling_timeout = Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        });
        assert_eq!(code(&r), v5::Code::IllegalPollingTime as i32);
        let mut r = request();
        r.long_polling_timeout = Some(prost_types::Duration {
            seconds: 40,
            nanos: 0,
        });
        assert_eq!(validate(&r).unwrap().long_polling, LONG_POLLING_MAX);
        let mut r = request();
        r.filter_expression = Some(v5::FilterExpression {
            r#type: v5::FilterType::Sql as i32,
            expression: "a > 1".into(),
        });
        assert_eq!(code(&r), v5::Code::IllegalFilterExpression as i32);
        let mut r = request();
        r.group = None;
        assert_eq!(code(&r), v5::Code::IllegalConsumerGroup as i32);
        let mut r = request();
        r.message_queue = None;
        assert_eq!(code(&r), v5::Code::BadRequest as i32);
        // Queue -1 is how upstream's assignments name "every queue of the broker".
        let mut r = request();
        r.message_queue.as_mut().unwrap().id = -1;
        assert!(validate(&r).is_ok());
    }
}
