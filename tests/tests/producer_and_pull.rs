//! The Rust client against a real broker process: the three send modes, typed errors, pulls.
//!
//! Invariant: every send the client reports `SEND_OK` is read back by a pull; a send the broker
//! refused is reported with its stable code and is not retried; nothing the client reports as a
//! success was not answered so by the broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use client::{
    Admin, ClientError, ErrorCode, Message, Producer, ProducerConfig, PullConsumer, SendStatus,
};
use cluster_tests::{read_queues, BrokerProcess};

const TOPIC: &str = "payments";
const QUEUES: u32 = 4;

async fn pull_all(consumer: &PullConsumer) -> Vec<client::ReceivedMessage> {
    read_queues(consumer, TOPIC, QUEUES).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_modes_statuses_and_pulls_against_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let admin = Admin::connect(broker.addr()).await.unwrap();
    assert!(admin.create_topic(TOPIC, QUEUES).await.unwrap());
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();

    // A refused send: typed, with its code, not retriable.
    let err = producer
        .send(Message::new("unknown", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Broker {
                code: ErrorCode::TopicNotFound,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retriable());

    let mut acknowledged = HashSet::new();
    for i in 0..20 {
        let result = producer
            .send(
                Message::new(TOPIC, format!("sync {i}"))
                    .with_tag("paid")
                    .with_key(format!("k{i}")),
            )
            .await
            .unwrap();
        assert_eq!(result.status, SendStatus::SendOk);
        acknowledged.insert(result.message_id);
    }
    let handles: Vec<_> = (0..20)
        .map(|i| producer.send_async(Message::new(TOPIC, format!("async {i}"))))
        .collect();
    for handle in handles {
        let result = handle.await.unwrap().unwrap();
        assert_eq!(result.status, SendStatus::SendOk);
        acknowledged.insert(result.message_id);
    }
    for i in 0..20 {
        producer.send_oneway(Message::new(TOPIC, format!("oneway {i}")));
    }

    // Every acknowledged message is read back; the one-way ones most likely arrive too, but
    // nothing promised it, so they are only counted.
    let consumer = PullConsumer::connect(broker.addr()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pulled = loop {
        let pulled = pull_all(&consumer).await;
        if pulled.len() >= 60 || Instant::now() > deadline {
            break pulled;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: HashSet<_> = pulled.iter().map(|m| m.message_id.clone()).collect();
    assert!(
        acknowledged.is_subset(&ids),
        "an acknowledged message is missing"
    );
    assert_eq!(ids.len(), pulled.len(), "no duplicates without retries");
    let tagged = pulled
        .iter()
        .find(|m| m.body.starts_with(b"sync 0"))
        .unwrap();
    assert_eq!(tagged.tag.as_deref(), Some("paid"));
    assert_eq!(tagged.keys, vec!["k0".to_owned()]);

    // A broker that is gone is a retriable transport failure.
    broker.signal(libc::SIGKILL);
    broker.wait();
    let err = producer
        .send(Message::new(TOPIC, "after"))
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
}
