//! The recovery phase: how long `Store::open` takes to recover a store killed with SIGKILL,
//! against a cold raw read of the same segment files.
//!
//! Owns the hidden `fill` child (this binary, run again), killing it, making its files cold, the
//! cold raw reads and the timed open. It does not compute the ratio: that is `report`'s job.
//!
//! Steps, in order:
//! 1. A child process fills a store to the requested bytes under `ASYNC_FLUSH`, says
//!    `READY <write_offset>` and is killed with SIGKILL: the state a broker crash leaves (page
//!    cache intact, abort marker present). A guard kills the child on every error path too.
//! 2. Every file of the store is fdatasynced (dirty pages cannot be dropped) and dropped from the
//!    page cache with `posix_fadvise(DONTNEED)`.
//! 3. Every segment file is read whole in 4 MiB reads, `RAW_PASSES` times, dropping the cache
//!    after each pass, so the last pass leaves the files cold for recovery too.
//! 4. The checkpoint is deleted (the worst case: every record CRC-checked and every consume-queue
//!    entry rebuilt from offset 0), and `Store::open` is timed. The recovered end must equal the
//!    child's write offset: a process kill keeps the page cache, so nothing written may be lost.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use broker::store::checkpoint::CHECKPOINT_FILE_NAME;
use broker::store::recovery::COMMIT_LOG_DIR;
use broker::store::segment::{parse_segment_file_name, SEGMENT_HEADER_BYTES};
use broker::store::{FlushDiskType, NewMessage, PutStatus, RecoveryReport, Store, StoreConfig};
use bytes::Bytes;

use crate::{
    mb_per_sec, pattern, remove_dir, runtime, Progress, QUEUE_COUNT, RAW_PASSES, RECORD_BYTES,
    TOPIC,
};

/// Appenders of the `fill` child: the most concurrent case, so the log fills fast.
const FILL_APPENDERS: usize = 64;
const COLD_READ_BUFFER_BYTES: usize = 4 << 20;
/// The fill child must report READY within this plus one second per 5 MB to fill; a store that
/// is slower than that has hung.
const FILL_TIMEOUT_BASE: Duration = Duration::from_secs(120);
const FILL_TIMEOUT_BYTES_PER_SEC: u64 = 5_000_000;

/// The hidden `fill` subcommand: the child of the recovery phase. Fills a store with 1 KiB
/// messages until its write offset reaches `bytes`, says `READY <write_offset>` on stdout, then
/// sleeps with the store open until the parent kills it.
pub(crate) fn fill(dir: &Path, bytes: u64) -> Result<()> {
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

pub(crate) struct RecoveryFigures {
    /// The child's write offset at READY: the log recovery must find again.
    pub(crate) write_offset: u64,
    pub(crate) segment_files: usize,
    /// Every pass of the cold raw read, in order.
    pub(crate) raw_reads: Vec<ColdRead>,
    pub(crate) recovery_secs: f64,
    pub(crate) report: RecoveryReport,
}

pub(crate) fn run_recovery(dir: &Path, bytes: u64) -> Result<RecoveryFigures> {
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

pub(crate) struct ColdRead {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) data_secs: f64,
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
