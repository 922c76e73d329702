//! `store-bench`: measures the store against raw-disk baselines taken in the same run, on the
//! same disk, so that every figure it prints is a ratio a reader can trust on any machine.
//!
//! This file owns the command line, the resolved settings, the order of the phases and the
//! helpers every phase shares (the record pattern, the tokio runtime, progress lines). It does not
//! measure anything itself; each phase lives in its own module:
//! - `raw`: the memory probe and the raw-disk baselines (fsync batches, sequential write).
//! - `store_cases`: the store append cases and their tallies and latency histograms.
//! - `recovery`: the `fill` child, its kill, the cold raw reads and the timed `Store::open`.
//! - `floor`: diagnostic cases, the store's append shape without the store.
//! - `report`: the ratios against the baselines, the warnings, and their printing.
//! - `json`: the last stdout line, one JSON object with every figure (a format scripts parse).
//!
//! What it measures, in order (all under one directory, `--dir`, default the system temp dir; a
//! fresh sub-directory is made there and removed at the end):
//! 0. A memory probe: 512 MiB of memory touched for the first time, then again just after being
//!    freed. Where the two differ widely (a VM whose balloon driver hands idle free pages back to
//!    the host), every page-cache-bound figure depends on whether its pages were recycled, and a
//!    warning says so. Hence the two passes below: one of them gets recycled memory.
//! 1. Raw baselines.
//!    - `raw-fsync-{grow,prealloc}-b{1,16,64}`: 1 KiB records written with one `pwrite` of N
//!      records then one `fdatasync`, for `--seconds`, to a fresh file that grows and to a file
//!      preallocated with `posix_fallocate` exactly like a commit-log segment. The two differ in
//!      what each fdatasync also commits (the file size for the growing file; the conversion of
//!      unwritten extents for the preallocated one), and which is cheaper depends on the file
//!      system, so the store is judged against the BETTER of the two at batch 64: a conservative
//!      baseline. Batch 64 because 64 concurrent `SYNC_FLUSH` appenders can at best share one
//!      fsync among 64 records (group commit); the store cannot beat the disk at that batch size.
//!    - `raw-seq`: `--seq-bytes` written in 1 MiB buffers to a fresh file, then one fdatasync,
//!      timed together: the bandwidth ceiling for durable `ASYNC_FLUSH` data. Two passes, back to
//!      back; the faster is the baseline (conservative, as for the fsync baseline).
//! 2. The store (`store-{sync,async}-a{1,16,64}`): 1 KiB bodies to topic "bench" over 8 queue
//!    ids, from 1, 16 and 64 tokio tasks (2 worker threads) each looping on `append().await`, for
//!    `--seconds`, in a fresh store with the default configuration but for the path and the flush
//!    policy. Only `SEND_OK` appends count; anything else is printed and must be 0. Under
//!    `ASYNC_FLUSH` a final `Store::flush` is inside the timed window, so both policies are
//!    measured for durable data.
//!    Diagnostic, only when named in `--cases`: `floor-echo-a64` and `floor-write-a64`, the same
//!    appender loop against the store's hand-off shape with the store taken out, and
//!    `floor-inline-a64` and `floor-combine-a64`, two shapes without a writer thread (see
//!    `floor`).
//! 3. Recovery (`recovery`): a child process (this binary, hidden `fill` subcommand) fills a store
//!    to `--recovery-bytes` and is killed with SIGKILL: the state a broker crash leaves (page
//!    cache intact, abort marker present). The parent then fdatasyncs every file (dirty pages
//!    cannot be dropped) and drops them from the page cache, times a cold sequential read of every
//!    segment file whole in 4 MiB reads (the least any recovery must do: read the bytes it
//!    checks), twice, dropping the cache after each pass; the faster pass is
//!    the baseline, because recovery, like the second pass, runs on memory just freed by a
//!    drop. The baseline is the time to read the log's own bytes (the "data part" of the pass),
//!    not the empty rest of the last segment, which reads far faster than data. Then it deletes the checkpoint (the worst case: every record CRC-checked and every
//!    consume-queue entry rebuilt from offset 0), and times `Store::open`.
//! 4. Ratios with acceptance targets, each against the best raw figure of the run: store
//!    `SYNC_FLUSH` 64 appenders msgs/s over the raw batch-64 records/s (>= 0.5); store
//!    `ASYNC_FLUSH` 64 appenders MB/s over raw sequential MB/s (>= 0.5); recovery time over raw
//!    read time (<= 2.0). The same two against the first raw pass are printed for information.
//!    PASS/FAIL is printed, but the exit code is 0 either way: this is a measurement, not a test.
//!
//! Output: a table on stdout as cases finish, progress on stderr, and as the LAST stdout line one
//! JSON object with every figure (MB = 10^6 bytes; latencies in microseconds). `--quick` (1 s per
//! case, 64 MiB sequential write and recovery) is for smoke tests; `--cases` runs a subset by name
//! or name prefix (`raw`, `store-sync`, `store-async-a64`, `recovery`, ...).

