//! `cluster-cli consume`: joins a consumer group with a push consumer and handles messages until
//! it has `--count` of them or none came for `--idle-exit-ms`. `--fail-every K` makes the listener
//! answer `ReconsumeLater` to every K-th delivery, to exercise retries: those messages come back
//! through the group's retry topic and are counted when handled. With `--keys-out`, the key of
//! every handled message is written, one per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::{ConsumeFrom, ConsumeResult, PushConsumerConfig, ReceivedMessage};

use crate::Reach;

/// Joining a group and when to stop: shared by `consume` and `bench consume`.
#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub group: String,
    /// Stop after this many messages were handled.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long without a message.
    #[arg(long, default_value_t = 5_000)]
    pub idle_exit_ms: u64,
    /// Where a group without committed offsets starts.
    #[arg(long, value_enum, default_value_t = From::First)]
    from: From,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum From {
    First,
    Last,
}

impl MemberArgs {
    /// The push consumer's settings these arguments name (the rest at their defaults).
    pub fn config(&self) -> PushConsumerConfig {
        let mut config = PushConsumerConfig::new(self.group.clone(), self.topic.clone());
        config.consume_from = match self.from {
            From::First => ConsumeFrom::First,
            From::Last => ConsumeFrom::Last,
        };
        config
    }
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    member: MemberArgs,
    /// Write the key of every handled message to this file.
    #[arg(long)]
    keys_out: Option<PathBuf>,
    /// Answer ReconsumeLater to every K-th delivery.
    #[arg(long)]
    fail_every: Option<u64>,
}

struct Progress {
    delivered: AtomicU64,
    handled: AtomicU64,
    failed: AtomicU64,
    keys: Mutex<Vec<String>>,
    last_message: Mutex<Instant>,
}

pub async fn run(reach: &Reach, json: bool, args: ConsumeArgs) -> Result<ExitCode> {
    if args.fail_every == Some(0) {
        bail!("--fail-every must be at least 1");
    }
    let progress = Arc::new(Progress {
        delivered: AtomicU64::new(0),
        handled: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        keys: Mutex::new(Vec::new()),
        last_message: Mutex::new(Instant::now()),
    });
    let member = &args.member;
    let config = member.config();
    let listener = {
        let progress = progress.clone();
        let fail_every = args.fail_every;
        move |message: &ReceivedMessage| -> Result<ConsumeResult, client::ListenerError> {
            *progress.last_message.lock().expect("lock") = Instant::now();
            let delivery = progress.delivered.fetch_add(1, Ordering::AcqRel) + 1;
            if fail_every.is_some_and(|k| delivery % k == 0) {
                progress.failed.fetch_add(1, Ordering::AcqRel);
                return Ok(ConsumeResult::ReconsumeLater);
            }
            progress.handled.fetch_add(1, Ordering::AcqRel);
            let key = message
                .keys
                .first()
                .cloned()
                .unwrap_or_else(|| message.message_id.clone());
            progress.keys.lock().expect("lock").push(key);
            Ok(ConsumeResult::ConsumeSuccess)
        }
    };
    let started = Instant::now();
    let consumer = reach.push_consumer(config, listener).await?;
    let idle = Duration::from_millis(member.idle_exit_ms);
    loop {
        let handled = progress.handled.load(Ordering::Acquire);
        if member.count.is_some_and(|count| handled >= count) {
            break;
        }
        if progress.last_message.lock().expect("lock").elapsed() >= idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    let handled = progress.handled.load(Ordering::Acquire);
    if let Some(path) = &args.keys_out {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        for key in progress.keys.lock().expect("lock").iter() {
            writeln!(file, "{key}")?;
        }
        file.sync_all()?;
    }
    let failed = progress.failed.load(Ordering::Acquire);
    if json {
        out!(
            "{}",
            serde_json::json!({
                "received": handled,
                "reconsume_later": failed,
                "deliveries": progress.delivered.load(Ordering::Acquire),
                "seconds": (elapsed * 100.0).round() / 100.0,
            })
        );
    } else {
        out!("handled {handled} messages in {elapsed:.2} s ({failed} deliveries answered ReconsumeLater)");
    }
    let complete = member.count.is_none_or(|count| handled >= count);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
