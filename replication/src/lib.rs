//! Replication: log shipping from master to slaves, the in-sync set, and the openraft controller.
//!
//! Map:
//! - [`controller`]: the Raft quorum that is the cluster's name server (routes, topics, broker
//!   groups, consumer-group settings) and its failover authority (elections, leases, fencing);
//!   also the broker's link to it (`controller::link`). The `controller` binary
//!   (`src/bin/controller.rs`) runs one member.
//! - [`ship`]: the bidirectional gRPC log stream from master to slave (`ship::master`,
//!   `ship::replica`); knows commit-log offsets and epochs, never message types; the last common
//!   point of two logs from their epoch histories (`ship::divergence`); each slave's acknowledged
//!   offset and the in-sync set (`ship::insync`).
//! - [`exporter`]: the Prometheus `/metrics` endpoint both processes serve (`metrics_listen`):
//!   the process-wide recorder the `metrics` macros record into, rendered at each scrape after
//!   the process's sampler set its gauges.
//!
//! This crate defines the traits it needs (the shipped log: read a byte range, append at an
//! offset, truncate to an offset, epoch history); `broker`'s commit log implements them.

pub mod controller;
pub mod exporter;
pub mod ship;
