//! The client-facing gRPC service (`broker.client.v1.Broker`): send, pull with long polling,
//! topic administration. It validates requests, turns them into store calls, and turns store
//! results into wire types. Errors become statuses in one place ([`BrokerError::into_status`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::client::{self as wire, broker_server::Broker};
use proto::common::SendStatus;
use tonic::{Request, Response, Status};

use auth::{Action, Gate, Resource};

use crate::config::BrokerSettings;
use crate::error::BrokerError;
use crate::role::RoleCell;
use crate::store::message::{PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID};
use crate::store::{GetRequest, GetStatus, NewMessage, PutStatus, Store, StoredMessage, TagFilter};
use crate::topics::TopicRegistry;
use replication::ship::ReplicaWait;

/// Property names only the broker sets: tag, keys and id travel in them, and the retry path
/// adds the others.
pub const RESERVED_PROPERTIES: [&str; 6] = [
    PROPERTY_TAGS,
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    crate::retry::PROPERTY_REAL_TOPIC,
    crate::retry::PROPERTY_DELIVER_AT_MS,
    crate::retry::PROPERTY_ORIGIN_TOPIC,
];

/// Most messages in one send.
pub const SEND_BATCH_MESSAGES_MAX: usize = 1024;
/// Most messages one pull returns.
pub const PULL_MESSAGES_MAX: u32 = 1024;
/// Default and largest byte budget of one pull (always at least one message is returned).
pub const PULL_BYTES_DEFAULT: u32 = 4 << 20;
pub const PULL_BYTES_MAX: u32 = 16 << 20;
/// Longest message id accepted (RocketMQ's are 32 hex digits).
pub const MESSAGE_ID_BYTES_MAX: usize = 128;
/// Longest tag or key accepted.
pub const TAG_BYTES_MAX: usize = 255;
/// Earliest born timestamp accepted: 2000-01-01T00:00:00Z in Unix milliseconds. No producer of
/// this broker ran before it; an earlier value (0 included: the field left unset) is a broken
/// clock or a broken client, and consumers, retention by age and delay levels would act on it.
pub const BORN_TIMESTAMP_MIN_MS: u64 = 946_684_800_000;
/// How far ahead of the broker's clock a born timestamp may be: one day, far beyond any clock
/// skew between machines, far short of the overflow that 2^64-1 invites in whoever adds to it.
pub const BORN_TIMESTAMP_AHEAD_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// The service state: the store, the topics, the broker's role, and the ACL's gate.
pub struct BrokerService {
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    settings: BrokerSettings,
    role: Arc<RoleCell>,
    /// Every RPC asks it first (`crate::access`); the v5 API, which calls this service's
    /// `send` and `pull` directly, checks its own requests before.
    gate: Gate,
}

impl BrokerService {
    pub fn new(
        store: Arc<Store>,
        topics: Arc<TopicRegistry>,
        settings: BrokerSettings,
        role: Arc<RoleCell>,
        gate: Gate,
    ) -> Self {
        BrokerService {
            store,
            topics,
            settings,
            role,
            gate,
        }
    }

    /// The gate this broker's services check requests with.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The queue count of `topic`, creating it if auto-creation is on.
    fn queue_count(&self, topic: &str) -> Result<u32, BrokerError> {
        if topic.starts_with('%') && self.topics.get(topic).is_none() {
            return Err(BrokerError::TopicReserved {
                topic: topic.to_owned(),
            });
        }
        if let Some(config) = self.topics.get(topic) {
            return Ok(config.queue_count);
        }
        if self.settings.auto_create_topic_enable {
            self.topics
                .create(topic, self.settings.default_topic_queue_nums)?;
            return Ok(self.settings.default_topic_queue_nums);
        }
        Err(BrokerError::TopicNotFound {
            topic: topic.to_owned(),
        })
    }

    fn check_queue(&self, topic: &str, queue_id: u32) -> Result<(), BrokerError> {
        // Creates the topic first when auto-creation is on.
        self.queue_count(topic)?;
        self.topics.check_queue(topic, queue_id)
    }

