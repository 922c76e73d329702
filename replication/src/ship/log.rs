//! What log shipping needs from a commit log, as a trait: `broker`'s store implements it, and
//! this crate never sees a message type.

use std::future::Future;

use bytes::Bytes;
use tokio::sync::watch;

use super::EpochEntry;

/// A log's local progress: the end of what is written, and of what is fsynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProgress {
    pub write_offset: u64,
    pub flushed_offset: u64,
}

/// What kind of failure a log reports: what replication does next depends on it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogErrorKind {
    /// The request does not fit this log (an offset off a record boundary or past the end, a
    /// record that does not check): nothing changed; the session ends and starts again.
    Refused,
    /// The log cannot go on now (it is stopping): replication stops.
    Failed,
    /// The log can take no write until it is reopened or repaired (a failed write or fsync, a
    /// corrupt record): replication stops; the broker restarts or repairs the store.
    Fatal,
}

/// Why the log refused or failed an operation: its kind, and the log's own error as the source
/// (so a failed fsync crosses the seam as what it is, not as text).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct LogError {
    pub kind: LogErrorKind,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl LogError {
    pub fn new(
        kind: LogErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> LogError {
        LogError {
            kind,
            source: source.into(),
        }
    }

    /// Replication cannot go on with this log.
    pub fn stops_replication(&self) -> bool {
        matches!(self.kind, LogErrorKind::Failed | LogErrorKind::Fatal)
    }
}

/// A commit log as replication sees it: raw bytes at offsets, epochs, and three offsets
/// (written, flushed, confirmed).
pub trait ShippedLog: Send + Sync + 'static {
    /// Whole records from `offset` (a record boundary), at most about `max_bytes` but always
    /// at least one record when `offset` is below the write offset; empty at the write offset.
    /// May block on disk: call it from a blocking context.
    fn read_raw(&self, offset: u64, max_bytes: usize) -> Result<Bytes, LogError>;
    /// Appends records copied from a master at exactly `offset`, which must be this log's write
    /// offset; answers the new write offset once written (not necessarily fsynced).
    fn append_raw(
        &self,
        offset: u64,
        bytes: Bytes,
    ) -> impl Future<Output = Result<u64, LogError>> + Send;
    /// Cuts the log back to `offset`, crash-safely.
    fn truncate_to(&self, offset: u64) -> impl Future<Output = Result<(), LogError>> + Send;
    /// Makes a log that holds no record begin at `offset` (a record boundary of the master's
    /// log) with `epoch` as its whole history: a new slave joining a master whose log may no
    /// longer hold offset 0. Refused for a log that holds a record.
    fn start_at(
        &self,
        offset: u64,
        epoch: Option<EpochEntry>,
    ) -> impl Future<Output = Result<(), LogError>> + Send;
    /// Records that `epoch` begins at the write offset; answers that offset.
    fn begin_epoch(&self, epoch: u64) -> impl Future<Output = Result<u64, LogError>> + Send;
    /// The epoch history, oldest first.
    fn epoch_history(&self) -> Vec<EpochEntry>;
    /// The first offset the log still holds.
    fn min_offset(&self) -> u64;
    /// The end of what is written, now.
    fn write_offset(&self) -> u64;
    /// Watches the written and flushed offsets.
    fn progress(&self) -> watch::Receiver<LogProgress>;
    /// The highest offset consumers may read.
    fn confirm_offset(&self) -> u64;
    /// Lets consumers read up to `offset` (never lowering what they may read already; never
    /// past what is locally durable). Answers the confirm offset now in force.
    fn allow_confirm_offset(&self, offset: u64) -> u64;
    /// The bytes from `offset` to the write offset are in memory (just written, not yet handed
    /// back to the kernel): [`ShippedLog::read_raw`] of them copies without waiting on the disk,
    /// and the shipper may call it on its own task. A hint, not a promise (the kernel may still
    /// evict clean pages under memory pressure); the default is false (always read in a
    /// blocking context).
    fn in_memory(&self, offset: u64) -> bool {
        let _ = offset;
        false
    }
    /// The log fsyncs every write on its own, promptly (`SYNC_FLUSH`): its flushed offset
    /// follows its written offset within one fsync. A slave's log that does so acknowledges
    /// the two together instead of one after the other; the default is false.
    fn flushes_every_write(&self) -> bool {
        false
    }
    /// The log has a fault (a corrupt record, a failed write): a slave says so in its
    /// acknowledgements, and its master takes it out of the in-sync set. The default has none.
    fn has_fault(&self) -> bool {
        false
    }
}

/// The epoch that wrote the record at `offset`, from a history (0 before the first entry: a log
/// written before any master epoch was recorded), and where that epoch ends (the next entry's
/// start; `u64::MAX` for the newest).
pub fn epoch_span(history: &[EpochEntry], offset: u64) -> (u64, u64) {
    let index = history.partition_point(|e| e.start_offset <= offset);
    let epoch = index.checked_sub(1).map_or(0, |i| history[i].epoch);
    let end = history.get(index).map_or(u64::MAX, |e| e.start_offset);
    (epoch, end)
}

/// A history as the divergence check reads it: records before the first entry belong to epoch
/// 0, which begins at offset 0.
pub fn with_implicit_epoch(history: &[EpochEntry]) -> Vec<EpochEntry> {
    let mut full = Vec::with_capacity(history.len() + 1);
    if history
        .first()
        .is_none_or(|first| first.start_offset > 0 && first.epoch > 0)
    {
        full.push(EpochEntry {
            epoch: 0,
            start_offset: 0,
        });
    }
    full.extend_from_slice(history);
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, start_offset: u64) -> EpochEntry {
        EpochEntry {
            epoch,
            start_offset,
        }
    }

    #[test]
    fn epoch_span_finds_the_epoch_and_its_end() {
        let history = [entry(1, 100), entry(3, 500)];
        assert_eq!(epoch_span(&history, 0), (0, 100));
        assert_eq!(epoch_span(&history, 99), (0, 100));
        assert_eq!(epoch_span(&history, 100), (1, 500));
        assert_eq!(epoch_span(&history, 499), (1, 500));
        assert_eq!(epoch_span(&history, 500), (3, u64::MAX));
        assert_eq!(epoch_span(&[], 7), (0, u64::MAX));
    }

    #[test]
    fn the_implicit_epoch_covers_records_before_the_first_entry() {
        assert_eq!(with_implicit_epoch(&[]), vec![entry(0, 0)]);
        assert_eq!(
            with_implicit_epoch(&[entry(2, 50)]),
            vec![entry(0, 0), entry(2, 50)]
        );
        assert_eq!(with_implicit_epoch(&[entry(2, 0)]), vec![entry(2, 0)]);
    }
}
