//! `store-bench`: measures the store against raw-disk baselines taken in the same run, on the
//! same disk, so that every figure it prints is a ratio a reader can trust on any machine.
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
//! 3. Recovery (`recovery`): a child process (this binary, hidden `fill` subcommand) fills a store
//!    to `--recovery-bytes` and is killed with SIGKILL: the state a broker crash leaves (page
//!    cache intact, abort marker present). The parent then fdatasyncs every file (dirty pages
//!    cannot be dropped) and drops them from the page cache, times a cold sequential read of every
//!    segment file whole in 4 MiB reads (the least any recovery must do: read the bytes it
//!    checks; the store also reads the preallocated tail of the last segment, so the whole file
//!    is the like-for-like amount), twice, dropping the cache after each pass; the faster pass is
//!    the baseline, because recovery, like the second pass, runs on memory just freed by a
//!    drop. Then it deletes the checkpoint (the worst case: every record CRC-checked and every
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
//!
//! This file is longer than the house ~500 lines because the benchmark is one self-contained
//! program by design: baselines and store cases must stay side by side to stay comparable.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use broker::store::checkpoint::CHECKPOINT_FILE_NAME;
use broker::store::recovery::COMMIT_LOG_DIR;
use broker::store::segment::{parse_segment_file_name, SEGMENT_HEADER_BYTES};
use broker::store::{FlushDiskType, NewMessage, PutStatus, RecoveryReport, Store, StoreConfig};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

/// Size of one raw record and of one message body.
const RECORD_BYTES: usize = 1024;
/// Records per `pwrite` + `fdatasync` in the raw fsync baselines.
const BATCH_RECORDS: [usize; 3] = [1, 16, 64];
/// Concurrent appenders in the store cases.
const APPENDER_COUNTS: [usize; 3] = [1, 16, 64];
/// Appenders of the `fill` child: the most concurrent case, so the log fills fast.
const FILL_APPENDERS: usize = 64;
const TOPIC: &str = "bench";
const QUEUE_COUNT: u32 = 8;
/// Tokio worker threads for the store cases: fixed, so that runs on different machines compare.
const RUNTIME_WORKER_THREADS: usize = 2;
const SEQ_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Passes of the raw sequential write and of the cold read; the best one is the baseline.
const RAW_PASSES: u32 = 2;
/// Anonymous memory the first-touch probe writes, twice.
const MEMORY_PROBE_BYTES: usize = 512 << 20;
/// First-touch memory slower than this fraction of reused memory gets a warning.
const MEMORY_FIRST_TOUCH_WARN_FRACTION: f64 = 0.5;
const COLD_READ_BUFFER_BYTES: usize = 4 << 20;
/// Highest latency the histograms hold; slower appends are recorded as this (saturated).
const LATENCY_MAX_US: u64 = 60_000_000;
const MB: f64 = 1_000_000.0;
const DEFAULT_SECONDS: f64 = 5.0;
const DEFAULT_SEQ_BYTES: u64 = 1 << 30;
const DEFAULT_RECOVERY_BYTES: u64 = 1 << 30;
const QUICK_SECONDS: f64 = 1.0;
const QUICK_BYTES: u64 = 64 << 20;
/// The fill child must report READY within this plus one second per 5 MB to fill; a store that
/// is slower than that has hung.
const FILL_TIMEOUT_BASE: Duration = Duration::from_secs(120);
const FILL_TIMEOUT_BYTES_PER_SEC: u64 = 5_000_000;

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
        Some(Subcmd::Fill { ref dir, bytes }) => fill(dir, bytes),
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
        self.cases.is_empty() || self.cases.iter().any(|token| case_matches(name, token))
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
        names.extend(BATCH_RECORDS.iter().map(|b| raw_fsync_name(kind, *b)));
    }
    names.push("raw-seq".to_owned());
    for flush in [FlushDiskType::SyncFlush, FlushDiskType::AsyncFlush] {
        names.extend(APPENDER_COUNTS.iter().map(|a| store_case_name(flush, *a)));
    }
    names.push("recovery".to_owned());
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
}

fn run(settings: &Settings) -> Result<()> {
    let work = WorkDir::create(&settings.base_dir)?;
    eprintln!("store-bench: working in {}", work.path.display());
    println!(
        "store-bench: {} s per case, seq write {} MiB, recovery {} MiB{}, dir {}",
        settings.case_duration.as_secs_f64(),
        settings.seq_bytes >> 20,
        settings.recovery_bytes >> 20,
        if settings.quick { " (quick)" } else { "" },
        work.path.display()
    );
    let mut results = Results {
        memory: Some(probe_memory()?),
        ..Results::default()
    };
    run_raw(settings, &work.path, &mut results)?;
    run_store(settings, &work.path, &mut results)?;
    if settings.selected("recovery") {
        results.recovery = Some(run_recovery(&work.path, settings.recovery_bytes)?);
    }
    let ratios = Ratios::compute(&results);
    ratios.print();
    drop(work);
    println!("{}", to_json(settings, &results, &ratios));
    Ok(())
}

