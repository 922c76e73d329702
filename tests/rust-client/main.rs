//! Sends and receives through the official RocketMQ 5 Rust client (`rocketmq` 5.0.0, unchanged).
//!
//! Usage:
//!   v5-rust-client produce ENDPOINT TOPIC COUNT OUT
//!     even seq NORMAL (tag "even", key "k<seq>"), odd seq FIFO (message group
//!     "order-<seq % 50>"), each with the user property seq=<seq>; OUT gets one JSON line per
//!     message answered with a receipt: {"seq", "id", "kind", "group"}
//!   v5-rust-client consume ENDPOINT TOPIC GROUP EXPECTED OUT
//!     a SimpleConsumer receives and acknowledges until EXPECTED distinct message ids are
//!     acknowledged (or after a silence of 20 s, or 120 s in all); OUT gets one JSON line per
//!     message received: {"id", "seq", "attempt", "group", "acked"}
//!
//! Prints a summary as its last line of stdout; exits 2 on bad usage, 1 when the client could
//! not start.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};
use serde_json::json;

const ERRORS_KEPT: usize = 5;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["produce", endpoint, topic, count, out] => match count.parse() {
            Ok(count) => produce(endpoint, topic, count, out).await,
            Err(_) => usage(),
        },
        ["consume", endpoint, topic, group, expected, out] => match expected.parse() {
            Ok(expected) => consume(endpoint, topic, group, expected, out).await,
            Err(_) => usage(),
        },
        _ => usage(),
    };
    if let Err(why) = result {
        eprintln!("v5-rust-client: {why}");
        std::process::exit(1);
    }
}

fn usage() -> Result<(), String> {
    eprintln!(
        "usage: v5-rust-client produce ENDPOINT TOPIC COUNT OUT\n       \
         v5-rust-client consume ENDPOINT TOPIC GROUP EXPECTED OUT"
    );
    std::process::exit(2);
}

fn client_option(endpoint: &str) -> ClientOption {
    let mut option = ClientOption::default();
    option.set_access_url(endpoint);
    option.set_enable_tls(false);
    option
}

fn keep(errors: &mut Vec<String>, error: impl std::fmt::Debug) {
    if errors.len() < ERRORS_KEPT {
        errors.push(format!("{error:?}").chars().take(300).collect());
    }
}

async fn produce(endpoint: &str, topic: &str, count: u64, out: &str) -> Result<(), String> {
    let mut option = ProducerOption::default();
    option.set_topics(vec![topic]);
    let mut producer = Producer::new(option, client_option(endpoint))
        .map_err(|err| format!("producer: {err:?}"))?;
    producer
        .start()
        .await
        .map_err(|err| format!("producer start: {err:?}"))?;
    let mut file = File::create(out).map_err(|err| format!("{out}: {err}"))?;
    let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
    for seq in 0..count {
        let body = format!("message {seq}").into_bytes();
        let properties = HashMap::from([("seq".to_owned(), seq.to_string())]);
        let (builder, group) = if seq % 2 == 0 {
            let builder = MessageBuilder::builder()
                .set_topic(topic)
                .set_body(body)
                .set_tag("even")
                .set_keys(vec![format!("k{seq}")]);
            (builder, None)
        } else {
            let group = format!("order-{}", seq % 50);
            let builder = MessageBuilder::fifo_message_builder(topic, body, group.clone());
            (builder, Some(group))
        };
        let message = builder
            .set_properties(properties)
            .build()
            .map_err(|err| format!("message {seq}: {err:?}"))?;
        match producer.send(message).await {
            Ok(receipt) => {
                ok += 1;
                let line = json!({
                    "seq": seq,
                    "id": receipt.message_id(),
                    "kind": if group.is_some() { "fifo" } else { "normal" },
                    "group": group,
                });
                writeln!(file, "{line}").map_err(|err| format!("{out}: {err}"))?;
            }
            Err(err) => {
                failed += 1;
                keep(&mut errors, err);
            }
        }
    }
    let _ = producer.shutdown().await;
    println!(
        "{}",
        json!({"sent": count, "ok": ok, "failed": failed, "errors": errors})
    );
    Ok(())
}

async fn consume(
    endpoint: &str,
    topic: &str,
    group: &str,
    expected: usize,
    out: &str,
) -> Result<(), String> {
    let mut option = SimpleConsumerOption::default();
    option.set_topics(vec![topic]);
    option.set_consumer_group(group);
    let mut client = client_option(endpoint);
    // The client's deadline for a receive is its long poll; a short one keeps the loop lively.
    client.set_long_polling_timeout(Duration::from_secs(5));
    let mut consumer =
        SimpleConsumer::new(option, client).map_err(|err| format!("consumer: {err:?}"))?;
    consumer
        .start()
        .await
        .map_err(|err| format!("consumer start: {err:?}"))?;
    let mut file = File::create(out).map_err(|err| format!("{out}: {err}"))?;
    let filter = FilterExpression::new(FilterType::Tag, "*");
    let (mut acked, mut received, mut errors) = (HashSet::new(), 0u64, Vec::new());
    let started = Instant::now();
    let mut last = Instant::now();
    while acked.len() < expected
        && last.elapsed() < Duration::from_secs(20)
        && started.elapsed() < Duration::from_secs(120)
    {
        let messages = match consumer
            .receive_with(topic, &filter, 16, Duration::from_secs(10))
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                keep(&mut errors, err);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for message in messages {
            received += 1;
            last = Instant::now();
            let ok = match consumer.ack(&message).await {
                Ok(()) => {
                    acked.insert(message.message_id().to_owned());
                    true
                }
                Err(err) => {
                    keep(&mut errors, err);
                    false
                }
            };
            let seq: i64 = message
                .properties()
                .get("seq")
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let line = json!({
                "id": message.message_id(),
                "seq": seq,
                "attempt": message.delivery_attempt(),
                "group": message.message_group(),
                "acked": ok,
            });
            writeln!(file, "{line}").map_err(|err| format!("{out}: {err}"))?;
        }
    }
    let _ = consumer.shutdown().await;
    println!(
        "{}",
        json!({"received": received, "acked_ids": acked.len(), "errors": errors})
    );
    Ok(())
}
