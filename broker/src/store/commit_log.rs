//! The commit log: the ordered, contiguous segments and the two offsets that say how much of
//! them is written and how much is durable.
//!
//! Invariants: segments are sorted and contiguous (each starts where the previous one ends);
//! `flushed_offset <= write_offset`; both only move backwards through a truncation; `write_offset`
//! is always at a record boundary, so every byte below it belongs to a whole record, a padding
//! record, or the sub-12-byte tail of a segment.
//!
//! The writer thread is the only one that appends segments or moves `write_offset`; the flusher
//! is the only one that moves `flushed_offset` forward. Readers take a clone of a segment's `Arc`
//! under a short read lock and then read with `pread`, never holding the lock during I/O, and read
//! only below `write_offset` (an `Acquire` load that pairs with the writer's `Release` store, so
//! the bytes they read are the ones written).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use super::error::{Result, StoreError};
use super::message::StoredMessage;
use super::record::{self, Prefix, RECORD_PREFIX_BYTES};
use super::segment::{parse_segment_file_name, Segment};

/// Most bytes one raw read returns (beyond a single larger record): bounds the memory a
/// replica's request can make the master allocate.
pub const RAW_READ_BYTES_MAX: usize = 16 << 20;

/// The segments and offsets of one commit log.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    segments: RwLock<Vec<Arc<Segment>>>,
    write_offset: AtomicU64,
    flushed_offset: AtomicU64,
}

impl CommitLog {
    /// Opens the segments in `dir` (creating `dir` if needed) and checks they are contiguous.
    /// Offsets start at the first segment's base; recovery sets them.
    pub fn open(dir: &Path) -> Result<CommitLog> {
        std::fs::create_dir_all(dir).map_err(StoreError::io("create commit-log directory", dir))?;
        let mut paths = Vec::new();
        for entry in
            std::fs::read_dir(dir).map_err(StoreError::io("list commit-log directory", dir))?
        {
            let entry = entry.map_err(StoreError::io("list commit-log directory", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") || name.ends_with(".spare") {
                // A segment whose creation did not finish, or a spare made ahead of time: never
                // renamed into place, so nothing in it was ever acknowledged.
                std::fs::remove_file(entry.path())
                    .map_err(StoreError::io("remove", entry.path()))?;
            } else if let Some(base_offset) = parse_segment_file_name(&name) {
                paths.push((base_offset, entry.path()));
            } else {
                return Err(StoreError::Format {
                    path: entry.path(),
                    reason: "unexpected file in the commit-log directory".into(),
                });
            }
        }
        paths.sort();
        let mut segments = Vec::with_capacity(paths.len());
        for (index, (_, path)) in paths.iter().enumerate() {
            let segment = if index + 1 == paths.len() {
                Segment::open_extending(path)?
            } else {
                Segment::open(path)?
            };
            segments.push(Arc::new(segment));
        }
        for pair in segments.windows(2) {
            if pair[0].end_offset() != pair[1].base_offset() {
                return Err(StoreError::Format {
                    path: pair[1].path().to_path_buf(),
                    reason: format!(
                        "segments are not contiguous: the previous one ends at {}",
                        pair[0].end_offset()
                    ),
                });
            }
        }
        let start = segments.first().map_or(0, |s| s.base_offset());
        Ok(CommitLog {
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            write_offset: AtomicU64::new(start),
            flushed_offset: AtomicU64::new(start),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// End of the last whole record written (visible to readers of raw bytes, not yet durable).
    pub fn write_offset(&self) -> u64 {
        self.write_offset.load(Ordering::Acquire)
    }

    /// End of the data known to be on disk.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    pub(crate) fn set_write_offset(&self, offset: u64) {
        self.write_offset.store(offset, Ordering::Release);
    }

    pub(crate) fn set_flushed_offset(&self, offset: u64) {
        debug_assert!(offset <= self.write_offset());
        self.flushed_offset.store(offset, Ordering::Release);
    }

    /// First offset still held (segments before it were deleted by retention).
    pub fn min_offset(&self) -> u64 {
        self.read_segments()
            .first()
            .map_or_else(|| self.write_offset(), |s| s.base_offset())
    }

    /// A snapshot of the segment list.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.read_segments().clone()
    }

    /// The segment holding `commit_log_offset`.
    pub fn segment_for(&self, commit_log_offset: u64) -> Option<Arc<Segment>> {
        let segments = self.read_segments();
        let index = segments.partition_point(|s| s.end_offset() <= commit_log_offset);
        segments
            .get(index)
            .filter(|s| s.contains(commit_log_offset))
            .cloned()
    }

    /// The newest segment.
    pub fn last_segment(&self) -> Option<Arc<Segment>> {
        self.read_segments().last().cloned()
    }

    pub(crate) fn push_segment(&self, segment: Segment) -> Arc<Segment> {
        let segment = Arc::new(segment);
        let mut segments = self.segments.write().expect("segment list lock poisoned");
        if let Some(last) = segments.last() {
            assert_eq!(
                last.end_offset(),
                segment.base_offset(),
                "segments must stay contiguous"
            );
        }
        segments.push(segment.clone());
        segment
    }

    /// Removes segments from the list (files are the caller's business). `keep` decides.
    pub(crate) fn retain_segments(&self, keep: impl FnMut(&Arc<Segment>) -> bool) {
        self.segments
            .write()
            .expect("segment list lock poisoned")
            .retain(keep);
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().expect("segment list lock poisoned")
    }

    /// The segment holding `commit_log_offset`, or the error a reader of a deleted offset gets.
    fn held_segment(&self, commit_log_offset: u64) -> Result<Arc<Segment>> {
        self.segment_for(commit_log_offset)
            .ok_or(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "no longer held (deleted by retention)",
            })
    }

    /// Reads the message record of `size_bytes` at `commit_log_offset`, CRC-checked. The
    /// position and size come from a consume-queue entry, which has no CRC of its own: they are
    /// bounds-checked before they size a buffer.
    pub fn read_message(&self, commit_log_offset: u64, size_bytes: u32) -> Result<StoredMessage> {
        let end = commit_log_offset.checked_add(u64::from(size_bytes));
        if end.is_none_or(|end| end > self.write_offset()) {
            return Err(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "beyond the written end of the commit log",
            });
        }
        let segment = self.held_segment(commit_log_offset)?;
        if (size_bytes as usize) < record::RECORD_HEADER_BYTES
            || commit_log_offset + u64::from(size_bytes) > segment.end_offset()
        {
            return Err(StoreError::Corrupt {
                path: segment.path().to_path_buf(),
                position: segment.file_position(commit_log_offset),
                reason: "consume-queue entry gives a size no record can have here",
            });
        }
        let mut buf = BytesMut::zeroed(size_bytes as usize);
        segment.read_at(commit_log_offset, &mut buf)?;
        let corrupt = |reason| StoreError::Corrupt {
            path: segment.path().to_path_buf(),
            position: segment.file_position(commit_log_offset),
            reason,
        };
        let header = record::check_message(&buf).map_err(corrupt)?;
        if header.commit_log_offset != commit_log_offset {
            return Err(corrupt(
                "record's own offset does not match where it was read",
            ));
        }
        Ok(StoredMessage::new(buf.freeze(), header))
    }

