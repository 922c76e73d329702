//! What the store tells its owner while it runs: the events an owner may count (the broker turns
//! them into metrics, docs/METRICS.md), through a trait the store owns, so that the store imports
//! nothing from the rest of the broker (`broker/tests/store_seam.rs` checks it).
//!
//! The owner passes one observer to [`Store::open_with`](super::Store::open_with); a store opened
//! without one reports to [`NoObserver`], which drops every event.
//!
//! Contract for an implementation: every method is called on one of the store's own threads (the
//! flusher, a truncating writer, the scrubber), some of them on the append path, so a method must
//! return at once: no blocking I/O, no lock another thread holds for long, no logging per call.
//! Recording a metric through the `metrics` facade (an atomic add) is what it is for.
//!
//! The methods have no default bodies on purpose: a new event is a compile error in every
//! observer until its owner decides what to do with it, instead of being dropped silently.

use std::time::Duration;

/// Receives the store's events (see the module documentation for what a method may do).
pub trait StoreObserver: Send + Sync + 'static {
    /// One flush's fdatasync of the commit log (every segment the flush covers) took
    /// `fsync_latency`; called by every flush (the flusher's, a truncation's, the one at
    /// shutdown) once its fsyncs succeeded. Under `SYNC_FLUSH` an append waits for one of these.
    fn flushed(&self, fsync_latency: Duration);

    /// The scrubber re-read and CRC-checked `bytes` more of the commit log (one step, at most
    /// `scrub::SCRUB_STEP_BYTES`).
    fn scrubbed(&self, bytes: u64);

    /// A scrub pass ended: over the whole log, or at the first corrupt record.
    fn scrub_pass_ended(&self);
}

/// The observer of a store opened without one: drops every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl StoreObserver for NoObserver {
    fn flushed(&self, _fsync_latency: Duration) {}

    fn scrubbed(&self, _bytes: u64) {}

    fn scrub_pass_ended(&self) {}
}
