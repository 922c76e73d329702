//! The store's error type.
//!
//! Every failure names what was being done and to which file or offset, and keeps its cause as a
//! `#[source]`. Callers tell three kinds apart with [`StoreError::is_bad_input`] and
//! [`StoreError::is_fatal`]: bad input changed nothing and may be corrected by the caller; a fatal
//! error (a failed write or fsync, corruption) stops the store from accepting writes, because
//! after a failed fsync the kernel may have dropped dirty pages and a retry could acknowledge
//! data that is not on disk.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the commit-log store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed; the store accepts no more writes until it is reopened.
    #[error("the store stopped accepting writes after an earlier I/O failure")]
    Poisoned {
        #[source]
        cause: Arc<StoreError>,
    },
    /// The store is shutting down or its writer is gone.
    #[error("the store is stopped")]
    Stopped,
    /// The store belongs to a slave: only replication writes to it, so that it stays a
    /// byte-identical copy of its master's log.
    #[error("this store is a slave's copy of its master's log: only replication writes to it")]
    ReplicaOnly,
    /// Another process (or another `Store` in this one) has the directory open.
    #[error("store directory {} is locked by another process", path.display())]
    Locked { path: PathBuf },
    /// The configuration is inconsistent.
    #[error("invalid store configuration: {field}: {reason}")]
    Config {
        field: &'static str,
        reason: &'static str,
    },

    /// The message body is empty.
    #[error("message body is empty")]
    BodyEmpty,
    /// The message body is larger than `max_message_bytes`.
    #[error("message body is {body_bytes} bytes, above the limit of {limit_bytes}")]
    BodyTooLarge { body_bytes: usize, limit_bytes: u32 },
    /// The encoded properties are larger than `max_properties_bytes`.
    #[error("message properties take {properties_bytes} bytes, above the limit of {limit_bytes}")]
    PropertiesTooLarge {
        properties_bytes: usize,
        limit_bytes: u32,
    },
    /// A property name or value breaks a rule.
    #[error("illegal message property {}: {reason}", proto::Echo(key))]
    PropertyInvalid { key: String, reason: &'static str },
    /// A topic name breaks a rule.
    #[error("illegal topic {}: {reason}", proto::Echo(topic))]
    TopicInvalid { topic: String, reason: &'static str },
    /// A queue id is out of range.
    #[error("queue id {queue_id} is not below the limit of {limit}")]
    QueueIdInvalid { queue_id: u32, limit: u32 },
    /// A batch mixes topics or queues, or is empty.
    #[error("illegal batch: {reason}")]
    BatchInvalid { reason: &'static str },
    /// A commit-log offset given by the caller is not usable for this operation.
    #[error("commit-log offset {commit_log_offset} is not usable: {reason}")]
    OffsetInvalid {
        commit_log_offset: u64,
        reason: &'static str,
    },
    /// Raw bytes handed to `append_raw` are not a run of valid records at the right offsets.
    #[error("raw bytes at commit-log offset {commit_log_offset} rejected: {reason}")]
    RawInvalid {
        commit_log_offset: u64,
        reason: &'static str,
    },

    /// A record failed its checks where the log must be intact: before the tail, or on a read.
    #[error("corrupt record in {} at file position {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    /// A segment file is shorter than its header says (cut by something other than the store).
    #[error("segment {} has {file_bytes} bytes, {expected_bytes} expected", path.display())]
    SegmentShort {
        path: PathBuf,
        file_bytes: u64,
        expected_bytes: u64,
    },
    /// A file's header or framing is not one this version understands.
    #[error("unreadable file {}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
}

impl StoreError {
    /// Builds an [`StoreError::Io`] from an action and a path; used with `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }

    /// True when the request was rejected for its content and nothing was written.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::BodyEmpty
                | StoreError::BodyTooLarge { .. }
                | StoreError::PropertiesTooLarge { .. }
                | StoreError::PropertyInvalid { .. }
                | StoreError::TopicInvalid { .. }
                | StoreError::QueueIdInvalid { .. }
                | StoreError::BatchInvalid { .. }
                | StoreError::OffsetInvalid { .. }
                | StoreError::RawInvalid { .. }
        )
    }

    /// For corruption found in a commit-log segment: the commit-log offset where it was found
    /// (segment files are named by their base offset, and positions count the file header).
    pub fn corrupt_commit_log_offset(&self) -> Option<u64> {
        let StoreError::Corrupt { path, position, .. } = self else {
            return None;
        };
        let name = path.file_name()?.to_str()?;
        if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let base: u64 = name.parse().ok()?;
        let within = position.checked_sub(super::segment::SEGMENT_HEADER_BYTES)?;
        base.checked_add(within)
    }

    /// True when the store can no longer be trusted to write and must be reopened.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Poisoned { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Format { .. }
                | StoreError::SegmentShort { .. }
        )
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
