//! Messages as applications build them and receive them, and the unique message id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    /// One tag, for consumers' filters.
    pub tag: Option<String>,
    /// Business keys (no spaces).
    pub keys: Vec<String>,
    /// Application properties (the names TAGS, KEYS and UNIQ_KEY are reserved).
    pub properties: HashMap<String, String>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: HashMap::new(),
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    pub(crate) fn into_wire(self, message_id: String) -> proto::client::Message {
        proto::client::Message {
            body: self.body,
            tag: self.tag.unwrap_or_default(),
            keys: self.keys,
            properties: self.properties,
            message_id,
            born_timestamp_ms: now_ms(),
        }
    }
}

/// A message as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: HashMap<String, String>,
    pub message_id: String,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub retry_count: u32,
}

impl From<proto::client::StoredMessage> for ReceivedMessage {
    fn from(m: proto::client::StoredMessage) -> Self {
        ReceivedMessage {
            topic: m.topic,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            commit_log_offset: m.commit_log_offset,
            body: m.body,
            tag: (!m.tag.is_empty()).then_some(m.tag),
            keys: m.keys,
            properties: m.properties,
            message_id: m.message_id,
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
            retry_count: m.retry_count,
        }
    }
}

/// A new unique message id: 32 hex digits, a random prefix drawn once per process followed by a
/// counter that starts at the clock (so a restarted process does not reuse the ids of the
/// previous one even if the prefix collided).
pub fn new_message_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let counter = COUNTER.get_or_init(|| AtomicU64::new(now_ms() << 20));
    format!(
        "{prefix:016X}{:016X}",
        counter.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_and_fixed_width() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }
}
