//! State shared by the store's threads (writer, flusher, dispatcher, housekeeping, scrubber) and
//! its callers. Each field says which thread moves it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use super::commit_log::CommitLog;
use super::config::{FlushDiskType, StoreConfig};
use super::consume_queue::ConsumeQueues;
use super::epoch::EpochHistory;
use super::error::StoreError;
use super::health::{Corruption, StoreHealth};
use super::index_handoff::IndexHandoff;
use super::observer::StoreObserver;
use super::record::RecordLimits;
use super::signal::Signal;
use super::verified::VerifiedRange;

/// `dispatch_stop_offset` when the dispatcher may go on to the written end.
const DISPATCH_UNSTOPPED: u64 = u64::MAX;

/// Who sets the confirm offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmMode {
    /// The store: the flushed offset under `SYNC_FLUSH`, the written offset under `ASYNC_FLUSH`.
    Local,
    /// The store's owner (replication), through `Store::set_confirm_offset`; the store still
    /// never lets it pass what is locally durable under its flush policy.
    External,
}

/// Flush progress as `SYNC_FLUSH` appenders watch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushProgress {
    pub flushed_offset: u64,
    /// An fsync failed: nothing more will be flushed.
    pub failed: bool,
    /// Bumped by every truncation. A truncation first fsyncs everything written, so an append
    /// written in an earlier generation was durable before the cut, whatever `flushed_offset`
    /// says now (new data may refill the same offsets: comparing offsets alone would lie).
    pub truncation_generation: u64,
}

/// The commit log's local progress, as replication watches it: a master ships what is written,
/// a slave acknowledges what it wrote and flushed.
pub use replication::ship::LogProgress;

/// Progress of the dispatcher; its mutex is held for a whole dispatch round, so holding it keeps
/// the consume queues still (truncation does).
#[derive(Debug)]
pub struct DispatchState {
    pub dispatched_offset: u64,
    pub last_checkpoint_ms: u64,
}

