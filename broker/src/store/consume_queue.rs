//! Consume queues: per (topic, queue id), an index of the topic's messages in that queue, as files
//! of fixed 20-byte entries. Entry `n` of a queue is the message with queue offset `n`.
//!
//! ```text
//! file   consumequeue/<topic>/<queue id>/<first queue offset, 20 digits>
//! 0      32-byte header: magic "RMCQ", version u16, entry size u16 (20), first queue offset u64,
//!        entries per file u32, crc32c u32 over the 24 bytes before it, zeros
//! 32     entries: commit_log_offset u64, size_bytes u32, tag_hash u64 (little-endian)
//! ```
//! An all-zero entry (size 0) was never written; no record is smaller than its 64-byte header.
//!
//! A queue whose first entry in this store has a queue offset above 0 (a store seeded from a
//! master's log that retention had already trimmed, [`ConsumeQueues::set_log_begins_late`]) fills
//! the slots of its first file before that entry with [`CqEntry::BEFORE_LOG`], an entry that points
//! at commit-log offset 0, below the log's first offset: the same state as a queue whose oldest
//! entries retention made point at deleted segments, which every reader already skips
//! (`min_queue_offset` is found by commit-log offset at open).
//!
//! Consume queues are derived data: the dispatcher writes them from the commit log and recovery
//! cuts or rebuilds them from it, so they are fsynced in bulk at each checkpoint rather than per
//! entry. Entries are appended in queue-offset order by one thread (the dispatcher) and published
//! through `max_queue_offset` (a `Release` store); readers read only below it. Commit-log offsets
//! increase along a queue, which is what lets [`ConsumeQueue::cut`] and retention binary-search.
//!
//! Why one file of about 680 lines: the queue's file format, its writer, its reader and its
//! repair at recovery share the layout (entry size, file naming, the `BEFORE_LOG` slots) and the
//! invariants on it; the format is drawn once, above, and each part is checked against it here.
//! A split by part would spread one format over several files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::error::{Result, StoreError};
use super::meta_file::sync_dir;
use super::record::{read_u16, read_u32, read_u64};
use super::segment::{parse_segment_file_name, segment_file_name, zero_range};

/// Size of one consume-queue entry.
pub const CQ_ENTRY_BYTES: usize = 20;
const CQ_HEADER_BYTES: u64 = 32;
const CQ_MAGIC: u32 = u32::from_le_bytes(*b"RMCQ");
const CQ_FORMAT_VERSION: u16 = 1;

/// One consume-queue entry: where a message is in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqEntry {
    pub commit_log_offset: u64,
    pub size_bytes: u32,
    pub tag_hash: u64,
}

impl CqEntry {
    /// Stands for an entry from before the commit log's first offset, in a queue that begins
    /// above queue offset 0 in this store (see the module header). Its size is that of the
    /// smallest record, so that it is never taken for an empty slot.
    pub const BEFORE_LOG: CqEntry = CqEntry {
        commit_log_offset: 0,
        size_bytes: super::record::RECORD_HEADER_BYTES as u32,
        tag_hash: 0,
    };

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.commit_log_offset.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.tag_hash.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> CqEntry {
        CqEntry {
            commit_log_offset: read_u64(bytes, 0),
            size_bytes: read_u32(bytes, 8),
            tag_hash: read_u64(bytes, 12),
        }
    }

    /// End of the record in the commit log.
    pub fn end_offset(&self) -> u64 {
        // Entries are not CRC-protected: never overflow on a damaged one.
        self.commit_log_offset
            .saturating_add(u64::from(self.size_bytes))
    }
}

#[derive(Debug)]
struct CqFile {
    first_queue_offset: u64,
    file: File,
    path: PathBuf,
}

/// The consume queue of one (topic, queue id).
#[derive(Debug)]
pub struct ConsumeQueue {
    topic: String,
    queue_id: u32,
    dir: PathBuf,
    entries_per_file: u64,
    files: RwLock<Vec<Arc<CqFile>>>,
    /// Queue offset of the next entry to be written: the number of entries ever written.
    max_queue_offset: AtomicU64,
    /// First queue offset still held (earlier ones were deleted by retention).
    min_queue_offset: AtomicU64,
    /// Queue offset up to which entries are fsynced; guarded so that two syncs do not overlap.
    synced_queue_offset: Mutex<u64>,
}

