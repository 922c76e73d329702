//! `cluster-cli bench produce`: end-to-end producer throughput and latency against a broker:
//! `--in-flight` sends at once, each waiting for its answer, `--count` in all, with a progress
//! line each second and a summary (msgs/s, MB/s, p50/p99/p999 latency in microseconds, statuses).
//! Compare it with `store-bench` (the store alone) to see what the network layer costs.
//! The producer batches concurrent sends (`--batch-max-messages 1` turns that off). With
//! `--sent-at`, every message carries its send time in the property [`SENT_AT_PROPERTY`], from
//! which `bench consume` ([`crate::bench_consume`]) measures end-to-end latency. With
//! `--api v5` the same workload goes through RocketMQ 5's API at `--endpoint`
//! ([`crate::bench_v5`]), concurrent sends gathered into one request the same way
//! (`--batch-max-messages 1`: one message per request, as the official clients' `send`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use client::{Message, ProducerConfig, SendStatus};
use hdrhistogram::Histogram;

use crate::bench_consume::{self, ConsumeArgs};
use crate::Reach;

/// Property in which `bench produce` stores each message's send time (Unix microseconds), for
/// `bench consume`'s end-to-end latency.
pub const SENT_AT_PROPERTY: &str = "BENCH_SENT_AT_US";

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Producer throughput and latency.
    Produce(ProduceArgs),
    /// Consumer throughput and end-to-end latency (of messages sent by `bench produce`).
    Consume(ConsumeArgs),
    /// The least a SYNC_MASTER + SYNC_FLUSH acknowledgement can take on this machine: a producer,
    /// master and slave as three bare threads over loopback TCP, with two fdatasyncs.
    Floor(crate::bench_floor::FloorArgs),
    /// The round trip of the broker's cheapest RPC (QueryOffset, from memory), one at a time, at
    /// `--broker`: what the gRPC stack costs before any storage.
    Rpc(crate::bench_rpc::RpcArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sends waiting for their answers at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Most concurrent sends the producer gathers into one RPC (1 turns batching off).
    #[arg(long, default_value_t = ProducerConfig::default().batch_max_messages)]
    batch_max_messages: usize,
    /// RPCs with a partial batch in flight at once when batching.
    #[arg(long, default_value_t = ProducerConfig::default().batch_max_in_flight)]
    batch_max_in_flight: usize,
    /// Store each message's send time in the property BENCH_SENT_AT_US, from which `bench
    /// consume` measures end-to-end latency. Off by default: the property costs throughput
    /// (about 7 % here), and store-bench's messages carry none.
    #[arg(long)]
    sent_at: bool,
    /// Which API: the cluster's own (`native`) or RocketMQ 5's (`v5`, at `--endpoint`).
    #[arg(long, value_enum, default_value_t = Api::Native)]
    api: Api,
    /// With `--api v5`: the access point, `host:port` (scripts/cluster.sh writes it to
    /// cluster.env).
    #[arg(long, env = "ROCKETMQ_ENDPOINT")]
    endpoint: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Native,
    V5,
}

/// What the workers send through.
enum Target {
    Native(client::Producer),
    V5(crate::bench_v5::V5Producer),
}

impl Target {
    /// One send of `body`: the outcome's name (SEND_OK, another status, or an error).
    async fn send(&self, topic: &str, body: Bytes, stamp: bool) -> Result<String, String> {
        match self {
            Target::Native(producer) => {
                let mut message = Message::new(topic.to_owned(), body);
                if stamp {
                    message = message.with_property(SENT_AT_PROPERTY, now_us().to_string());
                }
                producer
                    .send(message)
                    .await
                    .map(|result| result.status.name().to_owned())
                    .map_err(|err| format!("error: {err}"))
            }
            Target::V5(producer) => producer.send(body).await,
        }
    }
}

