//! Reading messages by (topic, queue id, queue offset), with tag filtering and the confirm offset.
//!
//! A read looks up consume-queue entries from the queue offset, stops at the first entry whose
//! record ends beyond the confirm offset (consumers never see what a failover could take back),
//! skips entries whose tag hash does not match, and reads and CRC-checks each remaining record,
//! comparing the tag itself to rule out hash collisions. Statuses follow RocketMQ's
//! `GetMessageStatus`.

use bytes::Bytes;

use super::commit_log::CommitLog;
use super::consume_queue::ConsumeQueues;
use super::error::{Result, StoreError};
use super::message::StoredMessage;
use super::record::tag_hash;
use super::{dispatch, Store};

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

/// The store's reads: what consumers see, what a new master reads of its own log, and what a
/// master ships. A read that meets a corrupt record reports it to the store's health.
impl Store {
    /// Reads messages of one queue; see the module's doc.
    pub fn get_messages(&self, request: &GetRequest<'_>) -> Result<GetResult> {
        get_messages(
            &self.shared.log,
            &self.shared.queues,
            self.confirm_offset(),
            request,
        )
    }

    /// Reads messages of one queue from everything written, past the confirm offset, first
    /// indexing what the dispatcher has not reached yet. Only for a broker that has just become
    /// master reading its own log's internal records (every record it holds stays in its
    /// epoch, confirmed or not yet): consumers read with [`Store::get_messages`].
    pub fn get_messages_written(&self, request: &GetRequest<'_>) -> Result<GetResult> {
        let write_offset = self.write_offset();
        dispatch::dispatch_to(
            &self.shared,
            &mut self.shared.dispatch.lock().expect("dispatch lock poisoned"),
            write_offset,
        )?;
        get_messages(&self.shared.log, &self.shared.queues, write_offset, request)
            .inspect_err(|err| self.note_corruption(err))
    }

    /// A read that found a corrupt record in the log reports it (see `health`): the broker
    /// leaves the in-sync set and repairs the range, instead of failing every read of it.
    fn note_corruption(&self, err: &StoreError) {
        if let (StoreError::Corrupt { reason, .. }, Some(commit_log_offset)) =
            (err, err.corrupt_commit_log_offset())
        {
            self.shared
                .report_corrupt(commit_log_offset, (*reason).to_owned());
        }
    }

    /// Reads the message whose record starts at `commit_log_offset`, if consumers may see it
    /// (below the confirm offset). For handing a consumed message back (retry).
    pub fn read_message_at(&self, commit_log_offset: u64) -> Result<StoredMessage> {
        self.shared
            .log
            .read_message_at(commit_log_offset, self.confirm_offset())
            .inspect_err(|err| self.note_corruption(err))
    }

    /// Reads whole records from `commit_log_offset` as stored (what a master ships to a slave).
    pub fn read_raw(&self, commit_log_offset: u64, max_bytes: usize) -> Result<Bytes> {
        self.shared
            .log
            .read_raw(commit_log_offset, max_bytes)
            .inspect_err(|err| self.note_corruption(err))
    }

    /// Whether the log from `commit_log_offset` on is still in the page cache as far as the
    /// store knows: at or above where `page_cache` last handed pages back to the kernel. A hint
    /// for the shipper, which then reads the tail it ships on its own task instead of through
    /// a blocking thread; the kernel may still have evicted clean pages.
    pub fn tail_in_memory(&self, commit_log_offset: u64) -> bool {
        commit_log_offset
            >= self
                .shared
                .page_cache_released_offset
                .load(std::sync::atomic::Ordering::Acquire)
    }
}