impl ConsumeQueue {
    /// Opens (creating the directory if needed) the queue in `dir`. The entry count is found from
    /// the files; recovery then cuts it to what the commit log holds.
    pub fn open(
        dir: &Path,
        topic: &str,
        queue_id: u32,
        entries_per_file: u32,
    ) -> Result<ConsumeQueue> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io("create consume-queue directory", dir))?;
        let mut files = Vec::new();
        for entry in
            std::fs::read_dir(dir).map_err(StoreError::io("list consume-queue directory", dir))?
        {
            let entry = entry.map_err(StoreError::io("list consume-queue directory", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())
                    .map_err(StoreError::io("remove", entry.path()))?;
            } else if let Some(first) = parse_segment_file_name(&name) {
                files.push(Arc::new(open_file(&entry.path(), first, entries_per_file)?));
            }
        }
        files.sort_by_key(|f| f.first_queue_offset);
        let per_file = u64::from(entries_per_file);
        for pair in files.windows(2) {
            if pair[0].first_queue_offset + per_file != pair[1].first_queue_offset {
                return Err(StoreError::Format {
                    path: pair[1].path.clone(),
                    reason: "consume-queue files are not contiguous".into(),
                });
            }
        }
        let min = files.first().map_or(0, |f| f.first_queue_offset);
        let queue = ConsumeQueue {
            topic: topic.to_owned(),
            queue_id,
            dir: dir.to_path_buf(),
            entries_per_file: per_file,
            files: RwLock::new(files),
            max_queue_offset: AtomicU64::new(min),
            min_queue_offset: AtomicU64::new(min),
            synced_queue_offset: Mutex::new(min),
        };
        let written = queue.count_written_entries()?;
        queue.max_queue_offset.store(written, Ordering::Release);
        *queue
            .synced_queue_offset
            .lock()
            .expect("sync lock poisoned") = written;
        Ok(queue)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }
    /// Queue offset of the next entry: the count of entries ever written to this queue.
    pub fn max_queue_offset(&self) -> u64 {
        self.max_queue_offset.load(Ordering::Acquire)
    }
    /// First queue offset still held.
    pub fn min_queue_offset(&self) -> u64 {
        self.min_queue_offset.load(Ordering::Acquire)
    }

    /// Finds the written entries in the last file: up to the first all-zero slot.
    /// Entries are written in order, so the written ones are a prefix of the last file: a binary
    /// search for the first empty slot finds the count with a few 20-byte reads, where reading
    /// the whole file (6 MB by default) for each of thousands of queues would slow every open.
    /// After a crash recovery refines this with [`ConsumeQueue::recover_to`], which does not
    /// assume the prefix.
    fn count_written_entries(&self) -> Result<u64> {
        let files = self.read_files();
        let Some(last) = files.last() else {
            return Ok(self.min_queue_offset());
        };
        let (first, end) = (
            last.first_queue_offset,
            last.first_queue_offset + self.entries_per_file,
        );
        drop(files);
        self.first_slot_where(first, end, |entry| entry.size_bytes == 0)
    }

    /// Reads the slot of `queue_offset` whether or not it is below `max_queue_offset`.
    fn read_slot(&self, queue_offset: u64) -> Result<CqEntry> {
        let file = self
            .file_for_read(queue_offset)
            .ok_or_else(|| StoreError::Format {
                path: self.dir.clone(),
                reason: format!("no consume-queue file holds slot {queue_offset}"),
            })?;
        let mut buf = [0u8; CQ_ENTRY_BYTES];
        let slot = queue_offset - file.first_queue_offset;
        file.file
            .read_exact_at(&mut buf, CQ_HEADER_BYTES + slot * CQ_ENTRY_BYTES as u64)
            .map_err(StoreError::io("read consume queue", &file.path))?;
        Ok(CqEntry::decode(&buf))
    }

    /// The first slot in `[low, high)` for which `found` holds (`high` if none), by binary
    /// search: `found` must be false on a prefix of the range and true on the rest.
    fn first_slot_where(
        &self,
        mut low: u64,
        mut high: u64,
        found: impl Fn(&CqEntry) -> bool,
    ) -> Result<u64> {
        while low < high {
            let mid = low + (high - low) / 2;
            if found(&self.read_slot(mid)?) {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(low)
    }

    /// After a crash: keeps the entries pointing below `commit_log_offset` (the recovery start,
    /// below which every entry was fsynced before the checkpoint was saved) and zeroes every slot
    /// after them. Slots past that point may hold anything a crash left: entries written after
    /// the checkpoint, zeros, or entries past a hole where a power loss dropped a page. Every one
    /// of those is empty or points at or after `commit_log_offset`, so "empty or at/after" is
    /// false on the fsynced prefix and true from its end on, and a binary search finds the end.
    pub fn recover_to(&self, commit_log_offset: u64) -> Result<()> {
        let files = self.read_files();
        let (Some(first), Some(last)) = (files.first(), files.last()) else {
            return Ok(());
        };
        let (low, high) = (
            first.first_queue_offset.max(self.min_queue_offset()),
            last.first_queue_offset + self.entries_per_file,
        );
        drop(files);
        let keep = self.first_slot_where(low, high, |entry| {
            entry.size_bytes == 0 || entry.commit_log_offset >= commit_log_offset
        })?;
        self.cut_at(keep)
    }

    /// Appends encoded entries (a multiple of 20 bytes) starting at `first_queue_offset`, which
    /// must be the current `max_queue_offset`, or, when `may_begin_late` (the commit log does not
    /// begin at 0) and the queue never held an entry, any offset: the queue then begins there.
    /// Only the dispatcher and recovery call this.
    pub fn append(
        &self,
        first_queue_offset: u64,
        encoded: &[u8],
        may_begin_late: bool,
    ) -> Result<()> {
        assert_eq!(encoded.len() % CQ_ENTRY_BYTES, 0);
        let mut max = self.max_queue_offset();
        if first_queue_offset > max && max == 0 && may_begin_late && self.read_files().is_empty() {
            self.begin_at(first_queue_offset)?;
            max = self.max_queue_offset();
        }
        if first_queue_offset != max {
            return Err(StoreError::Format {
                path: self.dir.clone(),
                reason: format!(
                    "consume queue expected queue offset {max} next but the commit log has {first_queue_offset}"
                ),
            });
        }
        let mut queue_offset = first_queue_offset;
        let mut rest = encoded;
        while !rest.is_empty() {
            let file = self.file_for_write(queue_offset)?;
            let slot = queue_offset - file.first_queue_offset;
            let room = (self.entries_per_file - slot) as usize * CQ_ENTRY_BYTES;
            let (now, later) = rest.split_at(room.min(rest.len()));
            file.file
                .write_all_at(now, CQ_HEADER_BYTES + slot * CQ_ENTRY_BYTES as u64)
                .map_err(StoreError::io("write consume queue", &file.path))?;
            queue_offset += (now.len() / CQ_ENTRY_BYTES) as u64;
            rest = later;
        }
        self.max_queue_offset.store(queue_offset, Ordering::Release);
        Ok(())
    }

    /// Makes an empty queue begin at `queue_offset`: the slots of its first file before it hold
    /// [`CqEntry::BEFORE_LOG`] (see the module header).
    fn begin_at(&self, queue_offset: u64) -> Result<()> {
        let first_file = queue_offset - queue_offset % self.entries_per_file;
        let before = (queue_offset - first_file) as usize;
        tracing::info!(
            topic = %self.topic,
            queue_id = self.queue_id,
            queue_offset,
            "consume queue begins above 0: the commit log does not hold its earlier messages"
        );
        self.max_queue_offset.store(first_file, Ordering::Release);
        *self.synced_queue_offset.lock().expect("sync lock poisoned") = first_file;
        let mut encoded = Vec::with_capacity(before * CQ_ENTRY_BYTES);
        for _ in 0..before {
            CqEntry::BEFORE_LOG.encode(&mut encoded);
        }
        self.append(first_file, &encoded, false)?;
        self.min_queue_offset.store(queue_offset, Ordering::Release);
        Ok(())
    }

    fn file_for_write(&self, queue_offset: u64) -> Result<Arc<CqFile>> {
        if let Some(file) = self.read_files().last() {
            if queue_offset < file.first_queue_offset + self.entries_per_file {
                return Ok(file.clone());
            }
        }
        let first = queue_offset - queue_offset % self.entries_per_file;
        let file = Arc::new(create_file(&self.dir, first, self.entries_per_file)?);
        let mut files = self.files.write().expect("consume-queue lock poisoned");
        if files.is_empty() {
            self.min_queue_offset.store(first, Ordering::Release);
        }
        files.push(file.clone());
        Ok(file)
    }

    /// Reads up to `max_count` entries from `queue_offset`, stopping at `max_queue_offset`.
    pub fn read_entries(&self, queue_offset: u64, max_count: usize) -> Result<Vec<CqEntry>> {
        let end = self
            .max_queue_offset()
            .min(queue_offset.saturating_add(max_count as u64));
        let mut entries = Vec::with_capacity(end.saturating_sub(queue_offset) as usize);
        let mut at = queue_offset.max(self.min_queue_offset());
        while at < end {
            let Some(file) = self.file_for_read(at) else {
                break;
            };
            let slot = at - file.first_queue_offset;
            let count = (self.entries_per_file - slot).min(end - at) as usize;
            let mut buf = vec![0u8; count * CQ_ENTRY_BYTES];
            file.file
                .read_exact_at(&mut buf, CQ_HEADER_BYTES + slot * CQ_ENTRY_BYTES as u64)
                .map_err(StoreError::io("read consume queue", &file.path))?;
            entries.extend(buf.chunks_exact(CQ_ENTRY_BYTES).map(CqEntry::decode));
            at += count as u64;
        }
        Ok(entries)
    }

    /// Reads one entry.
    pub fn read_entry(&self, queue_offset: u64) -> Result<Option<CqEntry>> {
        Ok(self.read_entries(queue_offset, 1)?.into_iter().next())
    }

    fn file_for_read(&self, queue_offset: u64) -> Option<Arc<CqFile>> {
        let files = self.read_files();
        let index =
            files.partition_point(|f| f.first_queue_offset + self.entries_per_file <= queue_offset);
        files
            .get(index)
            .filter(|f| f.first_queue_offset <= queue_offset)
            .cloned()
    }

    fn read_files(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<CqFile>>> {
        self.files.read().expect("consume-queue lock poisoned")
    }

    /// First queue offset in `[min, max)` whose entry points at or after `commit_log_offset`
    /// (`max` if none). Entries increase in commit-log offset, so this is a binary search.
    pub fn first_at_or_after(&self, commit_log_offset: u64) -> Result<u64> {
        let (mut low, mut high) = (self.min_queue_offset(), self.max_queue_offset());
        while low < high {
            let mid = low + (high - low) / 2;
            let entry = self.read_entry(mid)?.ok_or_else(|| StoreError::Format {
                path: self.dir.clone(),
                reason: format!("consume-queue entry {mid} is missing"),
            })?;
            if entry.commit_log_offset < commit_log_offset {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// Drops every entry pointing at or after `commit_log_offset` (the log is cut there, or it
    /// is not yet verified), durably. Used by truncation and recovery. Everything after the kept
    /// entries is zeroed, even past `max_queue_offset`: slots left behind a hole by a power loss
    /// must not come back once new entries fill the hole.
    pub fn cut(&self, commit_log_offset: u64) -> Result<()> {
        let keep = self.first_at_or_after(commit_log_offset)?;
        self.cut_at(keep)
    }

    /// Keeps the entries below queue offset `keep`; zeroes every slot from it on, durably.
    fn cut_at(&self, keep: u64) -> Result<()> {
        let mut files = self.files.write().expect("consume-queue lock poisoned");
        self.max_queue_offset.store(keep, Ordering::Release);
        let mut removed = false;
        while let Some(last) = files.last() {
            if last.first_queue_offset < keep
                || (last.first_queue_offset == keep && files.len() == 1)
            {
                break;
            }
            std::fs::remove_file(&last.path)
                .map_err(StoreError::io("remove consume queue", &last.path))?;
            files.pop();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(last) = files.last() {
            let slot = keep - last.first_queue_offset;
            let position = CQ_HEADER_BYTES + slot * CQ_ENTRY_BYTES as u64;
            let full = CQ_HEADER_BYTES + self.entries_per_file * CQ_ENTRY_BYTES as u64;
            // Size kept: a crash in the middle leaves a file recovery opens.
            zero_range(&last.file, position, full - position)
                .and_then(|()| last.file.sync_all())
                .map_err(StoreError::io("cut consume queue", &last.path))?;
        }
        let mut synced = self.synced_queue_offset.lock().expect("sync lock poisoned");
        *synced = (*synced).min(keep);
        Ok(())
    }

    /// Deletes whole files whose entries all point before `commit_log_min_offset` (retention
    /// deleted those segments) and moves `min_queue_offset` to the first entry still held.
    pub fn delete_before(&self, commit_log_min_offset: u64) -> Result<()> {
        let new_min = self.first_at_or_after(commit_log_min_offset)?;
        if new_min <= self.min_queue_offset() {
            return Ok(());
        }
        self.min_queue_offset.store(new_min, Ordering::Release);
        let mut files = self.files.write().expect("consume-queue lock poisoned");
        let mut removed = false;
        // Keep the last file even when all of it is old: it is where the next entry goes.
        while files.len() > 1 && files[0].first_queue_offset + self.entries_per_file <= new_min {
            std::fs::remove_file(&files[0].path)
                .map_err(StoreError::io("remove consume queue", &files[0].path))?;
            files.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Fsyncs the entries written since the last sync.
    pub fn sync(&self) -> Result<()> {
        let mut synced = self.synced_queue_offset.lock().expect("sync lock poisoned");
        let max = self.max_queue_offset();
        if *synced >= max {
            return Ok(());
        }
        let files: Vec<_> = self
            .read_files()
            .iter()
            .filter(|f| {
                f.first_queue_offset + self.entries_per_file > *synced && f.first_queue_offset < max
            })
            .cloned()
            .collect();
        for file in files {
            file.file
                .sync_data()
                .map_err(StoreError::io("fsync consume queue", &file.path))?;
        }
        *synced = max;
        Ok(())
    }
}

fn encode_header(first_queue_offset: u64, entries_per_file: u64) -> [u8; CQ_HEADER_BYTES as usize] {
    let mut header = [0u8; CQ_HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&CQ_MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&CQ_FORMAT_VERSION.to_le_bytes());
    header[6..8].copy_from_slice(&(CQ_ENTRY_BYTES as u16).to_le_bytes());
    header[8..16].copy_from_slice(&first_queue_offset.to_le_bytes());
    header[16..20].copy_from_slice(&(entries_per_file as u32).to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

fn create_file(dir: &Path, first_queue_offset: u64, entries_per_file: u64) -> Result<CqFile> {
    let path = dir.join(segment_file_name(first_queue_offset));
    let temp = dir.join(format!("{}.tmp", segment_file_name(first_queue_offset)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(StoreError::io("create consume queue", &temp))?;
    file.write_all_at(&encode_header(first_queue_offset, entries_per_file), 0)
        .and_then(|()| file.set_len(CQ_HEADER_BYTES + entries_per_file * CQ_ENTRY_BYTES as u64))
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("initialise consume queue", &temp))?;
    std::fs::rename(&temp, &path)
        .map_err(StoreError::io("rename consume queue into place", &path))?;
    sync_dir(dir)?;
    Ok(CqFile {
        first_queue_offset,
        file,
        path,
    })
}

fn open_file(path: &Path, first_queue_offset: u64, entries_per_file: u32) -> Result<CqFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open consume queue", path))?;
    let format = |reason: &str| StoreError::Format {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let mut header = [0u8; CQ_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|err| match err.kind() {
            ErrorKind::UnexpectedEof => format("shorter than a consume-queue header"),
            _ => StoreError::io("read consume-queue header", path)(err),
        })?;
    if read_u32(&header, 0) != CQ_MAGIC {
        return Err(format("not a consume-queue file (wrong magic number)"));
    }
    if crc32c::crc32c(&header[..20]) != read_u32(&header, 20) {
        return Err(format("consume-queue header CRC mismatch"));
    }
    if read_u16(&header, 4) != CQ_FORMAT_VERSION || read_u16(&header, 6) as usize != CQ_ENTRY_BYTES
    {
        return Err(format("unsupported consume-queue format version"));
    }
    if read_u64(&header, 8) != first_queue_offset {
        return Err(format(
            "file name does not match the first queue offset in its header",
        ));
    }
    if read_u32(&header, 16) != entries_per_file {
        return Err(format(
            "consume_queue_entries_per_file differs from the value this file was created with",
        ));
    }
    let expected_len = CQ_HEADER_BYTES + u64::from(entries_per_file) * CQ_ENTRY_BYTES as u64;
    let len = file
        .metadata()
        .map_err(StoreError::io("stat consume queue", path))?
        .len();
    if len != expected_len {
        return Err(format("consume-queue file has the wrong length"));
    }
    Ok(CqFile {
        first_queue_offset,
        file,
        path: path.to_path_buf(),
    })
}

/// Every consume queue of the store, by topic and queue id.
#[derive(Debug)]
pub struct ConsumeQueues {
    dir: PathBuf,
    entries_per_file: u32,
    queues: RwLock<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>>,
    /// The commit log does not begin at offset 0: a queue never written may begin above queue
    /// offset 0 (see the module header).
    log_begins_late: std::sync::atomic::AtomicBool,
}

impl ConsumeQueues {
    /// Opens every queue under `dir` (`consumequeue/<topic>/<queue id>/`).
    pub fn open(dir: &Path, entries_per_file: u32) -> Result<ConsumeQueues> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io("create consume-queue directory", dir))?;
        let mut queues: HashMap<String, HashMap<u32, Arc<ConsumeQueue>>> = HashMap::new();
        for topic_entry in
            std::fs::read_dir(dir).map_err(StoreError::io("list consume queues", dir))?
        {
            let topic_entry = topic_entry.map_err(StoreError::io("list consume queues", dir))?;
            let topic = topic_entry.file_name().to_string_lossy().into_owned();
            let topic_dir = topic_entry.path();
            for queue_entry in std::fs::read_dir(&topic_dir)
                .map_err(StoreError::io("list consume queues", &topic_dir))?
            {
                let queue_entry =
                    queue_entry.map_err(StoreError::io("list consume queues", &topic_dir))?;
                let Ok(queue_id) = queue_entry.file_name().to_string_lossy().parse::<u32>() else {
                    return Err(StoreError::Format {
                        path: queue_entry.path(),
                        reason: "queue directory name is not a queue id".into(),
                    });
                };
                let queue =
                    ConsumeQueue::open(&queue_entry.path(), &topic, queue_id, entries_per_file)?;
                queues
                    .entry(topic.clone())
                    .or_default()
                    .insert(queue_id, Arc::new(queue));
            }
        }
        Ok(ConsumeQueues {
            dir: dir.to_path_buf(),
            entries_per_file,
            queues: RwLock::new(queues),
            log_begins_late: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Says whether the commit log begins above offset 0 (set at open and when an empty store is
    /// seeded at a master's first offset).
    pub fn set_log_begins_late(&self, begins_late: bool) {
        self.log_begins_late.store(begins_late, Ordering::Release);
    }

    /// See [`ConsumeQueues::set_log_begins_late`].
    pub fn log_begins_late(&self) -> bool {
        self.log_begins_late.load(Ordering::Acquire)
    }

    /// The queue of (topic, queue id), if any message was ever dispatched to it.
    pub fn get(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .expect("consume-queue map lock poisoned")
            .get(topic)
            .and_then(|queues| queues.get(&queue_id))
            .cloned()
    }

    /// The queue of (topic, queue id), created if new.
    pub fn get_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(queue) = self.get(topic, queue_id) {
            return Ok(queue);
        }
        let mut map = self
            .queues
            .write()
            .expect("consume-queue map lock poisoned");
        if let Some(queue) = map.get(topic).and_then(|q| q.get(&queue_id)) {
            return Ok(queue.clone());
        }
        let dir = self.dir.join(topic).join(queue_id.to_string());
        let queue = Arc::new(ConsumeQueue::open(
            &dir,
            topic,
            queue_id,
            self.entries_per_file,
        )?);
        // The new directories must survive a crash once entries in them are checkpointed.
        sync_dir(&self.dir.join(topic))?;
        sync_dir(&self.dir)?;
        map.entry(topic.to_owned())
            .or_default()
            .insert(queue_id, queue.clone());
        Ok(queue)
    }

    /// Every queue.
    pub fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .expect("consume-queue map lock poisoned")
            .values()
            .flat_map(|queues| queues.values().cloned())
            .collect()
    }
}
