//! The store append cases (`store-{sync,async}-a{1,16,64}`): a fresh store per case, N tokio
//! tasks each looping on `append().await` for the case's duration, under `SYNC_FLUSH` or
//! `ASYNC_FLUSH`.
//!
//! Owns the cases, the per-appender `Tally` (ok count, statuses other than `SEND_OK`, errors and
//! the latency histogram) and their merge, and the printed table row. Only `SEND_OK` appends
//! count toward throughput. Under `ASYNC_FLUSH` a final `Store::flush` is inside the timed
//! window, so both policies are measured for durable data. It does not compare anything with the
//! raw baselines: that is `report`'s job.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker::store::{FlushDiskType, NewMessage, PutStatus, Store, StoreConfig};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

use crate::{
    mb_per_sec, pattern, remove_dir, runtime, Results, Settings, QUEUE_COUNT, RECORD_BYTES,
    RUNTIME_WORKER_THREADS, TOPIC,
};

/// Concurrent appenders in the store cases.
pub(crate) const APPENDER_COUNTS: [usize; 3] = [1, 16, 64];
/// Highest latency the histograms hold; slower appends are recorded as this (saturated).
const LATENCY_MAX_US: u64 = 60_000_000;

pub(crate) fn store_case_name(flush: FlushDiskType, appenders: usize) -> String {
    match flush {
        FlushDiskType::SyncFlush => format!("store-sync-a{appenders}"),
        FlushDiskType::AsyncFlush => format!("store-async-a{appenders}"),
    }
}

pub(crate) fn flush_name(flush: FlushDiskType) -> &'static str {
    match flush {
        FlushDiskType::SyncFlush => "SYNC_FLUSH",
        FlushDiskType::AsyncFlush => "ASYNC_FLUSH",
    }
}

/// What the appenders of one case saw, merged.
pub(crate) struct Tally {
    pub(crate) ok: u64,
    /// Statuses other than `Ok`, by name.
    pub(crate) not_ok: BTreeMap<String, u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) latency_us: Histogram<u64>,
}

impl Tally {
    pub(crate) fn new() -> Result<Tally> {
        Ok(Tally {
            ok: 0,
            not_ok: BTreeMap::new(),
            errors: 0,
            first_error: None,
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
        })
    }