mod floor;
mod json;
mod raw;
mod recovery;
mod report;
mod store_cases;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use broker::store::FlushDiskType;
use clap::{Parser, Subcommand};
use tokio::runtime::Runtime;

use crate::raw::{FileKind, MemoryProbe, RawFsync, SeqWrite};
use crate::recovery::RecoveryFigures;
use crate::report::Ratios;
use crate::store_cases::StoreCase;

/// Size of one raw record and of one message body.
const RECORD_BYTES: usize = 1024;
const TOPIC: &str = "bench";
const QUEUE_COUNT: u32 = 8;
/// Tokio worker threads for the store cases: fixed, so that runs on different machines compare.
const RUNTIME_WORKER_THREADS: usize = 2;
/// Passes of the raw sequential write and of the cold read; the best one is the baseline.
const RAW_PASSES: u32 = 2;
const MB: f64 = 1_000_000.0;
const DEFAULT_SECONDS: f64 = 5.0;
const DEFAULT_SEQ_BYTES: u64 = 1 << 30;
const DEFAULT_RECOVERY_BYTES: u64 = 1 << 30;
const QUICK_SECONDS: f64 = 1.0;
const QUICK_BYTES: u64 = 64 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "store-bench",
    about = "Store throughput, latency and recovery against raw-disk baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcmd>,
    /// Directory to run in (a fresh sub-directory is made and removed); default the temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per timed case (default 5; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Bytes of the raw sequential write, e.g. 1GiB (default 1 GiB; 64 MiB with --quick).
    #[arg(long, value_parser = parse_bytes)]
    seq_bytes: Option<u64>,
    /// Commit-log bytes to recover, e.g. 1GiB (default 1 GiB; 64 MiB with --quick).
    #[arg(long, value_parser = parse_bytes)]
    recovery_bytes: Option<u64>,
    /// Skip the recovery phase.
    #[arg(long)]
    skip_recovery: bool,
    /// Comma-separated case names or name prefixes to run (default all).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Smoke-test sizes: 1 s per case, 64 MiB sequential write and recovery.
    #[arg(long)]
    quick: bool,
    /// Messages per append call in the store cases (default 1: one `append` per message; above
    /// 1, `append_batch`). A diagnostic: the acceptance ratios are defined for 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    append_batch: u32,
}

#[derive(Subcommand, Debug)]
enum Subcmd {
    /// Child of the recovery phase: fill a store, print `READY <write_offset>`, sleep forever.
    #[command(hide = true)]
    Fill {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        bytes: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Subcmd::Fill { ref dir, bytes }) => recovery::fill(dir, bytes),
        None => run(&Settings::from_cli(&cli)?),
    }
}

/// The flags, resolved: explicit flag, else `--quick` size, else default.
struct Settings {
    base_dir: PathBuf,
    case_duration: Duration,
    seq_bytes: u64,
    recovery_bytes: u64,
    skip_recovery: bool,
    cases: Vec<String>,
    quick: bool,
    append_batch: usize,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Result<Settings> {
        let seconds = cli.seconds.unwrap_or(if cli.quick {
            QUICK_SECONDS
        } else {
            DEFAULT_SECONDS
        });
        let bytes = |flag: Option<u64>, default| {
            flag.unwrap_or(if cli.quick { QUICK_BYTES } else { default })
        };
        ensure!(
            seconds > 0.0 && seconds.is_finite(),
            "--seconds must be above 0"
        );
        let settings = Settings {
            base_dir: cli.dir.clone().unwrap_or_else(std::env::temp_dir),
            case_duration: Duration::from_secs_f64(seconds),
            seq_bytes: bytes(cli.seq_bytes, DEFAULT_SEQ_BYTES),
            recovery_bytes: bytes(cli.recovery_bytes, DEFAULT_RECOVERY_BYTES),
            skip_recovery: cli.skip_recovery,
            cases: cli
                .cases
                .iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            quick: cli.quick,
            append_batch: cli.append_batch as usize,
        };
        ensure!(settings.seq_bytes > 0, "--seq-bytes must be above 0");
        ensure!(
            settings.recovery_bytes > 0,
            "--recovery-bytes must be above 0"
        );
        let all = all_case_names();
        for token in &settings.cases {
            ensure!(
                all.iter().any(|name| case_matches(name, token)),
                "--cases: {token:?} matches no case; cases are {}",
                all.join(", ")
            );
        }
        Ok(settings)
    }

    fn selected(&self, name: &str) -> bool {
        if name == "recovery" && self.skip_recovery {
            return false;
        }
        self.cases.is_empty() || self.named(name)
    }

