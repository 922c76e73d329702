//! The broker's store: the commit log, its consume queues, flushing, recovery and retention.
//!
//! Map, following one append:
//! - [`Store`] (this file) validates and encodes the message in the caller's task
//!   ([`record`], [`message`]) and hands it to [`writer`], the one thread that owns the tail.
//! - [`writer`] group-commits: gathers waiting appends, assigns queue and commit-log offsets,
//!   writes them to the tail [`segment`] of the [`commit_log`] with one `pwrite`, hands their
//!   consume-queue entries to the dispatcher (`index_handoff`), and answers.
//! - [`flush`] fsyncs what was written (at once under `SYNC_FLUSH`, on an interval under
//!   `ASYNC_FLUSH`); a `SYNC_FLUSH` append waits for it up to `sync_flush_timeout_ms`. At light
//!   load the writer runs the fsync and the dispatcher's indexing itself, after answering.
//! - [`dispatch`] writes the handed-over entries, and scans ([`scan`]) whatever was written
//!   without one (raw appends), into the [`consume_queue`]s and saves the [`checkpoint`]; [`read`]
//!   serves messages from them up to the confirm offset.
//! - `shipped` implements replication's `ShippedLog` over the store (what a master ships from
//!   and a slave appends to).
//! - [`recovery`] rebuilds a consistent state at open, CRC-checking every record past the
//!   checkpoint's verified offset (`verified`); [`scrub`] re-reads and checks the whole log in
//!   the background; both, reads and the dispatcher report a corrupt record to [`health`], which
//!   the broker acts on; [`truncate`] cuts the log crash-safely (a repair cuts at a corrupt
//!   record), after [`truncation_report`] lists what it cuts; [`retention`] deletes old segments;
//!   `page_cache` hands flushed pages far behind the tail back to the kernel; `preallocate` makes
//!   the next segment ahead of time; [`epoch`] keeps the epoch history; every metadata file
//!   goes through [`meta_file`]'s crash-safe protocol. [`config`], [`error`], [`signal`] and
//!   [`shared`] hold the settings, the error type, thread wake-ups and the state threads share.
//! - The seam to the owner: the store imports nothing from the rest of the broker crate (the test
//!   `broker/tests/store_seam.rs` fails if a file here does). It reports what its owner counts
//!   (flush latency, scrubbed bytes, scrub passes) to the [`observer::StoreObserver`] given to
//!   [`Store::open_with`] (the broker's metrics implement it), and owns the [`failpoint`]s that
//!   fault tests arm to stop a truncation at one exact step.
//!
//! Threads: writer, flusher, dispatcher, housekeeping (retention, page-cache release, the disk's
//! high-water mark), preallocator, scrubber (not started when `scrub_bytes_per_second` is 0).
//! Callers use async methods; the threads are plain OS threads, because every one of them spends
//! its time in blocking file-system calls. The last four run at a lower priority
//! ([`BACKGROUND_THREAD_NICE`]).
//!
//! Directory layout: `lock`, `abort` (present while open), `checkpoint` (with the verified
//! offset), `epoch`,
//! `truncate.intent` (only during a truncation), `truncated/<from>-<to>.jsonl` (one report per
//! truncation that cut messages), `commitlog/<20-digit base offset>`,
//! `consumequeue/<topic>/<queue id>/<20-digit first queue offset>`.

pub mod checkpoint;
pub mod commit_log;
pub mod config;
pub mod consume_queue;
pub mod dispatch;
pub mod epoch;
pub mod error;
pub mod failpoint;
pub mod flush;
pub mod health;
mod index_handoff;
mod lifecycle;
pub mod message;
pub mod meta_file;
pub mod observer;
mod page_cache;
mod preallocate;
pub mod read;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod scan;
pub mod scrub;
pub mod segment;
mod shared;
mod shipped;
mod signal;
pub mod truncate;
pub mod truncation_report;
mod verified;
pub mod writer;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod regression_tests;
#[cfg(test)]
mod scrub_tests;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{FlushDiskType, StoreConfig};
pub use epoch::EpochEntry;
pub use error::{Result, StoreError};
pub use health::{Corruption, StoreHealth};
pub use message::{NewMessage, StoredMessage};
pub use observer::{NoObserver, StoreObserver};
pub use read::{GetRequest, GetResult, GetStatus, TagFilter};
pub use recovery::RecoveryReport;
pub use retention::RetentionReport;
pub use shared::{ConfirmMode, LogProgress};