pub async fn run(reach: &Reach, json: bool, command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Produce(args) => produce(reach, json, args).await,
        BenchCommand::Consume(args) => bench_consume::run(reach, json, args).await,
        BenchCommand::Rpc(args) => match reach {
            Reach::Broker(addr) => crate::bench_rpc::run(addr, json, args).await,
            Reach::Controller(_) => {
                bail!(
                    "bench rpc measures one broker: give --broker, and neither --controller nor \
                 CONTROLLER_ADDR in the environment"
                )
            }
        },
        // Blocking threads and system calls by design: off the runtime.
        BenchCommand::Floor(args) => {
            tokio::task::spawn_blocking(move || crate::bench_floor::run(json, args)).await?
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn produce(reach: &Reach, json: bool, args: ProduceArgs) -> Result<ExitCode> {
    if args.size == 0 || args.in_flight == 0 || args.count == 0 {
        bail!("--size, --in-flight and --count must be at least 1");
    }
    let config = ProducerConfig {
        batch_max_messages: args.batch_max_messages,
        batch_max_in_flight: args.batch_max_in_flight,
        ..ProducerConfig::default()
    };
    let target = Arc::new(match args.api {
        Api::Native => Target::Native(reach.producer(config).await?),
        Api::V5 => {
            if args.sent_at {
                bail!("--sent-at is for the native API");
            }
            let Some(endpoint) = &args.endpoint else {
                bail!("--api v5 needs --endpoint HOST:PORT (or ROCKETMQ_ENDPOINT)");
            };
            let batching = crate::bench_v5::Batching {
                max_messages: args.batch_max_messages,
                max_in_flight: args.batch_max_in_flight,
            };
            Target::V5(crate::bench_v5::V5Producer::connect(endpoint, &args.topic, batching).await?)
        }
    });
    let body = Bytes::from(vec![b'b'; args.size]);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..args.in_flight)
        .map(|_| {
            let (target, body, next, done) =
                (target.clone(), body.clone(), next.clone(), done.clone());
            let (latencies, statuses, topic, count, stamp) = (
                latencies.clone(),
                statuses.clone(),
                args.topic.clone(),
                args.count,
                args.sent_at,
            );
            tokio::spawn(async move {
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let mut local_statuses: BTreeMap<Cow<'static, str>, u64> = BTreeMap::new();
                while next.fetch_add(1, Ordering::AcqRel) < count {
                    let sent_at = Instant::now();
                    let name = match target.send(&topic, body.clone(), stamp).await {
                        Ok(status) => {
                            local.saturating_record(sent_at.elapsed().as_micros().max(1) as u64);
                            Cow::Owned(status)
                        }
                        Err(err) => Cow::Owned(err),
                    };
                    *local_statuses.entry(name).or_default() += 1;
                    done.fetch_add(1, Ordering::AcqRel);
                }
                latencies
                    .lock()
                    .expect("lock")
                    .add(&local)
                    .expect("same bounds");
                let mut statuses = statuses.lock().expect("lock");
                for (name, count) in local_statuses {
                    *statuses.entry(name.into_owned()).or_default() += count;
                }
            })
        })
        .collect();
    let progress = tokio::spawn({
        let done = done.clone();
        let count = args.count;
        async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                eprintln!("bench: {} of {count} sent", done.load(Ordering::Acquire));
            }
        }
    });
    for worker in workers {
        worker.await.context("bench worker")?;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let latencies = latencies.lock().expect("lock");
    let statuses = statuses.lock().expect("lock").clone();
    let msgs_per_s = args.count as f64 / elapsed;
    let stats = match target.as_ref() {
        Target::Native(producer) => producer.send_stats(),
        Target::V5(producer) => producer.send_stats(),
    };
    let messages_per_rpc = stats.messages as f64 / stats.rpcs.max(1) as f64;
    let mb_per_s = msgs_per_s * args.size as f64 / 1_000_000.0;
    let (p50, p99, p999, max) = (
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
        latencies.max(),
    );
    if json {
        out!(
            "{}",
            serde_json::json!({
                "count": args.count, "size": args.size, "in_flight": args.in_flight,
                "batch_max_messages": args.batch_max_messages,
                "batch_max_in_flight": args.batch_max_in_flight,
                "sent_at": args.sent_at,
                "api": format!("{:?}", args.api).to_lowercase(),
                "seconds": (elapsed * 100.0).round() / 100.0,
                "msgs_per_s": msgs_per_s.round(), "mb_per_s": (mb_per_s * 10.0).round() / 10.0,
                "latency_us": { "p50": p50, "p99": p99, "p999": p999, "max": max },
                "rpcs": stats.rpcs, "messages_per_rpc": (messages_per_rpc * 10.0).round() / 10.0,
                "statuses": statuses,
            })
        );
    } else {
        out!(
            "{} messages of {} B, {} in flight, batches of at most {} ({} RPC with a partial batch in flight): {elapsed:.2} s",
            args.count, args.size, args.in_flight, args.batch_max_messages, args.batch_max_in_flight
        );
        out!("  {msgs_per_s:.0} msgs/s, {mb_per_s:.1} MB/s; latency p50 {p50} us, p99 {p99} us, p999 {p999} us, max {max} us");
        out!(
            "  {} Send RPCs, {messages_per_rpc:.1} messages per RPC",
            stats.rpcs
        );
        for (status, count) in &statuses {
            out!("  {status:<20} {count}");
        }
    }
    let all_ok = statuses.keys().all(|s| s == SendStatus::SendOk.name());
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
