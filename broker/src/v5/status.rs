//! The `Status` every v5 answer carries in its body: a code with upstream's number and, for
//! people, why; bounded like every status of the cluster (`proto::bounded_message`).

use proto::common::ErrorCode;
use proto::v5;

/// A status of `code` saying `message`.
pub fn status(code: v5::Code, message: impl Into<String>) -> v5::Status {
    v5::Status {
        code: code as i32,
        message: proto::bounded_message(message),
    }
}

/// Success. The official clients refuse an answer whose code is 0, so every answer sets one.
pub fn ok() -> v5::Status {
    status(v5::Code::Ok, "OK")
}

/// A refusal by the cluster's own error code, as the v5 API numbers it.
pub fn refused(code: ErrorCode, message: impl Into<String>) -> v5::Status {
    status(proto::status::v5_code(code), message)
}

/// The answer of an RPC this cluster does not serve yet: a clear refusal, never a silent success.
pub fn not_implemented(rpc: &str) -> v5::Status {
    status(
        v5::Code::NotImplemented,
        format!("{rpc} is not served by this cluster yet; docs/CLIENTS.md lists what is"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_s_own_codes_reach_v5_clients_as_upstream_codes() {
        assert_eq!(
            refused(ErrorCode::TopicNotFound, "x").code,
            v5::Code::TopicNotFound as i32
        );
        assert_eq!(
            refused(ErrorCode::NotMaster, "x").code,
            v5::Code::HaNotAvailable as i32
        );
        assert_eq!(ok().code, 20000);
        assert!(
            status(v5::Code::BadRequest, "x".repeat(10_000))
                .message
                .len()
                <= 1024
        );
    }
}
