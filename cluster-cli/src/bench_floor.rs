//! `cluster-cli bench floor`: the least one `SYNC_MASTER` + `SYNC_FLUSH` acknowledgement can
//! take on this machine, and the least CPU it can cost, with no broker in the way.
//!
//! Three threads in this process stand for the producer, a master and its slave, joined by
//! loopback TCP (`TCP_NODELAY`) and blocking system calls, nothing else: no runtime, no RPC
//! framing, no encoding, no index. Per message, the producer sends a record of `--size` bytes
//! and waits for the answer; the master writes it to its file, passes it to the slave, fdatasyncs
//! its own file (the two fsyncs overlap as far as the disk lets them), waits for the slave's
//! acknowledgement and answers; the slave writes it to its file, fdatasyncs and acknowledges.
//! The files are preallocated (`posix_fallocate`) in `--dir`, the commit log's shape.
//!
//! That is the path of a replicated, synchronously flushed message reduced to what it cannot do
//! without: four loopback sends, two writes, two fdatasyncs and the wake-ups between them. The
//! idle-path benchmark (`scripts/bench-idle.sh`) runs it beside the cluster in the same run, so
//! the cluster's latency and CPU per message read as multiples of this floor rather than of one
//! bare fdatasync (which a master and slave sharing one disk cannot reach: the disk runs their
//! two flushes one after the other).
//!
//! With `--no-fsync` the fdatasyncs are skipped: what is left is two loopback round trips and
//! the wake-ups between the threads.
//!
//! Output: p50, p99 and max latency, messages per second, and the CPU the master and slave
//! threads used per message (utime + stime from `/proc/thread-self/stat`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

/// The acknowledgement each hop sends back: the record's end offset.
const ACK_BYTES: usize = 8;
/// Largest `--size`: a record of the largest message a broker takes (4 MiB) and its header.
const SIZE_MAX: usize = 5 << 20;

#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Messages, one at a time.
    #[arg(long, default_value_t = 5_000)]
    count: u64,
    /// Bytes per record (1,137: a 1 KiB message as the commit log stores it).
    #[arg(long, default_value_t = 1_137)]
    size: usize,
    /// Directory for the master's and slave's files (removed afterwards); the file system under
    /// test. Default: the system's temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip both fdatasyncs: the two loopback round trips and the wake-ups alone.
    #[arg(long)]
    no_fsync: bool,
}

/// What one side (master or slave) measured.
struct SideReport {
    cpu_ticks: u64,
}

