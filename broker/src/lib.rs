//! The broker: the store, and (from step 2) the client-facing gRPC service, consumer groups,
//! retry and dead-letter queues, delay levels.
//!
//! Map:
//! - [`store`]: the commit log and everything that makes it durable and readable: segments,
//!   group commit, flush, consume queues, recovery, truncation, retention, the epoch history.
//!   Its own `mod.rs` maps its files and follows one append through them.
//! - `src/bin/store-bench.rs`: the store benchmark against raw-disk baselines measured in the same
//!   run (`docs/BENCHMARKS.md`).

pub mod store;
