//! Wire types of the cluster, generated from `proto/*.proto` by protox and tonic-prost-build.
//!
//! Map:
//! - [`common`]: send statuses and the stable numeric error codes every service shares.
//! - [`client`]: the broker's client-facing services (send, pull, topic administration, consumer
//!   offsets, retry), and [`ERROR_CODE_METADATA_KEY`], where every error status carries its
//!   stable code.
//! - [`controller`]: the controller quorum (Raft between controllers; routes, heartbeats, topics,
//!   cluster and quorum status), and [`CONTROLLER_LEADER_METADATA_KEY`].
//! - [`replication`]: the log stream from a group's master to each slave, and ha status; and
//!   [`MASTER_ADDR_METADATA_KEY`], where a slave's `NOT_MASTER` refusal names its master.
//! - [`error_status`] and [`bounded_message`]: how every service builds an error status, its
//!   text bounded so that it fits gRPC's header limit; [`Echo`] for names echoed in it.
//!
//! No other crate compiles `.proto` files.

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

/// Log shipping from master to slaves (`broker.replication.v1`).
pub use generated::broker::replication::v1 as replication;

/// gRPC metadata key of the stable numeric error code (`common::ErrorCode`) on every error status.
pub const ERROR_CODE_METADATA_KEY: &str = "x-error-code";

/// gRPC metadata key on a controller's redirect: the leader's address, when it knows one.
pub const CONTROLLER_LEADER_METADATA_KEY: &str = "x-controller-leader";

/// gRPC metadata key on a `NOT_MASTER` refusal: the group's master address, when the broker knows
/// it.
pub const MASTER_ADDR_METADATA_KEY: &str = "x-master-addr";

/// Longest text an error status carries, in bytes. gRPC sends it in the `grpc-message` header,
/// percent-encoded (up to three bytes per byte), and peers refuse a header block above 8 KiB:
/// an error echoing a long name would reach the caller as `RESOURCE_EXHAUSTED` without its
/// error code. 1 KiB stays under that limit with room for the other headers.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

/// Longest part of a name from a request that an error message echoes, in characters: enough to
/// recognise it, short enough that the rest of the message survives [`bounded_message`].
pub const ECHOED_NAME_CHARS_MAX: usize = 64;

/// `message` cut to at most [`STATUS_MESSAGE_BYTES_MAX`] bytes, at a character boundary, with a
/// marker saying how much was cut. Every error status of the cluster's services carries its
/// text through this function ([`error_status`] calls it).
pub fn bounded_message(message: impl Into<String>) -> String {
    /// Room kept for the marker: "... (N bytes cut)" with N up to 20 digits.
    const MARKER_BYTES_MAX: usize = 40;
    let mut message = message.into();
    if message.len() <= STATUS_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut cut = STATUS_MESSAGE_BYTES_MAX - MARKER_BYTES_MAX;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut_bytes = message.len() - cut;
    message.truncate(cut);
    message.push_str(&format!("... ({cut_bytes} bytes cut)"));
    message
}

/// An error status: the gRPC `code`, the stable `error_code` in the [`ERROR_CODE_METADATA_KEY`]
/// metadata, and `message` bounded by [`bounded_message`].
pub fn error_status(
    code: tonic::Code,
    error_code: common::ErrorCode,
    message: impl Into<String>,
) -> tonic::Status {
    let mut status = tonic::Status::new(code, bounded_message(message));
    status.metadata_mut().insert(
        ERROR_CODE_METADATA_KEY,
        tonic::metadata::MetadataValue::from(error_code as i32),
    );
    status
}

/// A name taken from a request, as an error message shows it: quoted as `{:?}` does, and past
/// [`ECHOED_NAME_CHARS_MAX`] characters cut, with its length in bytes after it.
pub struct Echo<'a>(pub &'a str);

impl std::fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(ECHOED_NAME_CHARS_MAX) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_message_is_kept_whole() {
        assert_eq!(
            bounded_message("topic \"a\" does not exist"),
            "topic \"a\" does not exist"
        );
        let exact = "x".repeat(STATUS_MESSAGE_BYTES_MAX);
        assert_eq!(bounded_message(exact.clone()), exact);
    }

    #[test]
    fn a_long_message_is_cut_at_a_char_boundary_with_a_marker() {
        for filler in ["x", "é", "日", "😀"] {
            let long = filler.repeat(10_000);
            let bounded = bounded_message(long.clone());
            assert!(
                bounded.len() <= STATUS_MESSAGE_BYTES_MAX,
                "{}",
                bounded.len()
            );
            let kept = bounded.split("... (").next().unwrap();
            assert!(long.starts_with(kept) && !kept.is_empty());
            assert!(
                bounded.ends_with(&format!("({} bytes cut)", long.len() - kept.len())),
                "{bounded}"
            );
        }
    }

    #[test]
    fn an_echoed_name_is_shortened_and_says_its_length() {
        assert_eq!(Echo("orders").to_string(), "\"orders\"");
        let long = "é".repeat(10_000);
        let shown = Echo(&long).to_string();
        assert_eq!(
            shown,
            format!("{:?}... (20000 bytes)", "é".repeat(ECHOED_NAME_CHARS_MAX))
        );
    }

    #[test]
    fn an_error_status_carries_its_code_and_a_bounded_message() {
        let status = error_status(
            tonic::Code::InvalidArgument,
            common::ErrorCode::IllegalTopic,
            "t".repeat(10_000),
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= STATUS_MESSAGE_BYTES_MAX);
        assert_eq!(
            status.metadata().get(ERROR_CODE_METADATA_KEY).unwrap(),
            "40002"
        );
    }
}