pub(crate) struct Shared {
    pub config: StoreConfig,
    pub limits: RecordLimits,
    pub dir: PathBuf,
    /// Moved by the writer (`write_offset`) and the flusher (`flushed_offset`).
    pub log: CommitLog,
    /// Appended by the dispatcher; cut by truncation; trimmed by retention.
    pub queues: ConsumeQueues,
    /// Changed by the writer only (epoch commands, truncation).
    pub epochs: Mutex<EpochHistory>,
    pub dispatch: Mutex<DispatchState>,
    /// Consume-queue entries of what the writer wrote, waiting for the dispatcher.
    pub index_handoff: IndexHandoff,
    /// Mirror of `dispatch.dispatched_offset` for lock-free checks.
    pub dispatched_offset: AtomicU64,
    /// Held by the flusher around (read write_offset, fsync, publish) and by truncation, so that
    /// a flush that began before a truncation cannot publish an offset past the new end.
    pub flush_lock: Mutex<()>,
    pub flush_signal: Signal,
    pub dispatch_signal: Signal,
    pub housekeeping_signal: Signal,
    pub preallocate_signal: Signal,
    pub scrub_signal: Signal,
    pub flush_progress: watch::Sender<FlushProgress>,
    /// Highest commit-log offset consumers may read. Changed only under `confirm_lock`, which
    /// also covers the read of the locally durable offset that bounds it, so a raise computed
    /// before a truncation cannot land after the truncation's clamp.
    confirm_offset: AtomicU64,
    /// Under [`ConfirmMode::External`], the confirm offset the owner allows; the store raises
    /// the confirm offset towards it as local durability catches up.
    confirm_target: AtomicU64,
    confirm_lock: Mutex<()>,
    /// Written and flushed offsets, published after every write, flush and truncation.
    pub progress_tx: watch::Sender<LogProgress>,
    confirm_mode: AtomicU8,
    /// `min(confirm_offset, dispatched_offset)`: what readers can actually see.
    pub readable_tx: watch::Sender<u64>,
    /// Set once, by the first failed write or fsync; appends are refused from then on.
    poison: OnceLock<Arc<StoreError>>,
    /// Faults and verification, for the broker's role and the controller (see `health`).
    pub health: watch::Sender<StoreHealth>,
    /// What of the log is known verified (see `verified`). Set by recovery, raised by the
    /// scrubber, lowered by truncation; read at each checkpoint.
    pub verified: Mutex<VerifiedRange>,
    /// The commit-log offset of a corrupt record the dispatcher cannot index past (its queue and
    /// queue offset are unreadable, and every later record of its queue would skip one), or
    /// [`DISPATCH_UNSTOPPED`]. Set by recovery or by the dispatcher when it meets one; cleared by a
    /// truncation at or below it. While set, consumers see nothing past it and appends are
    /// refused (see `Store::append`).
    dispatch_stop_offset: AtomicU64,
    /// Appends (not raw appends) written so far; the flusher gathers by it.
    pub appends_written: AtomicU64,
    /// `appends_written` as it was when the last fsync began: every append it counts is durable.
    /// Whoever fsyncs (the flusher, or the writer itself, see `writer`) raises it, so that the
    /// flusher counts only the appends its own fsync answered.
    pub appends_flushed: AtomicU64,
    /// How long the last fsync of the commit log took, in microseconds: the writer fsyncs its
    /// own group only while fsyncs are quick (see `flush::fsync_is_quick`).
    pub last_fsync_us: AtomicU64,
    /// The commit log's page cache below this offset was handed back to the kernel (see
    /// `page_cache`). Moved by the housekeeping thread; lowered by truncation.
    pub page_cache_released_offset: AtomicU64,
    /// Under `ASYNC_FLUSH`, a flush up to this offset was asked for (by `Store::flush`).
    pub flush_requested_offset: AtomicU64,
    /// Set on a slave's store: appends are refused, only raw appends (replication) write.
    pub replica_only: std::sync::atomic::AtomicBool,
    /// Set by `Store::shutdown`: the writer closes its channel and drains it.
    pub writer_stop_requested: std::sync::atomic::AtomicBool,
    /// Held for the store's lifetime: the exclusive lock on the directory.
    pub _lock_file: File,
    /// Where the flusher and the scrubber report what the owner counts (see `observer`).
    pub observer: Arc<dyn StoreObserver>,
    /// Odd while a truncation or `start_at` rewrites the log's bytes or segments, bumped at the
    /// start and at the end of each (a sequence lock): the scrubber confirms a finding only if it
    /// read no byte while one ran (see `scrub`), without a lock the writer would wait on.
    log_rewrite_seq: AtomicU64,
    /// Test-only: rounds of the flusher's loop, to catch busy loops.
    #[cfg(test)]
    pub flusher_rounds: AtomicU64,
    /// Test-only fault: the flusher sleeps this long before each fsync.
    #[cfg(test)]
    pub fsync_delay_ms: AtomicU64,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: StoreConfig,
        dir: &Path,
        log: CommitLog,
        queues: ConsumeQueues,
        epochs: EpochHistory,
        lock_file: File,
        recovered_end: u64,
        confirm_mode: ConfirmMode,
        initial_confirm_offset: u64,
        verified: VerifiedRange,
        dispatch_stop_offset: Option<u64>,
        observer: Arc<dyn StoreObserver>,
    ) -> Shared {
        debug_assert!(initial_confirm_offset <= recovered_end);
        let dispatched_offset =
            dispatch_stop_offset.map_or(recovered_end, |stop| stop.min(recovered_end));
        // Recovery read the whole unchecked log through the page cache: all of it is releasable.
        let released_offset = log.min_offset();
        let limits = RecordLimits {
            max_message_bytes: config.max_message_bytes,
            max_properties_bytes: config.max_properties_bytes,
        };
        Shared {
            config,
            limits,
            dir: dir.to_path_buf(),
            log,
            queues,
            epochs: Mutex::new(epochs),
            dispatch: Mutex::new(DispatchState {
                dispatched_offset,
                last_checkpoint_ms: super::now_ms(),
            }),
            index_handoff: IndexHandoff::default(),
            dispatched_offset: AtomicU64::new(dispatched_offset),
            flush_lock: Mutex::new(()),
            flush_signal: Signal::default(),
            dispatch_signal: Signal::default(),
            housekeeping_signal: Signal::default(),
            preallocate_signal: Signal::default(),
            scrub_signal: Signal::default(),
            flush_progress: watch::Sender::new(FlushProgress {
                flushed_offset: recovered_end,
                failed: false,
                truncation_generation: 0,
            }),
            confirm_offset: AtomicU64::new(initial_confirm_offset),
            confirm_target: AtomicU64::new(initial_confirm_offset),
            confirm_lock: Mutex::new(()),
            progress_tx: watch::Sender::new(LogProgress {
                write_offset: recovered_end,
                flushed_offset: recovered_end,
            }),
            confirm_mode: AtomicU8::new(confirm_mode as u8),
            readable_tx: watch::Sender::new(initial_confirm_offset.min(dispatched_offset)),
            poison: OnceLock::new(),
            health: watch::Sender::new(StoreHealth::default()),
            verified: Mutex::new(verified),
            dispatch_stop_offset: AtomicU64::new(
                dispatch_stop_offset.unwrap_or(DISPATCH_UNSTOPPED),
            ),
            appends_written: AtomicU64::new(0),
            appends_flushed: AtomicU64::new(0),
            last_fsync_us: AtomicU64::new(0),
            page_cache_released_offset: AtomicU64::new(released_offset),
            flush_requested_offset: AtomicU64::new(0),
            replica_only: std::sync::atomic::AtomicBool::new(false),
            writer_stop_requested: std::sync::atomic::AtomicBool::new(false),
            _lock_file: lock_file,
            observer,
            log_rewrite_seq: AtomicU64::new(0),
            #[cfg(test)]
            flusher_rounds: AtomicU64::new(0),
            #[cfg(test)]
            fsync_delay_ms: AtomicU64::new(0),
        }
    }

    pub fn flush_disk_type(&self) -> FlushDiskType {
        self.config.flush_disk_type
    }

    /// Records the first fatal failure; later appends get [`StoreError::Poisoned`].
    pub fn poison(&self, error: StoreError) {
        tracing::error!(error = %error, "store stops accepting writes");
        let reason = error_chain(&error);
        // `Stopped` is a halt (a test's simulated crash), not a failure to report.
        let failed = !matches!(error, StoreError::Stopped);
        if self.poison.set(Arc::new(error)).is_ok() && failed {
            self.health.send_modify(|h| h.write_failed = Some(reason));
        }
        self.flush_progress.send_modify(|p| p.failed = true);
    }

    /// Records a record that failed verification; logged and published when it is the lowest
    /// known. The store is no longer `verified` from then on (see `health`).
    pub fn report_corrupt(&self, commit_log_offset: u64, reason: String) {
        let found = Corruption {
            commit_log_offset,
            reason,
        };
        let mut lowered = false;
        self.health.send_if_modified(|h| {
            let was_verified = std::mem::replace(&mut h.verified, false);
            lowered = h.note_corrupt(found.clone());
            lowered || was_verified
        });
        if lowered {
            tracing::error!(
                commit_log_offset,
                reason = %found.reason,
                "corrupt record in the commit log: this replica leaves the in-sync set and \
                 repairs the range from a healthy one"
            );
        }
    }

    /// The lowest commit-log offset known to hold a corrupt record.
    pub fn corrupt_offset(&self) -> Option<u64> {
        self.health
            .borrow()
            .corrupt
            .as_ref()
            .map(|c| c.commit_log_offset)
    }

    /// After a truncation to `end`: a corrupt record at or past it is gone.
    pub fn forget_corruption_from(&self, end: u64) {
        self.forget_corruption_if(
            |offset| offset >= end,
            "the corrupt record was cut from the log",
        );
    }

    /// After retention deleted every segment below `min_offset`: a corrupt record below it is
    /// gone with its segment.
    pub fn forget_corruption_before(&self, min_offset: u64) {
        self.forget_corruption_if(
            |offset| offset < min_offset,
            "retention deleted the segment of the corrupt record",
        );
    }

    fn forget_corruption_if(&self, gone: impl Fn(u64) -> bool, why: &'static str) {
        self.health.send_if_modified(|h| match &h.corrupt {
            Some(c) if gone(c.commit_log_offset) => {
                tracing::info!(commit_log_offset = c.commit_log_offset, "{why}");
                h.corrupt = None;
                true
            }
            _ => false,
        });
    }

    /// Marks the store verified (see `health`), unless a corrupt record is known. Returns whether
    /// it just became verified.
    pub fn mark_verified(&self) -> bool {
        self.health.send_if_modified(|h| {
            let became = h.corrupt.is_none() && !h.verified;
            h.verified |= became;
            became
        })
    }

    /// Marks a rewrite of the log's bytes (a truncation, `start_at`) under way until the guard
    /// drops (see `log_rewrite_seq`).
    pub fn log_rewrite(&self) -> LogRewrite<'_> {
        self.log_rewrite_seq.fetch_add(1, Ordering::SeqCst);
        LogRewrite { shared: self }
    }

    /// The rewrite sequence now: odd while a rewrite runs; a change means one ran.
    pub fn log_rewrite_seq(&self) -> u64 {
        self.log_rewrite_seq.load(Ordering::SeqCst)
    }

    /// The verified offset the next checkpoint saves (see `verified`).
    pub fn verified_offset(&self) -> u64 {
        let corrupt_offset = self.corrupt_offset();
        let flushed_offset = self.log.flushed_offset();
        self.verified
            .lock()
            .expect("verified range lock poisoned")
            .verified_offset(flushed_offset, corrupt_offset)
    }

    /// [`StoreError::Corrupt`] for the record at `commit_log_offset`, naming its segment file.
    pub fn corrupt_error(&self, commit_log_offset: u64, reason: &'static str) -> StoreError {
        match self.log.segment_for(commit_log_offset) {
            Some(segment) => StoreError::Corrupt {
                path: segment.path().to_path_buf(),
                position: segment.file_position(commit_log_offset),
                reason,
            },
            None => StoreError::Corrupt {
                path: self.log.dir().to_path_buf(),
                position: commit_log_offset,
                reason,
            },
        }
    }

    /// The corrupt record the dispatcher cannot pass, if any (see `dispatch_stop_offset`).
    pub fn dispatch_stop_offset(&self) -> Option<u64> {
        let stop = self.dispatch_stop_offset.load(Ordering::Acquire);
        (stop != DISPATCH_UNSTOPPED).then_some(stop)
    }

    /// How far the dispatcher may index now: the written end, or the corrupt record it stops at.
    pub fn dispatch_limit(&self) -> u64 {
        self.log
            .write_offset()
            .min(self.dispatch_stop_offset.load(Ordering::Acquire))
    }

    /// The dispatcher met a corrupt record at `commit_log_offset`: it indexes nothing past it.
    /// Called under the dispatch mutex.
    pub fn stop_dispatch_at(&self, commit_log_offset: u64) {
        self.dispatch_stop_offset
            .fetch_min(commit_log_offset, Ordering::AcqRel);
    }

    /// A truncation cut the log at `commit_log_offset`: a corrupt record at or past it no longer
    /// stops the dispatcher. Called under the dispatch mutex.
    pub fn resume_dispatch_from(&self, commit_log_offset: u64) {
        if self.dispatch_stop_offset.load(Ordering::Acquire) >= commit_log_offset {
            self.dispatch_stop_offset
                .store(DISPATCH_UNSTOPPED, Ordering::Release);
        }
    }

    pub fn poisoned(&self) -> Option<StoreError> {
        self.poison.get().map(|cause| StoreError::Poisoned {
            cause: cause.clone(),
        })
    }

    pub fn confirm_offset(&self) -> u64 {
        self.confirm_offset.load(Ordering::Acquire)
    }

    pub fn confirm_mode(&self) -> ConfirmMode {
        if self.confirm_mode.load(Ordering::Acquire) == ConfirmMode::Local as u8 {
            ConfirmMode::Local
        } else {
            ConfirmMode::External
        }
    }

    pub fn set_confirm_mode(&self, mode: ConfirmMode) {
        self.confirm_mode.store(mode as u8, Ordering::Release);
    }

    /// What the local flush policy allows consumers to see.
    pub fn locally_durable_offset(&self) -> u64 {
        match self.flush_disk_type() {
            FlushDiskType::SyncFlush => self.log.flushed_offset(),
            FlushDiskType::AsyncFlush => self.log.write_offset(),
        }
    }

    /// Raises the confirm offset towards `offset` (never lowers it), never past what is locally
    /// durable under the flush policy, and wakes long pollers.
    pub fn raise_confirm_offset(&self, offset: u64) {
        let _guard = self.confirm_lock.lock().expect("confirm lock poisoned");
        let allowed = offset.min(self.locally_durable_offset());
        if allowed > self.confirm_offset.load(Ordering::Acquire) {
            self.confirm_offset.store(allowed, Ordering::Release);
            self.publish_readable();
        }
    }

    /// Lowers the confirm offset to at most `offset` (truncation only). Called after the
    /// truncation lowered the written and flushed offsets, so no later raise can pass it.
    pub fn clamp_confirm_offset(&self, offset: u64) {
        let _guard = self.confirm_lock.lock().expect("confirm lock poisoned");
        self.confirm_target.fetch_min(offset, Ordering::AcqRel);
        if self.confirm_offset.load(Ordering::Acquire) > offset {
            self.confirm_offset.store(offset, Ordering::Release);
            self.publish_readable();
        }
    }

    /// Recomputes the readable offset and wakes its watchers when it changed. Called after the
    /// confirm offset or the dispatched offset moves. The value is computed under the watch's
    /// own lock, so two publishers cannot store their results out of order.
    pub fn publish_readable(&self) {
        self.readable_tx.send_if_modified(|current| {
            let readable = self
                .confirm_offset()
                .min(self.dispatched_offset.load(Ordering::Acquire));
            let changed = *current != readable;
            *current = readable;
            changed
        });
    }

    /// Under [`ConfirmMode::External`]: the owner allows consumers up to `offset`. The confirm
    /// offset follows at once as far as local durability allows, and the rest of the way as the
    /// writer and flusher progress. A lower allowance than before stops that (the in-sync set
    /// grew), but never lowers the confirm offset itself.
    pub fn allow_confirm_offset(&self, offset: u64) {
        {
            let _guard = self.confirm_lock.lock().expect("confirm lock poisoned");
            self.confirm_target.store(offset, Ordering::Release);
        }
        self.raise_confirm_offset(offset);
    }

    /// Called by the writer and the flusher after they move their offsets, and by truncation.
    pub fn on_local_progress(&self) {
        let target = match self.confirm_mode() {
            ConfirmMode::Local => self.locally_durable_offset(),
            ConfirmMode::External => self.confirm_target.load(Ordering::Acquire),
        };
        self.raise_confirm_offset(target);
        self.publish_progress();
    }

    /// Publishes the written and flushed offsets to their watchers, when they changed. The
    /// offsets are read under the watch's own lock: the writer and the flusher both publish, and
    /// values read before the lock could land out of order and hide the newer one.
    pub fn publish_progress(&self) {
        self.progress_tx.send_if_modified(|current| {
            let now = LogProgress {
                write_offset: self.log.write_offset(),
                flushed_offset: self.log.flushed_offset(),
            };
            let changed = *current != now;
            *current = now;
            changed
        });
    }
}

/// A rewrite of the log under way (see [`Shared::log_rewrite`]); ends when dropped, on every
/// path out of the rewrite.
pub(crate) struct LogRewrite<'a> {
    shared: &'a Shared,
}

impl Drop for LogRewrite<'_> {
    fn drop(&mut self) {
        self.shared.log_rewrite_seq.fetch_add(1, Ordering::SeqCst);
    }
}

/// An error and its causes on one line: what the health report and the controller show.
fn error_chain(error: &StoreError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
