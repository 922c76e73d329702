//! `cluster-cli bench consume`: consumer throughput and end-to-end latency against a broker. Joins
//! group `--group` with a push consumer (pulls with long polling, the listener on a blocking
//! thread, offsets committed after each pulled batch, as an application would run it) and
//! handles messages until `--count` of them or none came for `--idle-exit-ms`. A progress line
//! each second on stderr; a summary with msgs/s and MB/s (bodies) over the time from the start to
//! the last message, and, for messages sent by `bench produce --sent-at` (which stores the send
//! time in the property [`SENT_AT_PROPERTY`]), the end-to-end latency from the producer's send
//! call to the listener, p50/p99/p999 in microseconds. Run it while `bench produce` runs for live
//! latency; run it afterwards to measure draining a backlog (latencies then include the time the
//! messages waited). With `--api v5` the same group consumes through RocketMQ 5's API at
//! `--endpoint` ([`crate::bench_v5_consume`]: receive and acknowledge, `--receivers` loops per
//! broker group, batches of at most 32); a new v5 group starts at the beginning of each queue.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use client::{ConsumeResult, ReceivedMessage};
use hdrhistogram::Histogram;

use crate::bench::{now_us, Api, SENT_AT_PROPERTY};
use crate::consume::MemberArgs;
use crate::Reach;

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    member: MemberArgs,
    /// Messages per pull (1 to 1024); with `--api v5`, per receive (at most 32 are asked for).
    #[arg(long, default_value_t = 256)]
    pull_batch: u32,
    /// Which API: the cluster's own (`native`) or RocketMQ 5's (`v5`, at `--endpoint`).
    #[arg(long, value_enum, default_value_t = Api::Native)]
    api: Api,
    /// With `--api v5`: the access point, `host:port` (scripts/cluster.sh writes it to
    /// cluster.env).
    #[arg(long, env = "ROCKETMQ_ENDPOINT")]
    endpoint: Option<String>,
    /// With `--api v5`: receive loops per broker group.
    #[arg(long, default_value_t = 2)]
    receivers: usize,
}

/// What consumes: the native push consumer, or the v5 receive loops.
enum Running {
    Native(client::PushConsumer),
    V5(crate::bench_v5_consume::V5Consumers),
}

/// What the listener has seen; shared with the progress and summary code.
struct Tally {
    handled: AtomicU64,
    body_bytes: AtomicU64,
    /// End-to-end latencies of stamped messages, microseconds.
    latencies: Mutex<Histogram<u64>>,
    /// When the last message was handled.
    last_message: Mutex<Instant>,
}

impl Tally {
    /// One message handled: its body's size, and its send time when it carries one.
    fn count(&self, body_len: usize, sent_at_us: Option<u64>) {
        if let Some(sent_at_us) = sent_at_us {
            let latency_us = now_us().saturating_sub(sent_at_us).max(1);
            self.latencies
                .lock()
                .expect("lock")
                .saturating_record(latency_us);
        }
        self.body_bytes
            .fetch_add(body_len as u64, Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::AcqRel);
        *self.last_message.lock().expect("lock") = Instant::now();
    }
}

