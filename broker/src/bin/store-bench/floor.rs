//! Diagnostic floor cases (`floor-echo-a64`, `floor-write-a64`): how fast the *shape* of a store
//! append can go on this machine, with the store itself taken out. Run only when named in
//! `--cases`; no acceptance ratio depends on them.
//!
//! Both use the store cases' appender loop unchanged (64 tasks on the same 2-worker runtime, a
//! `NewMessage` per call, latency per call) and the store's own hand-off shape: the appender
//! encodes the record (`record::encode_message`, as `Store::append` does) and sends it with a
//! oneshot reply over a bounded tokio channel to one OS thread, which gathers every request
//! waiting (as the writer does) and answers each.
//! - `floor-echo-a64`: the thread answers at once. What is left is the appenders, the encoding,
//!   the channel and the wake-ups: the ceiling of any store behind this API on this machine.
//! - `floor-write-a64`: the thread also copies each group into one buffer and `pwrite`s it to a
//!   preallocated file; a second thread fdatasyncs every 500 ms and then hands the pages more
//!   than 256 MiB behind back to the kernel (the store's default flush interval, and
//!   `page_cache`). No CRC, queue offsets or consume queues: the least any `ASYNC_FLUSH` store of
//!   this shape does.
//!
//! Two more take the writer thread out, to see whether another shape would have a higher floor
//! (same file, same syncing thread, no channel and no oneshot):
//! - `floor-inline-a64`: each appender takes a lock over the file's tail and `pwrite`s its own
//!   record under it (RocketMQ's shape: the sending thread copies into the page cache).
//! - `floor-combine-a64`: each appender adds its record to a shared pending buffer; the first to
//!   find no leader becomes the leader and writes whatever is pending, group after group, in its
//!   own task, until nothing is; the others wait for the written offset to cover their record
//!   (the leader/follower group commit of RocksDB's write path).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker::store::record::{encode_message, RecordLimits};
use broker::store::{NewMessage, PutStatus};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::runtime;
use crate::store_cases::{run_appenders, AppendTarget, Tally};

/// The diagnostic cases, in the order they run.
pub(crate) const FLOOR_CASES: [&str; 4] = [
    "floor-echo-a64",
    "floor-write-a64",
    "floor-inline-a64",
    "floor-combine-a64",
];
const APPENDERS: usize = 64;
/// Same capacity as the store's default `write_queue_capacity`.
const CHANNEL_CAPACITY: usize = 4096;
/// Size of the file `floor-write` writes through, preallocated before the timed window: more
/// than a 5 s case writes, so that every write goes to never-written blocks, as the store's do
/// (a rewritten block must be read back before a partial page is written). A longer case wraps
/// around and measures that too.
const FILE_BYTES: u64 = 8 << 30;
/// `floor-write` fdatasyncs this often (the store's default `flush_interval_ms`)...
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// ... and then releases the pages more than this far behind.
const KEEP_BYTES: u64 = 256 << 20;
const LIMITS: RecordLimits = RecordLimits {
    max_message_bytes: 4 << 20,
    max_properties_bytes: 32 << 10,
};

pub(crate) struct FloorCase {
    pub(crate) name: &'static str,
    pub(crate) tally: Tally,
    pub(crate) elapsed_secs: f64,
}

struct Request {
    record: Vec<u8>,
    reply: oneshot::Sender<u64>,
}

/// The appenders' side: encode, send, wait for the answer.
struct Floor {
    tx: mpsc::Sender<Request>,
}

impl AppendTarget for Floor {
    async fn append_one(&self, message: NewMessage) -> Result<PutStatus> {
        let mut record = Vec::new();
        encode_message(&message, LIMITS, &mut record)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { record, reply })
            .await
            .context("floor thread stopped")?;
        answer.await.context("floor thread stopped")?;
        Ok(PutStatus::Ok)
    }
}