    pub(crate) fn merge(&mut self, other: Tally) -> Result<()> {
        self.ok += other.ok;
        for (status, count) in other.not_ok {
            *self.not_ok.entry(status).or_default() += count;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }

    pub(crate) fn not_ok_total(&self) -> u64 {
        self.not_ok.values().sum()
    }

    /// `SEND_OK` messages per second over `elapsed_secs`.
    pub(crate) fn msgs_per_sec(&self, elapsed_secs: f64) -> f64 {
        self.ok as f64 / elapsed_secs
    }

    /// Body bytes of the `SEND_OK` messages, in MB per second over `elapsed_secs`.
    pub(crate) fn body_mb_per_sec(&self, elapsed_secs: f64) -> f64 {
        mb_per_sec(self.ok * RECORD_BYTES as u64, elapsed_secs)
    }
}

pub(crate) struct StoreCase {
    pub(crate) flush: FlushDiskType,
    pub(crate) appenders: usize,
    pub(crate) tally: Tally,
    pub(crate) elapsed_secs: f64,
}

impl StoreCase {
    pub(crate) fn msgs_per_sec(&self) -> f64 {
        self.tally.msgs_per_sec(self.elapsed_secs)
    }
    pub(crate) fn body_mb_per_sec(&self) -> f64 {
        self.tally.body_mb_per_sec(self.elapsed_secs)
    }
    pub(crate) fn latency_us(&self, quantile: f64) -> u64 {
        self.tally.latency_us.value_at_quantile(quantile)
    }
}

pub(crate) fn run_store(settings: &Settings, dir: &Path, results: &mut Results) -> Result<()> {
    let mut runtime_slot = None;
    for flush in [FlushDiskType::SyncFlush, FlushDiskType::AsyncFlush] {
        for appenders in APPENDER_COUNTS {
            let name = store_case_name(flush, appenders);
            if !settings.selected(&name) {
                continue;
            }
            if runtime_slot.is_none() {
                runtime_slot = Some(runtime()?);
                println!("\nstore: 1 KiB bodies, topic \"{TOPIC}\", {QUEUE_COUNT} queues, {RUNTIME_WORKER_THREADS} tokio workers; ASYNC_FLUSH includes a final flush");
                println!(
                    "  {:<20} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6}",
                    "case",
                    "msgs/s",
                    "MB/s",
                    "p50 us",
                    "p99 us",
                    "max us",
                    "not-ok",
                    "errors",
                    "secs"
                );
            }
            let rt = runtime_slot.as_ref().expect("set just above");
            eprintln!("store-bench: {name} ...");
            let case = store_case(
                rt,
                &dir.join(&name),
                flush,
                appenders,
                settings.case_duration,
                settings.append_batch,
            )
            .with_context(|| name.clone())?;
            print_store_case(&name, &case);
            results.store.push(case);
        }
    }
    Ok(())
}

fn print_store_case(name: &str, case: &StoreCase) {
    let t = &case.tally;
    println!(
        "  {:<20} {:>10.0} {:>8.2} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6.2}",
        name,
        case.msgs_per_sec(),
        case.body_mb_per_sec(),
        case.latency_us(0.5),
        case.latency_us(0.99),
        t.latency_us.max(),
        t.not_ok_total(),
        t.errors,
        case.elapsed_secs
    );
    for (status, count) in &t.not_ok {
        println!("    NOT OK: {count} appends returned {status}");
    }
    if let Some(err) = &t.first_error {
        println!("    ERROR: {} appends failed; first: {err}", t.errors);
    }
}

fn store_case(
    rt: &Runtime,
    store_dir: &Path,
    flush: FlushDiskType,
    appenders: usize,
    duration: Duration,
    append_batch: usize,
) -> Result<StoreCase> {
    let config = StoreConfig {
        store_path: store_dir.to_path_buf(),
        flush_disk_type: flush,
        ..StoreConfig::default()
    };
    let store = Arc::new(
        Store::open(config).with_context(|| format!("open store {}", store_dir.display()))?,
    );
    let (tally, elapsed) = rt.block_on(async {
        let started = Instant::now();
        let tally = run_appenders(&store, appenders, started + duration, append_batch).await?;
        if flush == FlushDiskType::AsyncFlush {
            store.flush().await.context("final flush")?;
        }
        anyhow::Ok((tally, started.elapsed()))
    })?;
    store.shutdown().context("shut the store down")?;
    drop(store);
    remove_dir(store_dir)?;
    Ok(StoreCase {
        flush,
        appenders,
        tally,
        elapsed_secs: elapsed.as_secs_f64(),
    })
}

/// Runs `appenders` tasks of [`append_until`] against `target` until `deadline`; their tallies
/// merged.
pub(crate) async fn run_appenders<T: AppendTarget>(
    target: &Arc<T>,
    appenders: usize,
    deadline: Instant,
    append_batch: usize,
) -> Result<Tally> {
    let body = Bytes::from(pattern(RECORD_BYTES));
    let tasks: Vec<_> = (0..appenders)
        .map(|i| {
            tokio::spawn(append_until(
                target.clone(),
                body.clone(),
                i as u32 % QUEUE_COUNT,
                deadline,
                append_batch,
            ))
        })
        .collect();
    let mut tally = Tally::new()?;
    for task in tasks {
        tally.merge(task.await.context("appender task panicked")??)?;
    }
    Ok(tally)
}

/// What the appender loop appends to: the store, or a diagnostic floor (`floor.rs`).
pub(crate) trait AppendTarget: Send + Sync + 'static {
    /// Appends one message; the status it was acknowledged with.
    fn append_one(&self, message: NewMessage) -> impl Future<Output = Result<PutStatus>> + Send;

    /// Appends a batch of messages with one call (the `--append-batch` diagnostic).
    fn append_many(
        &self,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Result<PutStatus>> + Send {
        async move {
            anyhow::bail!(
                "this target appends one message per call, not {}",
                messages.len()
            )
        }
    }
}

impl AppendTarget for Store {
    async fn append_one(&self, message: NewMessage) -> Result<PutStatus> {
        Ok(self.append(message).await?.status)
    }

    async fn append_many(&self, messages: Vec<NewMessage>) -> Result<PutStatus> {
        Ok(self.append_batch(messages).await?.status)
    }
}

/// One appender: appends until the deadline, `append_batch` messages per call (one `append` per
/// message when 1), rotating over the queues. Latency is per call. Stops at the first error (a
/// failed store answers every later append with the same error).
async fn append_until<T: AppendTarget>(
    store: Arc<T>,
    body: Bytes,
    first_queue_id: u32,
    deadline: Instant,
    append_batch: usize,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut queue_id = first_queue_id;
    while Instant::now() < deadline {
        let message = NewMessage::new(TOPIC, queue_id, body.clone());
        queue_id = (queue_id + 1) % QUEUE_COUNT;
        let started = Instant::now();
        let result = if append_batch == 1 {
            store.append_one(message).await
        } else {
            store.append_many(vec![message; append_batch]).await
        };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(status) => {
                tally.latency_us.saturating_record(latency_us.max(1));
                if status == PutStatus::Ok {
                    tally.ok += append_batch as u64;
                } else {
                    *tally.not_ok.entry(format!("{status:?}")).or_default() += 1;
                }
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error = Some(err.to_string());
                break;
            }
        }
    }
    Ok(tally)
}
