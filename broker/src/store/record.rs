//! The on-disk record: layout, encoding, checks. `docs/FORMATS.md` draws it; a golden-file test
//! pins it.
//!
//! ```text
//! offset size field
//!  0     4    crc32c              over bytes [4, total_bytes): every other header field and the payload
//!  4     4    total_bytes         size of the whole record
//!  8     4    magic               "RMSG" for a message, "RPAD" for padding
//! 12     1    format_version      1
//! 13     1    flags               0 (reserved)
//! 14     2    topic_bytes
//! 16     4    queue_id
//! 20     8    queue_offset
//! 28     8    commit_log_offset   the record's own position in the commit log
//! 36     8    born_timestamp_ms
//! 44     8    store_timestamp_ms
//! 52     4    retry_count
//! 56     4    properties_bytes
//! 60     4    body_bytes
//! 64          topic, properties, body
//! ```
//! All integers are little-endian. Properties are a run of (u16 name length, name, u16 value
//! length, value), names and values in UTF-8.
//!
//! A record never spans two segments. When the next record does not fit in what is left of a
//! segment, the writer fills the rest with a padding record (its 12-byte prefix only: crc32c over
//! bytes [4, 12), total_bytes = the rest of the segment, magic "RPAD"); if fewer than 12 bytes are
//! left, it writes nothing and the zeros left by preallocation end the segment. Readers apply the
//! same rule, so the commit log is one contiguous byte space and a slave that copies its master's
//! bytes rolls segments at the same places.
//!
//! PERF: encoding runs in the appender's task, outside the writer; the writer only patches the
//! three fields it assigns and computes the CRC (one pass over the record). No allocation here
//! beyond the caller's output buffer.

use std::ops::Range;

use super::error::{Result, StoreError};
use super::message::{NewMessage, PROPERTY_TAGS};

/// Size of the fixed header of a message record.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Size of the prefix every record (message or padding) starts with: crc, size, magic.
pub const RECORD_PREFIX_BYTES: usize = 12;
/// Magic of a message record: "RMSG".
pub const MAGIC_MESSAGE: u32 = u32::from_le_bytes(*b"RMSG");
/// Magic of a padding record: "RPAD".
pub const MAGIC_PADDING: u32 = u32::from_le_bytes(*b"RPAD");
/// The only record format this build writes and reads.
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Longest topic name in bytes (RocketMQ's limit).
pub const TOPIC_BYTES_LIMIT: usize = 127;
/// Longest property name in bytes.
pub const PROPERTY_NAME_BYTES_LIMIT: usize = 255;
/// Longest property value in bytes: its length prefix is 16 bits.
pub const PROPERTY_VALUE_BYTES_LIMIT: usize = u16::MAX as usize;
/// Largest body limit a configuration may set (`max_message_bytes`).
pub const MESSAGE_BYTES_LIMIT_MAX: u32 = 256 << 20;
/// Largest property-block limit a configuration may set (`max_properties_bytes`).
pub const PROPERTIES_BYTES_LIMIT_MAX: u32 = 1 << 20;
/// No record this store writes is larger, whatever its configuration: sizes read from disk
/// above it are damage, and are never used to size a buffer.
pub const RECORD_BYTES_LIMIT: u64 = RECORD_HEADER_BYTES as u64
    + TOPIC_BYTES_LIMIT as u64
    + PROPERTIES_BYTES_LIMIT_MAX as u64
    + MESSAGE_BYTES_LIMIT_MAX as u64;
/// Queue ids are below this. Each queue is a directory and files on disk, so ids are bounded
/// (RocketMQ topics rarely have more than a few hundred queues).
pub const QUEUE_ID_LIMIT: u32 = 1 << 16;

const OFFSET_CRC: usize = 0;
const OFFSET_TOTAL_BYTES: usize = 4;
const OFFSET_MAGIC: usize = 8;
const OFFSET_VERSION: usize = 12;
const OFFSET_FLAGS: usize = 13;
const OFFSET_TOPIC_BYTES: usize = 14;
const OFFSET_QUEUE_ID: usize = 16;
const OFFSET_QUEUE_OFFSET: usize = 20;
const OFFSET_COMMIT_LOG_OFFSET: usize = 28;
const OFFSET_BORN_TIMESTAMP: usize = 36;
const OFFSET_STORE_TIMESTAMP: usize = 44;
const OFFSET_RETRY_COUNT: usize = 52;
const OFFSET_PROPERTIES_BYTES: usize = 56;
const OFFSET_BODY_BYTES: usize = 60;

/// The limits an encoded message must respect (from the store configuration).
#[derive(Clone, Copy, Debug)]
pub struct RecordLimits {
    pub max_message_bytes: u32,
    pub max_properties_bytes: u32,
}

/// The fixed fields of a message record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub total_bytes: u32,
    pub topic_bytes: u16,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub retry_count: u32,
    pub properties_bytes: u32,
    pub body_bytes: u32,
    /// Hash of the `TAGS` property (see [`tag_hash`]), 0 without a tag.
    pub tag_hash: u64,
}

