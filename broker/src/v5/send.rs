//! `SendMessage`: a RocketMQ 5 producer's messages through the broker's own send path.
//!
//! Each message becomes a native send to its queue (`BrokerService::send`), so `OK` keeps
//! exactly the promise `SEND_OK` keeps: under `SYNC_FLUSH` the record is fsynced, under
//! `SYNC_MASTER` the in-sync set holds it. The other outcomes map to upstream's codes:
//! `FLUSH_DISK_TIMEOUT` to MASTER_PERSISTENCE_TIMEOUT, `FLUSH_SLAVE_TIMEOUT` to
//! SLAVE_PERSISTENCE_TIMEOUT, `SLAVE_NOT_AVAILABLE` to HA_NOT_AVAILABLE; never OK.
//!
//! A broker that is not its group's master hands the send to the master it knows, over the
//! native API, with the sender's signature (the master checks the user again); while the group has no master (an election), it waits for one, within
//! [`MASTER_PATIENCE`]: below the clients' request timeout (3 s), so that a failover costs the
//! application a pause, not an error.
//!
//! The queue: the clients choose a broker group (the endpoint they send to) but send no queue
//! id, so the broker chooses, as upstream's proxy does: a FIFO message by its message group
//! (CRC32 of the group modulo the topic's queue count, the same on every member, so a group's
//! messages stay in one queue and in order across a failover), a NORMAL one round robin.
//!
//! Types: NORMAL, and FIFO (its message group is kept in the `__SHARDINGKEY` property, as
//! RocketMQ keeps it, and handed back on delivery). DELAY, TRANSACTION and the rest are refused
//! with a clear status, never sent as normal messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::client as native;
use proto::client::broker_client::BrokerClient;
use proto::common::{ErrorCode, SendStatus};
use proto::v5;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::forward::UserSignature;
use super::lane::{LaneKey, Lanes, Outcome};
use super::status::{ok, refused, status};
use crate::error::BrokerError;
use crate::service::BrokerService;
use crate::topics::TopicRegistry;

/// Property that holds a FIFO message's group (RocketMQ's `__SHARDINGKEY`).
pub const PROPERTY_MESSAGE_GROUP: &str = "__SHARDINGKEY";
/// Longest a send waits for its group to have a reachable master.
pub const MASTER_PATIENCE: Duration = Duration::from_millis(2500);
/// Pause between looks for a master while the group has none.
const MASTER_POLL: Duration = Duration::from_millis(50);
/// Longest the TCP connect to the master may take.
const MASTER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most messages in one v5 send (the native API's batch bound).
const SEND_MESSAGES_MAX: usize = crate::service::SEND_BATCH_MESSAGES_MAX;
/// Longest message group accepted.
const MESSAGE_GROUP_BYTES_MAX: usize = 255;

/// Sends v5 messages through the broker.
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    native: Arc<BrokerService>,
    topics: Arc<TopicRegistry>,
    max_body_bytes: u32,
    /// The round robin of NORMAL batches over a topic's queues.
    next_queue: AtomicU32,
    /// Native clients of masters this broker handed sends to, by address.
    masters: Mutex<HashMap<String, BrokerClient<Channel>>>,
    /// Concurrent sends waiting to go in one batch (`lane`).
    lanes: Lanes,
}

impl Sender {
    pub fn new(
        native: Arc<BrokerService>,
        topics: Arc<TopicRegistry>,
        max_body_bytes: u32,
    ) -> Sender {
        Sender {
            inner: Arc::new(Inner {
                native,
                topics,
                max_body_bytes,
                next_queue: AtomicU32::new(0),
                masters: Mutex::new(HashMap::new()),
                lanes: Lanes::default(),
            }),
        }
    }

