//! Push consumers of one group against a real broker: every message is handled successfully
//! once, and the ones a listener failed on (an error, `ReconsumeLater`, or a panic) come back
//! through the retry topic instead of being counted as consumed.
//!
//! Invariant: every message acknowledged `SEND_OK` is handled successfully by the group; a failure
//! is never counted as consumed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{
    Admin, ConsumeFrom, ConsumeResult, Message, Producer, ProducerConfig, PushConsumer,
    PushConsumerConfig, ReceivedMessage,
};
use cluster_tests::BrokerProcess;

const MESSAGES: usize = 30;

#[derive(Default)]
struct Seen {
    /// Successful handlings per key.
    handled: HashMap<String, u32>,
    /// Deliveries per key.
    delivered: HashMap<String, u32>,
    /// Retry counts of successful handlings of keys that failed first.
    retried: Vec<u32>,
}

fn listener(
    seen: Arc<Mutex<Seen>>,
) -> impl Fn(&ReceivedMessage) -> Result<ConsumeResult, client::ListenerError> + Send + Sync + 'static
{
    move |message: &ReceivedMessage| {
        let key = message.keys[0].clone();
        let index: usize = key.trim_start_matches('k').parse().unwrap();
        let deliveries = {
            let mut seen = seen.lock().unwrap();
            let count = seen.delivered.entry(key.clone()).or_default();
            *count += 1;
            *count
        };
        // Every third message fails on its first delivery, three different ways.
        if deliveries == 1 && index % 3 == 0 {
            match index % 9 {
                0 => return Ok(ConsumeResult::ReconsumeLater),
                3 => return Err("payment service unavailable".into()),
                _ => panic!("listener bug on {key}"),
            }
        }
        let mut seen = seen.lock().unwrap();
        *seen.handled.entry(key).or_default() += 1;
        if index % 3 == 0 {
            seen.retried.push(message.retry_count);
        }
        Ok(ConsumeResult::ConsumeSuccess)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_handles_every_message_once_and_failures_come_back_through_retry() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &["--set", "message_delay_level=\"50ms 50ms 200ms 50ms\""],
    );
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("orders", 4)
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut config = PushConsumerConfig::new("billing", "orders");
    config.consume_from = ConsumeFrom::First;
    config.heartbeat_interval = Duration::from_millis(200);
    let first = PushConsumer::start(broker.addr(), config.clone(), listener(seen.clone()))
        .await
        .unwrap();
    let second = PushConsumer::start(broker.addr(), config, listener(seen.clone()))
        .await
        .unwrap();

    // Wait until the two members split the queues between them, so that no queue moves while
    // messages flow (a queue that moves mid-batch is delivered twice: at least once).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (first.assigned_queues(), second.assigned_queues());
        if a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never split its queues: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..MESSAGES {
        let result = producer
            .send(Message::new("orders", format!("order {i}")).with_key(format!("k{i}")))
            .await
            .unwrap();
        assert_eq!(result.status, client::SendStatus::SendOk);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = seen.lock().unwrap().handled.len() == MESSAGES;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was handled: {:?}",
            seen.lock().unwrap().handled.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.shutdown().await;
    second.shutdown().await;

    let seen = seen.lock().unwrap();
    for i in 0..MESSAGES {
        assert_eq!(
            seen.handled.get(&format!("k{i}")),
            Some(&1),
            "k{i} must be handled exactly once"
        );
    }
    let failed_first = (0..MESSAGES).filter(|i| i % 3 == 0).count();
    assert_eq!(seen.retried.len(), failed_first);
    assert!(
        seen.retried.iter().all(|&count| count == 1),
        "failures came back through the retry topic: {:?}",
        seen.retried
    );
}

/// Orderly: a failed message is retried in place, and nothing after it in its queue is handled
/// first; nothing goes through the retry topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_consumption_keeps_queue_order_through_failures() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("steps", 1)
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..20 {
        producer
            .send(Message::new("steps", format!("step {i}")).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    let order: Arc<Mutex<Vec<(usize, u32)>>> = Arc::default();
    let failed_once = Arc::new(Mutex::new(false));
    let mut config = PushConsumerConfig::new("workflow", "steps");
    config.consume_from = ConsumeFrom::First;
    config.consume_mode = client::ConsumeMode::Orderly;
    let consumer = PushConsumer::start(broker.addr(), config, {
        let (order, failed_once) = (order.clone(), failed_once.clone());
        move |m: &ReceivedMessage| -> Result<ConsumeResult, client::ListenerError> {
            let index: usize = m.keys[0].trim_start_matches('k').parse().unwrap();
            if index == 5 && !std::mem::replace(&mut *failed_once.lock().unwrap(), true) {
                return Err("not yet".into());
            }
            order.lock().unwrap().push((index, m.retry_count));
            Ok(ConsumeResult::ConsumeSuccess)
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while order.lock().unwrap().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "orderly consumption stalled: {:?}",
            order.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.shutdown().await;
    let order = order.lock().unwrap();
    assert_eq!(
        order.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert!(
        order.iter().all(|(_, retry_count)| *retry_count == 0),
        "nothing went through the retry topic"
    );
}

/// Broadcasting: every member gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_delivers_every_message_to_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("notices", 3)
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..30 {
        producer
            .send(Message::new("notices", format!("notice {i}")).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    let mut members = Vec::new();
    let mut received = Vec::new();
    for _ in 0..2 {
        let keys: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let mut config = PushConsumerConfig::new("caches", "notices");
        config.consume_from = ConsumeFrom::First;
        config.message_model = client::MessageModel::Broadcasting;
        members.push(
            PushConsumer::start(broker.addr(), config, {
                let keys = keys.clone();
                move |m: &ReceivedMessage| -> Result<ConsumeResult, client::ListenerError> {
                    keys.lock().unwrap().insert(m.keys[0].clone());
                    Ok(ConsumeResult::ConsumeSuccess)
                }
            })
            .await
            .unwrap(),
        );
        received.push(keys);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.iter().any(|keys| keys.lock().unwrap().len() < 30) {
        assert!(
            Instant::now() < deadline,
            "a member did not get every message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for member in members {
        member.shutdown().await;
    }
}