/// Runs the named floor cases; prints one line each.
pub(crate) fn run_floor(
    names: &[&'static str],
    dir: &Path,
    duration: Duration,
    seq_best_mb: Option<f64>,
) -> Result<Vec<FloorCase>> {
    let rt = runtime()?;
    println!("\nfloor (diagnostic): the store's append shape without the store; 64 appenders, 1 KiB bodies");
    println!(
        "  {:<20} {:>10} {:>8} {:>8} {:>8} {:>22}",
        "case", "msgs/s", "MB/s", "p50 us", "p99 us", "MB/s / best raw seq"
    );
    let mut cases = Vec::new();
    for &name in names {
        eprintln!("store-bench: {name} ...");
        let (tally, elapsed) = match name {
            "floor-inline-a64" | "floor-combine-a64" => {
                run_direct(&rt, &dir.join(name), name == "floor-combine-a64", duration)?
            }
            _ => run_threaded(&rt, dir, name, duration)?,
        };
        let _ = std::fs::remove_file(dir.join(name));
        let case = FloorCase {
            name,
            tally,
            elapsed_secs: elapsed.as_secs_f64(),
        };
        let body_mb_per_sec = case.tally.body_mb_per_sec(case.elapsed_secs);
        let ratio = seq_best_mb.map_or_else(
            || "- (raw-seq not run)".to_owned(),
            |seq| format!("{:.3}", body_mb_per_sec / seq),
        );
        println!(
            "  {:<20} {:>10.0} {:>8.2} {:>8} {:>8} {ratio:>22}",
            case.name,
            case.tally.msgs_per_sec(case.elapsed_secs),
            body_mb_per_sec,
            case.tally.latency_us.value_at_quantile(0.5),
            case.tally.latency_us.value_at_quantile(0.99),
        );
        cases.push(case);
    }
    Ok(cases)
}

/// `floor-echo-a64` and `floor-write-a64`: the appenders hand their records to one thread.
fn run_threaded(
    rt: &Runtime,
    dir: &Path,
    name: &str,
    duration: Duration,
) -> Result<(Tally, Duration)> {
    let file = match name {
        "floor-write-a64" => Some(open_file(&dir.join(name))?),
        _ => None,
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || serve(rx, file))
        .context("spawn the floor thread")?;
    let floor = Arc::new(Floor { tx });
    let measured = rt.block_on(async {
        let started = Instant::now();
        let tally = run_appenders(&floor, APPENDERS, started + duration, 1).await?;
        anyhow::Ok((tally, started.elapsed()))
    })?;
    drop(floor);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("floor thread panicked"))??;
    Ok(measured)
}

/// The appenders' side of `floor-inline-a64` and `floor-combine-a64`: they write themselves.
struct Direct {
    file: Arc<File>,
    combine: bool,
    tail: Mutex<Tail>,
    /// Bytes written so far (not wrapped), for the syncing thread.
    written: Arc<AtomicU64>,
    /// The same, for the followers of `floor-combine-a64` to wait on.
    written_tx: watch::Sender<u64>,
}

#[derive(Default)]
struct Tail {
    /// Bytes written, or (combining) handed to a leader, so far.
    position: u64,
    /// Combining: records added since the leader took the last group, and where they end.
    pending: Vec<u8>,
    spare: Vec<u8>,
    enqueued: u64,
    leading: bool,
}

impl Direct {
    /// Writes `buf` at the logical offset `at` (the file is a ring of `FILE_BYTES`).
    fn write_at(&self, buf: &[u8], at: u64) -> Result<()> {
        let position = at % FILE_BYTES;
        let first = buf.len().min((FILE_BYTES - position) as usize);
        self.file
            .write_all_at(&buf[..first], position)
            .context("pwrite")?;
        self.file.write_all_at(&buf[first..], 0).context("pwrite")?;
        Ok(())
    }

    /// Combining: the leader writes pending groups until none is left.
    fn lead(&self) -> Result<()> {
        loop {
            let (group, at) = {
                let mut tail = self.tail.lock().expect("tail lock poisoned");
                if tail.pending.is_empty() {
                    tail.leading = false;
                    return Ok(());
                }
                let spare = std::mem::take(&mut tail.spare);
                let group = std::mem::replace(&mut tail.pending, spare);
                (group, tail.position)
            };
            self.write_at(&group, at)?;
            let end = at + group.len() as u64;
            {
                let mut tail = self.tail.lock().expect("tail lock poisoned");
                tail.position = end;
                let mut group = group;
                group.clear();
                tail.spare = group;
            }
            self.written.store(end, Ordering::Release);
            self.written_tx.send_replace(end);
        }
    }
}

