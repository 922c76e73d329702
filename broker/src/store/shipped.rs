//! The store as replication's [`ShippedLog`]: the methods map one to one onto the store's own,
//! and errors keep their cause and split into refusals (bad input, nothing changed), fatal
//! failures (a failed write or fsync, corruption: no write until reopened or repaired) and
//! other failures (the store is stopping).

use bytes::Bytes;
use replication::ship::{EpochEntry, LogError, LogErrorKind, LogProgress, ShippedLog};
use tokio::sync::watch;

use super::{Store, StoreError};

/// The store's error as replication's, kind by kind; the error itself travels as the source.
fn log_error(err: StoreError) -> LogError {
    let kind = if err.is_bad_input() {
        LogErrorKind::Refused
    } else if err.is_fatal() {
        LogErrorKind::Fatal
    } else {
        LogErrorKind::Failed
    };
    LogError::new(kind, err)
}

impl ShippedLog for Store {
    fn read_raw(&self, offset: u64, max_bytes: usize) -> Result<Bytes, LogError> {
        Store::read_raw(self, offset, max_bytes).map_err(log_error)
    }

    async fn append_raw(&self, offset: u64, bytes: Bytes) -> Result<u64, LogError> {
        Store::append_raw(self, offset, bytes)
            .await
            .map_err(log_error)
    }

    async fn truncate_to(&self, offset: u64) -> Result<(), LogError> {
        Store::truncate_to(self, offset).await.map_err(log_error)
    }

    async fn start_at(&self, offset: u64, epoch: Option<EpochEntry>) -> Result<(), LogError> {
        let epoch = epoch.map(|e| super::EpochEntry {
            epoch: e.epoch,
            start_offset: e.start_offset,
        });
        Store::start_at(self, offset, epoch)
            .await
            .map_err(log_error)
    }

    async fn begin_epoch(&self, epoch: u64) -> Result<u64, LogError> {
        Store::begin_epoch(self, epoch).await.map_err(log_error)
    }

    fn epoch_history(&self) -> Vec<EpochEntry> {
        Store::epoch_history(self)
            .into_iter()
            .map(|e| EpochEntry {
                epoch: e.epoch,
                start_offset: e.start_offset,
            })
            .collect()
    }

    fn min_offset(&self) -> u64 {
        Store::min_offset(self)
    }

    fn write_offset(&self) -> u64 {
        Store::write_offset(self)
    }

    fn progress(&self) -> watch::Receiver<LogProgress> {
        self.subscribe_progress()
    }

    fn confirm_offset(&self) -> u64 {
        Store::confirm_offset(self)
    }

    fn allow_confirm_offset(&self, offset: u64) -> u64 {
        self.set_confirm_offset(offset)
    }

    fn in_memory(&self, offset: u64) -> bool {
        self.tail_in_memory(offset)
    }

    fn flushes_every_write(&self) -> bool {
        self.shared.flush_disk_type() == super::FlushDiskType::SyncFlush
    }

    fn has_fault(&self) -> bool {
        !self.health().borrow().is_sound()
    }
}