use consume_queue::CqEntry;
use index_handoff::RunEntries;
use lifecycle::Threads;
use shared::Shared;
use writer::{EncodedBatch, WriterCommand};

/// Name of the marker file present while a store is open: found at open, it means a crash.
pub const ABORT_FILE_NAME: &str = "abort";

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How durable an append is locally, in RocketMQ's terms (the replication statuses are the
/// broker's, from its in-sync set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutStatus {
    /// Written; and flushed, under `SYNC_FLUSH`.
    Ok,
    /// Written, but the covering fsync did not finish within `sync_flush_timeout_ms`. The
    /// message stays in the log and becomes durable when that fsync finishes.
    FlushDiskTimeout,
}

/// Where an append landed and how durable it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    pub status: PutStatus,
    /// Offset of the first record.
    pub commit_log_offset: u64,
    /// Offset of each record of a batch ([`Store::append_batch`] of more than one message), in
    /// order; empty for a single record (its offset is `commit_log_offset`). Not always
    /// `commit_log_offset` plus the sizes before it: a segment roll inside the batch puts a
    /// padding record between two of its records.
    pub record_commit_log_offsets: Vec<u64>,
    /// Queue offset of the first message; a batch takes consecutive queue offsets.
    pub queue_offset: u64,
    /// Offset after the last record.
    pub end_offset: u64,
    pub store_timestamp_ms: u64,
}

/// An open store. Methods take `&self`; share it with an `Arc`.
pub struct Store {
    shared: Arc<Shared>,
    writer_tx: mpsc::Sender<WriterCommand>,
    threads: Mutex<Threads>,
    recovery: RecoveryReport,
}

impl Store {
    /// What recovery found when this store opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// Appends one message. Under `SYNC_FLUSH`, returns once it is fsynced (or with
    /// `FLUSH_DISK_TIMEOUT` after `sync_flush_timeout_ms`); under `ASYNC_FLUSH`, once written.
    /// Bad input is an error and writes nothing.
    pub async fn append(&self, message: NewMessage) -> Result<AppendResult> {
        let mut bytes = Vec::new();
        record::encode_message(&message, self.shared.limits, &mut bytes)?;
        let entries = RunEntries::One(index_entry(&message, bytes.len()));
        self.submit(EncodedBatch {
            topic: message.topic,
            queue_id: message.queue_id,
            bytes,
            count: 1,
            record_commit_log_offsets: Vec::new(),
            entries,
        })
        .await
    }

    /// Appends several messages of one topic and queue together: consecutive queue offsets, one
    /// durability decision for all. Any bad message rejects the whole batch, writing nothing.
    pub async fn append_batch(&self, messages: Vec<NewMessage>) -> Result<AppendResult> {
        let Some(first) = messages.first() else {
            return Err(StoreError::BatchInvalid {
                reason: "empty batch",
            });
        };
        let (topic, queue_id) = (first.topic.clone(), first.queue_id);
        let mut bytes = Vec::new();
        let mut entries = Vec::with_capacity(messages.len());
        for message in &messages {
            if message.topic != topic || message.queue_id != queue_id {
                return Err(StoreError::BatchInvalid {
                    reason: "every message of a batch must have the same topic and queue",
                });
            }
            let start = bytes.len();
            record::encode_message(message, self.shared.limits, &mut bytes)?;
            entries.push(index_entry(message, bytes.len() - start));
        }
        if bytes.len() > self.shared.config.batch_bytes_max {
            return Err(StoreError::BatchInvalid {
                reason: "batch is larger than batch_bytes_max",
            });
        }
        self.submit(EncodedBatch {
            topic,
            queue_id,
            bytes,
            count: messages.len() as u32,
            record_commit_log_offsets: if messages.len() > 1 {
                Vec::with_capacity(messages.len())
            } else {
                Vec::new()
            },
            entries: RunEntries::Many(entries),
        })
        .await
    }

