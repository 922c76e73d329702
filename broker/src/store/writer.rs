//! The writer: the one thread that owns the commit-log tail.
//!
//! Appenders encode their records in their own tasks and hand them over a bounded channel. The
//! writer takes the first request, gathers every request already waiting (up to
//! `batch_bytes_max`), assigns queue offsets and commit-log offsets, seals each record (offsets,
//! store timestamp, CRC) into one buffer and writes it with one `pwrite` per segment it touches.
//! Then it publishes `write_offset` (the shipper follows it) and answers every request. Under
//! `SYNC_FLUSH` the appender then waits for the fsync (group commit: one fsync answers every
//! append it covers), which the writer runs itself when nothing waits for it and the flusher
//! runs otherwise (`flush::flush_if_idle`); the consume-queue entries go the same way
//! (`dispatch::dispatch_if_idle`). At one append at a time that is one thread per append
//! instead of three.
//!
//! The writer also runs the commands that must not interleave with appends: raw appends (a
//! slave copying its master), truncation, and the start of an epoch.
//!
//! PERF: no allocation per message on this thread (the batch buffer and request vector are
//! reused), no lock held while writing, no logging per batch above debug.
//!
//! Why one file of about 700 lines: this is the one thread that owns the tail, and every
//! command it runs (group commit, raw appends, epochs, truncation, `start_at`) reads and moves
//! the same private state (the tail segment, the position, the queue-offset table) without a
//! lock. Split across files, that state would have to become visible to them all; the parts that
//! need no such state already live apart (`index_handoff`, `truncate`, `flush`, `segment`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::config::FlushDiskType;
use super::epoch::EpochEntry;
use super::error::{Result, StoreError};
use super::index_handoff::{IndexRun, RunEntries, WrittenRange};
use super::record::{self, Prefix, RECORD_PREFIX_BYTES};
use super::segment::Segment;
use super::shared::Shared;
use super::truncate;

/// Records of one append request: all for the same topic and queue, encoded and unsealed.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    pub topic: String,
    pub queue_id: u32,
    pub bytes: Vec<u8>,
    pub count: u32,
    /// For a batch of more than one record: empty, with room for `count` offsets (allocated by
    /// the appender, so the writer never allocates); the writer fills in where each record
    /// landed and hands it back in [`Written::record_commit_log_offsets`]. A batch's records are
    /// not always back to back: a segment roll inside it puts a padding record between two of
    /// them. Unused (no capacity) for a single record.
    pub record_commit_log_offsets: Vec<u64>,
    /// The consume-queue entry of each record, in order, from the appender (size and tag hash);
    /// the writer fills in each commit-log offset and hands them to the dispatcher (see
    /// `index_handoff`).
    pub entries: RunEntries,
}

/// Where an append landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub commit_log_offset: u64,
    /// Offset of each record of a batch of more than one, in order; empty for a single record
    /// (its offset is `commit_log_offset`).
    pub record_commit_log_offsets: Vec<u64>,
    pub queue_offset: u64,
    /// End of the batch's last record: the append is durable once `flushed_offset` reaches it.
    pub end_offset: u64,
    pub store_timestamp_ms: u64,
    /// Truncations before this write; see `FlushProgress::truncation_generation`.
    pub truncation_generation: u64,
    /// The request's encoded records, handed back so that the appender frees them on its own
    /// thread: freeing them here was 5 % of the writer's time (a free of memory another thread
    /// allocated takes the allocator's slow path).
    pub encoded: Vec<u8>,
}

