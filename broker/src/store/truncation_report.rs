//! The truncation report: before a truncation cuts anything, the messages it is about to cut are
//! listed in `truncated/<from>-<to>.jsonl` in the store directory, and summarized in the log.
//!
//! A cut tail was never confirmed to consumers, so under `SYNC_MASTER` it holds no acknowledged
//! message. Under `ASYNC_MASTER` (and after an unclean election) it can: a master acknowledges
//! before replicating, and a failover elects a slave that had not copied the last few messages.
//! The report is how an operator learns exactly which: every cut message's topic, queue, queue
//! offset, `UNIQ_KEY` and `KEYS`, to reconcile against the producers' records and send again.
//!
//! Format (JSON lines): the first line is the summary (`from`, `to`, `bytes`, `messages`,
//! `listed`, `written_at_ms`); then one line per message, in log order, at most
//! [`REPORT_MESSAGES_MAX`] of them (`listed` says how many; `messages` counts all).
//!
//! The report is written and fsynced before the truncation intent is saved, so a crash at any
//! point of the cut leaves it on disk. A report that cannot be written is logged as an error and
//! does not stop the truncation: a broker that cannot rejoin its group would be worse.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::commit_log::CommitLog;
use super::dispatch::SCAN_CHUNK_BYTES;
use super::error::{Result, StoreError};
use super::message::{PROPERTY_KEYS, PROPERTY_UNIQUE_ID};
use super::record::PropertyIter;
use super::scan;

/// The directory (under the store directory) that holds the reports.
pub const REPORT_DIR_NAME: &str = "truncated";
/// Most messages one report lists (about 200 bytes each); the summary still counts them all.
pub const REPORT_MESSAGES_MAX: usize = 100_000;

/// The report's first line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TruncationSummary {
    /// The cut: `[from, to)` of the commit log.
    pub from: u64,
    pub to: u64,
    pub bytes: u64,
    /// Message records in the cut.
    pub messages: u64,
    /// How many of them the report lists.
    pub listed: u64,
    pub written_at_ms: u64,
}

/// One cut message.
#[derive(Debug, Serialize)]
struct CutMessage<'a> {
    commit_log_offset: u64,
    topic: &'a str,
    queue_id: u32,
    queue_offset: u64,
    store_timestamp_ms: u64,
    size_bytes: u32,
    uniq_key: Option<&'a str>,
    keys: Option<&'a str>,
}

/// Lists the messages of `[from, to)` of `log` in a report under `dir`; returns its summary and
/// path. Fails only on a log that cannot be read or a report that cannot be written.
pub(crate) fn write(
    dir: &Path,
    log: &CommitLog,
    from: u64,
    to: u64,
) -> Result<(TruncationSummary, PathBuf)> {
    let mut lines: Vec<u8> = Vec::new();
    let mut messages = 0u64;
    let mut listed = 0u64;
    let end = scan::scan(log, from, to, SCAN_CHUNK_BYTES, |header, raw| {
        messages += 1;
        if listed as usize >= REPORT_MESSAGES_MAX {
            return Ok(());
        }
        listed += 1;
        let mut uniq_key = None;
        let mut keys = None;
        for (name, value) in PropertyIter::new(&raw[header.properties_range()]) {
            match name {
                PROPERTY_UNIQUE_ID => uniq_key = Some(value),
                PROPERTY_KEYS => keys = Some(value),
                _ => {}
            }
        }
        let line = CutMessage {
            commit_log_offset: header.commit_log_offset,
            topic: std::str::from_utf8(&raw[header.topic_range()]).expect("checked by the scan"),
            queue_id: header.queue_id,
            queue_offset: header.queue_offset,
            store_timestamp_ms: header.store_timestamp_ms,
            size_bytes: header.total_bytes,
            uniq_key,
            keys,
        };
        serde_json::to_writer(&mut lines, &line).expect("serializing to memory");
        lines.push(b'\n');
        Ok(())
    })?;
    scan::stop_to_error(end)?;
    let summary = TruncationSummary {
        from,
        to,
        bytes: to - from,
        messages,
        listed,
        written_at_ms: super::now_ms(),
    };
    let report_dir = dir.join(REPORT_DIR_NAME);
    let path = report_dir.join(format!("{from:020}-{to:020}.jsonl"));
    let io = |what| StoreError::io(what, path.clone());
    std::fs::create_dir_all(&report_dir).map_err(io("create the report directory"))?;
    let mut file = std::fs::File::create(&path).map_err(io("create the report"))?;
    let mut head = serde_json::to_vec(&summary).expect("serializing to memory");
    head.push(b'\n');
    file.write_all(&head).map_err(io("write the report"))?;
    file.write_all(&lines).map_err(io("write the report"))?;
    file.sync_all().map_err(io("fsync the report"))?;
    super::meta_file::sync_dir(&report_dir)?;
    Ok((summary, path))
}
