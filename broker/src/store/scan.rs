//! Walks the commit log forward record by record, CRC-checking each one. Recovery uses it to find
//! the end of the valid log; the dispatcher uses it to build consume queues.
//!
//! PERF: reads in large chunks (one `pread` per `chunk_bytes`), checks each record's CRC in
//! place and hands the callback a borrowed header and slice: nothing is allocated per record.

use std::path::PathBuf;

use super::commit_log::CommitLog;
use super::error::{Result, StoreError};
use super::record::{self, Prefix, RecordHeader, RECORD_PREFIX_BYTES};

/// Why a scan stopped before its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Twelve zero bytes where a record should start: nothing was written here.
    Zeros,
    /// Bytes that are not a valid record.
    Invalid(&'static str),
}

/// Where a scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Reached the limit (or the end of the last segment).
    Limit { commit_log_offset: u64 },
    /// Stopped at a position that does not hold a valid record.
    Stopped {
        commit_log_offset: u64,
        path: PathBuf,
        position: u64,
        stop: Stop,
    },
}

/// Calls `on_record(header, raw)` for every message record in `[from, limit)`, where `from` is a
/// record boundary. Padding and sub-prefix segment tails are skipped.
pub fn scan(
    log: &CommitLog,
    from: u64,
    limit: u64,
    chunk_bytes: usize,
    mut on_record: impl FnMut(&RecordHeader, &[u8]) -> Result<()>,
) -> Result<ScanEnd> {
    let mut pos = from;
    let mut buf: Vec<u8> = Vec::new();
    while pos < limit {
        let Some(segment) = log.segment_for(pos) else {
            return Ok(ScanEnd::Limit {
                commit_log_offset: pos,
            });
        };
        let segment_end = segment.end_offset();
        // Fill a chunk starting at `pos` within this segment.
        let want = (segment_end.min(limit.max(pos + RECORD_PREFIX_BYTES as u64)) - pos)
            .min(chunk_bytes as u64) as usize;
        buf.resize(want, 0);
        segment.read_at(pos, &mut buf)?;
        if want == chunk_bytes {
            segment.prefetch(pos + want as u64, 2 * chunk_bytes as u64);
        }
        let mut at = 0usize;
        loop {
            let offset = pos + at as u64;
            if offset >= limit {
                return Ok(ScanEnd::Limit {
                    commit_log_offset: offset,
                });
            }
            let segment_left = segment_end - offset;
            if segment_left < RECORD_PREFIX_BYTES as u64 {
                at += segment_left as usize;
                break;
            }
            if at + RECORD_PREFIX_BYTES > buf.len() {
                break;
            }
            let stopped = |stop| ScanEnd::Stopped {
                commit_log_offset: offset,
                path: segment.path().to_path_buf(),
                position: segment.file_position(offset),
                stop,
            };
            match record::classify_prefix(&buf[at..], segment_left) {
                Prefix::Zeros => return Ok(stopped(Stop::Zeros)),
                Prefix::Invalid(reason) => return Ok(stopped(Stop::Invalid(reason))),
                Prefix::Padding => {
                    at += segment_left as usize;
                    break;
                }
                Prefix::Message { total_bytes } => {
                    let end = at + total_bytes as usize;
                    if end > buf.len() {
                        if at == 0 {
                            // A record larger than the chunk: read exactly it.
                            buf.resize(total_bytes as usize, 0);
                            segment.read_at(pos, &mut buf)?;
                            continue;
                        }
                        break;
                    }
                    let raw = &buf[at..end];
                    match record::check_message(raw) {
                        Ok(header) if header.commit_log_offset == offset => {
                            on_record(&header, raw)?
                        }
                        Ok(_) => {
                            return Ok(stopped(Stop::Invalid(
                                "record's own offset does not match its position",
                            )))
                        }
                        Err(reason) => return Ok(stopped(Stop::Invalid(reason))),
                    }
                    at = end;
                }
            }
        }
        pos += at as u64;
    }
    Ok(ScanEnd::Limit {
        commit_log_offset: pos,
    })
}