    /// Reads the message record starting at `commit_log_offset`, which must end at or below
    /// `limit`. An offset where no message starts is the caller's error.
    pub fn read_message_at(&self, commit_log_offset: u64, limit: u64) -> Result<StoredMessage> {
        let invalid = |reason| StoreError::OffsetInvalid {
            commit_log_offset,
            reason,
        };
        let segment = self.held_segment(commit_log_offset)?;
        let segment_left = segment.end_offset() - commit_log_offset;
        if segment_left < RECORD_PREFIX_BYTES as u64 || commit_log_offset >= limit {
            return Err(invalid("no readable message starts here"));
        }
        let mut prefix = [0u8; RECORD_PREFIX_BYTES];
        segment.read_at(commit_log_offset, &mut prefix)?;
        let Prefix::Message { total_bytes } = record::classify_prefix(&prefix, segment_left) else {
            return Err(invalid("no message starts here"));
        };
        if commit_log_offset + u64::from(total_bytes) > limit {
            return Err(invalid("the message is not readable yet"));
        }
        self.read_message(commit_log_offset, total_bytes)
    }

    /// Reads whole records from `commit_log_offset` (a record boundary): at most `max_bytes`
    /// (capped at [`RAW_READ_BYTES_MAX`]) unless the first record alone is larger, never past the
    /// segment end or `write_offset`. A padding record comes with the zeros after it, up to the
    /// segment end, so the bytes are a contiguous copy of the log. Empty at the written end. An
    /// offset that is not a record boundary is the caller's error (`OffsetInvalid`), not
    /// corruption. Every message record is CRC-checked: the read stops before one that fails,
    /// and fails with [`StoreError::Corrupt`] when it is the first.
    pub fn read_raw(&self, commit_log_offset: u64, max_bytes: usize) -> Result<Bytes> {
        let max_bytes = max_bytes.min(RAW_READ_BYTES_MAX);
        let write_offset = self.write_offset();
        if commit_log_offset >= write_offset {
            return if commit_log_offset == write_offset {
                Ok(Bytes::new())
            } else {
                Err(StoreError::OffsetInvalid {
                    commit_log_offset,
                    reason: "beyond the written end of the commit log",
                })
            };
        }
        let segment = self.held_segment(commit_log_offset)?;
        super::truncate::check_boundary(self, commit_log_offset)?;
        let limit = write_offset.min(segment.end_offset());
        let mut want = (limit - commit_log_offset).min(max_bytes.max(RECORD_PREFIX_BYTES) as u64);
        loop {
            let mut buf = BytesMut::zeroed(want as usize);
            segment.read_at(commit_log_offset, &mut buf)?;
            let whole = self.whole_records_len(&segment, commit_log_offset, &buf, limit)?;
            match whole {
                WholeRecords::Bytes(0) => unreachable!("a record boundary below write_offset"),
                WholeRecords::Bytes(len) => {
                    buf.truncate(len);
                    return Ok(buf.freeze());
                }
                // The first record does not fit in `want`: read exactly it.
                WholeRecords::FirstNeeds(len) => {
                    if len <= want || commit_log_offset + len > limit {
                        return Err(StoreError::Corrupt {
                            path: segment.path().to_path_buf(),
                            position: segment.file_position(commit_log_offset),
                            reason: "record runs past the written end",
                        });
                    }
                    want = len;
                }
            }
        }
    }

