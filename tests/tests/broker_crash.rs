//! Fault test: the broker is killed with SIGKILL, under `SYNC_FLUSH`, while producers send and a
//! consumer group consumes, and restarted, three times.
//!
//! Invariant (checked on the full history): every message answered `SEND_OK` is handled by the
//! group; the group's offsets resume after each restart without skipping (a skipped message would
//! be a `SEND_OK` key never handled). Duplicates are allowed (at least once) and counted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{
    Admin, ConsumeFrom, ConsumeResult, Message, Producer, ProducerConfig, PushConsumer,
    PushConsumerConfig, ReceivedMessage, SendStatus,
};
use cluster_tests::BrokerProcess;

const ROUNDS: usize = 3;
const SENDS_PER_ROUND: usize = 200;

/// A member of the auditing group that records the key of every message it handles.
async fn start_auditor(broker: &BrokerProcess, handled: Arc<Mutex<Vec<String>>>) -> PushConsumer {
    let mut config = PushConsumerConfig::new("auditors", "ledger");
    config.consume_from = ConsumeFrom::First;
    config.heartbeat_interval = Duration::from_millis(200);
    PushConsumer::start(
        broker.addr(),
        config,
        move |m: &ReceivedMessage| -> Result<ConsumeResult, client::ListenerError> {
            handled.lock().unwrap().push(m.keys[0].clone());
            Ok(ConsumeResult::ConsumeSuccess)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_sync_flush_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut next_key = 0usize;
    for round in 0..ROUNDS {
        let broker = BrokerProcess::start(dir.path(), &["--flush-disk-type", "SYNC_FLUSH"]);
        if round == 0 {
            Admin::connect(broker.addr())
                .await
                .unwrap()
                .create_topic("ledger", 4)
                .await
                .unwrap();
        }
        let consumer = start_auditor(&broker, handled.clone()).await;
        let base = acknowledged.lock().unwrap().len();
        let producer = Producer::connect(
            broker.addr(),
            ProducerConfig {
                retries: 0,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        // Send while the consumer consumes; kill the broker in the middle of the sends.
        let sender = tokio::spawn({
            let producer = producer.clone();
            let acknowledged = acknowledged.clone();
            let first = next_key;
            async move {
                for i in first..first + SENDS_PER_ROUND {
                    let key = format!("k{i}");
                    match producer
                        .send(Message::new("ledger", format!("entry {i}")).with_key(key.clone()))
                        .await
                    {
                        Ok(result) if result.status == SendStatus::SendOk => {
                            acknowledged.lock().unwrap().insert(key);
                        }
                        Ok(_) | Err(_) => {}
                    }
                }
            }
        });
        next_key += SENDS_PER_ROUND;
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < base + SENDS_PER_ROUND / 2 {
            assert!(Instant::now() < deadline, "sends did not progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        broker.signal(libc::SIGKILL);
        broker.wait();
        let _ = sender.await;
        consumer.shutdown().await;
        println!(
            "round {round}: {} acknowledged so far",
            acknowledged.lock().unwrap().len()
        );
    }

    // Restart once more and drain: every acknowledged key must be handled.
    let broker = BrokerProcess::start(dir.path(), &["--flush-disk-type", "SYNC_FLUSH"]);
    let consumer = start_auditor(&broker, handled.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = {
            let handled: HashSet<String> = handled.lock().unwrap().iter().cloned().collect();
            acknowledged.lock().unwrap().difference(&handled).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged messages were never handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    let handled = handled.lock().unwrap();
    let distinct: HashSet<_> = handled.iter().collect();
    println!(
        "{} acknowledged, all handled; {} handlings, {} duplicates (at least once)",
        acknowledged.lock().unwrap().len(),
        handled.len(),
        handled.len() - distinct.len()
    );
}