pub(crate) enum WriterCommand {
    Append {
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<Written>>,
    },
    AppendRaw {
        commit_log_offset: u64,
        bytes: Bytes,
        reply: oneshot::Sender<Result<u64>>,
    },
    Truncate {
        commit_log_offset: u64,
        /// List what is cut in a truncation report: not for a repair, whose range is copied
        /// again from the master.
        report: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    BeginEpoch {
        epoch: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    StartAt {
        commit_log_offset: u64,
        epoch: Option<EpochEntry>,
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown,
}

/// Next queue offset per topic and queue id. Nested maps so that a lookup borrows the topic
/// instead of allocating a key.
pub(crate) type QueueOffsetTable = HashMap<String, HashMap<u32, u64>>;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriterCommand>,
    queue_offsets: QueueOffsetTable,
    tail: Arc<Segment>,
    /// The writer's own copy of `write_offset`.
    position: u64,
    buf: Vec<u8>,
    group: Vec<(EncodedBatch, oneshot::Sender<Result<Written>>)>,
    results: Vec<Written>,
    truncation_generation: u64,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<WriterCommand>,
        queue_offsets: QueueOffsetTable,
    ) -> Result<Writer> {
        let position = shared.log.write_offset();
        let tail = shared
            .log
            .segment_for(position)
            .expect("recovery leaves a segment holding write_offset");
        let buf = Vec::with_capacity(shared.config.batch_bytes_max);
        Ok(Writer {
            shared,
            rx,
            queue_offsets,
            tail,
            position,
            buf,
            group: Vec::new(),
            results: Vec::new(),
            truncation_generation: 0,
        })
    }

    /// Runs until the channel closes (every sender dropped, or after a shutdown command).
    pub fn run(mut self) {
        let mut pending: Option<WriterCommand> = None;
        loop {
            if self.shared.writer_stop_requested.load(Ordering::Acquire) {
                self.rx.close();
            }
            let command = match pending.take() {
                Some(command) => command,
                None => match self.rx.blocking_recv() {
                    Some(command) => command,
                    None => break,
                },
            };
            match command {
                WriterCommand::Append { batch, reply } => {
                    let mut bytes = batch.bytes.len();
                    self.group.push((batch, reply));
                    while bytes < self.shared.config.batch_bytes_max {
                        match self.rx.try_recv() {
                            Ok(WriterCommand::Append { batch, reply }) => {
                                bytes += batch.bytes.len();
                                self.group.push((batch, reply));
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group();
                    self.flush_written();
                    self.index_written();
                }
                WriterCommand::AppendRaw {
                    commit_log_offset,
                    bytes,
                    reply,
                } => {
                    // Answered before the fsync: answered after it (one wake-up of the slave's
                    // runtime instead of two), the slave's next chunk waited for each fsync,
                    // and p50 and throughput at 64 in flight measured worse.
                    let _ = reply.send(self.append_raw(commit_log_offset, &bytes));
                    self.flush_written();
                    self.index_written();
                }
                WriterCommand::Truncate {
                    commit_log_offset,
                    report,
                    reply,
                } => {
                    let _ = reply.send(self.truncate(commit_log_offset, report));
                }
                WriterCommand::BeginEpoch { epoch, reply } => {
                    let result = self
                        .shared
                        .epochs
                        .lock()
                        .expect("epoch lock poisoned")
                        .begin(epoch, self.position)
                        .map(|()| self.position);
                    let _ = reply.send(result);
                }
                WriterCommand::StartAt {
                    commit_log_offset,
                    epoch,
                    reply,
                } => {
                    let _ = reply.send(self.start_at(commit_log_offset, epoch));
                }
                // Stop taking new commands but finish those already queued.
                WriterCommand::Shutdown => self.rx.close(),
            }
        }
    }

    fn write_group(&mut self) {
        let mut group = std::mem::take(&mut self.group);
        let outcome = match self.shared.poisoned() {
            Some(err) => Err(err),
            None => self.write_group_inner(&mut group).map_err(|err| {
                self.shared.poison(err);
                self.shared.poisoned().expect("just poisoned")
            }),
        };
        match outcome {
            Ok(()) => {
                for ((batch, reply), mut written) in group.drain(..).zip(self.results.drain(..)) {
                    written.encoded = batch.bytes;
                    let _ = reply.send(Ok(written));
                }
            }
            Err(err) => {
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(clone_poison(&err)));
                }
            }
        }
        // Keep the vector's capacity for the next group.
        self.group = group;
    }

    fn write_group_inner(
        &mut self,
        group: &mut [(EncodedBatch, oneshot::Sender<Result<Written>>)],
    ) -> Result<()> {
        let now = super::now_ms();
        self.buf.clear();
        self.results.clear();
        let group_start = self.position;
        let mut buf_start = self.position;
        for (batch, _) in group.iter_mut() {
            let mut record_commit_log_offsets =
                std::mem::take(&mut batch.record_commit_log_offsets);
            let keep_record_offsets = batch.count > 1;
            let next = next_queue_offset(&mut self.queue_offsets, &batch.topic, batch.queue_id);
            let first_queue_offset = *next;
            let mut first_commit_log_offset = None;
            let mut at = 0usize;
            let mut queue_offset = first_queue_offset;
            while at < batch.bytes.len() {
                let size = record::total_bytes_of(&batch.bytes[at..]) as usize;
                if self.position + size as u64 > self.tail.end_offset() {
                    self.buf_flush(buf_start)?;
                    self.roll()?;
                    buf_start = self.position;
                }
                let start = self.buf.len();
                self.buf.extend_from_slice(&batch.bytes[at..at + size]);
                record::seal(&mut self.buf[start..], queue_offset, self.position, now);
                let entry =
                    &mut batch.entries.as_mut_slice()[(queue_offset - first_queue_offset) as usize];
                debug_assert_eq!(entry.size_bytes as usize, size);
                entry.commit_log_offset = self.position;
                first_commit_log_offset.get_or_insert(self.position);
                if keep_record_offsets {
                    record_commit_log_offsets.push(self.position);
                }
                self.position += size as u64;
                queue_offset += 1;
                at += size;
            }
            debug_assert_eq!(queue_offset - first_queue_offset, u64::from(batch.count));
            *next_queue_offset(&mut self.queue_offsets, &batch.topic, batch.queue_id) =
                queue_offset;
            self.results.push(Written {
                commit_log_offset: first_commit_log_offset
                    .expect("a batch holds at least one record"),
                record_commit_log_offsets,
                queue_offset: first_queue_offset,
                end_offset: self.position,
                store_timestamp_ms: now,
                truncation_generation: self.truncation_generation,
                encoded: Vec::new(),
            });
        }
        self.buf_flush(buf_start)?;
        self.roll_if_full()?;
        self.shared
            .appends_written
            .fetch_add(group.len() as u64, Ordering::AcqRel);
        self.hand_off_entries(group_start, group);
        self.publish();
        Ok(())
    }

    /// Hands the group's consume-queue entries to the dispatcher, before `write_offset` covers
    /// them (see `index_handoff`). The topics and entries move out of the requests: no copy.
    fn hand_off_entries(
        &self,
        start: u64,
        group: &mut [(EncodedBatch, oneshot::Sender<Result<Written>>)],
    ) {
        let mut entry_count = 0;
        let runs = group
            .iter_mut()
            .zip(&self.results)
            .map(|((batch, _), written)| {
                entry_count += batch.entries.as_slice().len();
                IndexRun {
                    topic: std::mem::take(&mut batch.topic),
                    queue_id: batch.queue_id,
                    first_queue_offset: written.queue_offset,
                    entries: std::mem::take(&mut batch.entries),
                }
            })
            .collect();
        let range = WrittenRange {
            start,
            end: self.position,
            runs,
            entry_count,
        };
        // Full: the dispatcher reads this range from the log instead.
        let _ = self.shared.index_handoff.push(range);
    }

    /// Writes the buffered bytes (which start at `buf_start`, in the tail segment).
    fn buf_flush(&mut self, buf_start: u64) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        assert_eq!(
            buf_start + self.buf.len() as u64,
            self.position,
            "the group must end exactly at the writer's position"
        );
        self.tail
            .write_at(buf_start, &self.buf)
            .map_err(StoreError::io("write commit log", self.tail.path()))?;
        self.buf.clear();
        Ok(())
    }

    /// Rolls when no record can start in what is left of the tail segment (under 12 bytes), so
    /// that `write_offset` always names a position in an existing segment where the next record
    /// can start: the same position recovery finds, whatever the path that got there.
    fn roll_if_full(&mut self) -> Result<()> {
        if self.tail.end_offset() - self.position < RECORD_PREFIX_BYTES as u64 {
            self.roll()?;
        }
        Ok(())
    }

    /// Pads the rest of the tail segment, makes the next one, and moves to it.
    fn roll(&mut self) -> Result<()> {
        let remaining = self.tail.end_offset() - self.position;
        if remaining >= RECORD_PREFIX_BYTES as u64 {
            // Cannot truncate: a segment is at most 4 GiB (checked by StoreConfig::validate).
            let pad = record::padding(u32::try_from(remaining).expect("segment capacity fits u32"));
            self.tail
                .write_at(self.position, &pad)
                .map_err(StoreError::io("write padding", self.tail.path()))?;
        }
        let next = self.tail.end_offset();
        let segment = Segment::create(
            self.shared.log.dir(),
            next,
            self.shared.config.segment_bytes,
        )?;
        tracing::info!(segment = %segment.path().display(), base_offset = next, "commit-log segment rolled");
        self.tail = self.shared.log.push_segment(segment);
        self.position = next;
        self.shared.preallocate_signal.notify();
        Ok(())
    }

    /// Publishes the new `write_offset` (which wakes the shipper); [`Writer::flush_written`] and
    /// [`Writer::index_written`] follow.
    fn publish(&self) {
        // Only a truncation (which sets write_offset itself) moves the tail backwards.
        assert!(
            self.position >= self.shared.log.write_offset(),
            "write offset must not move backwards"
        );
        self.shared.log.set_write_offset(self.position);
        self.shared.on_local_progress();
    }

    /// After a write was published: under `SYNC_FLUSH`, fsyncs it on this thread or hands it to
    /// the flusher (`flush::flush_if_idle`). Called after the appends are answered (they wait
    /// for the flush themselves, with their timeout), so that the thread woken here cannot
    /// pre-empt this one before the answers go: they, and the shipper woken by `publish`, are
    /// what a `SEND_OK` waits for. Under `ASYNC_FLUSH` the flusher runs on its interval: waking
    /// it per group would only cost a context switch each time.
    fn flush_written(&self) {
        if self.shared.flush_disk_type() == FlushDiskType::SyncFlush {
            super::flush::flush_if_idle(&self.shared, self.rx.is_empty());
        }
    }

    /// After a write was answered and flushed: indexes it on this thread or hands it to the
    /// dispatcher (`dispatch::dispatch_if_idle`).
    fn index_written(&self) {
        super::dispatch::dispatch_if_idle(&self.shared, self.rx.is_empty());
    }

    /// Appends records copied from a master, which must start at exactly `write_offset` and be
    /// whole, valid records in this segment, with the queue offsets this log expects next.
    fn append_raw(&mut self, commit_log_offset: u64, bytes: &[u8]) -> Result<u64> {
        if let Some(err) = self.shared.poisoned() {
            return Err(err);
        }
        let invalid = |reason| StoreError::RawInvalid {
            commit_log_offset,
            reason,
        };
        if commit_log_offset != self.position {
            return Err(invalid("does not start at this log's write offset"));
        }
        if commit_log_offset + bytes.len() as u64 > self.tail.end_offset() {
            return Err(invalid("runs past the end of the segment"));
        }
        // Validate everything before writing anything; queue offsets go to a scratch table.
        let mut updates: Vec<(String, u32, u64)> = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let offset = commit_log_offset + at as u64;
            let segment_left = self.tail.end_offset() - offset;
            if segment_left < RECORD_PREFIX_BYTES as u64 {
                if bytes[at..].iter().any(|&b| b != 0) || bytes.len() - at != segment_left as usize
                {
                    return Err(invalid("segment tail after the last record is not zeros"));
                }
                break;
            }
            if bytes.len() - at < RECORD_PREFIX_BYTES {
                return Err(invalid("ends inside a record"));
            }
            match record::classify_prefix(&bytes[at..], segment_left) {
                Prefix::Padding => {
                    if bytes.len() - at != segment_left as usize {
                        return Err(invalid("padding must run to the segment end"));
                    }
                    at = bytes.len();
                }
                Prefix::Message { total_bytes } => {
                    let end = at + total_bytes as usize;
                    let raw = bytes
                        .get(at..end)
                        .ok_or_else(|| invalid("ends inside a record"))?;
                    let header = record::check_message(raw).map_err(invalid)?;
                    if header.commit_log_offset != offset {
                        return Err(invalid("record's own offset does not match its position"));
                    }
                    let topic = std::str::from_utf8(&raw[header.topic_range()])
                        .map_err(|_| invalid("topic is not UTF-8"))?;
                    // The topic names a directory: never trust it unchecked.
                    record::validate_topic(topic).map_err(|_| invalid("illegal topic name"))?;
                    record::validate_queue_id(header.queue_id)
                        .map_err(|_| invalid("queue id out of range"))?;
                    let expected = updates
                        .iter()
                        .rev()
                        .find(|(t, q, _)| t == topic && *q == header.queue_id)
                        .map(|(_, _, next)| *next)
                        .or_else(|| peek_queue_offset(&self.queue_offsets, topic, header.queue_id))
                        .unwrap_or(
                            // A queue this log never held: in a log that does not begin at 0,
                            // its earlier messages are in what this log does not hold.
                            if self.shared.queues.log_begins_late() {
                                header.queue_offset
                            } else {
                                0
                            },
                        );
                    if header.queue_offset != expected {
                        return Err(invalid("queue offset is not the next one of its queue"));
                    }
                    updates.push((topic.to_owned(), header.queue_id, expected + 1));
                    at = end;
                }
                Prefix::Zeros | Prefix::Invalid(_) => return Err(invalid("not a record")),
            }
        }
        if bytes.is_empty() {
            return Ok(self.position);
        }
        self.tail
            .write_at(commit_log_offset, bytes)
            .map_err(|err| {
                let err = StoreError::io("write commit log", self.tail.path())(err);
                self.shared.poison(err);
                self.shared.poisoned().expect("just poisoned")
            })?;
        for (topic, queue_id, next) in updates {
            *next_queue_offset(&mut self.queue_offsets, &topic, queue_id) = next;
        }
        self.position = commit_log_offset + bytes.len() as u64;
        if let Err(err) = self.roll_if_full() {
            self.shared.poison(err);
            return Err(self.shared.poisoned().expect("just poisoned"));
        }
        self.publish();
        Ok(self.position)
    }