pub fn run(json: bool, args: FloorArgs) -> Result<ExitCode> {
    if args.count == 0 || args.size == 0 {
        bail!("--count and --size must be at least 1");
    }
    if args.size > SIZE_MAX {
        bail!("--size must be at most {SIZE_MAX} bytes (a record of the largest message)");
    }
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let file_bytes = args
        .count
        .checked_add(1)
        .and_then(|n| n.checked_mul(args.size as u64))
        .context("--count times --size is too large")?;
    let master_path = dir.join(format!("bench-floor-master-{}", std::process::id()));
    let slave_path = dir.join(format!("bench-floor-slave-{}", std::process::id()));
    let outcome = measure(&args, file_bytes, &master_path, &slave_path);
    let _ = std::fs::remove_file(&master_path);
    let _ = std::fs::remove_file(&slave_path);
    let (latencies, elapsed, master, slave) = outcome?;

    let per_message_us = |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() / args.count as f64;
    let msgs_per_s = args.count as f64 / elapsed.as_secs_f64();
    let p50 = latencies.value_at_quantile(0.50);
    let p99 = latencies.value_at_quantile(0.99);
    let max = latencies.max();
    let cpu = per_message_us(master.cpu_ticks + slave.cpu_ticks);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "count": args.count,
                "size": args.size,
                "fsync": !args.no_fsync,
                "p50_us": p50,
                "p99_us": p99,
                "max_us": max,
                "msgs_per_s": msgs_per_s.round(),
                "cpu_us_per_msg": (cpu * 10.0).round() / 10.0,
                "master_cpu_us_per_msg": (per_message_us(master.cpu_ticks) * 10.0).round() / 10.0,
                "slave_cpu_us_per_msg": (per_message_us(slave.cpu_ticks) * 10.0).round() / 10.0,
            })
        );
    } else {
        println!(
            "floor{}: {} records of {} B, one at a time, master and slave on {}: {msgs_per_s:.0} msgs/s; \
             latency p50 {p50} us, p99 {p99} us, max {max} us; master + slave CPU {cpu:.1} us per message",
            if args.no_fsync { " without fsync" } else { "" },
            args.count,
            args.size,
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

type Measured = (Histogram<u64>, std::time::Duration, SideReport, SideReport);

fn measure(
    args: &FloorArgs,
    file_bytes: u64,
    master_path: &Path,
    slave_path: &Path,
) -> Result<Measured> {
    let master_file = preallocated(master_path, file_bytes)?;
    let slave_file = preallocated(slave_path, file_bytes)?;
    let slave_listener = TcpListener::bind("127.0.0.1:0").context("listen for the slave")?;
    let master_listener = TcpListener::bind("127.0.0.1:0").context("listen for the master")?;
    let slave_addr = slave_listener.local_addr()?;
    let master_addr = master_listener.local_addr()?;
    let (count, size, fsync) = (args.count, args.size, !args.no_fsync);

    let slave = std::thread::Builder::new()
        .name("floor-slave".into())
        .spawn(move || -> Result<SideReport> {
            let (mut from_master, _) = slave_listener.accept().context("slave: accept")?;
            from_master.set_nodelay(true)?;
            let mut record = vec![0u8; size];
            let start = thread_cpu_ticks()?;
            for i in 0..count {
                from_master
                    .read_exact(&mut record)
                    .context("slave: read record")?;
                let offset = i * size as u64;
                keep(&slave_file, &record, offset, fsync).context("slave")?;
                from_master
                    .write_all(&(offset + size as u64).to_le_bytes())
                    .context("slave: acknowledge")?;
            }
            Ok(SideReport {
                cpu_ticks: thread_cpu_ticks()? - start,
            })
        })?;
    let master = std::thread::Builder::new()
        .name("floor-master".into())
        .spawn(move || -> Result<SideReport> {
            let mut to_slave = TcpStream::connect(slave_addr).context("master: connect")?;
            to_slave.set_nodelay(true)?;
            let (mut from_producer, _) = master_listener.accept().context("master: accept")?;
            from_producer.set_nodelay(true)?;
            let mut record = vec![0u8; size];
            let mut ack = [0u8; ACK_BYTES];
            let start = thread_cpu_ticks()?;
            for i in 0..count {
                from_producer
                    .read_exact(&mut record)
                    .context("master: read record")?;
                let offset = i * size as u64;
                // Passed on before its own fdatasync, so that the two overlap.
                master_file
                    .write_at(&record, offset)
                    .context("master: write")?;
                to_slave.write_all(&record).context("master: ship")?;
                if fsync {
                    master_file.sync_data().context("master: fdatasync")?;
                }
                to_slave
                    .read_exact(&mut ack)
                    .context("master: read acknowledgement")?;
                from_producer.write_all(&ack).context("master: answer")?;
            }
            Ok(SideReport {
                cpu_ticks: thread_cpu_ticks()? - start,
            })
        })?;

    let mut producer = TcpStream::connect(master_addr).context("producer: connect")?;
    producer.set_nodelay(true)?;
    let record = vec![b'r'; size];
    let mut ack = [0u8; ACK_BYTES];
    let mut latencies = Histogram::<u64>::new(3).context("histogram")?;
    let started = Instant::now();
    for _ in 0..count {
        let sent = Instant::now();
        producer.write_all(&record).context("producer: send")?;
        producer
            .read_exact(&mut ack)
            .context("producer: read answer")?;
        latencies.saturating_record(sent.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    let master = join(master, "master")?;
    let slave = join(slave, "slave")?;
    Ok((latencies, elapsed, master, slave))
}

fn join(handle: std::thread::JoinHandle<Result<SideReport>>, side: &str) -> Result<SideReport> {
    match handle.join() {
        Ok(report) => report,
        Err(_) => bail!("the {side} thread panicked"),
    }
}

/// Writes `record` at `offset` and, with `fsync`, makes it durable: a slave's whole step.
fn keep(file: &File, record: &[u8], offset: u64, fsync: bool) -> Result<()> {
    file.write_at(record, offset).context("write")?;
    if fsync {
        file.sync_data().context("fdatasync")?;
    }
    Ok(())
}

/// A new file of `bytes`, its blocks reserved, as the commit log's segments are.
fn preallocated(path: &Path, bytes: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let len = libc::off_t::try_from(bytes).context("file too large")?;
    // SAFETY: a plain system call on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("preallocate {}", path.display()));
    }
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(file)
}

/// utime + stime of the calling thread, in clock ticks.
fn thread_cpu_ticks() -> Result<u64> {
    let stat =
        std::fs::read_to_string("/proc/thread-self/stat").context("read /proc/thread-self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/thread-self/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("unexpected /proc/thread-self/stat")?
            .parse::<u64>()
            .context("unexpected /proc/thread-self/stat")
    };
    Ok(field(14)? + field(15)?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