/// A fresh directory under the chosen base, removed when dropped (also on error).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(base: &Path) -> Result<WorkDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("store-bench-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("create work dir {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "store-bench: could not remove {}: {err}",
                self.path.display()
            );
        }
    }
}

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

/// How fast the machine hands out memory it has not used lately, against memory just freed.
/// On a virtual machine whose balloon driver reports free pages to the host, memory idle for a
/// couple of seconds goes back to the host and costs a host page fault per page on next use;
/// every page-cache-bound figure (sequential write, `ASYNC_FLUSH`, cold reads) then measures
/// that, not the disk. The probe makes that visible instead of silently skewing the ratios.
struct MemoryProbe {
    first_touch_mb_per_sec: f64,
    reuse_mb_per_sec: f64,
}

impl MemoryProbe {
    fn first_touch_slow(&self) -> bool {
        self.first_touch_mb_per_sec < MEMORY_FIRST_TOUCH_WARN_FRACTION * self.reuse_mb_per_sec
    }
}

fn probe_memory() -> Result<MemoryProbe> {
    let touch = || {
        let started = Instant::now();
        // A non-zero fill is a real memset of every page, like the kernel zeroing page cache.
        let buf = std::hint::black_box(vec![1u8; MEMORY_PROBE_BYTES]);
        let secs = started.elapsed().as_secs_f64();
        drop(buf);
        mb_per_sec(MEMORY_PROBE_BYTES as u64, secs)
    };
    let probe = MemoryProbe {
        first_touch_mb_per_sec: touch(),
        reuse_mb_per_sec: touch(),
    };
    println!(
        "\nmemory: first touch {:.0} MB/s, reuse of just-freed memory {:.0} MB/s ({} MiB each)",
        probe.first_touch_mb_per_sec,
        probe.reuse_mb_per_sec,
        MEMORY_PROBE_BYTES >> 20
    );
    if probe.first_touch_slow() {
        println!(
            "  WARNING: memory not used lately is slow to touch (a VM returning free pages to its host?): \
             page-cache-bound figures (raw-seq, store ASYNC_FLUSH, cold reads, recovery) may measure \
             that, not the disk; compare the passes below"
        );
    }
    Ok(probe)
}

// ---------------------------------------------------------------------------------------------
// 1. Raw baselines

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    /// A fresh file extended by every write.
    Grow,
    /// A file preallocated with `posix_fallocate` to a segment's size, written from 4096 on.
    Prealloc,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Grow => "grow",
            FileKind::Prealloc => "prealloc",
        }
    }
}

fn raw_fsync_name(kind: FileKind, batch_records: usize) -> String {
    format!("raw-fsync-{}-b{batch_records}", kind.name())
}

struct RawFsync {
    kind: FileKind,
    batch_records: usize,
    records: u64,
    fsyncs: u64,
    elapsed_secs: f64,
    /// The preallocated file filled up before the time was over.
    hit_file_end: bool,
}

impl RawFsync {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed_secs
    }
    fn fsyncs_per_sec(&self) -> f64 {
        self.fsyncs as f64 / self.elapsed_secs
    }
}

struct SeqWrite {
    bytes: u64,
    elapsed_secs: f64,
}

impl SeqWrite {
    fn mb_per_sec(&self) -> f64 {
        mb_per_sec(self.bytes, self.elapsed_secs)
    }
}

fn run_raw(settings: &Settings, dir: &Path, results: &mut Results) -> Result<()> {
    let mut header_printed = false;
    for kind in [FileKind::Grow, FileKind::Prealloc] {
        for batch in BATCH_RECORDS {
            let name = raw_fsync_name(kind, batch);
            if !settings.selected(&name) {
                continue;
            }
            if !std::mem::replace(&mut header_printed, true) {
                println!("\nraw pwrite+fdatasync, 1 KiB records (batch = one write of N KiB, then one fdatasync)");
                println!(
                    "  {:<26} {:>12} {:>12} {:>9} {:>7}",
                    "case", "records/s", "fsyncs/s", "MB/s", "secs"
                );
            }
            eprintln!("store-bench: {name} ...");
            let r = raw_fsync(dir, kind, batch, settings.case_duration)
                .with_context(|| name.clone())?;
            println!(
                "  {:<26} {:>12.0} {:>12.0} {:>9.2} {:>7.2}{}",
                name,
                r.records_per_sec(),
                r.fsyncs_per_sec(),
                mb_per_sec(r.records * RECORD_BYTES as u64, r.elapsed_secs),
                r.elapsed_secs,
                if r.hit_file_end {
                    "  (file full: stopped early)"
                } else {
                    ""
                }
            );
            results.raw_fsync.push(r);
        }
    }
    if settings.selected("raw-seq") {
        println!("\nraw sequential write (1 MiB writes, then one fdatasync; timed together)");
        for pass in 1..=RAW_PASSES {
            eprintln!(
                "store-bench: raw-seq pass {pass}: writing {} MiB ...",
                settings.seq_bytes >> 20
            );
            let r = seq_write(dir, settings.seq_bytes).context("raw-seq")?;
            println!(
                "  {:<26} {:>9.1} MB/s   {} bytes in {:.3} s",
                format!("raw-seq pass {pass}"),
                mb_per_sec(r.bytes, r.elapsed_secs),
                r.bytes,
                r.elapsed_secs
            );
            results.raw_seq.push(r);
        }
    }
    Ok(())
}

