//! One commit-log segment: a preallocated file named by the commit-log offset of its first byte
//! (20 zero-padded digits), holding a fixed capacity of the log's byte space after a header.
//!
//! ```text
//! file position 0      4096-byte header (magic "RMQLOGSG", version, header size, base offset,
//!                      capacity, crc32c; zeros after)
//! file position 4096   commit-log bytes [base_offset, base_offset + capacity_bytes)
//! ```
//! The header is a full page so that data stays page-aligned.
//!
//! Creation is crash-safe: write the header to `NAME.tmp`, preallocate, fsync, rename, fsync the
//! directory. A segment therefore either exists with a valid header or not at all; leftovers named
//! `*.tmp` are removed on open. To keep preallocation (most of a second for 1 GiB) off the
//! writer's path, the next segment is made ahead of time as `NAME.spare` (see
//! `preallocate.rs`) and rolling renames it into place; spares are not part of the log and are
//! removed on open. Preallocation (fallocate) reserves the blocks up front, so the
//! fdatasync of an append does not also commit block allocations, and a full disk shows up when a
//! segment is created rather than in the middle of a write.
//!
//! This type does positioned I/O only; which bytes go where is decided by the commit log.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::meta_file::sync_dir;
use super::record::{read_u32, read_u64};

/// Bytes before the data in every segment file.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"RMQLOGSG");
const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Length of the covered part of the header: magic 8, version 4, header size 4, base 8,
/// capacity 8; the crc32c follows it.
const HEADER_FIELDS_BYTES: usize = 32;

/// File name of the segment starting at `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// Parses a segment file name; `None` for anything else.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Path of the spare segment that will start at `base_offset`.
pub fn spare_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{}.spare", segment_file_name(base_offset)))
}

/// An open segment file.
#[derive(Debug)]
pub struct Segment {
    base_offset: u64,
    capacity_bytes: u64,
    file: File,
    path: PathBuf,
}

impl Segment {
    /// Creates a new, empty segment, crash-safely: adopts the spare made ahead of time by
    /// [`Segment::create_spare`] when there is one for this base and capacity (a rename), else
    /// creates and preallocates one now (which can take most of a second for 1 GiB).
    pub fn create(dir: &Path, base_offset: u64, capacity_bytes: u64) -> Result<Segment> {
        let path = dir.join(segment_file_name(base_offset));
        let spare = spare_path(dir, base_offset);
        if spare.exists() {
            match Segment::open_as(&spare, base_offset) {
                Ok(segment) if segment.capacity_bytes == capacity_bytes => {
                    std::fs::rename(&spare, &path)
                        .map_err(StoreError::io("rename spare segment into place", &path))?;
                    sync_dir(dir)?;
                    return Ok(Segment { path, ..segment });
                }
                _ => std::fs::remove_file(&spare)
                    .map_err(StoreError::io("remove stale spare segment", &spare))?,
            }
        }
        let temp = dir.join(format!("{}.tmp", segment_file_name(base_offset)));
        Segment::write_new(&temp, base_offset, capacity_bytes)?;
        std::fs::rename(&temp, &path)
            .map_err(StoreError::io("rename segment into place", &path))?;
        sync_dir(dir)?;
        Segment::open(&path)
    }

    /// Makes the segment that will start at `base_offset` ahead of time, as `NAME.spare`, so
    /// that rolling to it is a rename instead of a preallocation on the writer's path.
    pub fn create_spare(dir: &Path, base_offset: u64, capacity_bytes: u64) -> Result<()> {
        let spare = spare_path(dir, base_offset);
        if spare.exists() {
            return Ok(());
        }
        let temp = dir.join(format!("{}.spare.tmp", segment_file_name(base_offset)));
        Segment::write_new(&temp, base_offset, capacity_bytes)?;
        std::fs::rename(&temp, &spare).map_err(StoreError::io("rename spare segment", &spare))?;
        Ok(())
    }

