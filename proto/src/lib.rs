//! Wire types of the cluster, generated from `proto/*.proto` by protox and tonic-prost-build.
//!
//! Map:
//! - [`common`]: send statuses and the stable numeric error codes every service shares.
//!
//! Later steps add the client API (send, pull, offsets, admin), the replication stream (master to
//! slave log shipping) and the controller API (routes, heartbeats, elections) beside it, with the
//! conversions between wire and domain types. No other crate compiles `.proto` files.

/// Send statuses and error codes (`broker.common.v1`).
pub mod common {
    tonic::include_proto!("broker.common.v1");
}
