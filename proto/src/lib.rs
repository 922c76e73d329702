//! Wire types of the cluster, generated from `proto/*.proto` by protox and tonic-prost-build.
//!
//! Map:
//! - [`common`]: send statuses and the stable numeric error codes every service shares.
//! - [`client`]: the broker's client-facing services (send, pull, topic administration, consumer
//!   offsets, retry), and [`ERROR_CODE_METADATA_KEY`], where every error status carries its
//!   stable code.
//! - [`controller`]: the controller quorum (Raft between controllers; routes, heartbeats, topics,
//!   cluster and quorum status), and [`CONTROLLER_LEADER_METADATA_KEY`].
//! - [`v5`]: RocketMQ 5's gRPC API (`apache.rocketmq.v2`, `MessagingService`), wire-exact with
//!   upstream's definitions, which the official clients speak.
//! - [`replication`]: the log stream from a group's master to each slave, and ha status; and
//!   [`MASTER_ADDR_METADATA_KEY`], where a slave's `NOT_MASTER` refusal names its master.
//! - [`dial`]: reading an address list and building the endpoint every node and client dials
//!   with ([`dial::endpoint`], [`dial::address_list`]); `https://` once the process installed its
//!   TLS ([`dial::set_tls`]).
//! - [`tls`]: the TLS files of a node (`tls_cert`, `tls_key`, `tls_ca`) or a client (a CA),
//!   read and checked once, and the server, dialer and `/metrics` configurations made of them;
//!   the process's rustls crypto provider.
//! - [`status`]: the status codec, how an `ErrorCode` becomes a gRPC status and is read back
//!   ([`ErrorStatus`], [`error_status`]), every service's and client's one way; its text bounded
//!   so that it fits gRPC's header limit ([`bounded_message`]), [`Echo`] for names echoed in it.
//!
//! No other crate compiles `.proto` files.

/// Generated code, nested as the protobuf packages are (generated code refers across packages
/// with `super::`). Use the short paths below. Generated code is not held to the workspace's
/// shape lints (its service dispatch is one long match; RocketMQ 5's streamed answers are
/// oneofs of a small status and a large message, as upstream defines them).
#[allow(clippy::too_many_lines, clippy::large_enum_variant)]
pub mod generated {
    pub mod apache {
        pub mod rocketmq {
            pub mod v2 {
                tonic::include_proto!("apache.rocketmq.v2");
            }
        }
    }
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
        pub mod controller {
            pub mod v1 {
                tonic::include_proto!("broker.controller.v1");
            }
        }
        pub mod replication {
            pub mod v1 {
                tonic::include_proto!("broker.replication.v1");
            }
        }
    }
}

/// Send statuses and error codes (`broker.common.v1`).
pub use generated::broker::common::v1 as common;

/// The broker's client-facing service (`broker.client.v1`).
pub use generated::broker::client::v1 as client;

/// The controller quorum's services (`broker.controller.v1`): Raft between controllers, the name
/// service and administration.
pub use generated::broker::controller::v1 as controller;

/// RocketMQ 5's gRPC API (`apache.rocketmq.v2`), which the official clients speak.
pub use generated::apache::rocketmq::v2 as v5;

/// Log shipping from master to slaves (`broker.replication.v1`).
pub use generated::broker::replication::v1 as replication;

pub mod dial;
pub mod status;
pub mod tls;

pub use status::{
    bounded_message, error_status, Echo, ErrorStatus, CONTROLLER_LEADER_METADATA_KEY,
    ECHOED_NAME_CHARS_MAX, ERROR_CODE_METADATA_KEY, MASTER_ADDR_METADATA_KEY,
    STATUS_MESSAGE_BYTES_MAX,
};
