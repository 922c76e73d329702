//! `cluster-cli send`: sends N messages with unique keys in one of the three modes and summarizes
//! what the broker answered. With `--keys-out`, the key of every message answered `SEND_OK` is
//! written, one per line: the list a drill later checks against what was consumed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use client::{Message, ProducerConfig, SendStatus};
use tokio::sync::Semaphore;

use crate::Reach;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[arg(long)]
    topic: String,
    /// Messages to send.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// sync: wait for each answer; async: up to --in-flight sends at once; oneway: no answers
    /// (not for messages that must not be lost).
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Sends in flight at once (async mode).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Write the key of every message answered SEND_OK to this file.
    #[arg(long)]
    keys_out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
    Oneway,
}

pub async fn run(reach: &Reach, json: bool, args: SendArgs) -> Result<ExitCode> {
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    if args.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let producer = reach.producer(ProducerConfig::default()).await?;
    // Keys unique across runs: a fresh message id names this run.
    let run_id = client::message::new_message_id();
    let body = Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    let mut statuses: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut acknowledged_keys = Vec::new();
    match args.mode {
        Mode::Oneway => {
            for i in 0..args.count {
                producer.send_oneway(message(&args.topic, &run_id, i, &body));
            }
            // One-way sends have no answers, but the process must not exit before they leave.
            producer.close().await;
        }
        Mode::Sync | Mode::Async => {
            let in_flight = if args.mode == Mode::Sync {
                1
            } else {
                args.in_flight
            };
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut handles = Vec::new();
            for i in 0..args.count {
                let permit = permits.clone().acquire_owned().await.context("semaphore")?;
                let key = key(&run_id, i);
                let handle = producer.send_async(message(&args.topic, &run_id, i, &body));
                handles.push(tokio::spawn(async move {
                    let result = handle.await;
                    drop(permit);
                    (key, result)
                }));
            }
            for handle in handles {
                let (key, result) = handle.await.context("send task")?;
                match result.context("send task")? {
                    Ok(sent) => {
                        *statuses.entry(sent.status.name()).or_default() += 1;
                        if sent.status == SendStatus::SendOk {
                            acknowledged_keys.push(key);
                        }
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(path) = &args.keys_out {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        for key in &acknowledged_keys {
            writeln!(file, "{key}")?;
        }
        file.sync_all()?;
    }
    let msgs_per_s = args.count as f64 / elapsed.max(1e-9);
    if json {
        out!(
            "{}",
            serde_json::json!({
                "sent": args.count,
                "mode": format!("{:?}", args.mode).to_lowercase(),
                "statuses": statuses,
                "errors": errors,
                "first_error": first_error,
                "msgs_per_s": (msgs_per_s * 10.0).round() / 10.0,
            })
        );
    } else {
        out!(
            "sent {} in {elapsed:.2} s ({msgs_per_s:.0} msgs/s)",
            args.count
        );
        for (status, count) in &statuses {
            out!("  {status:<20} {count}");
        }
        if errors > 0 {
            out!(
                "  errors               {errors} (first: {})",
                first_error.as_deref().unwrap_or("")
            );
        }
        if args.mode == Mode::Oneway {
            out!("  one-way: no answers; nothing tells whether these messages arrived");
        }
    }
    let all_ok = errors == 0 && statuses.keys().all(|s| *s == "SEND_OK");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn key(run_id: &str, i: u64) -> String {
    format!("{run_id}-{i}")
}

fn message(topic: &str, run_id: &str, i: u64, body: &Bytes) -> Message {
    Message::new(topic, body.clone()).with_key(key(run_id, i))
}
