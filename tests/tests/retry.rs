//! Retry and dead letters against a real broker: a message handed back comes again on the
//! group's retry topic after its delay level, with its retry count and id; after
//! `max_reconsume_times` it goes to the dead-letter topic; a delay under way survives SIGKILL.
//!
//! Invariant: a message handed back is never lost: it reappears (retry topic) or is kept
//! (dead-letter topic), across a broker crash too.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{Admin, Message, Producer, ProducerConfig, PullConsumer, ReceivedMessage};
use cluster_tests::BrokerProcess;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::SendBackRequest;

// Level 3 (a first retry) waits 1 s; level 4 and up, 100 ms.
const LEVELS: &str = "message_delay_level=\"100ms 100ms 1s 100ms\"";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `topic` queue 0 from `queue_offset` until a message arrives (deadline 15 s).
async fn next_message(consumer: &PullConsumer, topic: &str, queue_offset: u64) -> ReceivedMessage {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(result) = consumer
            .pull(topic, 0, queue_offset, 1, "*", Duration::from_millis(500))
            .await
        {
            if let Some(message) = result.messages.into_iter().next() {
                return message;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no message on {topic} at {queue_offset}"
        );
    }
}

async fn send_back(broker: &BrokerProcess, message: &ReceivedMessage) -> (bool, u32) {
    let mut groups = ConsumerGroupsClient::connect(format!("http://{}", broker.addr()))
        .await
        .unwrap();
    let response = groups
        .send_back(SendBackRequest {
            group: "billing".into(),
            commit_log_offset: message.commit_log_offset,
            topic: message.topic.clone(),
            queue_offset: message.queue_offset,
        })
        .await
        .unwrap()
        .into_inner();
    (response.dead_lettered, response.retry_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_back_messages_retry_with_delay_then_dead_letter_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--set", LEVELS, "--set", "max_reconsume_times=3"];
    let broker = BrokerProcess::start(dir.path(), &args);
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("orders", 1)
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let sent = producer
        .send(Message::new("orders", "pay 10").with_tag("paid"))
        .await
        .unwrap();
    let consumer = PullConsumer::connect(broker.addr()).await.unwrap();

    // First failure: back after level 3 (1 s), retry count 1, same id, origin remembered.
    let first = next_message(&consumer, "orders", 0).await;
    let handed_back_at = now_ms();
    assert_eq!(send_back(&broker, &first).await, (false, 1));
    let retried = next_message(&consumer, "%RETRY%billing", 0).await;
    assert!(
        retried.store_timestamp_ms >= handed_back_at + 1_000 - 50,
        "the delay must be real"
    );
    assert_eq!(retried.retry_count, 1);
    assert_eq!(retried.message_id, sent.message_id);
    assert_eq!(retried.tag.as_deref(), Some("paid"));
    assert_eq!(
        retried.properties.get("ORIGIN_TOPIC").map(String::as_str),
        Some("orders")
    );

    // Failures 2 and 3 retry again; the 4th (after 3 retries) goes to the dead-letter topic.
    let mut current = retried;
    for expected_retry_count in 2..=3 {
        assert_eq!(
            send_back(&broker, &current).await,
            (false, expected_retry_count)
        );
        current = next_message(
            &consumer,
            "%RETRY%billing",
            u64::from(expected_retry_count) - 1,
        )
        .await;
        assert_eq!(current.retry_count, expected_retry_count);
    }
    assert_eq!(send_back(&broker, &current).await, (true, 4));
    let dead = next_message(&consumer, "%DLQ%billing", 0).await;
    assert_eq!(
        (dead.message_id.as_str(), dead.retry_count),
        (sent.message_id.as_str(), 4)
    );
    assert_eq!(&dead.body[..], b"pay 10");

    let topics: Vec<_> = Admin::connect(broker.addr())
        .await
        .unwrap()
        .list_topics()
        .await
        .unwrap();
    let names: Vec<_> = topics.iter().map(|t| t.topic.as_str()).collect();
    assert!(
        names.contains(&"%RETRY%billing") && names.contains(&"%DLQ%billing"),
        "{names:?}"
    );

    // A delay under way survives SIGKILL: handed back, killed at once, restarted, delivered.
    producer
        .send(Message::new("orders", "pay 20"))
        .await
        .unwrap();
    let second = next_message(&consumer, "orders", 1).await;
    assert_eq!(send_back(&broker, &second).await, (false, 1));
    broker.signal(libc::SIGKILL);
    broker.wait();
    let broker = BrokerProcess::start(dir.path(), &args);
    let consumer = PullConsumer::connect(broker.addr()).await.unwrap();
    let after_crash = next_message(&consumer, "%RETRY%billing", 3).await;
    assert_eq!(&after_crash.body[..], b"pay 20");
}

/// The broker's own topics cannot be written by clients, and the schedule cannot be read or
/// steered: a forged schedule entry could otherwise rewrite a group's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_write_the_broker_topics_or_forge_schedule_properties() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("orders", 1)
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    for topic in ["%SCHEDULE%", "%OFFSETS%", "%RETRY%billing"] {
        let err = producer
            .send(Message::new(topic, "forged"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                client::ClientError::Broker {
                    code: client::ErrorCode::IllegalTopic,
                    ..
                }
            ),
            "{topic}: {err}"
        );
    }
    for name in ["REAL_TOPIC", "DELIVER_AT_MS", "ORIGIN_TOPIC", "UNIQ_KEY"] {
        let err = producer
            .send(Message::new("orders", "x").with_property(name, "%OFFSETS%"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                client::ClientError::Broker {
                    code: client::ErrorCode::IllegalMessagePropertyKey,
                    ..
                }
            ),
            "{name}: {err}"
        );
    }
    let consumer = PullConsumer::connect(broker.addr()).await.unwrap();
    assert!(consumer
        .pull("%SCHEDULE%", 0, 0, 1, "*", Duration::ZERO)
        .await
        .is_err());
}