    /// The answer to `request`: one entry per message, in order; the top-level status is the
    /// first failure's, or OK when every message was sent (the official clients read only it).
    /// `signature`: the sender's, for the hand-off to the master (its permission to send to
    /// every topic of the request was checked already).
    pub async fn send(
        &self,
        request: v5::SendMessageRequest,
        signature: Option<UserSignature>,
    ) -> v5::SendMessageResponse {
        if request.messages.is_empty() || request.messages.len() > SEND_MESSAGES_MAX {
            return v5::SendMessageResponse {
                status: Some(status(
                    v5::Code::BadRequest,
                    format!("a send holds 1 to {SEND_MESSAGES_MAX} messages"),
                )),
                entries: Vec::new(),
            };
        }
        // Every message joins its lane before any lane's sender starts, so that the messages
        // of one request travel in the same batches (one append, one replication wait), in
        // order, instead of a sender taking the first before the rest are in.
        let mut starts = Vec::new();
        let pending: Vec<Pending> = request
            .messages
            .into_iter()
            .map(|message| self.enqueue(message, &signature, &mut starts))
            .collect();
        for (key, queue_count) in starts {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.send_batches(key, queue_count).await });
        }
        let mut entries = Vec::with_capacity(pending.len());
        for pending in pending {
            entries.push(pending.answer().await);
        }
        let status = entries
            .iter()
            .filter_map(|entry| entry.status.clone())
            .find(|status| status.code != v5::Code::Ok as i32)
            .unwrap_or_else(ok);
        v5::SendMessageResponse {
            status: Some(status),
            entries,
        }
    }

    /// Puts one message in its lane, or refuses it; a lane that had room for another batch in
    /// flight is added to `starts`, for the caller to start its sender.
    fn enqueue(
        &self,
        message: v5::Message,
        signature: &Option<UserSignature>,
        starts: &mut Vec<(LaneKey, u32)>,
    ) -> Pending {
        let message_id = message
            .system_properties
            .as_ref()
            .map(|p| p.message_id.clone())
            .unwrap_or_default();
        let mut request = match to_native(message, self.inner.max_body_bytes) {
            Ok(request) => request,
            Err(refusal) => return Pending::Refused(entry(message_id, refusal, 0)),
        };
        let Some(topic) = self.inner.topics.get(&request.topic) else {
            let status = refused(
                ErrorCode::TopicNotFound,
                format!("topic {} does not exist", proto::Echo(&request.topic)),
            );
            return Pending::Refused(entry(message_id, status, 0));
        };
        let message = request.messages.remove(0);
        let key = LaneKey {
            queue: message
                .properties
                .get(PROPERTY_MESSAGE_GROUP)
                .map(|group| fifo_queue(group, topic.queue_count)),
            topic: request.topic,
            signature: signature.clone(),
        };
        let (outcome, start) = self.inner.lanes.push(&key, message);
        if start {
            starts.push((key, topic.queue_count));
        }
        Pending::Queued(message_id, outcome)
    }
}

/// One message of a request: refused at once, or waiting in its lane for its batch's outcome.
enum Pending {
    Refused(v5::SendResultEntry),
    Queued(String, oneshot::Receiver<Outcome>),
}

impl Pending {
    async fn answer(self) -> v5::SendResultEntry {
        let (message_id, outcome) = match self {
            Pending::Refused(entry) => return entry,
            Pending::Queued(message_id, outcome) => (message_id, outcome),
        };
        match outcome.await {
            // Queue offsets fit i64 for 2^63 messages.
            Ok(Ok((native_status, offset))) => {
                entry(message_id, send_status(native_status), offset as i64)
            }
            Ok(Err(refusal)) => entry(message_id, refusal, 0),
            Err(_) => entry(
                message_id,
                status(
                    v5::Code::InternalError,
                    "the batch carrying this message ended",
                ),
                0,
            ),
        }
    }
}

fn entry(message_id: String, status: v5::Status, offset: i64) -> v5::SendResultEntry {
    v5::SendResultEntry {
        status: Some(status),
        message_id,
        transaction_id: String::new(),
        offset,
        recall_handle: String::new(),
    }
}

