//! Wire types of the cluster, generated from `proto/*.proto` by protox and tonic-prost-build.
//!
//! Map:
//! - [`common`]: send statuses and the stable numeric error codes every service shares.
//! - [`client`]: the broker's client-facing service (send, pull, topic administration), and
//!   [`ERROR_CODE_METADATA_KEY`], where every error status carries its stable code.
//!
//! Later steps add consumer offsets, retry and group administration to the client API, the
//! replication stream (master to slave log shipping) and the controller API (routes, heartbeats,
//! elections). No other crate compiles `.proto` files.

/// Generated code, nested as the protobuf packages are (generated code refers across packages
/// with `super::`). Use the short paths below.
pub mod generated {
    pub mod broker {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("broker.common.v1");
            }
        }
        pub mod client {
            pub mod v1 {
                tonic::include_proto!("broker.client.v1");
            }
        }
    }
}

/// Send statuses and error codes (`broker.common.v1`).
pub use generated::broker::common::v1 as common;

/// The broker's client-facing service (`broker.client.v1`).
pub use generated::broker::client::v1 as client;

/// gRPC metadata key of the stable numeric error code (`common::ErrorCode`) on every error status.
pub const ERROR_CODE_METADATA_KEY: &str = "x-error-code";