    /// Named in `--cases` (diagnostic cases run only then).
    fn named(&self, name: &str) -> bool {
        self.cases.iter().any(|token| case_matches(name, token))
    }
}

fn case_matches(name: &str, token: &str) -> bool {
    name == token
        || name
            .strip_prefix(token)
            .is_some_and(|rest| rest.starts_with('-'))
}

fn all_case_names() -> Vec<String> {
    let mut names = Vec::new();
    for kind in [FileKind::Grow, FileKind::Prealloc] {
        names.extend(
            raw::BATCH_RECORDS
                .iter()
                .map(|b| raw::raw_fsync_name(kind, *b)),
        );
    }
    names.push("raw-seq".to_owned());
    for flush in [FlushDiskType::SyncFlush, FlushDiskType::AsyncFlush] {
        names.extend(
            store_cases::APPENDER_COUNTS
                .iter()
                .map(|a| store_cases::store_case_name(flush, *a)),
        );
    }
    names.push("recovery".to_owned());
    names.extend(floor::FLOOR_CASES.iter().map(|n| (*n).to_owned()));
    names
}

/// Accepts a byte count with an optional binary suffix: `1073741824`, `64MiB`, `1G`, `512k`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

// ---------------------------------------------------------------------------------------------
// The run

/// Everything measured, for the ratios and the JSON line.
#[derive(Default)]
struct Results {
    raw_fsync: Vec<RawFsync>,
    memory: Option<MemoryProbe>,
    /// Every pass of the raw sequential write, in order.
    raw_seq: Vec<SeqWrite>,
    store: Vec<StoreCase>,
    recovery: Option<RecoveryFigures>,
    /// Diagnostic floor cases, when named.
    floor: Vec<floor::FloorCase>,
}

fn run(settings: &Settings) -> Result<()> {
    // The base may not exist yet; the work directory in it is removed when dropped (also on
    // error) or closed.
    fs::create_dir_all(&settings.base_dir)
        .with_context(|| format!("create {}", settings.base_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("store-bench-{}-", std::process::id()))
        .tempdir_in(&settings.base_dir)
        .with_context(|| format!("create work dir in {}", settings.base_dir.display()))?;
    let work_path = work.path().to_path_buf();
    eprintln!("store-bench: working in {}", work_path.display());
    println!(
        "store-bench: {} s per case, seq write {} MiB, recovery {} MiB{}, dir {}",
        settings.case_duration.as_secs_f64(),
        settings.seq_bytes >> 20,
        settings.recovery_bytes >> 20,
        if settings.quick { " (quick)" } else { "" },
        work_path.display()
    );
    if settings.append_batch > 1 {
        println!(
            "store-bench: DIAGNOSTIC RUN: {} messages per append call; the acceptance ratios are defined for 1",
            settings.append_batch
        );
    }
    let mut results = Results {
        memory: Some(raw::probe_memory()?),
        ..Results::default()
    };
    raw::run_raw(settings, &work_path, &mut results)?;
    store_cases::run_store(settings, &work_path, &mut results)?;
    let floor_names: Vec<_> = floor::FLOOR_CASES
        .into_iter()
        .filter(|name| settings.named(name))
        .collect();
    if !floor_names.is_empty() {
        let seq_best_mb = results
            .raw_seq
            .iter()
            .map(raw::SeqWrite::mb_per_sec)
            .reduce(f64::max);
        results.floor = floor::run_floor(
            &floor_names,
            &work_path,
            settings.case_duration,
            seq_best_mb,
        )?;
    }
    if settings.selected("recovery") {
        results.recovery = Some(recovery::run_recovery(&work_path, settings.recovery_bytes)?);
    }
    let ratios = Ratios::compute(&results);
    ratios.print();
    if let Err(err) = work.close() {
        eprintln!(
            "store-bench: could not remove {}: {err}",
            work_path.display()
        );
    }
    println!("{}", json::to_json(settings, &results, &ratios)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared by the phases

fn remove_dir(path: &Path) -> Result<()> {
    fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))
}

/// Bytes that are not all zeros (a file system could treat zero pages specially).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MB / secs
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .enable_all()
        .build()
        .context("build tokio runtime")
}

/// At most one progress line a second on stderr for a long phase.
struct Progress {
    label: &'static str,
    total_bytes: u64,
    last: Instant,
}

impl Progress {
    fn new(label: &'static str, total_bytes: u64) -> Progress {
        Progress {
            label,
            total_bytes,
            last: Instant::now(),
        }
    }

    fn update(&mut self, done_bytes: u64) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!(
                "store-bench: {}: {} of {} MiB",
                self.label,
                done_bytes >> 20,
                self.total_bytes >> 20
            );
        }
    }
}