impl Inner {
    /// Sends `key`'s waiting messages, a batch at a time, until none waits.
    async fn send_batches(&self, key: LaneKey, queue_count: u32) {
        while let Some(batch) = self.lanes.next_batch(&key) {
            let queue_id = key.queue.unwrap_or_else(|| {
                self.next_queue.fetch_add(1, Ordering::Relaxed) % queue_count.max(1)
            });
            let request = |messages: Vec<native::Message>| native::SendRequest {
                topic: key.topic.clone(),
                queue_id,
                messages,
            };
            let mut batch = batch;
            // The messages move into the request and back only if the batch is split.
            let whole = request(std::mem::take(&mut batch.messages));
            match self.send_through_master(&whole, &key.signature).await {
                Ok(answer) => batch.answer(Ok((answer.status, answer.queue_offset))),
                Err(refusal) if whole.messages.len() > 1 && about_a_message(&refusal) => {
                    batch.messages = whole.messages;
                    for mut part in batch.split() {
                        let alone = request(std::mem::take(&mut part.messages));
                        let answer = self.send_through_master(&alone, &key.signature).await;
                        part.answer(answer.map(|a| (a.status, a.queue_offset)));
                    }
                }
                Err(refusal) => batch.answer(Err(refusal)),
            }
        }
    }

