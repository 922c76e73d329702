//! Opening and closing a store: the directory lock, the abort marker, recovery, the threads
//! (started at open, stopped in order at shutdown so that every queued append is written,
//! flushed and indexed before the checkpoint), and what a crash leaves for tests of recovery.

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::shared::Shared;
use super::writer::{Writer, WriterCommand};
use super::{
    dispatch, flush, meta_file, preallocate, recovery, retention, scrub, truncate, ConfirmMode,
    NoObserver, RecoveryReport, Result, Store, StoreConfig, StoreError, StoreObserver,
    ABORT_FILE_NAME,
};

const LOCK_FILE_NAME: &str = "lock";

/// The store's threads, each taken when it is stopped.
#[derive(Default)]
pub(super) struct Threads {
    writer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    dispatcher: Option<JoinHandle<()>>,
    housekeeping: Option<JoinHandle<()>>,
    preallocator: Option<JoinHandle<()>>,
    scrubber: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (or creates) the store at `config.store_path`, recovering it first. The store sets
    /// its own confirm offset ([`ConfirmMode::Local`]): everything recovered is visible.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Store::open_with_confirm_mode(config, ConfirmMode::Local)
    }

    /// Opens the store with the confirm offset under `mode` from the start. Under
    /// [`ConfirmMode::External`] (a replica, or a master that must not show its recovered tail
    /// before replication says it is safe) consumers start from the confirm offset the last
    /// checkpoint saved, not from the whole recovered log.
    pub fn open_with_confirm_mode(config: StoreConfig, mode: ConfirmMode) -> Result<Store> {
        Store::open_with(config, mode, Arc::new(NoObserver))
    }

    /// Opens the store with the confirm offset under `mode` (see
    /// [`Store::open_with_confirm_mode`]), reporting its events to `observer` (see [`observer`]):
    /// how the broker counts flushes and scrubbing without the store importing its metrics.
    pub fn open_with(
        config: StoreConfig,
        mode: ConfirmMode,
        observer: Arc<dyn StoreObserver>,
    ) -> Result<Store> {
        config.validate()?;
        let dir = config.store_path.clone();
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create store directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("open lock file", &lock_path))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Locked { path: dir });
        }
        let abort_path = dir.join(ABORT_FILE_NAME);
        let clean_shutdown = !abort_path.exists();
        std::fs::write(&abort_path, b"")
            .map_err(StoreError::io("create abort marker", &abort_path))?;
        meta_file::sync_dir(&dir)?;

        let recovered = recovery::recover(&dir, &config, clean_shutdown)?;
        let report = recovered.report.clone();
        log_recovery(&report);
        let end = report.recovered_end_offset;
        let initial_confirm_offset = match mode {
            ConfirmMode::Local => end,
            ConfirmMode::External => recovered.checkpoint_confirm_offset,
        };
        let queue_offsets = truncate::queue_offset_table(&recovered.queues);
        let shared = Arc::new(Shared::new(
            config,
            &dir,
            recovered.log,
            recovered.queues,
            recovered.epochs,
            lock_file,
            end,
            mode,
            initial_confirm_offset,
            recovered.verified,
            report.dispatch_stop_offset,
            observer,
        ));
        if let Some(corruption) = recovered.corruption {
            shared.report_corrupt(corruption.commit_log_offset, corruption.reason);
        } else if recovered.checked_whole_log {
            shared.mark_verified();
        }
        let (writer_tx, writer_rx) = mpsc::channel(shared.config.write_queue_capacity);
        let writer = Writer::new(shared.clone(), writer_rx, queue_offsets)?;
        let threads = Threads {
            writer: Some(spawn("store-writer", move || writer.run())?),
            flusher: Some(spawn("store-flusher", {
                let shared = shared.clone();
                move || flush::run(shared)
            })?),
            dispatcher: Some(spawn_background("store-dispatcher", {
                let shared = shared.clone();
                move || dispatch::run(shared)
            })?),
            housekeeping: Some(spawn_background("store-housekeeping", {
                let shared = shared.clone();
                move || retention::run(shared)
            })?),
            preallocator: Some(spawn_background("store-preallocator", {
                let shared = shared.clone();
                move || preallocate::run(shared)
            })?),
            scrubber: if shared.config.scrub_bytes_per_second > 0 {
                Some(spawn_background("store-scrubber", {
                    let shared = shared.clone();
                    move || scrub::run(shared)
                })?)
            } else {
                None
            },
        };
        Ok(Store {
            shared,
            writer_tx,
            threads: Mutex::new(threads),
            recovery: report,
        })
    }

    /// Stops cleanly: finishes queued appends, flushes, saves the checkpoint, removes the abort
    /// marker. Blocks; call it from a blocking context (`spawn_blocking`) in async code.
    pub fn shutdown(&self) -> Result<()> {
        let mut threads = self.threads.lock().expect("thread list lock poisoned");
        let Some(writer) = threads.writer.take() else {
            return Ok(()); // already stopped
        };
        self.stop_writer(writer);
        self.shared.flush_signal.stop();
        if let Some(flusher) = threads.flusher.take() {
            let _ = flusher.join();
        }
        self.shared.dispatch_signal.stop();
        if let Some(dispatcher) = threads.dispatcher.take() {
            let _ = dispatcher.join();
        }
        self.shared.housekeeping_signal.stop();
        self.shared.preallocate_signal.stop();
        self.shared.scrub_signal.stop();
        for handle in [
            threads.housekeeping.take(),
            threads.preallocator.take(),
            threads.scrubber.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = handle.join();
        }
        if let Some(err) = self.shared.poisoned() {
            // Leave the abort marker: the next open must recover.
            return Err(err);
        }
        meta_file::remove(&self.shared.dir, ABORT_FILE_NAME)?;
        tracing::info!(
            store = %self.shared.dir.display(),
            write_offset = self.write_offset(),
            "store stopped cleanly"
        );
        Ok(())
    }

    /// Stops the threads without the final flush, checkpoint or marker removal: what a crash
    /// leaves behind, minus the lost page cache. For tests of recovery.
    #[doc(hidden)]
    pub fn halt_for_test(&self) {
        let mut threads = self.threads.lock().expect("thread list lock poisoned");
        self.shared.poison(StoreError::Stopped);
        if let Some(writer) = threads.writer.take() {
            self.stop_writer(writer);
        }
        self.shared.flush_signal.stop();
        self.shared.dispatch_signal.stop();
        self.shared.housekeeping_signal.stop();
        self.shared.preallocate_signal.stop();
        self.shared.scrub_signal.stop();
        for handle in [
            threads.flusher.take(),
            threads.dispatcher.take(),
            threads.housekeeping.take(),
            threads.preallocator.take(),
            threads.scrubber.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = handle.join();
        }
    }

    /// Asks the writer to finish the commands already queued and stop, and waits for it.
    fn stop_writer(&self, writer: JoinHandle<()>) {
        self.shared
            .writer_stop_requested
            .store(true, std::sync::atomic::Ordering::Release);
        // Wakes an idle writer. If the channel is full the writer is busy and sees the flag
        // after its current command; either way it closes the channel and drains it.
        let _ = self.writer_tx.try_send(WriterCommand::Shutdown);
        let _ = writer.join();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(error = %err, "store did not stop cleanly");
        }
    }
}

