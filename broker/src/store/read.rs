//! Reading messages by (topic, queue id, queue offset), with tag filtering and the confirm offset.
//!
//! A read looks up consume-queue entries from the queue offset, stops at the first entry whose
//! record ends beyond the confirm offset (consumers never see what a failover could take back),
//! skips entries whose tag hash does not match, and reads and CRC-checks each remaining record,
//! comparing the tag itself to rule out hash collisions. Statuses follow RocketMQ's
//! `GetMessageStatus`.

use super::commit_log::CommitLog;
use super::consume_queue::ConsumeQueues;
use super::error::{Result, StoreError};
use super::message::StoredMessage;
use super::record::tag_hash;

/// Most consume-queue entries one read examines, so that a filter matching nothing costs a
/// bounded amount of work per call (the reply's `next_queue_offset` lets the caller go on).
pub const ENTRIES_SCANNED_MAX: usize = 1024;

/// Which messages a consumer wants, by tag: `*` (or empty) for all, or `a || b || c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagFilter {
    All,
    Tags(Vec<(String, u64)>),
}

impl TagFilter {
    /// Parses RocketMQ's subscription expression.
    pub fn parse(expression: &str) -> TagFilter {
        let expression = expression.trim();
        if expression.is_empty() || expression == "*" {
            return TagFilter::All;
        }
        let tags: Vec<(String, u64)> = expression
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| (t.to_owned(), tag_hash(t)))
            .collect();
        if tags.is_empty() {
            TagFilter::All
        } else {
            TagFilter::Tags(tags)
        }
    }

    fn matches_hash(&self, hash: u64) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => tags.iter().any(|(_, h)| *h == hash),
        }
    }

    fn matches(&self, message: &StoredMessage) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => message
                .tag()
                .is_some_and(|tag| tags.iter().any(|(t, _)| t == tag)),
        }
    }
}

/// Outcome of a read, RocketMQ's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetStatus {
    /// At least one message is returned.
    Found,
    /// The queue offset is at the visible end: nothing new yet (long-poll on it).
    NoNewMessage,
    /// Entries were examined but none matched the filter; go on from `next_queue_offset`.
    NoMatchedMessage,
    /// The queue offset is below the oldest entry held; go on from `next_queue_offset`.
    OffsetTooSmall,
    /// The queue offset is beyond every entry written.
    OffsetOverflow,
    /// No message was ever stored in this queue.
    QueueNotFound,
}

/// Messages read and where to go next.
#[derive(Clone, Debug)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<StoredMessage>,
    /// Queue offset to ask for next.
    pub next_queue_offset: u64,
    pub min_queue_offset: u64,
    /// Queue offset after the last entry written (visible or not yet).
    pub max_queue_offset: u64,
}

/// What to read.
#[derive(Clone, Debug)]
pub struct GetRequest<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub max_count: usize,
    pub max_bytes: usize,
    pub filter: &'a TagFilter,
}

pub(crate) fn get_messages(
    log: &CommitLog,
    queues: &ConsumeQueues,
    confirm_offset: u64,
    request: &GetRequest<'_>,
) -> Result<GetResult> {
    let Some(queue) = queues.get(request.topic, request.queue_id) else {
        return Ok(GetResult {
            status: GetStatus::QueueNotFound,
            messages: Vec::new(),
            next_queue_offset: 0,
            min_queue_offset: 0,
            max_queue_offset: 0,
        });
    };
    let (min, max) = (queue.min_queue_offset(), queue.max_queue_offset());
    let result = |status, messages, next| GetResult {
        status,
        messages,
        next_queue_offset: next,
        min_queue_offset: min,
        max_queue_offset: max,
    };
    if request.queue_offset < min {
        return Ok(result(GetStatus::OffsetTooSmall, Vec::new(), min));
    }
    if request.queue_offset > max {
        return Ok(result(GetStatus::OffsetOverflow, Vec::new(), max));
    }
    let scan_count = match request.filter {
        TagFilter::All => request.max_count,
        TagFilter::Tags(_) => ENTRIES_SCANNED_MAX,
    }
    .clamp(1, ENTRIES_SCANNED_MAX);
    let entries = queue.read_entries(request.queue_offset, scan_count)?;
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    let mut next = request.queue_offset;
    for entry in entries {
        if entry.end_offset() > confirm_offset {
            break;
        }
        if messages.len() >= request.max_count.max(1)
            || (!messages.is_empty() && bytes + entry.size_bytes as usize > request.max_bytes)
        {
            break;
        }
        next += 1;
        if !request.filter.matches_hash(entry.tag_hash) {
            continue;
        }
        let message = match log.read_message(entry.commit_log_offset, entry.size_bytes) {
            Ok(message) => message,
            // Retention removed the segment after the entry was read: skip ahead.
            Err(StoreError::OffsetInvalid { .. }) if entry.commit_log_offset < log.min_offset() => {
                continue
            }
            Err(err) => return Err(err),
        };
        if message.queue_id() != request.queue_id || message.topic() != request.topic {
            return Err(StoreError::Corrupt {
                path: log.dir().to_path_buf(),
                position: entry.commit_log_offset,
                reason: "consume-queue entry points at a record of another queue",
            });
        }
        if request.filter.matches(&message) {
            bytes += message.size_bytes() as usize;
            messages.push(message);
        }
    }
    let status = if !messages.is_empty() {
        GetStatus::Found
    } else if next > request.queue_offset {
        GetStatus::NoMatchedMessage
    } else {
        GetStatus::NoNewMessage
    };
    Ok(result(status, messages, next))
}