    /// A send, as the `Send` RPC and the v5 API's `SendMessage` make it.
    pub async fn send(
        &self,
        request: wire::SendRequest,
    ) -> Result<wire::SendResponse, BrokerError> {
        if request.messages.is_empty() || request.messages.len() > SEND_BATCH_MESSAGES_MAX {
            return Err(BrokerError::BadRequest {
                reason: "a send holds 1 to 1024 messages",
            });
        }
        if request.topic.starts_with('%') {
            // The broker's topics are written by the broker alone.
            return Err(BrokerError::TopicReserved {
                topic: request.topic,
            });
        }
        // Before anything can change (a topic auto-created by check_queue).
        let now_ms = crate::store::now_ms();
        for message in &request.messages {
            check_born_timestamp(message.born_timestamp_ms, now_ms)?;
        }
        let role = self.role.writable()?;
        self.role.check_not_drained()?;
        if self.store.disk_full() {
            return Err(BrokerError::DiskFull);
        }
        self.check_queue(&request.topic, request.queue_id)?;
        let mut message_ids = Vec::with_capacity(request.messages.len());
        let mut messages = Vec::with_capacity(request.messages.len());
        for message in request.messages {
            message_ids.push(message.message_id.clone());
            messages.push(to_new_message(&request.topic, request.queue_id, message)?);
        }
        let appended = if messages.len() == 1 {
            let message = messages.pop().expect("one message");
            self.store.append(message).await?
        } else {
            self.store.append_batch(messages).await?
        };
        crate::metrics::record_appended(message_ids.len());
        // The local status first: a message not durable here is answered so, whatever the
        // slaves hold. Then, under SYNC_MASTER, the in-sync set (see `replication::ship::insync`).
        let status = match appended.status {
            PutStatus::FlushDiskTimeout => SendStatus::FlushDiskTimeout,
            PutStatus::Ok => match role.wait_replicated(appended.end_offset).await {
                // Fencing: SEND_OK only from the master that still holds its lease now, after
                // the set acknowledged (docs/DURABILITY.md, "Failover").
                ReplicaWait::Replicated => {
                    self.role.may_acknowledge(&role)?;
                    SendStatus::SendOk
                }
                ReplicaWait::Timeout => SendStatus::FlushSlaveTimeout,
                ReplicaWait::NotEnoughReplicas => SendStatus::SlaveNotAvailable,
                ReplicaWait::Deposed => {
                    return Err(BrokerError::CannotAcknowledge {
                        reason: "another master was elected while the send waited".into(),
                    })
                }
            },
        };
        let commit_log_offsets = if appended.record_commit_log_offsets.is_empty() {
            vec![appended.commit_log_offset]
        } else {
            appended.record_commit_log_offsets
        };
        debug_assert_eq!(commit_log_offsets.len(), message_ids.len());
        Ok(wire::SendResponse {
            status: status as i32,
            queue_id: request.queue_id,
            queue_offset: appended.queue_offset,
            commit_log_offset: appended.commit_log_offset,
            message_ids,
            commit_log_offsets,
        })
    }