    /// Sends on this broker if it is the group's master, else on the master it names, waiting
    /// for one while there is none, within [`MASTER_PATIENCE`].
    async fn send_through_master(
        &self,
        request: &native::SendRequest,
        signature: &Option<UserSignature>,
    ) -> Result<native::SendResponse, v5::Status> {
        let deadline = tokio::time::Instant::now() + MASTER_PATIENCE;
        loop {
            let master_addr = match self.native.send(request.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(BrokerError::NotMaster { master_addr }) => master_addr,
                Err(err) => return Err(refused(err.code(), err.to_string())),
            };
            if let Some(addr) = master_addr {
                match self.send_to(&addr, request.clone(), signature).await {
                    Ok(answer) => return Ok(answer),
                    // No master there (yet): look again below.
                    Err(Forward::Retry(reason)) => {
                        tracing::debug!(master = %addr, %reason, "the master did not take a send; looking again")
                    }
                    Err(Forward::Refused(refusal)) => return Err(refusal),
                }
            }
            if tokio::time::Instant::now() + MASTER_POLL >= deadline {
                return Err(refused(
                    ErrorCode::NotMaster,
                    format!(
                        "broker group has no reachable master within {} ms (an election may be \
                         running); send again",
                        MASTER_PATIENCE.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(MASTER_POLL).await;
        }
    }

    /// One send on the master at `addr`, over the native API.
    async fn send_to(
        &self,
        addr: &str,
        request: native::SendRequest,
        signature: &Option<UserSignature>,
    ) -> Result<native::SendResponse, Forward> {
        let mut client = self.master(addr)?;
        // The master authenticates and checks the sender itself: it gets its signature.
        let mut request = tonic::Request::new(request);
        if let Some(signature) = signature {
            signature.apply(request.metadata_mut());
        }
        match client.send(request).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => match proto::ErrorStatus::from_status(&status) {
                Some(error) if error.code == ErrorCode::NotMaster => {
                    Err(Forward::Retry(error.message))
                }
                Some(error) => Err(Forward::Refused(refused(error.code, error.message))),
                // The transport: the master is gone or unreachable.
                None => {
                    self.forget(addr);
                    Err(Forward::Retry(status.message().to_owned()))
                }
            },
        }
    }

    fn master(&self, addr: &str) -> Result<BrokerClient<Channel>, Forward> {
        let mut masters = self.masters.lock().expect("master clients lock poisoned");
        if let Some(client) = masters.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = proto::dial::endpoint(addr, MASTER_CONNECT_TIMEOUT)
            .map_err(|err| Forward::Retry(err.to_string()))?
            .timeout(MASTER_PATIENCE);
        let client = BrokerClient::new(endpoint.connect_lazy());
        masters.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    fn forget(&self, addr: &str) {
        self.masters
            .lock()
            .expect("master clients lock poisoned")
            .remove(addr);
    }
}

/// Why a send handed to the master did not succeed.
enum Forward {
    /// Look for the master again (none there now, or unreachable).
    Retry(String),
    /// The master refused the send: the answer.
    Refused(v5::Status),
}

/// Whether a batch's refusal may be one of its messages' doing (bad input: 4xxxx), rather than
/// the topic's or the broker's (which every message of it would meet alone too).
fn about_a_message(refusal: &v5::Status) -> bool {
    let not_about_one = [
        v5::Code::TopicNotFound,
        v5::Code::NotFound,
        v5::Code::Forbidden,
        v5::Code::TooManyRequests,
    ];
    (40000..50000).contains(&refusal.code)
        && !not_about_one.iter().any(|c| *c as i32 == refusal.code)
}

/// The queue of a FIFO message group among `queue_count`: the same on every member.
fn fifo_queue(group: &str, queue_count: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % queue_count.max(1)
}

/// The v5 status of a native send status.
fn send_status(native: i32) -> v5::Status {
    match SendStatus::try_from(native) {
        Ok(SendStatus::SendOk) => ok(),
        Ok(SendStatus::FlushDiskTimeout) => status(
            v5::Code::MasterPersistenceTimeout,
            "stored, but not flushed to disk in time (FLUSH_DISK_TIMEOUT)",
        ),
        Ok(SendStatus::FlushSlaveTimeout) => status(
            v5::Code::SlavePersistenceTimeout,
            "stored on the master, but the in-sync set did not confirm it in time \
             (FLUSH_SLAVE_TIMEOUT)",
        ),
        Ok(SendStatus::SlaveNotAvailable) => status(
            v5::Code::HaNotAvailable,
            "stored on the master, but too few replicas are in sync (SLAVE_NOT_AVAILABLE)",
        ),
        _ => status(
            v5::Code::InternalError,
            format!("the broker answered send status {native}"),
        ),
    }
}

/// The native send of one v5 message, or why it is refused (nothing is sent then).
fn to_native(message: v5::Message, max_body_bytes: u32) -> Result<native::SendRequest, v5::Status> {
    let topic = message
        .topic
        .map(|t| t.name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| status(v5::Code::IllegalTopic, "the message names no topic"))?;
    let system = message.system_properties.ok_or_else(|| {
        status(
            v5::Code::BadRequest,
            "the message has no system properties (id, type)",
        )
    })?;
    if message.body.is_empty() {
        return Err(status(
            v5::Code::MessageBodyEmpty,
            "the message body is empty",
        ));
    }
    if message.body.len() > max_body_bytes as usize {
        return Err(status(
            v5::Code::MessageBodyTooLarge,
            format!(
                "the body is {} bytes; at most {max_body_bytes}",
                message.body.len()
            ),
        ));
    }
    if system.body_encoding == v5::Encoding::Gzip as i32 {
        return Err(status(
            v5::Code::Unsupported,
            "gzip-encoded bodies are not accepted yet; send the body as it is",
        ));
    }
    let mut properties = message.user_properties;
    match v5::MessageType::try_from(system.message_type) {
        Ok(v5::MessageType::Normal) | Ok(v5::MessageType::Unspecified) => {
            if system.message_group.is_some() {
                return Err(status(
                    v5::Code::MessagePropertyConflictWithType,
                    "a NORMAL message has no message group; send it as FIFO",
                ));
            }
        }
        Ok(v5::MessageType::Fifo) => {
            let group = system
                .message_group
                .filter(|g| !g.is_empty() && g.len() <= MESSAGE_GROUP_BYTES_MAX)
                .ok_or_else(|| {
                    status(
                        v5::Code::IllegalMessageGroup,
                        format!("a FIFO message needs a message group of 1 to {MESSAGE_GROUP_BYTES_MAX} bytes"),
                    )
                })?;
            properties.insert(PROPERTY_MESSAGE_GROUP.to_owned(), group);
        }
        Ok(other) => {
            return Err(status(
                v5::Code::Unsupported,
                format!(
                    "{} messages are not accepted yet (NORMAL and FIFO are); nothing was sent",
                    other.as_str_name()
                ),
            ))
        }
        Err(_) => {
            return Err(status(
                v5::Code::BadRequest,
                format!("unknown message type {}", system.message_type),
            ))
        }
    }
    let born_timestamp_ms = system
        .born_timestamp
        .map(|t| {
            let ms = i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0);
    Ok(native::SendRequest {
        topic,
        // Chosen by the sender (see the module documentation).
        queue_id: 0,
        messages: vec![native::Message {
            body: message.body,
            tag: system.tag.unwrap_or_default(),
            keys: system.keys,
            properties,
            message_id: system.message_id,
            born_timestamp_ms,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: v5::MessageType, group: Option<&str>) -> v5::Message {
        v5::Message {
            topic: Some(v5::Resource {
                resource_namespace: String::new(),
                name: "orders".into(),
            }),
            user_properties: HashMap::from([("k".to_owned(), "v".to_owned())]),
            system_properties: Some(v5::SystemProperties {
                tag: Some("paid".into()),
                keys: vec!["order-1".into()],
                message_id: "01ABC".into(),
                message_type: kind as i32,
                body_encoding: v5::Encoding::Identity as i32,
                born_timestamp: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5_000_000,
                }),
                queue_id: 3,
                message_group: group.map(str::to_owned),
                ..Default::default()
            }),
            body: bytes::Bytes::from_static(b"body"),
        }
    }

    #[test]
    fn a_fifo_message_keeps_its_group_and_everything_else() {
        let request = to_native(message(v5::MessageType::Fifo, Some("order-7")), 1024).unwrap();
        assert_eq!(request.topic, "orders");
        let native = &request.messages[0];
        assert_eq!(native.tag, "paid");
        assert_eq!(native.keys, vec!["order-1".to_owned()]);
        assert_eq!(native.message_id, "01ABC");
        assert_eq!(native.born_timestamp_ms, 1_700_000_000_005);
        assert_eq!(native.properties[PROPERTY_MESSAGE_GROUP], "order-7");
        assert_eq!(native.properties["k"], "v");
    }

    #[test]
    fn types_not_served_and_bad_bodies_are_refused_with_their_codes() {
        let code = |m: v5::Message, max| to_native(m, max).unwrap_err().code;
        assert_eq!(
            code(message(v5::MessageType::Delay, None), 1024),
            v5::Code::Unsupported as i32
        );
        assert_eq!(
            code(message(v5::MessageType::Transaction, None), 1024),
            v5::Code::Unsupported as i32
        );
        assert_eq!(
            code(message(v5::MessageType::Fifo, None), 1024),
            v5::Code::IllegalMessageGroup as i32
        );
        assert_eq!(
            code(message(v5::MessageType::Normal, Some("g")), 1024),
            v5::Code::MessagePropertyConflictWithType as i32
        );
        assert_eq!(
            code(message(v5::MessageType::Normal, None), 2),
            v5::Code::MessageBodyTooLarge as i32
        );
        let mut empty = message(v5::MessageType::Normal, None);
        empty.body = bytes::Bytes::new();
        assert_eq!(code(empty, 1024), v5::Code::MessageBodyEmpty as i32);
        let mut unknown = message(v5::MessageType::Normal, None);
        unknown.system_properties.as_mut().unwrap().message_type = 99;
        assert_eq!(code(unknown, 1024), v5::Code::BadRequest as i32);
    }

    #[test]
    fn a_message_group_always_lands_in_the_same_queue() {
        assert_eq!(fifo_queue("order-7", 8), fifo_queue("order-7", 8));
        assert!((0..100).all(|i| fifo_queue(&format!("order-{i}"), 8) < 8));
        assert_eq!(
            fifo_queue("g", 0),
            0,
            "a topic without queues does not divide by zero"
        );
    }

    #[test]
    fn only_send_ok_is_ok() {
        assert_eq!(send_status(SendStatus::SendOk as i32).code, 20000);
        assert_eq!(
            send_status(SendStatus::FlushDiskTimeout as i32).code,
            v5::Code::MasterPersistenceTimeout as i32
        );
        assert_eq!(
            send_status(SendStatus::FlushSlaveTimeout as i32).code,
            v5::Code::SlavePersistenceTimeout as i32
        );
        assert_eq!(
            send_status(SendStatus::SlaveNotAvailable as i32).code,
            v5::Code::HaNotAvailable as i32
        );
        assert_eq!(send_status(77).code, v5::Code::InternalError as i32);
    }
}