fn raw_fsync(
    dir: &Path,
    kind: FileKind,
    batch_records: usize,
    duration: Duration,
) -> Result<RawFsync> {
    let path = dir.join(raw_fsync_name(kind, batch_records));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    // Same geometry as a default segment: data after a 4096-byte header, 1 GiB of capacity.
    let (first_position, end_position) = match kind {
        FileKind::Grow => (0, u64::MAX),
        FileKind::Prealloc => {
            let len = SEGMENT_HEADER_BYTES + StoreConfig::default().segment_bytes;
            fallocate(&file, len).with_context(|| format!("posix_fallocate {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("fsync {}", path.display()))?;
            (SEGMENT_HEADER_BYTES, len)
        }
    };
    let buf = pattern(batch_records * RECORD_BYTES);
    let mut position = first_position;
    let mut fsyncs = 0u64;
    let mut hit_file_end = false;
    let started = Instant::now();
    while started.elapsed() < duration {
        if position + buf.len() as u64 > end_position {
            hit_file_end = true;
            break;
        }
        file.write_all_at(&buf, position)
            .with_context(|| format!("pwrite {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync {}", path.display()))?;
        position += buf.len() as u64;
        fsyncs += 1;
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(RawFsync {
        kind,
        batch_records,
        records: fsyncs * batch_records as u64,
        fsyncs,
        elapsed_secs,
        hit_file_end,
    })
}

fn seq_write(dir: &Path, bytes: u64) -> Result<SeqWrite> {
    let path = dir.join("raw-seq");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let buf = pattern(SEQ_WRITE_BUFFER_BYTES);
    let writes = bytes.div_ceil(SEQ_WRITE_BUFFER_BYTES as u64);
    let mut progress = Progress::new("raw-seq", writes * SEQ_WRITE_BUFFER_BYTES as u64);
    let started = Instant::now();
    for i in 0..writes {
        file.write_all(&buf)
            .with_context(|| format!("write {}", path.display()))?;
        progress.update((i + 1) * SEQ_WRITE_BUFFER_BYTES as u64);
    }
    file.sync_data()
        .with_context(|| format!("fdatasync {}", path.display()))?;
    let elapsed_secs = started.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(SeqWrite {
        bytes: writes * SEQ_WRITE_BUFFER_BYTES as u64,
        elapsed_secs,
    })
}

fn fallocate(file: &File, len: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a descriptor this function borrows; no memory is passed.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
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

// ---------------------------------------------------------------------------------------------
// 2. The store

fn store_case_name(flush: FlushDiskType, appenders: usize) -> String {
    match flush {
        FlushDiskType::SyncFlush => format!("store-sync-a{appenders}"),
        FlushDiskType::AsyncFlush => format!("store-async-a{appenders}"),
    }
}

fn flush_name(flush: FlushDiskType) -> &'static str {
    match flush {
        FlushDiskType::SyncFlush => "SYNC_FLUSH",
        FlushDiskType::AsyncFlush => "ASYNC_FLUSH",
    }
}

/// What the appenders of one case saw, merged.
struct Tally {
    ok: u64,
    /// Statuses other than `Ok`, by name.
    not_ok: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            ok: 0,
            not_ok: BTreeMap::new(),
            errors: 0,
            first_error: None,
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
        })
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
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

    fn not_ok_total(&self) -> u64 {
        self.not_ok.values().sum()
    }
}

struct StoreCase {
    flush: FlushDiskType,
    appenders: usize,
    tally: Tally,
    elapsed_secs: f64,
}

impl StoreCase {
    fn msgs_per_sec(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed_secs
    }
    fn body_mb_per_sec(&self) -> f64 {
        mb_per_sec(self.tally.ok * RECORD_BYTES as u64, self.elapsed_secs)
    }
    fn latency_us(&self, quantile: f64) -> u64 {
        self.tally.latency_us.value_at_quantile(quantile)
    }
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .enable_all()
        .build()
        .context("build tokio runtime")
}

fn run_store(settings: &Settings, dir: &Path, results: &mut Results) -> Result<()> {
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
) -> Result<StoreCase> {
    let config = StoreConfig {
        store_path: store_dir.to_path_buf(),
        flush_disk_type: flush,
        ..StoreConfig::default()
    };
    let store = Arc::new(
        Store::open(config).with_context(|| format!("open store {}", store_dir.display()))?,
    );
    let body = Bytes::from(pattern(RECORD_BYTES));
    let (tally, elapsed) = rt.block_on(async {
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..appenders)
            .map(|i| {
                tokio::spawn(append_until(
                    store.clone(),
                    body.clone(),
                    i as u32 % QUEUE_COUNT,
                    deadline,
                ))
            })
            .collect();
        let mut tally = Tally::new()?;
        for task in tasks {
            tally.merge(task.await.context("appender task panicked")??)?;
        }
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

/// One appender: appends until the deadline, one message at a time, rotating over the queues.
/// Stops at the first error (a failed store answers every later append with the same error).
async fn append_until(
    store: Arc<Store>,
    body: Bytes,
    first_queue_id: u32,
    deadline: Instant,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut queue_id = first_queue_id;
    while Instant::now() < deadline {
        let message = NewMessage::new(TOPIC, queue_id, body.clone());
        queue_id = (queue_id + 1) % QUEUE_COUNT;
        let started = Instant::now();
        let result = store.append(message).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(appended) => {
                tally.latency_us.saturating_record(latency_us.max(1));
                if appended.status == PutStatus::Ok {
                    tally.ok += 1;
                } else {
                    *tally
                        .not_ok
                        .entry(format!("{:?}", appended.status))
                        .or_default() += 1;
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

// ---------------------------------------------------------------------------------------------
// 3. Recovery

/// The hidden `fill` subcommand: the child of the recovery phase. Fills a store with 1 KiB
/// messages until its write offset reaches `bytes`, says `READY <write_offset>` on stdout, then
/// sleeps with the store open until the parent kills it.
fn fill(dir: &Path, bytes: u64) -> Result<()> {
    let rt = runtime()?;
    let config = StoreConfig {
        store_path: dir.to_path_buf(),
        flush_disk_type: FlushDiskType::AsyncFlush,
        ..StoreConfig::default()
    };
    let store =
        Arc::new(Store::open(config).with_context(|| format!("open store {}", dir.display()))?);
    let body = Bytes::from(pattern(RECORD_BYTES));
    rt.block_on(async {
        let monitor = tokio::spawn({
            let store = store.clone();
            async move {
                let mut progress = Progress::new("recovery fill", bytes);
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    progress.update(store.write_offset());
                }
            }
        });
        let tasks: Vec<_> = (0..FILL_APPENDERS)
            .map(|i| {
                tokio::spawn(append_while_below(
                    store.clone(),
                    body.clone(),
                    i as u32 % QUEUE_COUNT,
                    bytes,
                ))
            })
            .collect();
        for task in tasks {
            task.await.context("fill task panicked")??;
        }
        monitor.abort();
        anyhow::Ok(())
    })?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY {}", store.write_offset()).context("write READY to the parent")?;
    stdout.flush().context("flush READY to the parent")?;
    drop(stdout);
    // Keep the store (and its threads) alive: the parent kills this process with SIGKILL.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn append_while_below(
    store: Arc<Store>,
    body: Bytes,
    first_queue_id: u32,
    bytes: u64,
) -> Result<()> {
    let mut queue_id = first_queue_id;
    while store.write_offset() < bytes {
        let appended = store
            .append(NewMessage::new(TOPIC, queue_id, body.clone()))
            .await?;
        ensure!(
            appended.status == PutStatus::Ok,
            "append returned {:?}",
            appended.status
        );
        queue_id = (queue_id + 1) % QUEUE_COUNT;
    }
    Ok(())
}

struct RecoveryFigures {
    /// The child's write offset at READY: the log recovery must find again.
    write_offset: u64,
    segment_files: usize,
    /// Every pass of the cold raw read, in order.
    raw_reads: Vec<ColdRead>,
    recovery_secs: f64,
    report: RecoveryReport,
}

fn run_recovery(dir: &Path, bytes: u64) -> Result<RecoveryFigures> {
    let store_dir = dir.join("recovery");
    println!("\nrecovery after kill -9 of a filled store (checkpoint deleted: worst case)");
    eprintln!(
        "store-bench: recovery: filling {} MiB in a child process ...",
        bytes >> 20
    );
    let write_offset = fill_and_kill(&store_dir, bytes)?;
    println!(
        "  log filled by child to write offset {write_offset} ({} MiB); child killed with SIGKILL",
        write_offset >> 20
    );

    let synced_files = sync_and_drop_tree(&store_dir)?;
    eprintln!(
        "store-bench: recovery: {synced_files} files fdatasynced and dropped from the page cache"
    );
    let segments = segment_files(&store_dir.join(COMMIT_LOG_DIR))?;
    let raw_reads = cold_reads(&segments, write_offset)?;
    let checkpoint = store_dir.join(CHECKPOINT_FILE_NAME);
    fs::remove_file(&checkpoint).with_context(|| format!("delete {}", checkpoint.display()))?;

    eprintln!("store-bench: recovery: Store::open ...");
    let config = StoreConfig {
        store_path: store_dir.clone(),
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let store = Store::open(config).context("recover the killed store")?;
    let recovery_secs = started.elapsed().as_secs_f64();
    let report = store.recovery_report().clone();
    store.shutdown().context("shut the recovered store down")?;
    drop(store);
    print_recovery(recovery_secs, &report, write_offset);
    remove_dir(&store_dir)?;
    Ok(RecoveryFigures {
        write_offset,
        segment_files: segments.len(),
        raw_reads,
        recovery_secs,
        report,
    })
}

fn print_recovery(recovery_secs: f64, report: &RecoveryReport, write_offset: u64) {
    println!(
        "  {:<34} {:.3} s ({:.1} MB/s of checked log)",
        "recovery (Store::open)",
        recovery_secs,
        mb_per_sec(report.bytes_checked, recovery_secs)
    );
    println!(
        "  recovery_report: records_checked={} bytes_checked={} torn_tail_offset={:?} checked_from_offset={} recovered_end_offset={} clean_shutdown={} duration={:.3} s",
        report.records_checked,
        report.bytes_checked,
        report.torn_tail_offset,
        report.checked_from_offset,
        report.recovered_end_offset,
        report.clean_shutdown,
        report.duration.as_secs_f64()
    );
    if report.recovered_end_offset != write_offset {
        println!(
            "  WRONG: recovered end {} differs from the killed child's write offset {write_offset} (a process kill keeps the page cache: nothing written may be lost)",
            report.recovered_end_offset
        );
    }
}

/// Kills the child with SIGKILL when dropped, so an error path does not leave it sleeping.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `fill` child, waits for READY, kills it with SIGKILL; returns its write offset.
fn fill_and_kill(store_dir: &Path, bytes: u64) -> Result<u64> {
    let exe = std::env::current_exe().context("find this binary to run the fill child")?;
    let child = Command::new(&exe)
        .arg("fill")
        .arg("--dir")
        .arg(store_dir)
        .arg("--bytes")
        .arg(bytes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {} fill", exe.display()))?;
    let mut child = ChildGuard(child);
    let stdout = child
        .0
        .stdout
        .take()
        .context("child stdout was requested piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    let timeout = FILL_TIMEOUT_BASE + Duration::from_secs(bytes / FILL_TIMEOUT_BYTES_PER_SEC);
    let line = rx
        .recv_timeout(timeout)
        .map_err(|_| {
            anyhow!(
                "fill child did not say READY within {} s",
                timeout.as_secs()
            )
        })?
        .context("read the fill child's stdout")?;
    let write_offset = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            anyhow!("fill child said {line:?}, not READY <write_offset> (did it fail? see stderr)")
        })?;
    child.0.kill().context("SIGKILL the fill child")?;
    let status = child.0.wait().context("reap the fill child")?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "fill child ended with {status}, not by SIGKILL"
    );
    Ok(write_offset)
}

/// fdatasyncs every file under `dir` and drops it from the page cache; returns how many.
fn sync_and_drop_tree(dir: &Path) -> Result<usize> {
    let mut files = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("stat {}", path.display()))?;
        if kind.is_dir() {
            files += sync_and_drop_tree(&path)?;
        } else if kind.is_file() {
            let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
            // Dirty pages cannot be dropped: write them first.
            file.sync_data()
                .with_context(|| format!("fdatasync {}", path.display()))?;
            drop_page_cache(&file).with_context(|| format!("posix_fadvise {}", path.display()))?;
            files += 1;
        }
    }
    Ok(files)
}

fn drop_page_cache(file: &File) -> std::io::Result<()> {
    // SAFETY: plain system call on a descriptor this function borrows; no memory is passed.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// The segment files of a commit-log directory with their base offsets, oldest first.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((base, entry.path()));
        }
    }
    segments.sort();
    ensure!(
        !segments.is_empty(),
        "no segment files in {}",
        dir.display()
    );
    Ok(segments)
}

/// Reads every segment file cold, `RAW_PASSES` times, dropping them from the page cache after
/// each pass, so the last pass leaves them cold for recovery too.
fn cold_reads(segments: &[(u64, PathBuf)], write_offset: u64) -> Result<Vec<ColdRead>> {
    let mut reads = Vec::new();
    for pass in 1..=RAW_PASSES {
        eprintln!("store-bench: recovery: cold raw read pass {pass} ...");
        let read = cold_read(segments, write_offset)?;
        for (_, path) in segments {
            let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
            drop_page_cache(&file).with_context(|| format!("posix_fadvise {}", path.display()))?;
        }
        println!(
            "  {:<34} {:.3} s ({:.1} MB/s); {} bytes in {} segment files; data part read by {:.3} s",
            format!("cold raw read, pass {pass}"),
            read.secs,
            mb_per_sec(read.bytes, read.secs),
            read.bytes,
            segments.len(),
            read.data_secs
        );
        reads.push(read);
    }
    Ok(reads)
}

struct ColdRead {
    bytes: u64,
    secs: f64,
    data_secs: f64,
}

/// Reads every segment file whole, in order, in 4 MiB reads.
fn cold_read(segments: &[(u64, PathBuf)], write_offset: u64) -> Result<ColdRead> {
    let mut buf = vec![0u8; COLD_READ_BUFFER_BYTES];
    let mut bytes = 0u64;
    let mut data_secs = None;
    let started = Instant::now();
    for (base_offset, path) in segments {
        let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut position = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            position += n as u64;
            bytes += n as u64;
            if data_secs.is_none()
                && base_offset + position.saturating_sub(SEGMENT_HEADER_BYTES) >= write_offset
            {
                data_secs = Some(started.elapsed().as_secs_f64());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(ColdRead {
        bytes,
        secs,
        data_secs: data_secs.unwrap_or(secs),
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Ratios and the JSON line

struct Ratio {
    name: &'static str,
    description: &'static str,
    value: Option<f64>,
    /// The acceptance target and whether it is a floor (`>=`) rather than a ceiling (`<=`);
    /// `None` for ratios printed for information only.
    target: Option<(f64, bool)>,
}

impl Ratio {
    fn pass(&self) -> Option<bool> {
        let (target, at_least) = self.target?;
        self.value
            .map(|v| if at_least { v >= target } else { v <= target })
    }
    fn target_text(&self) -> String {
        match self.target {
            Some((target, true)) => format!(">= {target}"),
            Some((target, false)) => format!("<= {target}"),
            None => "info only".to_owned(),
        }
    }
}

struct Ratios {
    /// The judged raw batch-64 baseline: the better of the two files.
    fsync_baseline: Option<(FileKind, f64)>,
    all: Vec<Ratio>,
    /// Reasons to distrust some figure of this run, in words.
    warnings: Vec<String>,
}

impl Ratios {
    fn compute(results: &Results) -> Ratios {
        let fsync_baseline = results
            .raw_fsync
            .iter()
            .filter(|r| r.batch_records == 64)
            .map(|r| (r.kind, r.records_per_sec()))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let store = |flush, appenders| {
            results
                .store
                .iter()
                .find(|c| c.flush == flush && c.appenders == appenders)
        };
        let sync = store(FlushDiskType::SyncFlush, 64).map(StoreCase::msgs_per_sec);
        let async_mb = store(FlushDiskType::AsyncFlush, 64).map(StoreCase::body_mb_per_sec);
        let seq_mb: Vec<f64> = results.raw_seq.iter().map(SeqWrite::mb_per_sec).collect();
        let seq_best_mb = seq_mb.iter().copied().reduce(f64::max);
        let recovery = results.recovery.as_ref();
        let recovery_over =
            |read_secs: Option<f64>| recovery.zip(read_secs).map(|(r, s)| r.recovery_secs / s);
        let read_best_secs =
            recovery.and_then(|r| r.raw_reads.iter().map(|c| c.secs).reduce(f64::min));
        let read_first_secs = recovery.and_then(|r| r.raw_reads.first().map(|c| c.secs));
        let all = vec![
            Ratio {
                name: "sync_flush_vs_raw_fsync",
                description: "store SYNC_FLUSH a64 msgs/s / best raw batch-64 fsync records/s",
                value: sync.zip(fsync_baseline).map(|(s, (_, b))| s / b),
                target: Some((0.5, true)),
            },
            Ratio {
                name: "async_flush_vs_raw_seq",
                description: "store ASYNC_FLUSH a64 MB/s / best raw sequential write MB/s",
                value: async_mb.zip(seq_best_mb).map(|(s, r)| s / r),
                target: Some((0.5, true)),
            },
            Ratio {
                name: "recovery_vs_raw_read",
                description: "recovery time / best cold raw read time",
                value: recovery_over(read_best_secs),
                target: Some((2.0, false)),
            },
            Ratio {
                name: "async_flush_vs_raw_seq_first_pass",
                description: "store ASYNC_FLUSH a64 MB/s / raw sequential write pass 1 MB/s",
                value: async_mb.zip(seq_mb.first().copied()).map(|(s, r)| s / r),
                target: None,
            },
            Ratio {
                name: "recovery_vs_raw_read_first_pass",
                description: "recovery time / cold raw read pass 1 time",
                value: recovery_over(read_first_secs),
                target: None,
            },
        ];
        Ratios {
            fsync_baseline,
            all,
            warnings: warnings(results),
        }
    }

    fn print(&self) {
        for warning in &self.warnings {
            println!("\nWARNING: {warning}");
        }
        println!("\nratios (PASS/FAIL against the acceptance targets; exit code 0 either way)");
        if let Some((kind, rate)) = self.fsync_baseline {
            println!("  raw batch-64 fsync baseline: {rate:.0} records/s ({} file, the better of the two)", kind.name());
        }
        for r in &self.all {
            let verdict = match (r.pass(), r.target, r.value) {
                (Some(true), _, _) => "PASS",
                (Some(false), _, _) => "FAIL",
                (None, Some(_), _) | (None, None, None) => "n/a (case not run)",
                (None, None, Some(_)) => "",
            };
            let value = r
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            let target = match r.target {
                Some(_) => format!("(target {})", r.target_text()),
                None => "(info only)".to_owned(),
            };
            println!("  {:<66} {value:>7}  {target:<16} {verdict}", r.description);
        }
    }
}

/// Passes of the same raw measurement further apart than this make its figures suspect.
const PASS_SPREAD_WARN: f64 = 1.5;

/// What in this run makes a figure suspect: unstable raw passes, failed appends, lost data.
fn warnings(results: &Results) -> Vec<String> {
    let mut warnings = Vec::new();
    let spread = |values: &[f64]| {
        let max = values.iter().copied().reduce(f64::max)?;
        let min = values.iter().copied().reduce(f64::min)?;
        (min > 0.0 && max / min > PASS_SPREAD_WARN).then_some(max / min)
    };
    let seq: Vec<f64> = results.raw_seq.iter().map(SeqWrite::mb_per_sec).collect();
    let reads: Vec<f64> = results
        .recovery
        .iter()
        .flat_map(|r| r.raw_reads.iter().map(|c| c.secs))
        .collect();
    let slow_memory = results
        .memory
        .as_ref()
        .is_some_and(MemoryProbe::first_touch_slow);
    for (what, values) in [("raw-seq", &seq), ("cold raw read", &reads)] {
        if let Some(factor) = spread(values) {
            warnings.push(format!(
                "{what} passes differ {factor:.1}x: page-cache-bound figures on this machine depend \
                 on memory state (first touch of memory {}), not only on the disk; the judged \
                 baseline is the best pass",
                if slow_memory { "measured slow" } else { "may be slow" }
            ));
        }
    }
    for case in &results.store {
        if case.tally.not_ok_total() > 0 || case.tally.errors > 0 {
            warnings.push(format!(
                "{}: {} appends not SEND_OK and {} failed",
                store_case_name(case.flush, case.appenders),
                case.tally.not_ok_total(),
                case.tally.errors
            ));
        }
    }
    if let Some(r) = &results.recovery {
        if r.report.recovered_end_offset != r.write_offset {
            warnings.push(format!(
                "recovery ended at {} but the killed child had written to {}",
                r.report.recovered_end_offset, r.write_offset
            ));
        }
    }
    warnings
}

/// Just enough JSON for one flat-ish object: the broker crate has no JSON dependency.
enum Json {
    Null,
    Bool(bool),
    Int(u64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
    fn opt(value: Option<f64>) -> Json {
        value.map_or(Json::Null, Json::Float)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(n) => write!(f, "{n}"),
            Json::Float(x) if x.is_finite() => write!(f, "{x:.4}"),
            Json::Float(_) => f.write_str("null"),
            Json::Str(s) => write_json_string(f, s),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Obj(fields) => {
                f.write_str("{")?;
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_json_string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_json_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

fn to_json(settings: &Settings, results: &Results, ratios: &Ratios) -> Json {
    let raw_fsync = results.raw_fsync.iter().map(|r| {
        Json::obj([
            ("case", Json::Str(raw_fsync_name(r.kind, r.batch_records))),
            ("file", Json::Str(r.kind.name().to_owned())),
            ("batch_records", Json::Int(r.batch_records as u64)),
            ("records", Json::Int(r.records)),
            ("fsyncs", Json::Int(r.fsyncs)),
            ("elapsed_secs", Json::Float(r.elapsed_secs)),
            ("records_per_sec", Json::Float(r.records_per_sec())),
            ("fsyncs_per_sec", Json::Float(r.fsyncs_per_sec())),
            ("hit_file_end", Json::Bool(r.hit_file_end)),
        ])
    });
    let raw_seq = results.raw_seq.iter().map(|s| {
        Json::obj([
            ("bytes", Json::Int(s.bytes)),
            ("elapsed_secs", Json::Float(s.elapsed_secs)),
            ("mb_per_sec", Json::Float(s.mb_per_sec())),
        ])
    });
    let memory = results.memory.as_ref().map_or(Json::Null, |m| {
        Json::obj([
            (
                "first_touch_mb_per_sec",
                Json::Float(m.first_touch_mb_per_sec),
            ),
            ("reuse_mb_per_sec", Json::Float(m.reuse_mb_per_sec)),
            ("first_touch_slow", Json::Bool(m.first_touch_slow())),
        ])
    });
    let store = results.store.iter().map(store_case_json);
    let recovery = results.recovery.as_ref().map_or(Json::Null, recovery_json);
    let ratio_list = ratios.all.iter().map(|r| {
        let fields = [
            ("value", Json::opt(r.value)),
            ("target", Json::Str(r.target_text())),
            ("pass", r.pass().map_or(Json::Null, Json::Bool)),
            ("description", Json::Str(r.description.to_owned())),
        ];
        (r.name.to_owned(), Json::obj(fields))
    });
    Json::obj([
        (
            "settings",
            Json::obj([
                ("seconds", Json::Float(settings.case_duration.as_secs_f64())),
                ("seq_bytes", Json::Int(settings.seq_bytes)),
                ("recovery_bytes", Json::Int(settings.recovery_bytes)),
                ("quick", Json::Bool(settings.quick)),
                ("dir", Json::Str(settings.base_dir.display().to_string())),
                ("record_bytes", Json::Int(RECORD_BYTES as u64)),
                ("mb_bytes", Json::Int(MB as u64)),
            ]),
        ),
        ("raw_fsync", Json::Arr(raw_fsync.collect())),
        (
            "raw_fsync_b64_baseline_records_per_sec",
            Json::opt(ratios.fsync_baseline.map(|b| b.1)),
        ),
        (
            "raw_fsync_b64_baseline_file",
            ratios
                .fsync_baseline
                .map_or(Json::Null, |b| Json::Str(b.0.name().to_owned())),
        ),
        ("memory", memory),
        ("raw_seq_write_passes", Json::Arr(raw_seq.collect())),
        (
            "raw_seq_write_best_mb_per_sec",
            Json::opt(
                results
                    .raw_seq
                    .iter()
                    .map(SeqWrite::mb_per_sec)
                    .reduce(f64::max),
            ),
        ),
        ("store", Json::Arr(store.collect())),
        ("recovery", recovery),
        ("ratios", Json::Obj(ratio_list.collect())),
        (
            "warnings",
            Json::Arr(ratios.warnings.iter().cloned().map(Json::Str).collect()),
        ),
    ])
}

fn store_case_json(c: &StoreCase) -> Json {
    let not_ok = c
        .tally
        .not_ok
        .iter()
        .map(|(k, v)| (k.clone(), Json::Int(*v)))
        .collect();
    Json::obj([
        ("case", Json::Str(store_case_name(c.flush, c.appenders))),
        ("flush_disk_type", Json::Str(flush_name(c.flush).to_owned())),
        ("appenders", Json::Int(c.appenders as u64)),
        ("ok", Json::Int(c.tally.ok)),
        ("elapsed_secs", Json::Float(c.elapsed_secs)),
        ("msgs_per_sec", Json::Float(c.msgs_per_sec())),
        ("body_mb_per_sec", Json::Float(c.body_mb_per_sec())),
        ("latency_p50_us", Json::Int(c.latency_us(0.5))),
        ("latency_p99_us", Json::Int(c.latency_us(0.99))),
        ("latency_max_us", Json::Int(c.tally.latency_us.max())),
        ("not_ok_total", Json::Int(c.tally.not_ok_total())),
        ("not_ok", Json::Obj(not_ok)),
        ("errors", Json::Int(c.tally.errors)),
        (
            "first_error",
            c.tally.first_error.clone().map_or(Json::Null, Json::Str),
        ),
    ])
}

fn cold_read_json(c: &ColdRead) -> Json {
    Json::obj([
        ("bytes", Json::Int(c.bytes)),
        ("secs", Json::Float(c.secs)),
        ("mb_per_sec", Json::Float(mb_per_sec(c.bytes, c.secs))),
        ("data_secs", Json::Float(c.data_secs)),
    ])
}

fn recovery_json(r: &RecoveryFigures) -> Json {
    Json::obj([
        ("write_offset", Json::Int(r.write_offset)),
        ("segment_files", Json::Int(r.segment_files as u64)),
        (
            "raw_read_passes",
            Json::Arr(r.raw_reads.iter().map(cold_read_json).collect()),
        ),
        (
            "raw_read_best_secs",
            Json::opt(r.raw_reads.iter().map(|c| c.secs).reduce(f64::min)),
        ),
        ("recovery_secs", Json::Float(r.recovery_secs)),
        ("records_checked", Json::Int(r.report.records_checked)),
        ("bytes_checked", Json::Int(r.report.bytes_checked)),
        (
            "torn_tail_offset",
            r.report.torn_tail_offset.map_or(Json::Null, Json::Int),
        ),
        (
            "checked_from_offset",
            Json::Int(r.report.checked_from_offset),
        ),
        (
            "recovered_end_offset",
            Json::Int(r.report.recovered_end_offset),
        ),
        (
            "recovered_end_matches_write_offset",
            Json::Bool(r.report.recovered_end_offset == r.write_offset),
        ),
        ("clean_shutdown", Json::Bool(r.report.clean_shutdown)),
        (
            "report_duration_secs",
            Json::Float(r.report.duration.as_secs_f64()),
        ),
    ])
}