impl AppendTarget for Direct {
    async fn append_one(&self, message: NewMessage) -> Result<PutStatus> {
        let mut record = Vec::new();
        encode_message(&message, LIMITS, &mut record)?;
        if !self.combine {
            let mut tail = self.tail.lock().expect("tail lock poisoned");
            self.write_at(&record, tail.position)?;
            tail.position += record.len() as u64;
            self.written.store(tail.position, Ordering::Release);
            return Ok(PutStatus::Ok);
        }
        let (end, lead) = {
            let mut tail = self.tail.lock().expect("tail lock poisoned");
            tail.pending.extend_from_slice(&record);
            tail.enqueued += record.len() as u64;
            let lead = !tail.leading;
            tail.leading = true;
            (tail.enqueued, lead)
        };
        if lead {
            self.lead()?;
        }
        let mut written = self.written_tx.subscribe();
        written
            .wait_for(|written| *written >= end)
            .await
            .context("floor stopped")?;
        Ok(PutStatus::Ok)
    }
}

/// `floor-inline-a64` and `floor-combine-a64`: no writer thread; the syncing thread as in
/// `floor-write-a64`.
fn run_direct(
    rt: &Runtime,
    path: &Path,
    combine: bool,
    duration: Duration,
) -> Result<(Tally, Duration)> {
    let file = Arc::new(open_file(path)?);
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (file, written, stop) = (file.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || sync_behind(&file, &written, &stop))
    };
    let direct = Arc::new(Direct {
        file,
        combine,
        tail: Mutex::new(Tail::default()),
        written,
        written_tx: watch::Sender::new(0),
    });
    let measured = rt.block_on(async {
        let started = Instant::now();
        let tally = run_appenders(&direct, APPENDERS, started + duration, 1).await?;
        anyhow::Ok((tally, started.elapsed()))
    });
    stop.store(true, Ordering::Release);
    syncer
        .join()
        .map_err(|_| anyhow::anyhow!("floor sync thread panicked"))??;
    measured
}

fn open_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    // SAFETY: plain system call on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES as libc::off_t) };
    anyhow::ensure!(rc == 0, "posix_fallocate {}: errno {rc}", path.display());
    Ok(file)
}

/// The floor thread: gathers waiting requests like the store's writer, writes them (with a file)
/// and answers each.
fn serve(mut rx: mpsc::Receiver<Request>, file: Option<File>) -> Result<()> {
    let file = file.map(Arc::new);
    // Bytes written so far (not wrapped), for the syncing thread.
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let syncer = file.clone().map(|file| {
        let (written, stop) = (written.clone(), stop.clone());
        std::thread::spawn(move || sync_behind(&file, &written, &stop))
    });
    let mut group: Vec<Request> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 20);
    let mut total = 0u64;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        if let Some(file) = &file {
            buf.clear();
            for request in &group {
                buf.extend_from_slice(&request.record);
            }
            let mut position = total % FILE_BYTES;
            if position + buf.len() as u64 > FILE_BYTES {
                total += FILE_BYTES - position; // wrap: start the file over
                position = 0;
            }
            file.write_all_at(&buf, position).context("pwrite")?;
            total += buf.len() as u64;
            written.store(total, Ordering::Release);
        }
        for request in group.drain(..) {
            let _ = request.reply.send(total);
        }
    }
    stop.store(true, Ordering::Release);
    if let Some(syncer) = syncer {
        syncer
            .join()
            .map_err(|_| anyhow::anyhow!("floor sync thread panicked"))??;
    }
    Ok(())
}

/// The floor's flusher: every 500 ms, fdatasync, then release every page more than 256 MiB
/// behind what the fdatasync covered.
fn sync_behind(file: &File, written: &AtomicU64, stop: &AtomicBool) -> Result<()> {
    let mut released = 0u64;
    let mut next_sync = Instant::now() + SYNC_INTERVAL;
    while !stop.load(Ordering::Acquire) {
        if Instant::now() < next_sync {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        next_sync += SYNC_INTERVAL;
        let synced = written.load(Ordering::Acquire);
        file.sync_data().context("fdatasync")?;
        // Positions are totals; the file wraps, so release whole files' worth at most.
        let end = synced.saturating_sub(KEEP_BYTES);
        if end > released {
            let len = (end - released).min(FILE_BYTES);
            release(file, (end - len) % FILE_BYTES, len);
            release(
                file,
                0,
                ((end - len) % FILE_BYTES + len).saturating_sub(FILE_BYTES),
            );
            released = end;
        }
    }
    Ok(())
}

/// Hands `[from, from + len)`'s cached pages back to the kernel (flushed: they are clean).
fn release(file: &File, from: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: plain system call on a file descriptor we own; no memory is passed.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}
