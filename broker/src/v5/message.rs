//! A stored message as RocketMQ 5 clients receive it.
//!
//! What the official clients need of a received message (measured against the Python client
//! 5.1.2): the topic, the message id, `body_encoding` IDENTITY (any other value fails the whole
//! receive), a receipt handle, `delivery_attempt` of at least 1, and a body digest they check:
//! CRC32 (IEEE, not the CRC32C the commit log uses) as 8 upper-case hex digits.

use proto::client as wire;
use proto::v5;

use super::send::PROPERTY_MESSAGE_GROUP;

/// One delivery's facts, beside the stored message.
pub struct Delivered<'a> {
    pub receipt_handle: String,
    pub attempt: u32,
    pub invisible_ms: u64,
    pub store_host: &'a str,
}

/// `message` (as the native API carries it) with `delivery`, as a v5 message.
pub fn to_v5(message: wire::StoredMessage, delivery: &Delivered<'_>) -> v5::Message {
    let mut properties = message.properties;
    let message_group = properties.remove(PROPERTY_MESSAGE_GROUP);
    let message_type = if message_group.is_some() {
        v5::MessageType::Fifo
    } else {
        v5::MessageType::Normal
    };
    let checksum = format!("{:08X}", crc32fast::hash(&message.body));
    v5::Message {
        topic: Some(v5::Resource {
            resource_namespace: String::new(),
            name: message.topic,
        }),
        user_properties: properties,
        system_properties: Some(v5::SystemProperties {
            tag: (!message.tag.is_empty()).then_some(message.tag),
            keys: message.keys,
            message_id: message.message_id,
            body_digest: Some(v5::Digest {
                r#type: v5::DigestType::Crc32 as i32,
                checksum,
            }),
            body_encoding: v5::Encoding::Identity as i32,
            message_type: message_type as i32,
            born_timestamp: Some(timestamp(message.born_timestamp_ms)),
            born_host: String::new(),
            store_timestamp: Some(timestamp(message.store_timestamp_ms)),
            store_host: delivery.store_host.to_owned(),
            delivery_timestamp: None,
            receipt_handle: Some(delivery.receipt_handle.clone()),
            // Queue ids are bounded far below i32::MAX; offsets below i64::MAX.
            queue_id: message.queue_id as i32,
            queue_offset: Some(message.queue_offset as i64),
            invisible_duration: Some(duration_ms(delivery.invisible_ms)),
            delivery_attempt: Some(i32::try_from(delivery.attempt).unwrap_or(i32::MAX)),
            message_group,
            trace_context: None,
            orphaned_transaction_recovery_duration: None,
            dead_letter_queue: None,
            lite_topic: None,
            priority: None,
        }),
        body: message.body,
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A duration as milliseconds; None when negative or out of range.
pub fn millis_of(duration: &prost_types::Duration) -> Option<u64> {
    let seconds = u64::try_from(duration.seconds).ok()?;
    let nanos = u64::try_from(duration.nanos).ok()?;
    seconds.checked_mul(1000)?.checked_add(nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_message_comes_back_with_its_group_and_a_crc32_digest() {
        let stored = wire::StoredMessage {
            topic: "orders".into(),
            queue_id: 2,
            queue_offset: 9,
            body: bytes::Bytes::from_static(b"123456789"),
            properties: [
                (PROPERTY_MESSAGE_GROUP.to_owned(), "order-1".to_owned()),
                ("seq".to_owned(), "5".to_owned()),
            ]
            .into(),
            message_id: "01AB".into(),
            born_timestamp_ms: 1_700_000_000_123,
            ..Default::default()
        };
        let message = to_v5(
            stored,
            &Delivered {
                receipt_handle: "h".into(),
                attempt: 1,
                invisible_ms: 30_000,
                store_host: "127.0.0.1:8081",
            },
        );
        let system = message.system_properties.unwrap();
        // CRC32 (IEEE) of "123456789" is CBF43926.
        assert_eq!(system.body_digest.unwrap().checksum, "CBF43926");
        assert_eq!(system.message_group.as_deref(), Some("order-1"));
        assert_eq!(system.message_type, v5::MessageType::Fifo as i32);
        assert_eq!(system.body_encoding, v5::Encoding::Identity as i32);
        assert_eq!(system.delivery_attempt, Some(1));
        assert_eq!(system.born_timestamp.unwrap().nanos, 123_000_000);
        assert_eq!(
            message.user_properties.len(),
            1,
            "the group is not a user property"
        );
        assert_eq!(millis_of(&system.invisible_duration.unwrap()), Some(30_000));
    }

    #[test]
    fn negative_durations_are_no_duration() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(millis_of(&negative), None);
    }
}
