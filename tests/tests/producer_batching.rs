//! The producer's natural batching against a real broker process: many concurrent sends share
//! RPCs, and each caller still gets the truth about its own message.
//!
//! Invariants: every send answered `SEND_OK` is read back, at the queue, queue offset and
//! commit-log offset its `SendResult` names, and no two results name the same place; a message
//! the broker refuses gets its own error code while the messages that travelled with it are
//! stored and answered `SEND_OK`; a refused message is never stored.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{
    Admin, ClientError, ErrorCode, Message, Producer, ProducerConfig, PullConsumer,
    ReceivedMessage, SendResult, SendStatus,
};
use cluster_tests::{read_queues, BrokerProcess};

const QUEUES: u32 = 4;

/// Pulls every queue of `topic` from the start until `expected` messages were read or 20 s
/// passed (the broker may still be indexing the last ones).
async fn pull_all(addr: &str, topic: &str, expected: usize) -> Vec<ReceivedMessage> {
    let consumer = PullConsumer::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = read_queues(&consumer, topic, QUEUES).await;
        if all.len() >= expected || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `count` messages from `tasks` concurrent tasks (each waiting for its answer before the
/// next send, as closed-loop producers do); returns (key, result) of every send.
async fn send_concurrently(
    producer: &Producer,
    topic: &str,
    tasks: usize,
    count: usize,
    body_bytes: usize,
) -> Vec<(String, Result<SendResult, ClientError>)> {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (producer, topic) = (producer.clone(), topic.to_owned());
            tokio::spawn(async move {
                let mut results = Vec::new();
                for i in (task..count).step_by(tasks) {
                    let key = format!("key-{i}");
                    let message = Message::new(topic.clone(), Bytes::from(vec![b'b'; body_bytes]))
                        .with_key(key.clone());
                    results.push((key, producer.send(message).await));
                }
                results
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_sends_are_each_answered_with_their_own_place_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: batches straddle segment rolls, so commit-log offsets within a batch are
    // not the first one plus the sizes before.
    let broker = BrokerProcess::start(
        dir.path(),
        &[
            "--set",
            "max_message_bytes=8192",
            "--set",
            "segment_bytes=65536",
        ],
    );
    let topic = "batched";
    let admin = Admin::connect(broker.addr()).await.unwrap();
    admin.create_topic(topic, QUEUES).await.unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();

    let results = send_concurrently(&producer, topic, 64, 2000, 1000).await;
    assert_eq!(results.len(), 2000);
    let mut places = HashSet::new();
    let mut by_id: HashMap<String, (String, SendResult)> = HashMap::new();
    for (key, result) in results {
        let result = result.unwrap_or_else(|err| panic!("{key}: {err}"));
        assert_eq!(result.status, SendStatus::SendOk, "{key}");
        assert!(
            places.insert((result.queue_id, result.queue_offset)),
            "two sends answered with queue {} offset {}",
            result.queue_id,
            result.queue_offset
        );
        assert!(
            places.len() <= 2000
                && by_id
                    .insert(result.message_id.clone(), (key, result))
                    .is_none(),
            "two sends answered with the same message id"
        );
    }
    let commit_log_offsets: HashSet<u64> =
        by_id.values().map(|(_, r)| r.commit_log_offset).collect();
    assert_eq!(
        commit_log_offsets.len(),
        2000,
        "every message has its own commit-log offset"
    );

    let pulled = pull_all(broker.addr(), topic, 2000).await;
    assert_eq!(
        pulled.len(),
        2000,
        "exactly the acknowledged messages, no duplicates"
    );
    for message in &pulled {
        let (key, result) = by_id
            .get(&message.message_id)
            .unwrap_or_else(|| panic!("message {} was never acknowledged", message.message_id));
        assert_eq!(
            message.keys,
            vec![key.clone()],
            "the key its sender gave it"
        );
        assert_eq!(
            (
                message.queue_id,
                message.queue_offset,
                message.commit_log_offset
            ),
            (
                result.queue_id,
                result.queue_offset,
                result.commit_log_offset
            ),
            "{key} is where its SendResult says"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_among_concurrent_good_ones_gets_its_error_and_the_good_ones_send_ok() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--set", "max_message_bytes=65536"]);
    let topic = "mixed";
    let admin = Admin::connect(broker.addr()).await.unwrap();
    admin.create_topic(topic, QUEUES).await.unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();

    // 300 sends started at once, so that they gather into batches; every 50th uses a reserved
    // property name, every 50th (offset by 25) has a body over max_message_bytes.
    let handles: Vec<_> = (0..300)
        .map(|i| {
            let mut message = Message::new(topic, format!("good {i}")).with_key(format!("k{i}"));
            if i % 50 == 0 {
                message = message.with_property("UNIQ_KEY", "forged");
            } else if i % 50 == 25 {
                message.body = Bytes::from(vec![b'x'; 65_537]);
            }
            (i, producer.send_async(message))
        })
        .collect();
    let mut stored = HashMap::new();
    for (i, handle) in handles {
        let outcome = handle.await.unwrap();
        match i % 50 {
            0 => assert!(
                matches!(
                    outcome,
                    Err(ClientError::Broker {
                        code: ErrorCode::IllegalMessagePropertyKey,
                        ..
                    })
                ),
                "send {i}: {outcome:?}"
            ),
            25 => assert!(
                matches!(
                    outcome,
                    Err(ClientError::Broker {
                        code: ErrorCode::MessageBodyTooLarge,
                        ..
                    })
                ),
                "send {i}: {outcome:?}"
            ),
            _ => {
                let result = outcome.unwrap_or_else(|err| panic!("send {i}: {err}"));
                assert_eq!(result.status, SendStatus::SendOk);
                stored.insert(result.message_id, format!("k{i}"));
            }
        }
    }
    assert_eq!(stored.len(), 288);

    let pulled = pull_all(broker.addr(), topic, stored.len()).await;
    assert_eq!(
        pulled.len(),
        288,
        "the good ones, once each; the bad ones never"
    );
    for message in pulled {
        assert_eq!(
            stored.get(&message.message_id),
            message.keys.first(),
            "an acknowledged message, under its own key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_off_sends_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let topic = "unbatched";
    let admin = Admin::connect(broker.addr()).await.unwrap();
    admin.create_topic(topic, QUEUES).await.unwrap();
    let config = ProducerConfig {
        batch_max_messages: 1,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let results = send_concurrently(&producer, topic, 16, 200, 100).await;
    let ids: HashSet<String> = results
        .into_iter()
        .map(|(key, result)| {
            let result = result.unwrap_or_else(|err| panic!("{key}: {err}"));
            assert_eq!(result.status, SendStatus::SendOk);
            result.message_id
        })
        .collect();
    let pulled = pull_all(broker.addr(), topic, 200).await;
    let pulled_ids: HashSet<String> = pulled.into_iter().map(|m| m.message_id).collect();
    assert_eq!(pulled_ids, ids);
}