/// Nice value of the store's background threads (dispatcher, housekeeping, preallocator,
/// scrubber): when the CPUs are all busy, the scheduler gives the append path (appenders, writer,
/// flusher) the larger share and these threads do their work in fewer, larger rounds (the
/// dispatcher indexes a few MiB later under saturation, a few milliseconds of appends); on an
/// idle CPU they run at once, as before. Measured: `store-async-a64` +15-20 % on 2 vCPUs (docs/BENCHMARKS.md).
const BACKGROUND_THREAD_NICE: libc::c_int = 10;

/// Spawns a thread that lowers its own scheduling priority first (see
/// [`BACKGROUND_THREAD_NICE`]).
fn spawn_background(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    let thread_name = name.to_owned();
    spawn(name, move || {
        // SAFETY: plain system call with no memory passed. On Linux, PRIO_PROCESS with id 0
        // names the calling thread only (each thread has its own nice value).
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_THREAD_NICE) };
        if rc != 0 {
            // Advisory: the thread works the same at the default priority.
            tracing::debug!(thread = %thread_name, error = %std::io::Error::last_os_error(), "could not lower thread priority");
        }
        body()
    })
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(StoreError::io("spawn thread", name))
}

fn log_recovery(report: &RecoveryReport) {
    tracing::info!(
        clean_shutdown = report.clean_shutdown,
        checked_from_offset = report.checked_from_offset,
        records_checked = report.records_checked,
        recovered_end_offset = report.recovered_end_offset,
        torn_tail_offset = ?report.torn_tail_offset,
        corrupt_offset = ?report.corrupt_offset,
        dispatch_stop_offset = ?report.dispatch_stop_offset,
        finished_truncation_offset = ?report.finished_truncation_offset,
        duration_ms = report.duration.as_millis() as u64,
        "store recovered"
    );
}

/// Hooks for the store's own tests.
#[cfg(test)]
impl Store {
    #[cfg(test)]
    pub(crate) fn segments_for_test(&self) -> usize {
        self.shared.log.segments().len()
    }

    /// Every byte of the log below the write offset, read through `read_raw`.
    #[cfg(test)]
    pub(crate) fn read_all_raw_for_test(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = self.min_offset();
        while at < self.write_offset() {
            let chunk = self.read_raw(at, 1 << 20).unwrap();
            at += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[cfg(test)]
    pub(crate) fn set_fsync_delay_for_test(&self, delay: std::time::Duration) {
        self.shared.fsync_delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Release,
        );
    }
}