    /// How much of `buf` (read at `start`) is whole records, given that the written data ends at
    /// `limit` within this segment.
    fn whole_records_len(
        &self,
        segment: &Segment,
        start: u64,
        buf: &[u8],
        limit: u64,
    ) -> Result<WholeRecords> {
        let mut pos = 0usize;
        loop {
            let at = start + pos as u64;
            let segment_left = segment.end_offset() - at;
            if at >= limit {
                return Ok(WholeRecords::Bytes(pos));
            }
            if segment_left < RECORD_PREFIX_BYTES as u64 {
                // The writer left fewer than 12 bytes at the segment end: zeros, part of the log.
                let len = pos + segment_left as usize;
                return Ok(fit(pos, len, buf.len()));
            }
            if pos + RECORD_PREFIX_BYTES > buf.len() {
                return Ok(fit(pos, pos + RECORD_PREFIX_BYTES, buf.len()));
            }
            let corrupt = |reason| StoreError::Corrupt {
                path: segment.path().to_path_buf(),
                position: segment.file_position(at),
                reason,
            };
            match record::classify_prefix(&buf[pos..], segment_left) {
                Prefix::Message { total_bytes } => {
                    let end = pos + total_bytes as usize;
                    if end > buf.len() {
                        return Ok(fit(pos, end, buf.len()));
                    }
                    // Never ship a record that fails its check: hand over the sound records
                    // before it, and fail (reported as corruption) once it comes first.
                    let checked = match record::check_message(&buf[pos..end]) {
                        Ok(header) if header.commit_log_offset == at => Ok(()),
                        Ok(_) => Err("record's own offset does not match its position"),
                        Err(reason) => Err(reason),
                    };
                    if let Err(reason) = checked {
                        return if pos > 0 {
                            Ok(WholeRecords::Bytes(pos))
                        } else {
                            Err(corrupt(reason))
                        };
                    }
                    pos = end;
                }
                Prefix::Padding => {
                    let end = pos + segment_left as usize;
                    return Ok(fit(pos, end, buf.len()));
                }
                Prefix::Zeros => return Err(corrupt("zeros below the written end")),
                Prefix::Invalid(reason) => return Err(corrupt(reason)),
            }
        }
    }
}

enum WholeRecords {
    /// This many bytes of the buffer are whole records.
    Bytes(usize),
    /// The buffer holds no whole record; the first one ends this many bytes in.
    FirstNeeds(u64),
}

/// Result of a walk that reached a record ending at `end`: keep what fits.
fn fit(pos: usize, end: usize, buf_len: usize) -> WholeRecords {
    if end <= buf_len {
        WholeRecords::Bytes(end)
    } else if pos > 0 {
        WholeRecords::Bytes(pos)
    } else {
        WholeRecords::FirstNeeds(end as u64)
    }
}
