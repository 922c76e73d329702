//! `cluster-cli bench rpc`: what one request costs before any storage: the round trip of the
//! broker's cheapest RPC (`QueryOffset` of a group that committed nothing, answered from memory),
//! one at a time, through the same gRPC stack a send takes (tonic and HTTP/2 on both sides, the
//! broker's runtime, the caller's signature).
//!
//! Beside `bench floor` (the bare path: threads, loopback TCP, two fdatasyncs), it splits the
//! idle path's latency into what the disk and the kernel cost, what one RPC layer costs, and
//! what is left for the broker's own work (`scripts/bench-idle.sh`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::QueryOffsetRequest;

#[derive(clap::Args, Debug)]
pub struct RpcArgs {
    /// Round trips, one at a time.
    #[arg(long, default_value_t = 5_000)]
    count: u64,
}

pub async fn run(broker: &str, json: bool, args: RpcArgs) -> Result<ExitCode> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    // Through `proto::dial`, so that `--tls-ca` applies.
    let endpoint = proto::dial::endpoint(broker, Duration::from_secs(2))
        .context("broker address is not host:port")?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connect to {broker}"))?;
    let mut client = ConsumerGroupsClient::new(crate::identity::signed(channel));
    let request = QueryOffsetRequest {
        group: "bench-rpc".into(),
        topic: "bench-rpc".into(),
        queue_id: 0,
    };
    // One round trip to warm the connection; not counted.
    client
        .query_offset(request.clone())
        .await
        .context("QueryOffset")?;
    let mut latencies = Histogram::<u64>::new(3).context("histogram")?;
    let started = Instant::now();
    for _ in 0..args.count {
        let sent = Instant::now();
        client
            .query_offset(request.clone())
            .await
            .context("QueryOffset")?;
        latencies.saturating_record(sent.elapsed().as_micros() as u64);
    }
    let per_s = args.count as f64 / started.elapsed().as_secs_f64();
    let (p50, p99, max) = (
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.99),
        latencies.max(),
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "count": args.count,
                "p50_us": p50,
                "p99_us": p99,
                "max_us": max,
                "rpcs_per_s": per_s.round(),
            })
        );
    } else {
        println!(
            "rpc: {} QueryOffset round trips to {broker}, one at a time: {per_s:.0}/s; latency \
             p50 {p50} us, p99 {p99} us, max {max} us",
            args.count
        );
    }
    Ok(ExitCode::SUCCESS)
}