pub async fn run(reach: &Reach, json: bool, args: ConsumeArgs) -> Result<ExitCode> {
    let member = &args.member;
    if member.count == Some(0) || !(1..=1024).contains(&args.pull_batch) {
        bail!("--count must be at least 1 and --pull-batch 1 to 1024");
    }
    let started = Instant::now();
    let tally = Arc::new(Tally {
        handled: AtomicU64::new(0),
        body_bytes: AtomicU64::new(0),
        latencies: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        last_message: Mutex::new(started),
    });
    let consumer = match args.api {
        Api::Native => {
            let mut config = member.config();
            config.pull_batch = args.pull_batch;
            let listener = {
                let tally = tally.clone();
                move |message: &ReceivedMessage| -> Result<ConsumeResult, client::ListenerError> {
                    let sent_at_us = message
                        .properties
                        .get(SENT_AT_PROPERTY)
                        .and_then(|v| v.parse::<u64>().ok());
                    tally.count(message.body.len(), sent_at_us);
                    Ok(ConsumeResult::ConsumeSuccess)
                }
            };
            Running::Native(reach.push_consumer(config, listener).await?)
        }
        Api::V5 => {
            let Some(endpoint) = &args.endpoint else {
                bail!("--api v5 needs --endpoint HOST:PORT (or ROCKETMQ_ENDPOINT)");
            };
            let handle = {
                let tally = tally.clone();
                Arc::new(move |message: &proto::v5::Message| {
                    let sent_at_us = message
                        .user_properties
                        .get(SENT_AT_PROPERTY)
                        .and_then(|v| v.parse::<u64>().ok());
                    tally.count(message.body.len(), sent_at_us);
                })
            };
            Running::V5(
                crate::bench_v5_consume::V5Consumers::start(
                    endpoint,
                    &member.topic,
                    &member.group,
                    args.pull_batch
                        .min(crate::bench_v5_consume::RECEIVE_BATCH_MAX),
                    args.receivers,
                    handle,
                )
                .await?,
            )
        }
    };
    let idle = Duration::from_millis(member.idle_exit_ms);
    let mut next_progress = started + Duration::from_secs(1);
    let mut handled_at_last_progress = 0;
    loop {
        let handled = tally.handled.load(Ordering::Acquire);
        if member.count.is_some_and(|count| handled >= count) {
            break;
        }
        if tally.last_message.lock().expect("lock").elapsed() >= idle {
            break;
        }
        if Instant::now() >= next_progress {
            eprintln!(
                "bench: {handled} consumed ({} in the last second)",
                handled - handled_at_last_progress
            );
            handled_at_last_progress = handled;
            next_progress += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Failed receives and acknowledgements (the native consumer retries within its client).
    let failures = match consumer {
        Running::Native(consumer) => {
            consumer.shutdown().await;
            0
        }
        Running::V5(consumers) => consumers.stop().await,
    };
    let handled = tally.handled.load(Ordering::Acquire);
    let body_bytes = tally.body_bytes.load(Ordering::Acquire);
    // Up to the last message: the idle wait at the end is not consuming.
    let elapsed = tally
        .last_message
        .lock()
        .expect("lock")
        .duration_since(started)
        .as_secs_f64()
        .max(1e-6);
    let msgs_per_s = handled as f64 / elapsed;
    let mb_per_s = body_bytes as f64 / elapsed / 1_000_000.0;
    let latencies = tally.latencies.lock().expect("lock");
    let stamped = latencies.len();
    let (p50, p99, p999) = (
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
    );
    if json {
        let latency =
            (stamped > 0).then(|| serde_json::json!({ "p50": p50, "p99": p99, "p999": p999 }));
        out!(
            "{}",
            serde_json::json!({
                "received": handled, "pull_batch": args.pull_batch,
                "api": format!("{:?}", args.api).to_lowercase(), "failures": failures,
                "seconds": (elapsed * 100.0).round() / 100.0,
                "msgs_per_s": msgs_per_s.round(), "mb_per_s": (mb_per_s * 10.0).round() / 10.0,
                "stamped": stamped,
                "end_to_end_latency_us": latency,
            })
        );
    } else {
        out!("consumed {handled} messages in {elapsed:.2} s (to the last message); {failures} failed calls");
        out!("  {msgs_per_s:.0} msgs/s, {mb_per_s:.1} MB/s");
        if stamped > 0 {
            out!("  end-to-end latency (send call to listener) of {stamped} stamped messages: p50 {p50} us, p99 {p99} us, p999 {p999} us");
        } else {
            out!("  no message carried {SENT_AT_PROPERTY} (bench produce --sent-at): no end-to-end latency");
        }
    }
    let complete = member.count.is_none_or(|count| handled >= count);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
