//! The raw baselines: what this machine and this disk do without the store, measured in the same
//! run so the store's figures can be quoted as ratios against them.
//!
//! Owns the memory probe (first touch against reuse of just-freed memory), the raw
//! `pwrite` + `fdatasync` batches to a growing and to a preallocated file (`raw-fsync-*`), the
//! raw sequential write (`raw-seq`), and `posix_fallocate`. It does not judge: the ratios and
//! warnings built on these figures live in `report`.
//!
//! Every file it writes is created fresh (`create_new`) in the work directory and removed when
//! its case ends, so no case sees another's page cache or extents.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker::store::segment::SEGMENT_HEADER_BYTES;
use broker::store::StoreConfig;

use crate::{mb_per_sec, pattern, Progress, Results, Settings, RAW_PASSES, RECORD_BYTES};

/// Records per `pwrite` + `fdatasync` in the raw fsync baselines.
pub(crate) const BATCH_RECORDS: [usize; 3] = [1, 16, 64];
const SEQ_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Anonymous memory the first-touch probe writes, twice.
const MEMORY_PROBE_BYTES: usize = 512 << 20;
/// First-touch memory slower than this fraction of reused memory gets a warning.
const MEMORY_FIRST_TOUCH_WARN_FRACTION: f64 = 0.5;

/// How fast the machine hands out memory it has not used lately, against memory just freed.
/// On a virtual machine whose balloon driver reports free pages to the host, memory idle for a
/// couple of seconds goes back to the host and costs a host page fault per page on next use;
/// every page-cache-bound figure (sequential write, `ASYNC_FLUSH`, cold reads) then measures
/// that, not the disk. The probe makes that visible instead of silently skewing the ratios.
pub(crate) struct MemoryProbe {
    pub(crate) first_touch_mb_per_sec: f64,
    pub(crate) reuse_mb_per_sec: f64,
}

impl MemoryProbe {
    pub(crate) fn first_touch_slow(&self) -> bool {
        self.first_touch_mb_per_sec < MEMORY_FIRST_TOUCH_WARN_FRACTION * self.reuse_mb_per_sec
    }
}

pub(crate) fn probe_memory() -> Result<MemoryProbe> {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A fresh file extended by every write.
    Grow,
    /// A file preallocated with `posix_fallocate` to a segment's size, written from 4096 on.
    Prealloc,
}

impl FileKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileKind::Grow => "grow",
            FileKind::Prealloc => "prealloc",
        }
    }
}

pub(crate) fn raw_fsync_name(kind: FileKind, batch_records: usize) -> String {
    format!("raw-fsync-{}-b{batch_records}", kind.name())
}

pub(crate) struct RawFsync {
    pub(crate) kind: FileKind,
    pub(crate) batch_records: usize,
    pub(crate) records: u64,
    pub(crate) fsyncs: u64,
    pub(crate) elapsed_secs: f64,
    /// The preallocated file filled up before the time was over.
    pub(crate) hit_file_end: bool,
}

impl RawFsync {
    pub(crate) fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed_secs
    }
    pub(crate) fn fsyncs_per_sec(&self) -> f64 {
        self.fsyncs as f64 / self.elapsed_secs
    }
}

pub(crate) struct SeqWrite {
    pub(crate) bytes: u64,
    pub(crate) elapsed_secs: f64,
}

impl SeqWrite {
    pub(crate) fn mb_per_sec(&self) -> f64 {
        mb_per_sec(self.bytes, self.elapsed_secs)
    }
}

pub(crate) fn run_raw(settings: &Settings, dir: &Path, results: &mut Results) -> Result<()> {
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
