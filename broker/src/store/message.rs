//! Messages as the store's callers see them: what goes in ([`NewMessage`]) and what comes out
//! ([`StoredMessage`], a checked view over the stored bytes that copies nothing).
//!
//! Properties carry what RocketMQ keeps in its property map: tags (`TAGS`), keys (`KEYS`), the
//! client's unique message id (`UNIQ_KEY`), and anything the application adds.

use bytes::Bytes;

use super::record::{self, RecordHeader};

/// Property holding the message's tag (one tag per message, as in RocketMQ).
pub const PROPERTY_TAGS: &str = "TAGS";
/// Property holding the message's keys, separated by spaces.
pub const PROPERTY_KEYS: &str = "KEYS";
/// Property holding the unique message id the producer generated.
pub const PROPERTY_UNIQUE_ID: &str = "UNIQ_KEY";

/// A message to append: everything but the fields the writer assigns (queue offset, commit-log
/// offset, store timestamp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: String,
    pub queue_id: u32,
    pub body: Bytes,
    /// Name/value pairs in the order given; names are unique.
    pub properties: Vec<(String, String)>,
    /// When the producer created the message, Unix milliseconds.
    pub born_timestamp_ms: u64,
    /// How many times this message was handed back for retry (RocketMQ's reconsume times).
    pub retry_count: u32,
}

impl NewMessage {
    /// A message with no properties, born now.
    pub fn new(topic: impl Into<String>, queue_id: u32, body: impl Into<Bytes>) -> Self {
        NewMessage {
            topic: topic.into(),
            queue_id,
            body: body.into(),
            properties: Vec::new(),
            born_timestamp_ms: super::now_ms(),
            retry_count: 0,
        }
    }

    /// Sets the tag (replacing an earlier one).
    pub fn with_tag(self, tag: impl Into<String>) -> Self {
        self.with_property(PROPERTY_TAGS, tag)
    }

    /// Sets a property (replacing an earlier value of the same name).
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        let value = value.into();
        match self.properties.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.properties.push((name, value)),
        }
        self
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == PROPERTY_TAGS)
            .map(|(_, v)| v.as_str())
    }
}

/// A message read back from the commit log. The bytes were CRC-checked when this was built.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    raw: Bytes,
    header: RecordHeader,
}

impl StoredMessage {
    /// Wraps a record that [`record::check_message`] accepted.
    pub(crate) fn new(raw: Bytes, header: RecordHeader) -> Self {
        StoredMessage { raw, header }
    }

    /// The fixed header fields.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }
    pub fn commit_log_offset(&self) -> u64 {
        self.header.commit_log_offset
    }
    pub fn queue_offset(&self) -> u64 {
        self.header.queue_offset
    }
    pub fn queue_id(&self) -> u32 {
        self.header.queue_id
    }
    pub fn store_timestamp_ms(&self) -> u64 {
        self.header.store_timestamp_ms
    }
    pub fn born_timestamp_ms(&self) -> u64 {
        self.header.born_timestamp_ms
    }
    pub fn retry_count(&self) -> u32 {
        self.header.retry_count
    }
    /// Size of the whole record in the commit log.
    pub fn size_bytes(&self) -> u32 {
        self.header.total_bytes
    }
    /// The whole record as stored, header included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn topic(&self) -> &str {
        let range = self.header.topic_range();
        // The record was checked to hold UTF-8 here when it was built.
        std::str::from_utf8(&self.raw[range]).unwrap_or_default()
    }

    /// The body, sharing the record's buffer.
    pub fn body(&self) -> Bytes {
        self.raw.slice(self.header.body_range())
    }

    /// Name/value pairs in stored order.
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        record::PropertyIter::new(&self.raw[self.header.properties_range()])
    }

    /// The value of one property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn tag(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }
}