    /// A pull, as the `Pull` RPC and the v5 API's receives make it.
    pub async fn pull(
        &self,
        request: wire::PullRequest,
    ) -> Result<wire::PullResponse, BrokerError> {
        if request.topic.starts_with('%')
            && !(request.topic.starts_with("%RETRY%") || request.topic.starts_with("%DLQ%"))
        {
            // Of the broker's topics, consumers read only retry and dead-letter topics.
            return Err(BrokerError::TopicReserved {
                topic: request.topic,
            });
        }
        self.check_queue(&request.topic, request.queue_id)?;
        let max_count = match request.max_messages {
            0 => 32,
            n if n <= PULL_MESSAGES_MAX => n,
            _ => {
                return Err(BrokerError::BadRequest {
                    reason: "max_messages must be at most 1024",
                })
            }
        };
        let max_bytes = match request.max_bytes {
            0 => PULL_BYTES_DEFAULT,
            n => n.min(PULL_BYTES_MAX),
        };
        let filter = TagFilter::parse(&request.tag_expression);
        let wait = Duration::from_millis(u64::from(
            request
                .poll_timeout_ms
                .min(self.settings.pull_poll_timeout_max_ms),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first read, so a message that becomes readable in between
        // still wakes the wait.
        let mut readable = self.store.subscribe_readable_offset();
        loop {
            let result = self.store.get_messages(&GetRequest {
                topic: &request.topic,
                queue_id: request.queue_id,
                queue_offset: request.queue_offset,
                max_count: max_count as usize,
                max_bytes: max_bytes as usize,
                filter: &filter,
            })?;
            let nothing_yet = matches!(
                result.status,
                GetStatus::NoNewMessage | GetStatus::QueueNotFound
            );
            if !nothing_yet || tokio::time::Instant::now() >= deadline {
                return Ok(to_pull_response(result, request.queue_offset));
            }
            if tokio::time::timeout_at(deadline, readable.changed())
                .await
                .is_err()
            {
                continue; // one last read at the deadline
            }
        }
    }

    /// The topics `visible` admits, with their queues' offsets.
    fn list_topics(&self, visible: impl Fn(&str) -> bool) -> wire::ListTopicsResponse {
        let topics = self
            .topics
            .list()
            .into_iter()
            .filter(|(topic, _)| visible(topic))
            .map(|(topic, config)| wire::TopicStatus {
                queues: (0..config.queue_count)
                    .map(|queue_id| {
                        let (min, max) =
                            self.store.queue_offsets(&topic, queue_id).unwrap_or((0, 0));
                        wire::QueueStatus {
                            queue_id,
                            min_queue_offset: min,
                            max_queue_offset: max,
                        }
                    })
                    .collect(),
                queue_count: config.queue_count,
                topic,
            })
            .collect();
        wire::ListTopicsResponse { topics }
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn send(
        &self,
        request: Request<wire::SendRequest>,
    ) -> Result<Response<wire::SendResponse>, Status> {
        let started = Instant::now();
        let topic = &request.get_ref().topic;
        self.gate
            .check(request.extensions(), Action::Send, Resource::Topic(topic))?;
        let answer = BrokerService::send(self, request.into_inner()).await;
        crate::metrics::record_send(&answer, started.elapsed());
        Ok(Response::new(answer?))
    }

    async fn pull(
        &self,
        request: Request<wire::PullRequest>,
    ) -> Result<Response<wire::PullResponse>, Status> {
        // A pull names no group: the topic's consume permission is what it needs.
        let topic = crate::access::consumed(&request.get_ref().topic);
        self.gate
            .check(request.extensions(), Action::Consume, topic)?;
        Ok(Response::new(
            BrokerService::pull(self, request.into_inner()).await?,
        ))
    }

    async fn create_topic(
        &self,
        request: Request<wire::CreateTopicRequest>,
    ) -> Result<Response<wire::CreateTopicResponse>, Status> {
        self.gate
            .check(request.extensions(), Action::Admin, Resource::Cluster)?;
        let request = request.into_inner();
        if request.topic.starts_with('%') {
            return Err(BrokerError::TopicReserved {
                topic: request.topic,
            }
            .into());
        }
        self.role.writable()?;
        let created = self.topics.create(&request.topic, request.queue_count)?;
        Ok(Response::new(wire::CreateTopicResponse { created }))
    }

    async fn list_topics(
        &self,
        request: Request<wire::ListTopicsRequest>,
    ) -> Result<Response<wire::ListTopicsResponse>, Status> {
        // Producers and consumers list topics (queue counts, retry queues), so any known user
        // may; each sees only the topics it may send to or consume, and a stranger nothing.
        self.gate.check_user(request.extensions())?;
        let extensions = request.extensions();
        Ok(Response::new(self.list_topics(|topic| {
            crate::access::may_see(&self.gate, extensions, topic)
        })))
    }
}

/// Checks a producer's message and turns it into the store's form. Reserved properties carry
/// tag, keys and id; an application property may not use their names.
fn to_new_message(
    topic: &str,
    queue_id: u32,
    message: wire::Message,
) -> Result<NewMessage, BrokerError> {
    let id = &message.message_id;
    if id.is_empty() || id.len() > MESSAGE_ID_BYTES_MAX || id.chars().any(char::is_control) {
        return Err(BrokerError::BadRequest {
            reason: "message_id must be 1 to 128 bytes without control characters",
        });
    }
    let mut properties = Vec::with_capacity(message.properties.len() + 3);
    if !message.tag.is_empty() {
        check_word(&message.tag, true).map_err(|reason| BrokerError::TagInvalid {
            tag: message.tag.clone(),
            reason,
        })?;
        properties.push((PROPERTY_TAGS.to_owned(), message.tag));
    }
    if !message.keys.is_empty() {
        for key in &message.keys {
            check_word(key, false).map_err(|reason| BrokerError::KeyInvalid {
                key: key.clone(),
                reason,
            })?;
        }
        properties.push((PROPERTY_KEYS.to_owned(), message.keys.join(" ")));
    }
    properties.push((PROPERTY_UNIQUE_ID.to_owned(), message.message_id));
    let mut application: Vec<(String, String)> = message.properties.into_iter().collect();
    // Sorted so that the stored bytes do not depend on the sender's map order.
    application.sort();
    for (name, value) in application {
        if RESERVED_PROPERTIES.contains(&name.as_str()) {
            return Err(BrokerError::PropertyReserved { name });
        }
        properties.push((name, value));
    }
    Ok(NewMessage {
        topic: topic.to_owned(),
        queue_id,
        body: message.body,
        properties,
        born_timestamp_ms: message.born_timestamp_ms,
        retry_count: 0,
    })
}

/// A producer's born timestamp must lie between [`BORN_TIMESTAMP_MIN_MS`] and
/// [`BORN_TIMESTAMP_AHEAD_MAX_MS`] past `now_ms`, the broker's clock.
fn check_born_timestamp(born_timestamp_ms: u64, now_ms: u64) -> Result<(), BrokerError> {
    let latest_ms = now_ms.saturating_add(BORN_TIMESTAMP_AHEAD_MAX_MS);
    if (BORN_TIMESTAMP_MIN_MS..=latest_ms).contains(&born_timestamp_ms) {
        Ok(())
    } else {
        Err(BrokerError::BornTimestampInvalid {
            born_timestamp_ms,
            now_ms,
        })
    }
}

/// A tag or key: 1 to 255 bytes, no whitespace or control characters; a tag may not contain the
/// subscription separator `||`.
fn check_word(word: &str, is_tag: bool) -> Result<(), &'static str> {
    if word.is_empty() || word.len() > TAG_BYTES_MAX {
        return Err("must be 1 to 255 bytes");
    }
    if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    if is_tag && word.contains("||") {
        return Err("must not contain the separator ||");
    }
    Ok(())
}

fn to_pull_response(result: crate::store::GetResult, asked: u64) -> wire::PullResponse {
    let status = match result.status {
        GetStatus::Found => wire::PullStatus::Found,
        GetStatus::NoNewMessage => wire::PullStatus::NoNewMessage,
        // Nothing was ever stored in this queue: offset 0 is where its first message will be.
        GetStatus::QueueNotFound if asked == 0 => wire::PullStatus::NoNewMessage,
        GetStatus::QueueNotFound => wire::PullStatus::OffsetOverflow,
        GetStatus::NoMatchedMessage => wire::PullStatus::NoMatchedMessage,
        GetStatus::OffsetTooSmall => wire::PullStatus::OffsetTooSmall,
        GetStatus::OffsetOverflow => wire::PullStatus::OffsetOverflow,
    };
    let next_queue_offset = result.next_queue_offset;
    wire::PullResponse {
        status: status as i32,
        messages: result.messages.iter().map(to_wire_message).collect(),
        next_queue_offset,
        min_queue_offset: result.min_queue_offset,
        max_queue_offset: result.max_queue_offset,
    }
}

/// A stored message as the wire carries it: tag, keys and id out of the properties.
pub fn to_wire_message(message: &StoredMessage) -> wire::StoredMessage {
    let mut properties = HashMap::new();
    let (mut tag, mut keys, mut message_id) = (String::new(), Vec::new(), String::new());
    for (name, value) in message.properties() {
        match name {
            PROPERTY_TAGS => tag = value.to_owned(),
            PROPERTY_KEYS => keys = value.split(' ').map(str::to_owned).collect(),
            PROPERTY_UNIQUE_ID => message_id = value.to_owned(),
            _ => {
                properties.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    wire::StoredMessage {
        topic: message.topic().to_owned(),
        queue_id: message.queue_id(),
        queue_offset: message.queue_offset(),
        commit_log_offset: message.commit_log_offset(),
        body: Bytes::copy_from_slice(&message.body()),
        tag,
        keys,
        properties,
        message_id,
        born_timestamp_ms: message.born_timestamp_ms(),
        store_timestamp_ms: message.store_timestamp_ms(),
        retry_count: message.retry_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_born_timestamp_outside_the_window_is_refused() {
        let now_ms = 1_700_000_000_000;
        for accepted in [
            BORN_TIMESTAMP_MIN_MS,
            now_ms,
            now_ms + BORN_TIMESTAMP_AHEAD_MAX_MS,
        ] {
            assert!(check_born_timestamp(accepted, now_ms).is_ok(), "{accepted}");
        }
        for refused in [
            0,
            1,
            BORN_TIMESTAMP_MIN_MS - 1,
            now_ms + BORN_TIMESTAMP_AHEAD_MAX_MS + 1,
            u64::MAX,
        ] {
            let err = check_born_timestamp(refused, now_ms).unwrap_err();
            assert_eq!(
                err.code(),
                proto::common::ErrorCode::BadRequest,
                "{refused}"
            );
        }
        // A clock at the end of time refuses nothing above the minimum, and does not overflow.
        assert!(check_born_timestamp(u64::MAX, u64::MAX).is_ok());
    }
}
