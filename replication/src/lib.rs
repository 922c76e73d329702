//! Replication: log shipping from master to slaves, the in-sync set, and the openraft controller.
//!
//! Map (filled by steps 3-5 of the plan in `docs/ARCHITECTURE.md`):
//! - `ship::master` / `ship::slave`: the bidirectional gRPC log stream; knows commit-log offsets
//!   and epochs, never message types.
//! - `insync`: tracking each slave's acknowledged offset and the in-sync set.
//! - `controller::{state_machine, log_store, network, election, lease}`: the Raft quorum that
//!   is name server and failover authority.
//!
//! This crate defines the traits it needs (the shipped log: read a byte range, append at an
//! offset, truncate to an offset, epoch history); `broker`'s commit log implements them.
//! Nothing is here yet: step 1 builds the store those traits will wrap.