impl RecordHeader {
    pub fn topic_range(&self) -> Range<usize> {
        RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + self.topic_bytes as usize
    }
    pub fn properties_range(&self) -> Range<usize> {
        let start = self.topic_range().end;
        start..start + self.properties_bytes as usize
    }
    pub fn body_range(&self) -> Range<usize> {
        let start = self.properties_range().end;
        start..start + self.body_bytes as usize
    }
}

/// What sits at a position of the commit log, judged from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// A message record of this many bytes (not yet CRC-checked).
    Message { total_bytes: u32 },
    /// A valid padding record: the segment ends here.
    Padding,
    /// Twelve zero bytes: nothing was written here.
    Zeros,
    /// Anything else.
    Invalid(&'static str),
}

/// Hash of a tag for consume-queue entries: CRC32C of its bytes, widened. Collisions are harmless
/// because readers compare the tag itself after the hash matches; 0 means "no tag".
pub fn tag_hash(tag: &str) -> u64 {
    u64::from(crc32c::crc32c(tag.as_bytes()))
}

/// Checks a topic name: 1 to 127 bytes of `A-Z a-z 0-9 _ - % |` (RocketMQ's rule).
pub fn validate_topic(topic: &str) -> Result<()> {
    let fail = |reason| {
        Err(StoreError::TopicInvalid {
            topic: topic.chars().take(TOPIC_BYTES_LIMIT + 1).collect(),
            reason,
        })
    };
    if topic.is_empty() {
        return fail("empty");
    }
    if topic.len() > TOPIC_BYTES_LIMIT {
        return fail("longer than 127 bytes");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%' | b'|'))
    {
        return fail("only A-Z a-z 0-9 _ - % | are allowed");
    }
    Ok(())
}

/// Checks a queue id against [`QUEUE_ID_LIMIT`].
pub fn validate_queue_id(queue_id: u32) -> Result<()> {
    if queue_id >= QUEUE_ID_LIMIT {
        return Err(StoreError::QueueIdInvalid {
            queue_id,
            limit: QUEUE_ID_LIMIT,
        });
    }
    Ok(())
}

fn validate_property(name: &str, value: &str) -> Result<()> {
    let fail = |reason| {
        Err(StoreError::PropertyInvalid {
            key: name.chars().take(PROPERTY_NAME_BYTES_LIMIT).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("empty name");
    }
    if name.len() > PROPERTY_NAME_BYTES_LIMIT {
        return fail("name longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return fail("name contains a control character");
    }
    if value.len() > PROPERTY_VALUE_BYTES_LIMIT {
        return fail("value longer than 65535 bytes");
    }
    Ok(())
}

/// Size of the encoded property block, checking every name and value on the way.
fn properties_bytes(properties: &[(String, String)]) -> Result<usize> {
    let mut total = 0usize;
    for (index, (name, value)) in properties.iter().enumerate() {
        validate_property(name, value)?;
        if properties[..index]
            .iter()
            .any(|(earlier, _)| earlier == name)
        {
            return Err(StoreError::PropertyInvalid {
                key: name.clone(),
                reason: "name given twice",
            });
        }
        total += 4 + name.len() + value.len();
    }
    Ok(total)
}

/// Validates `message` against `limits` and appends its record to `out`, with queue offset,
/// commit-log offset, store timestamp and CRC left for [`seal`]. On error `out` is unchanged.
pub fn encode_message(message: &NewMessage, limits: RecordLimits, out: &mut Vec<u8>) -> Result<()> {
    validate_topic(&message.topic)?;
    validate_queue_id(message.queue_id)?;
    if message.body.is_empty() {
        return Err(StoreError::BodyEmpty);
    }
    if message.body.len() > limits.max_message_bytes as usize {
        return Err(StoreError::BodyTooLarge {
            body_bytes: message.body.len(),
            limit_bytes: limits.max_message_bytes,
        });
    }
    let properties_bytes = properties_bytes(&message.properties)?;
    if properties_bytes > limits.max_properties_bytes as usize {
        return Err(StoreError::PropertiesTooLarge {
            properties_bytes,
            limit_bytes: limits.max_properties_bytes,
        });
    }
    let total = RECORD_HEADER_BYTES + message.topic.len() + properties_bytes + message.body.len();
    // Cannot overflow: each part was bounded above (topic 127 B, properties 1 MiB, body 256 MiB).
    let total_bytes =
        u32::try_from(total).expect("record size bounded by the limits checked above");

    out.reserve(total);
    out.extend_from_slice(&0u32.to_le_bytes()); // crc, set by seal
    out.extend_from_slice(&total_bytes.to_le_bytes());
    out.extend_from_slice(&MAGIC_MESSAGE.to_le_bytes());
    out.push(RECORD_FORMAT_VERSION);
    out.push(0); // flags
    out.extend_from_slice(&(message.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(&message.queue_id.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // queue_offset, set by seal
    out.extend_from_slice(&0u64.to_le_bytes()); // commit_log_offset, set by seal
    out.extend_from_slice(&message.born_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // store_timestamp_ms, set by seal
    out.extend_from_slice(&message.retry_count.to_le_bytes());
    out.extend_from_slice(&(properties_bytes as u32).to_le_bytes());
    out.extend_from_slice(&(message.body.len() as u32).to_le_bytes());
    out.extend_from_slice(message.topic.as_bytes());
    for (name, value) in &message.properties {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&message.body);
    Ok(())
}

/// Sets the fields the writer assigns and computes the CRC. `record` is one whole record that
/// [`encode_message`] produced.
pub fn seal(record: &mut [u8], queue_offset: u64, commit_log_offset: u64, store_timestamp_ms: u64) {
    debug_assert_eq!(read_u32(record, OFFSET_MAGIC), MAGIC_MESSAGE);
    debug_assert_eq!(read_u32(record, OFFSET_TOTAL_BYTES) as usize, record.len());
    record[OFFSET_QUEUE_OFFSET..OFFSET_QUEUE_OFFSET + 8]
        .copy_from_slice(&queue_offset.to_le_bytes());
    record[OFFSET_COMMIT_LOG_OFFSET..OFFSET_COMMIT_LOG_OFFSET + 8]
        .copy_from_slice(&commit_log_offset.to_le_bytes());
    record[OFFSET_STORE_TIMESTAMP..OFFSET_STORE_TIMESTAMP + 8]
        .copy_from_slice(&store_timestamp_ms.to_le_bytes());
    let crc = crc32c::crc32c(&record[OFFSET_TOTAL_BYTES..]);
    record[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The 12-byte padding record that fills `remaining_bytes` up to the end of a segment.
pub fn padding(remaining_bytes: u32) -> [u8; RECORD_PREFIX_BYTES] {
    debug_assert!(remaining_bytes as usize >= RECORD_PREFIX_BYTES);
    let mut out = [0u8; RECORD_PREFIX_BYTES];
    out[OFFSET_TOTAL_BYTES..OFFSET_TOTAL_BYTES + 4].copy_from_slice(&remaining_bytes.to_le_bytes());
    out[OFFSET_MAGIC..OFFSET_MAGIC + 4].copy_from_slice(&MAGIC_PADDING.to_le_bytes());
    let crc = crc32c::crc32c(&out[OFFSET_TOTAL_BYTES..]);
    out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Judges the 12-byte prefix at a position with `segment_remaining_bytes` left in its segment.
pub fn classify_prefix(prefix: &[u8], segment_remaining_bytes: u64) -> Prefix {
    debug_assert!(prefix.len() >= RECORD_PREFIX_BYTES);
    let prefix = &prefix[..RECORD_PREFIX_BYTES];
    if prefix.iter().all(|&b| b == 0) {
        return Prefix::Zeros;
    }
    let total_bytes = read_u32(prefix, OFFSET_TOTAL_BYTES);
    match read_u32(prefix, OFFSET_MAGIC) {
        MAGIC_PADDING => {
            if u64::from(total_bytes) != segment_remaining_bytes {
                Prefix::Invalid("padding does not end at the segment end")
            } else if crc32c::crc32c(&prefix[OFFSET_TOTAL_BYTES..]) != read_u32(prefix, OFFSET_CRC)
            {
                Prefix::Invalid("padding CRC mismatch")
            } else {
                Prefix::Padding
            }
        }
        MAGIC_MESSAGE => {
            if (total_bytes as usize) < RECORD_HEADER_BYTES {
                Prefix::Invalid("record shorter than its header")
            } else if u64::from(total_bytes) > RECORD_BYTES_LIMIT {
                Prefix::Invalid("record larger than any this store writes")
            } else if u64::from(total_bytes) > segment_remaining_bytes {
                Prefix::Invalid("record runs past the segment end")
            } else {
                Prefix::Message { total_bytes }
            }
        }
        _ => Prefix::Invalid("unknown magic"),
    }
}

/// Checks one whole message record: version, field sizes, UTF-8, CRC. Returns its header.
pub fn check_message(record: &[u8]) -> Result<RecordHeader, &'static str> {
    if record.len() < RECORD_HEADER_BYTES {
        return Err("record shorter than its header");
    }
    if read_u32(record, OFFSET_MAGIC) != MAGIC_MESSAGE {
        return Err("unknown magic");
    }
    let total_bytes = read_u32(record, OFFSET_TOTAL_BYTES);
    if total_bytes as usize != record.len() {
        return Err("size field does not match the record");
    }
    if crc32c::crc32c(&record[OFFSET_TOTAL_BYTES..]) != read_u32(record, OFFSET_CRC) {
        return Err("CRC mismatch");
    }
    // Checked after the CRC so that a torn record reports the CRC, the likelier cause.
    if record[OFFSET_VERSION] != RECORD_FORMAT_VERSION {
        return Err("unsupported record format version");
    }
    if record[OFFSET_FLAGS] != 0 {
        return Err("unknown flags");
    }
    let mut header = RecordHeader {
        total_bytes,
        topic_bytes: read_u16(record, OFFSET_TOPIC_BYTES),
        queue_id: read_u32(record, OFFSET_QUEUE_ID),
        queue_offset: read_u64(record, OFFSET_QUEUE_OFFSET),
        commit_log_offset: read_u64(record, OFFSET_COMMIT_LOG_OFFSET),
        born_timestamp_ms: read_u64(record, OFFSET_BORN_TIMESTAMP),
        store_timestamp_ms: read_u64(record, OFFSET_STORE_TIMESTAMP),
        retry_count: read_u32(record, OFFSET_RETRY_COUNT),
        properties_bytes: read_u32(record, OFFSET_PROPERTIES_BYTES),
        body_bytes: read_u32(record, OFFSET_BODY_BYTES),
        tag_hash: 0,
    };
    let parts = RECORD_HEADER_BYTES as u64
        + u64::from(header.topic_bytes)
        + u64::from(header.properties_bytes)
        + u64::from(header.body_bytes);
    if parts != u64::from(total_bytes) {
        return Err("field sizes do not add up to the record size");
    }
    if std::str::from_utf8(&record[header.topic_range()]).is_err() {
        return Err("topic is not UTF-8");
    }
    let mut properties = PropertyIter::new(&record[header.properties_range()]);
    for (name, value) in properties.by_ref() {
        if name == PROPERTY_TAGS {
            header.tag_hash = tag_hash(value);
        }
    }
    if properties.malformed {
        return Err("malformed properties");
    }
    Ok(header)
}

/// Iterates over an encoded property block. Stops at the first malformed entry and records it.
pub struct PropertyIter<'a> {
    rest: &'a [u8],
    malformed: bool,
}

impl<'a> PropertyIter<'a> {
    pub fn new(block: &'a [u8]) -> Self {
        PropertyIter {
            rest: block,
            malformed: false,
        }
    }

    fn take(&mut self) -> Option<&'a str> {
        if self.rest.len() < 2 {
            return None;
        }
        let len = read_u16(self.rest, 0) as usize;
        let bytes = self.rest.get(2..2 + len)?;
        let text = std::str::from_utf8(bytes).ok()?;
        self.rest = &self.rest[2 + len..];
        Some(text)
    }
}

impl<'a> Iterator for PropertyIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.malformed {
            return None;
        }
        match (self.take(), self.take()) {
            (Some(name), Some(value)) => Some((name, value)),
            _ => {
                self.malformed = true;
                None
            }
        }
    }
}

pub(crate) fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of 4 bytes"))
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of 8 bytes"))
}

/// Reads the total size and queue fields needed to validate raw records without a full decode.
pub(crate) fn total_bytes_of(prefix: &[u8]) -> u32 {
    read_u32(prefix, OFFSET_TOTAL_BYTES)
}

/// The commit-log offset a message record's header claims, unchecked: for a record that fails
/// its check, it tells a record start whose bytes are damaged (the claim matches where it was
/// read) from bytes that never started a record.
pub(crate) fn claimed_commit_log_offset(record: &[u8]) -> Option<u64> {
    (record.len() >= RECORD_HEADER_BYTES).then(|| read_u64(record, OFFSET_COMMIT_LOG_OFFSET))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const LIMITS: RecordLimits = RecordLimits {
        max_message_bytes: 1024,
        max_properties_bytes: 256,
    };

    fn sample() -> NewMessage {
        NewMessage {
            topic: "orders".into(),
            queue_id: 3,
            body: Bytes::from_static(b"hello"),
            properties: vec![
                ("TAGS".into(), "paid".into()),
                ("KEYS".into(), "k1 k2".into()),
            ],
            born_timestamp_ms: 1_700_000_000_000,
            retry_count: 2,
        }
    }

    #[test]
    fn encode_seal_check_round_trip() {
        let mut buf = Vec::new();
        encode_message(&sample(), LIMITS, &mut buf).unwrap();
        seal(&mut buf, 7, 4096, 1_700_000_000_123);
        let header = check_message(&buf).unwrap();
        assert_eq!(header.queue_id, 3);
        assert_eq!(header.queue_offset, 7);
        assert_eq!(header.commit_log_offset, 4096);
        assert_eq!(header.retry_count, 2);
        assert_eq!(header.tag_hash, tag_hash("paid"));
        assert_eq!(&buf[header.body_range()], b"hello");
        let props: Vec<_> = PropertyIter::new(&buf[header.properties_range()]).collect();
        assert_eq!(props, vec![("TAGS", "paid"), ("KEYS", "k1 k2")]);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_message(&sample(), LIMITS, &mut buf).unwrap();
        seal(&mut buf, 0, 0, 1);
        for byte in 0..buf.len() {
            let mut copy = buf.clone();
            copy[byte] ^= 0x10;
            assert!(
                check_message(&copy).is_err(),
                "flip at byte {byte} went unnoticed"
            );
        }
    }

    #[test]
    fn limits_are_errors_that_write_nothing() {
        let mut buf = vec![1, 2, 3];
        let mut big = sample();
        big.body = Bytes::from(vec![0u8; 1025]);
        assert!(matches!(
            encode_message(&big, LIMITS, &mut buf),
            Err(StoreError::BodyTooLarge {
                body_bytes: 1025,
                ..
            })
        ));
        let mut empty = sample();
        empty.body = Bytes::new();
        assert!(matches!(
            encode_message(&empty, LIMITS, &mut buf),
            Err(StoreError::BodyEmpty)
        ));
        let mut props = sample();
        props.properties.push(("X".into(), "v".repeat(300)));
        assert!(matches!(
            encode_message(&props, LIMITS, &mut buf),
            Err(StoreError::PropertiesTooLarge { .. })
        ));
        let mut topic = sample();
        topic.topic = "t".repeat(128);
        assert!(matches!(
            encode_message(&topic, LIMITS, &mut buf),
            Err(StoreError::TopicInvalid { .. })
        ));
        topic.topic = "bad topic".into();
        assert!(matches!(
            encode_message(&topic, LIMITS, &mut buf),
            Err(StoreError::TopicInvalid { .. })
        ));
        let mut dup = sample();
        dup.properties.push(("TAGS".into(), "again".into()));
        assert!(matches!(
            encode_message(&dup, LIMITS, &mut buf),
            Err(StoreError::PropertyInvalid { .. })
        ));
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn padding_is_recognised_only_at_the_segment_end() {
        let pad = padding(100);
        assert_eq!(classify_prefix(&pad, 100), Prefix::Padding);
        assert!(matches!(classify_prefix(&pad, 101), Prefix::Invalid(_)));
        assert_eq!(classify_prefix(&[0u8; 12], 50), Prefix::Zeros);
    }
}
