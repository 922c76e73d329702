//! Replication: log shipping from a group's master to its slaves, and the in-sync set.
//!
//! Map:
//! - [`ship`]: the bidirectional gRPC log stream from master to slave (`ship::master`,
//!   `ship::replica`); knows commit-log offsets and epochs, never message types; the last common
//!   point of two logs from their epoch histories (`ship::divergence`); each slave's acknowledged
//!   offset and the in-sync set (`ship::insync`); the seam through which a master asks the
//!   controller to change that set (`ship::authority`).
//!
//! This crate defines the traits it needs (the shipped log: read a byte range, append at an
//! offset, truncate to an offset, epoch history); `broker`'s commit log implements them. It knows
//! nothing of the controller: the broker hands it an in-sync authority (`controller-client`'s
//! proposer behind the `InSyncAuthority` trait).

pub mod ship;