    /// Writes a new segment file at `temp`: header, preallocation, fsync.
    fn write_new(temp: &Path, base_offset: u64, capacity_bytes: u64) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)
            .map_err(StoreError::io("create segment", temp))?;
        file.write_all_at(&encode_header(base_offset, capacity_bytes), 0)
            .map_err(StoreError::io("write segment header", temp))?;
        preallocate(&file, SEGMENT_HEADER_BYTES + capacity_bytes)
            .map_err(StoreError::io("preallocate segment", temp))?;
        file.sync_all()
            .map_err(StoreError::io("fsync segment", temp))?;
        Ok(())
    }

    /// Extends a segment file cut short back to its capacity (reads as zeros), then opens it.
    /// Only for the newest segment: recovery then judges the missing bytes like any damage at
    /// the tail (refused below the checkpoint's flushed offset, cut as a torn tail above it).
    pub fn open_extending(path: &Path) -> Result<Segment> {
        match Segment::open(path) {
            Err(StoreError::SegmentShort {
                file_bytes,
                expected_bytes,
                ..
            }) => {
                tracing::warn!(
                    segment = %path.display(),
                    file_bytes,
                    expected_bytes,
                    "newest segment is shorter than its capacity: extending it"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(StoreError::io("open segment", path))?;
                preallocate(&file, expected_bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(StoreError::io("extend segment", path))?;
                Segment::open(path)
            }
            other => other,
        }
    }

    /// Opens an existing segment and checks its header against its name.
    pub fn open(path: &Path) -> Result<Segment> {
        let name_offset = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_file_name);
        Segment::open_checked(path, name_offset)
    }

    fn open_as(path: &Path, base_offset: u64) -> Result<Segment> {
        Segment::open_checked(path, Some(base_offset))
    }

    fn open_checked(path: &Path, name_offset: Option<u64>) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StoreError::io("open segment", path))?;
        let format = |reason: &str| StoreError::Format {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let mut header = [0u8; HEADER_FIELDS_BYTES + 4];
        file.read_exact_at(&mut header, 0)
            .map_err(|err| match err.kind() {
                ErrorKind::UnexpectedEof => format("shorter than a segment header"),
                _ => StoreError::io("read segment header", path)(err),
            })?;
        if read_u64(&header, 0) != SEGMENT_MAGIC {
            return Err(format("not a commit-log segment (wrong magic number)"));
        }
        if crc32c::crc32c(&header[..HEADER_FIELDS_BYTES]) != read_u32(&header, HEADER_FIELDS_BYTES)
        {
            return Err(format("segment header CRC mismatch"));
        }
        if read_u32(&header, 8) != SEGMENT_FORMAT_VERSION {
            return Err(format("unsupported segment format version"));
        }
        if u64::from(read_u32(&header, 12)) != SEGMENT_HEADER_BYTES {
            return Err(format("unexpected segment header size"));
        }
        let base_offset = read_u64(&header, 16);
        let capacity_bytes = read_u64(&header, 24);
        if name_offset != Some(base_offset) {
            return Err(format(
                "file name does not match the base offset in its header",
            ));
        }
        let len = file
            .metadata()
            .map_err(StoreError::io("stat segment", path))?
            .len();
        if len < SEGMENT_HEADER_BYTES + capacity_bytes {
            return Err(StoreError::SegmentShort {
                path: path.to_path_buf(),
                file_bytes: len,
                expected_bytes: SEGMENT_HEADER_BYTES + capacity_bytes,
            });
        }
        Ok(Segment {
            base_offset,
            capacity_bytes,
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
    /// First commit-log offset after this segment.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + self.capacity_bytes
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn contains(&self, commit_log_offset: u64) -> bool {
        (self.base_offset..self.end_offset()).contains(&commit_log_offset)
    }

    /// File position of a commit-log offset inside this segment.
    pub fn file_position(&self, commit_log_offset: u64) -> u64 {
        debug_assert!(
            commit_log_offset >= self.base_offset && commit_log_offset <= self.end_offset()
        );
        SEGMENT_HEADER_BYTES + (commit_log_offset - self.base_offset)
    }

    /// Reads exactly `buf.len()` bytes starting at `commit_log_offset`, within this segment.
    pub fn read_at(&self, commit_log_offset: u64, buf: &mut [u8]) -> Result<()> {
        assert!(
            commit_log_offset + buf.len() as u64 <= self.end_offset(),
            "read past segment end"
        );
        self.file
            .read_exact_at(buf, self.file_position(commit_log_offset))
            .map_err(StoreError::io("read segment", &self.path))
    }

    /// Writes `data` at `commit_log_offset`, within this segment.
    pub fn write_at(&self, commit_log_offset: u64, data: &[u8]) -> std::io::Result<()> {
        assert!(
            commit_log_offset + data.len() as u64 <= self.end_offset(),
            "write past segment end"
        );
        self.file
            .write_all_at(data, self.file_position(commit_log_offset))
    }

    /// fdatasync: the data written so far survives a machine crash once this returns.
    pub fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Zeroes the data from `commit_log_offset` to the segment end, keeping the file's size
    /// and its blocks reserved, then fsyncs. Used by truncation and torn-tail repair. The file
    /// never shrinks, so a crash in the middle leaves a full-size segment that recovery opens.
    pub fn zero_from(&self, commit_log_offset: u64) -> Result<()> {
        assert!(self.contains(commit_log_offset) || commit_log_offset == self.end_offset());
        let position = self.file_position(commit_log_offset);
        let full = SEGMENT_HEADER_BYTES + self.capacity_bytes;
        zero_range(&self.file, position, full - position)
            .and_then(|()| self.file.sync_all())
            .map_err(StoreError::io("zero segment tail", &self.path))
    }

    /// The next range of this segment at or after `commit_log_offset` that may hold data, as
    /// commit-log offsets `[start, end)`; `None` when the rest was never written (a hole, or
    /// preallocated space never written). Without SEEK_DATA support, the whole rest is one range.
    pub fn next_data_range(&self, commit_log_offset: u64) -> Result<Option<(u64, u64)>> {
        if commit_log_offset >= self.end_offset() {
            return Ok(None);
        }
        let whole = Ok(Some((commit_log_offset, self.end_offset())));
        let Ok(from) = libc::off_t::try_from(self.file_position(commit_log_offset)) else {
            return whole;
        };
        // SAFETY: lseek on a descriptor we own; no memory is passed. The file offset it moves is
        // not used by this program (all I/O is positioned).
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), from, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => whole,
                _ => Err(StoreError::io("seek data in segment", &self.path)(err)),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(self.file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return whole;
        }
        let to_offset = |position: libc::off_t| {
            (position as u64)
                .saturating_sub(SEGMENT_HEADER_BYTES)
                .saturating_add(self.base_offset)
                .clamp(commit_log_offset, self.end_offset())
        };
        let (start, end) = (to_offset(data), to_offset(hole));
        Ok((start < end).then_some((start, end)))
    }

    /// Asks the kernel to start reading `[commit_log_offset, + len)` into the page cache in the
    /// background, so that a sequential scan's next read finds it there (readahead that overlaps
    /// the disk with the CRC checks of the current chunk). Advisory: errors are ignored.
    pub fn prefetch(&self, commit_log_offset: u64, len: u64) {
        if commit_log_offset >= self.end_offset() {
            return;
        }
        let len = len.min(self.end_offset() - commit_log_offset);
        self.advise(commit_log_offset, len, libc::POSIX_FADV_WILLNEED);
    }

    /// Hands the cached pages of `[from, to)` back to the kernel (see `page_cache.rs`). Advisory:
    /// the kernel drops only clean pages and keeps any dirty one, so no unflushed byte is lost;
    /// errors are ignored (the pages stay cached).
    pub fn release_page_cache(&self, from: u64, to: u64) {
        debug_assert!(from <= to && to <= self.end_offset());
        self.advise(from, to - from, libc::POSIX_FADV_DONTNEED);
    }

    /// `posix_fadvise` of `[commit_log_offset, + len)`; advisory, so errors are ignored.
    fn advise(&self, commit_log_offset: u64, len: u64, advice: libc::c_int) {
        let (Ok(position), Ok(len)) = (
            libc::off_t::try_from(self.file_position(commit_log_offset)),
            libc::off_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: plain system call on a file descriptor we own; no memory is passed.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), position, len, advice);
        }
    }

    /// Tells the kernel to drop this file's cached pages (benchmarks measure cold reads with it).
    pub fn drop_page_cache(&self) {
        // SAFETY: plain system call on a file descriptor this struct owns; no memory is shared.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn encode_header(base_offset: u64, capacity_bytes: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
    header.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    header.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    header.extend_from_slice(&base_offset.to_le_bytes());
    header.extend_from_slice(&capacity_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.resize(SEGMENT_HEADER_BYTES as usize, 0);
    header
}

/// Makes `[position, position + len)` of `file` read as zeros without changing its size: punches
/// a hole and reserves the blocks again, or writes zeros where the file system cannot punch.
pub(crate) fn zero_range(file: &File, position: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let to_off = |v: u64| {
        libc::off_t::try_from(v).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
    };
    let (offset, length) = (to_off(position)?, to_off(len)?);
    // SAFETY: plain system calls on a file descriptor we own; no memory is passed.
    let punched = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        )
    };
    if punched == 0 {
        // Reserve the blocks again so that later writes do not allocate (or hit a full disk).
        // SAFETY: as above.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, length) };
        return match rc {
            0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        };
    }
    let err = std::io::Error::last_os_error();
    if !matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
    ) {
        return Err(err);
    }
    const ZEROS_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; ZEROS_BYTES];
    let mut at = position;
    while at < position + len {
        let n = (position + len - at).min(ZEROS_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reserves blocks for `len` bytes; falls back to a sparse extension where the file system has
/// no fallocate (tmpfs has it; some network file systems do not).
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    let len_signed =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_signed) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_segment_reopens_with_the_same_header() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 8192, 4096).unwrap();
        segment.write_at(8192 + 10, b"abc").unwrap();
        drop(segment);
        let path = dir.path().join("00000000000000008192");
        let segment = Segment::open(&path).unwrap();
        assert_eq!((segment.base_offset(), segment.end_offset()), (8192, 12288));
        let mut buf = [0u8; 3];
        segment.read_at(8192 + 10, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        segment.zero_from(8192 + 11).unwrap();
        segment.read_at(8192 + 10, &mut buf).unwrap();
        assert_eq!(&buf, b"a\0\0");
    }

    #[test]
    fn renamed_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Segment::create(dir.path(), 0, 4096).unwrap());
        let moved = dir.path().join(segment_file_name(4096));
        std::fs::rename(dir.path().join(segment_file_name(0)), &moved).unwrap();
        assert!(matches!(
            Segment::open(&moved),
            Err(StoreError::Format { .. })
        ));
    }
}