    /// Makes a log that holds no record begin at `commit_log_offset`, with `epoch` as its whole
    /// history (see `Store::start_at`). Crash-safe: the old, empty segments go first, so a crash
    /// before the new one exists leaves a log with no segment, which opens as a new, empty store;
    /// a crash after leaves the new segment, which opens as an empty log beginning there. Either
    /// still holds no record, and the next replication session starts it again.
    fn start_at(&mut self, commit_log_offset: u64, epoch: Option<EpochEntry>) -> Result<()> {
        if let Some(err) = self.shared.poisoned() {
            return Err(err);
        }
        if self.position != self.shared.log.min_offset() {
            return Err(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "the log holds records: only a log that holds none can begin elsewhere",
            });
        }
        if epoch.is_some_and(|e| e.start_offset > commit_log_offset) {
            return Err(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "the first epoch must begin at or before the log's first offset",
            });
        }
        if commit_log_offset != self.position
            && self
                .queue_offsets
                .values()
                .flat_map(|q| q.values())
                .any(|&next| next > 0)
        {
            // Only retention deleting every record but an empty tail gets here: the queues
            // would not match the records of another offset.
            return Err(StoreError::OffsetInvalid {
                commit_log_offset,
                reason: "the log's consume queues hold entries of records it no longer holds; \
                         empty the store to have it copied anew",
            });
        }
        if commit_log_offset != self.position {
            // Past this point a failure leaves the log without its segments: poison the store.
            self.replace_empty_log(commit_log_offset).map_err(|err| {
                self.shared.poison(err);
                self.shared.poisoned().expect("just poisoned")
            })?;
            // Nothing below the new start exists to be confirmed or not.
            self.shared.raise_confirm_offset(commit_log_offset);
            self.shared.on_local_progress();
            self.shared.preallocate_signal.notify();
            tracing::warn!(
                commit_log_offset,
                "the empty commit log now begins at this offset (its master's log begins there)"
            );
        }
        self.shared
            .epochs
            .lock()
            .expect("epoch lock poisoned")
            .reset(epoch)
    }

    /// The part of [`Writer::start_at`] that changes files and offsets.
    fn replace_empty_log(&mut self, commit_log_offset: u64) -> Result<()> {
        let log = &self.shared.log;
        // Readers and the dispatcher find nothing to do in an empty log; hold the dispatcher
        // still anyway while the segment list changes under it.
        let mut dispatch = self.shared.dispatch.lock().expect("dispatch lock poisoned");
        let _rewrite = self.shared.log_rewrite();
        let old = log.segments();
        log.retain_segments(|_| false);
        for segment in &old {
            std::fs::remove_file(segment.path())
                .map_err(StoreError::io("remove segment", segment.path()))?;
        }
        super::meta_file::sync_dir(log.dir())?;
        let segment = Segment::create(
            log.dir(),
            commit_log_offset,
            self.shared.config.segment_bytes,
        )?;
        self.tail = log.push_segment(segment);
        self.position = commit_log_offset;
        self.shared.queues.set_log_begins_late(true);
        log.set_write_offset(commit_log_offset);
        log.set_flushed_offset(commit_log_offset);
        dispatch.dispatched_offset = commit_log_offset;
        self.shared
            .dispatched_offset
            .store(commit_log_offset, Ordering::Release);
        self.shared
            .page_cache_released_offset
            .store(commit_log_offset, Ordering::Release);
        super::checkpoint::Checkpoint {
            flushed_offset: commit_log_offset,
            dispatched_offset: commit_log_offset,
            confirm_offset: commit_log_offset,
            saved_at_ms: super::now_ms(),
            verified_offset: commit_log_offset,
        }
        .save(&self.shared.dir)?;
        self.shared
            .verified
            .lock()
            .expect("verified range lock poisoned")
            .on_start_at(commit_log_offset);
        drop(dispatch);
        self.shared
            .flush_progress
            .send_modify(|p| p.flushed_offset = commit_log_offset);
        Ok(())
    }

    fn truncate(&mut self, commit_log_offset: u64, report: bool) -> Result<()> {
        if let Some(err) = self.shared.poisoned() {
            return Err(err);
        }
        truncate::check_cut(&self.shared, commit_log_offset)?;
        if commit_log_offset == self.position {
            return Ok(());
        }
        // The dispatch state is held by truncate_running from its start; ranges handed off before
        // it are indexed (or dropped) under it, and the rest is emptied there.
        let (tail, queue_offsets) =
            truncate::truncate_running(&self.shared, commit_log_offset, report)?;
        self.tail = tail;
        self.position = commit_log_offset;
        self.queue_offsets = queue_offsets;
        self.truncation_generation += 1;
        self.shared
            .verified
            .lock()
            .expect("verified range lock poisoned")
            .on_truncate(commit_log_offset);
        self.shared.forget_corruption_from(commit_log_offset);
        if let Err(err) = self.roll_if_full() {
            self.shared.poison(err);
            return Err(self.shared.poisoned().expect("just poisoned"));
        }
        self.shared.log.set_write_offset(self.position);
        Ok(())
    }
}

/// The table slot of (topic, queue id), created at 0 for a queue never written.
fn next_queue_offset<'a>(
    table: &'a mut QueueOffsetTable,
    topic: &str,
    queue_id: u32,
) -> &'a mut u64 {
    if !table.contains_key(topic) {
        table.insert(topic.to_owned(), HashMap::new());
    }
    table
        .get_mut(topic)
        .expect("inserted above")
        .entry(queue_id)
        .or_insert(0)
}

fn peek_queue_offset(table: &QueueOffsetTable, topic: &str, queue_id: u32) -> Option<u64> {
    table.get(topic).and_then(|q| q.get(&queue_id)).copied()
}

fn clone_poison(err: &StoreError) -> StoreError {
    match err {
        StoreError::Poisoned { cause } => StoreError::Poisoned {
            cause: cause.clone(),
        },
        _ => StoreError::Stopped,
    }
}