    async fn submit(&self, batch: EncodedBatch) -> Result<AppendResult> {
        if let Some(err) = self.shared.poisoned() {
            return Err(err);
        }
        if self
            .shared
            .replica_only
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(StoreError::ReplicaOnly);
        }
        if let Some(commit_log_offset) = self.shared.dispatch_stop_offset() {
            // Nothing past a corrupt record is indexed: a message appended now could not be read
            // until a repair cuts the log there, and the cut would take it too.
            return Err(self.shared.corrupt_error(
                commit_log_offset,
                "a corrupt record stops the consume queues: appends wait for its repair",
            ));
        }
        let (reply, written) = oneshot::channel();
        self.writer_tx
            .send(WriterCommand::Append { batch, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        let mut written = written.await.map_err(|_| StoreError::Stopped)??;
        // Freed here, on the thread that allocated it (see `Written::encoded`), before any wait.
        drop(std::mem::take(&mut written.encoded));
        let status = match self.shared.flush_disk_type() {
            FlushDiskType::AsyncFlush => PutStatus::Ok,
            FlushDiskType::SyncFlush => {
                self.wait_flushed(written.end_offset, written.truncation_generation)
                    .await?
            }
        };
        Ok(AppendResult {
            status,
            commit_log_offset: written.commit_log_offset,
            record_commit_log_offsets: written.record_commit_log_offsets,
            queue_offset: written.queue_offset,
            end_offset: written.end_offset,
            store_timestamp_ms: written.store_timestamp_ms,
        })
    }

    /// Waits for the fsync covering `end_offset`. A truncation since the write (a new
    /// generation) fsynced everything first, so the append was durable before it.
    async fn wait_flushed(&self, end_offset: u64, generation: u64) -> Result<PutStatus> {
        let mut progress = self.shared.flush_progress.subscribe();
        let timeout = Duration::from_millis(self.shared.config.sync_flush_timeout_ms);
        let waited = tokio::time::timeout(
            timeout,
            progress.wait_for(|p| {
                p.flushed_offset >= end_offset || p.truncation_generation != generation || p.failed
            }),
        )
        .await;
        match waited {
            Err(_elapsed) => Ok(PutStatus::FlushDiskTimeout),
            Ok(Err(_closed)) => Err(StoreError::Stopped),
            Ok(Ok(p))
                if p.failed
                    && p.flushed_offset < end_offset
                    && p.truncation_generation == generation =>
            {
                Err(self.shared.poisoned().unwrap_or(StoreError::Stopped))
            }
            Ok(Ok(_)) => Ok(PutStatus::Ok),
        }
    }

    /// Appends records copied from a master at exactly `commit_log_offset` (this log's write
    /// offset). Every record is checked (CRC, position, queue offset, topic name, queue id)
    /// before anything is written. Returns the new write offset once the bytes are *written*,
    /// not fsynced, under either flush policy: a slave reports its written offset from this and
    /// its flushed offset from [`Store::flushed_offset`] (or [`Store::flush`]), never one for
    /// the other.
    pub async fn append_raw(&self, commit_log_offset: u64, bytes: Bytes) -> Result<u64> {
        let (reply, done) = oneshot::channel();
        self.writer_tx
            .send(WriterCommand::AppendRaw {
                commit_log_offset,
                bytes,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }

    /// Cuts the log back to `commit_log_offset` (a record boundary), crash-safely; see
    /// [`truncate`]. The confirm offset is lowered first, so consumers stop seeing the tail.
    pub async fn truncate_to(&self, commit_log_offset: u64) -> Result<()> {
        self.truncate(commit_log_offset, true).await
    }

    async fn truncate(&self, commit_log_offset: u64, report: bool) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.writer_tx
            .send(WriterCommand::Truncate {
                commit_log_offset,
                report,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }

    /// How a replica repairs a corrupt record: cuts its log back to the corrupt record, or, when
    /// that cannot be proven a record boundary, to the start of its segment (always one), so
    /// that replication copies the range again from the master. No truncation report: nothing is
    /// lost, it is fetched again. Answers the offset cut to. A corrupt offset retention already
    /// deleted needs no cut: the fault is forgotten.
    pub async fn cut_for_repair(&self, corrupt_offset: u64) -> Result<u64> {
        let Some(segment) = self.shared.log.segment_for(corrupt_offset) else {
            let min = self.min_offset();
            if corrupt_offset < min {
                self.shared.forget_corruption_from(0);
                return Ok(min);
            }
            return Err(StoreError::OffsetInvalid {
                commit_log_offset: corrupt_offset,
                reason: "no segment holds the corrupt offset",
            });
        };
        tracing::warn!(
            corrupt_offset,
            "repairing a corrupt record: cutting the log back to it to copy the range again from \
             the master"
        );
        match self.truncate(corrupt_offset, false).await {
            Ok(()) => return Ok(corrupt_offset),
            Err(StoreError::OffsetInvalid { reason, .. }) => {
                tracing::warn!(
                    corrupt_offset,
                    reason,
                    "not a provable record boundary; cutting back to its segment's start"
                );
            }
            Err(err) => return Err(err),
        }
        let base = segment.base_offset().max(self.min_offset());
        self.truncate(base, false).await?;
        Ok(base)
    }

    /// Makes a log that holds no record begin at `commit_log_offset`, with `epoch` as its whole
    /// epoch history: a slave whose store is new (a replaced disk) joining a master whose log
    /// may no longer hold offset 0 (retention deleted it) begins at the master's first offset.
    /// Queues then begin at the queue offsets of their first records. Refused for a log that
    /// holds a record.
    pub async fn start_at(&self, commit_log_offset: u64, epoch: Option<EpochEntry>) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.writer_tx
            .send(WriterCommand::StartAt {
                commit_log_offset,
                epoch,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }

    /// Records that `epoch` begins at the current write offset; returns that offset.
    pub async fn begin_epoch(&self, epoch: u64) -> Result<u64> {
        let (reply, done) = oneshot::channel();
        self.writer_tx
            .send(WriterCommand::BeginEpoch { epoch, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }

    /// The epoch history, oldest first.
    pub fn epoch_history(&self) -> Vec<EpochEntry> {
        self.shared
            .epochs
            .lock()
            .expect("epoch lock poisoned")
            .entries()
            .to_vec()
    }

    /// Waits until everything written so far is fsynced (forces a flush under `ASYNC_FLUSH`).
    pub async fn flush(&self) -> Result<()> {
        let generation = self.shared.flush_progress.borrow().truncation_generation;
        let target = self.write_offset();
        self.shared
            .flush_requested_offset
            .fetch_max(target, std::sync::atomic::Ordering::AcqRel);
        self.shared.flush_signal.notify();
        let mut progress = self.shared.flush_progress.subscribe();
        let p = progress
            .wait_for(|p| {
                p.flushed_offset >= target || p.truncation_generation != generation || p.failed
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        if p.failed && p.flushed_offset < target && p.truncation_generation == generation {
            return Err(self.shared.poisoned().unwrap_or(StoreError::Stopped));
        }
        Ok(())
    }

    /// End of the last record written.
    pub fn write_offset(&self) -> u64 {
        self.shared.log.write_offset()
    }
    /// End of the data fsynced.
    pub fn flushed_offset(&self) -> u64 {
        self.shared.log.flushed_offset()
    }
    /// First offset still held.
    pub fn min_offset(&self) -> u64 {
        self.shared.log.min_offset()
    }
    /// Highest offset consumers may read.
    pub fn confirm_offset(&self) -> u64 {
        self.shared.confirm_offset()
    }

    /// Highest offset whose messages readers can see now: the confirm offset, or less while
    /// the dispatcher has not yet indexed everything below it.
    pub fn readable_offset(&self) -> u64 {
        *self.shared.readable_tx.borrow()
    }

    /// Watches the readable offset (long polling waits on it).
    pub fn subscribe_readable_offset(&self) -> watch::Receiver<u64> {
        self.shared.readable_tx.subscribe()
    }

    /// Waits until messages below `commit_log_offset` are readable, at most `timeout`. Returns
    /// whether they are.
    pub async fn wait_readable(&self, commit_log_offset: u64, timeout: Duration) -> bool {
        let mut readable = self.subscribe_readable_offset();
        tokio::time::timeout(timeout, readable.wait_for(|r| *r >= commit_log_offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Makes this store a slave's (`true`): appends are refused with
    /// [`StoreError::ReplicaOnly`] and only [`Store::append_raw`] writes, or a master's again.
    /// Raised by every truncation: whoever reads the log incrementally (a slave's offset table)
    /// starts over when it changes.
    pub fn truncation_generation(&self) -> u64 {
        self.shared.flush_progress.borrow().truncation_generation
    }

    pub fn set_replica_only(&self, replica_only: bool) {
        self.shared
            .replica_only
            .store(replica_only, std::sync::atomic::Ordering::Release);
    }

    /// Whether this store is a slave's ([`Store::set_replica_only`]).
    pub fn is_replica_only(&self) -> bool {
        self.shared
            .replica_only
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hands the confirm offset to the owner (replication) or back to the store.
    pub fn set_confirm_mode(&self, mode: ConfirmMode) {
        self.shared.set_confirm_mode(mode);
        if mode == ConfirmMode::Local {
            self.shared.on_local_progress();
        }
    }

    /// Under [`ConfirmMode::External`], lets consumers see up to `commit_log_offset`: the confirm
    /// offset rises at once as far as what is locally durable under the flush policy, and
    /// follows the flusher the rest of the way. Never lowers it. Returns the confirm offset now
    /// in force.
    pub fn set_confirm_offset(&self, commit_log_offset: u64) -> u64 {
        if self.shared.confirm_mode() == ConfirmMode::External {
            self.shared.allow_confirm_offset(commit_log_offset);
        }
        self.confirm_offset()
    }

    /// The disk is past the high-water mark: client sends are to be refused (see [`health`]).
    pub fn disk_full(&self) -> bool {
        self.shared.health.borrow().disk_full
    }

    /// Watches the store's faults and verification (see [`health`]).
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    /// The verified offset the next checkpoint saves: every record below it was CRC-checked,
    /// and none below it is known corrupt (see [`verified`]).
    pub fn verified_offset(&self) -> u64 {
        self.shared.verified_offset()
    }

    /// Watches the written and flushed offsets (replication ships and acknowledges by them).
    pub fn subscribe_progress(&self) -> watch::Receiver<LogProgress> {
        self.shared.progress_tx.subscribe()
    }

    /// (min, max) queue offsets of a queue, if it holds or held any message.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> Option<(u64, u64)> {
        self.shared
            .queues
            .get(topic, queue_id)
            .map(|q| (q.min_queue_offset(), q.max_queue_offset()))
    }

    /// One retention pass as of `now_ms` (the housekeeping thread runs these on its own).
    pub fn run_retention(&self, now_ms: u64) -> Result<RetentionReport> {
        retention::run_once(&self.shared, now_ms)
    }
}

/// The consume-queue entry of an encoded message of `size_bytes`, but for its commit-log offset,
/// which the writer fills in (see `index_handoff`). The tag hash is the one the dispatcher would
/// read back from the record: [`record::check_message`] hashes the same `TAGS` property.
fn index_entry(message: &NewMessage, size_bytes: usize) -> CqEntry {
    CqEntry {
        commit_log_offset: 0,
        // Cannot truncate: encode_message bounds a record below u32::MAX.
        size_bytes: size_bytes as u32,
        tag_hash: message.tag().map_or(0, record::tag_hash),
    }
}