/// Looks for any valid record (message or padding) that starts after `after`, in the rest of
/// its segment and in every later segment. Recovery calls this at the first bad position: a valid
/// record beyond it means the damage is in the middle of the log, not a torn tail. Returns the
/// offset of the first one found and whether any non-zero byte was seen.
///
/// PERF: never-written space (holes and preallocated extents, found with SEEK_DATA) is skipped
/// without reading it, and zero checks go a machine word at a time, so the empty rest of a
/// 1 GiB segment costs next to nothing.
pub fn find_valid_record_after(
    log: &CommitLog,
    after: u64,
    chunk_bytes: usize,
) -> Result<(Option<u64>, bool)> {
    let message_magic = record::MAGIC_MESSAGE.to_le_bytes();
    let padding_magic = record::MAGIC_PADDING.to_le_bytes();
    let mut saw_nonzero = false;
    let mut buf = vec![0u8; chunk_bytes];
    for segment in log
        .segments()
        .into_iter()
        .filter(|s| s.end_offset() > after + 1)
    {
        // Candidates start at or after `after + 1`; the magic sits 8 bytes into a record.
        let mut from = (after + 1).max(segment.base_offset());
        while let Some((data_start, data_end)) = segment.next_data_range(from)? {
            let mut chunk_start = data_start;
            while chunk_start < data_end {
                let len = (data_end - chunk_start).min(chunk_bytes as u64) as usize;
                let chunk = &mut buf[..len];
                segment.read_at(chunk_start, chunk)?;
                if !saw_nonzero && !is_all_zero(chunk) {
                    saw_nonzero = true;
                }
                if saw_nonzero {
                    for magic in [&message_magic, &padding_magic] {
                        for hit in memchr::memmem::find_iter(chunk, magic) {
                            let Some(start) = (chunk_start + hit as u64).checked_sub(8) else {
                                continue;
                            };
                            if start > after && is_valid_record_at(log, start)? {
                                return Ok((Some(start), true));
                            }
                        }
                    }
                }
                // Overlap chunks by a prefix so that a magic split across two chunks is found.
                let advance = if len > RECORD_PREFIX_BYTES {
                    len - RECORD_PREFIX_BYTES
                } else {
                    len
                };
                chunk_start += advance as u64;
            }
            from = data_end;
        }
    }
    Ok((None, saw_nonzero))
}

/// True when every byte is zero; compares eight bytes at a time.
fn is_all_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        let folded = block.chunks_exact(8).fold(0u64, |acc, word| {
            acc | u64::from_ne_bytes(word.try_into().expect("8 bytes"))
        });
        if folded != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

fn is_valid_record_at(log: &CommitLog, offset: u64) -> Result<bool> {
    let Some(segment) = log.segment_for(offset) else {
        return Ok(false);
    };
    let segment_left = segment.end_offset() - offset;
    if segment_left < RECORD_PREFIX_BYTES as u64 {
        return Ok(false);
    }
    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    segment.read_at(offset, &mut prefix)?;
    match record::classify_prefix(&prefix, segment_left) {
        Prefix::Padding => Ok(true),
        Prefix::Message { total_bytes } => {
            let mut raw = vec![0u8; total_bytes as usize];
            segment.read_at(offset, &mut raw)?;
            Ok(record::check_message(&raw).is_ok_and(|h| h.commit_log_offset == offset))
        }
        Prefix::Zeros | Prefix::Invalid(_) => Ok(false),
    }
}

/// Whether a record starts at `commit_log_offset` by the record sizes alone: walks the prefixes
/// of its segment from the segment's first record, without checking CRCs. For a cut at a record
/// whose own check fails (a repair cutting at a corrupt record): the records before it are
/// framed soundly up to exactly it. Reads the segment up to it in chunks of
/// [`BOUNDARY_WALK_CHUNK_BYTES`].
pub fn reaches_by_prefixes(log: &CommitLog, commit_log_offset: u64) -> Result<bool> {
    let Some(segment) = log.segment_for(commit_log_offset) else {
        return Ok(false);
    };
    let mut buf = vec![0u8; BOUNDARY_WALK_CHUNK_BYTES];
    let mut at = segment.base_offset();
    while at < commit_log_offset {
        let segment_left = segment.end_offset() - at;
        if segment_left < RECORD_PREFIX_BYTES as u64 {
            return Ok(false);
        }
        // Refill from `at` whenever the next prefix is not all in the buffer.
        let len = (segment.end_offset() - at).min(BOUNDARY_WALK_CHUNK_BYTES as u64) as usize;
        segment.read_at(at, &mut buf[..len])?;
        let mut within = 0usize;
        while within + RECORD_PREFIX_BYTES <= len && at + (within as u64) < commit_log_offset {
            let offset = at + within as u64;
            match record::classify_prefix(&buf[within..len], segment.end_offset() - offset) {
                Prefix::Message { total_bytes } => within += total_bytes as usize,
                Prefix::Padding | Prefix::Zeros | Prefix::Invalid(_) => return Ok(false),
            }
        }
        if within == 0 {
            return Ok(false);
        }
        at += within as u64;
    }
    Ok(at == commit_log_offset)
}

/// Chunk of a walk by record sizes ([`reaches_by_prefixes`]).
const BOUNDARY_WALK_CHUNK_BYTES: usize = 1 << 20;

/// Turns a stop below a limit that must be intact (the written end) into an error.
pub fn stop_to_error(end: ScanEnd) -> Result<u64> {
    match end {
        ScanEnd::Limit { commit_log_offset } => Ok(commit_log_offset),
        ScanEnd::Stopped {
            path,
            position,
            stop,
            ..
        } => Err(StoreError::Corrupt {
            path,
            position,
            reason: match stop {
                Stop::Zeros => "zeros below the written end",
                Stop::Invalid(reason) => reason,
            },
        }),
    }
}
