//! The status codec: how an error of the cluster's services travels as a gRPC status, and how
//! its caller reads it back. Every service (broker, controller, log shipping, the member guard)
//! builds its error statuses here and every client reads them here, so that one `ErrorCode`
//! always travels with one gRPC code and is always read back the same way.
//!
//! An error status carries:
//! - the stable `ErrorCode` number in the [`ERROR_CODE_METADATA_KEY`] metadata: what the
//!   cluster's own callers decide on (retry, refresh the route, give up);
//! - the gRPC code, [`grpc_code`] of that error code (one table, one fallback rule): for generic
//!   gRPC tooling (grpcurl, proxies, retry policies) that cannot read the metadata;
//! - a message for people, at most [`STATUS_MESSAGE_BYTES_MAX`] bytes ([`bounded_message`]);
//! - on `NOT_MASTER`, the group's master in [`MASTER_ADDR_METADATA_KEY`], when the broker knows
//!   it; on a controller's redirect, the leader in [`CONTROLLER_LEADER_METADATA_KEY`].
//!
//! A status without an error code did not come from a service of the cluster: the transport
//! (a refused connection, a deadline, a message over gRPC's size limit) made it, and
//! [`ErrorStatus::from_status`] answers `None` for it.
//!
//! Not here: the Raft RPCs between controllers, whose statuses only openraft's network reads and
//! which carry no error code.

use crate::common::ErrorCode;

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

/// The gRPC code an error code travels with. This table is the only place that chooses one.
///
/// The cluster's callers decide on the error code, never on this; the gRPC code is what generic
/// tooling sees, so it must not invite what would be wrong: a retry of a request that cannot
/// succeed as sent, or a blind retry of a write that may have happened.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use tonic::Code;
    match code {
        // The request as sent is wrong: sending it again cannot succeed. Sizes too: gRPC's own
        // RESOURCE_EXHAUSTED for an oversized message comes without a code and means the
        // transport refused it, which the caller must be able to tell apart.
        ErrorCode::BadRequest
        | ErrorCode::IllegalTopic
        | ErrorCode::IllegalConsumerGroup
        | ErrorCode::IllegalMessageTag
        | ErrorCode::IllegalMessageKey
        | ErrorCode::IllegalMessagePropertyKey
        | ErrorCode::IllegalOffset
        | ErrorCode::PayloadTooLarge
        | ErrorCode::MessageBodyTooLarge
        | ErrorCode::MessageBodyEmpty
        | ErrorCode::MessagePropertiesTooLarge => Code::InvalidArgument,
        // No or a wrong cluster signature: who is calling is not proven (the member guard).
        ErrorCode::Unauthorized => Code::Unauthenticated,
        // A drained group: the caller is known, but this group takes no writes now.
        ErrorCode::Forbidden => Code::PermissionDenied,
        // Something the request names does not exist.
        ErrorCode::NotFound
        | ErrorCode::TopicNotFound
        | ErrorCode::ConsumerGroupNotFound
        | ErrorCode::OffsetNotFound
        | ErrorCode::BrokerGroupNotFound => Code::NotFound,
        // Out of time, and the work may have been done anyway (the persistence timeouts: the
        // message is on the master, not yet as durable as asked): DEADLINE_EXCEEDED says exactly
        // that, where UNAVAILABLE would invite a blind retry and so a duplicate.
        ErrorCode::RequestTimeout
        | ErrorCode::MasterPersistenceTimeout
        | ErrorCode::SlavePersistenceTimeout => Code::DeadlineExceeded,
        // The request contradicts the cluster's state (a topic with other queues, a broker that
        // is not alive, a switchover already running, a replica whose log shares no epoch with
        // its master's): it cannot succeed until that state changes. Most of these are not "it
        // already exists", so not ALREADY_EXISTS.
        ErrorCode::Conflict => Code::FailedPrecondition,
        // A disk past its high-water mark: a resource ran out; another group takes the message.
        ErrorCode::TooManyRequests => Code::ResourceExhausted,
        // A stored record failed its check: data was lost on this replica.
        ErrorCode::MessageCorrupted => Code::DataLoss,
        ErrorCode::NotImplemented => Code::Unimplemented,
        // Not here, not now; retriable elsewhere or a little later (the master named in the
        // metadata, a controller once a leader is elected, a set of in-sync replicas).
        ErrorCode::ControllerNotAvailable | ErrorCode::NotMaster | ErrorCode::HaNotAvailable => {
            Code::Unavailable
        }
        ErrorCode::InternalError => Code::Internal,
        // The one fallback rule, for a code not named above, by its class as in HTTP: 4xxxx means
        // the request is at fault, so INVALID_ARGUMENT; anything else means the server failed,
        // so INTERNAL (not UNAVAILABLE, which tells generic clients a retry is safe: for a write
        // that may have happened it is not). OK and UNSPECIFIED are no errors: a service sending
        // one as an error status has a bug, and INTERNAL says so.
        other if (40000..50000).contains(&(other as i32)) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// An error as a service of the cluster sends it and its caller reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorStatus {
    /// The stable code: what the caller decides on.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// On `NOT_MASTER`: the group's master, when the refusing broker knows it.
    pub master_addr: Option<String>,
    /// On a controller's redirect (`CONTROLLER_NOT_AVAILABLE` from a follower): the leader, when
    /// the follower knows it.
    pub leader_addr: Option<String>,
}

impl ErrorStatus {
    /// An error with no address attached.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorStatus {
        ErrorStatus {
            code,
            message: message.into(),
            master_addr: None,
            leader_addr: None,
        }
    }

    /// Names the group's master (on `NOT_MASTER`), if known.
    pub fn with_master_addr(mut self, master_addr: Option<String>) -> ErrorStatus {
        self.master_addr = master_addr;
        self
    }

    /// Names the controller leader (on a redirect), if known.
    pub fn with_leader_addr(mut self, leader_addr: Option<String>) -> ErrorStatus {
        self.leader_addr = leader_addr;
        self
    }

    /// The gRPC status: [`grpc_code`] of the code, the code in [`ERROR_CODE_METADATA_KEY`], the
    /// message bounded by [`bounded_message`], and the addresses in their metadata. An address
    /// that is not valid metadata (not visible ASCII) is left out: the refusal still arrives,
    /// without the hint.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(grpc_code(self.code), bounded_message(self.message));
        let metadata = status.metadata_mut();
        metadata.insert(
            ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from(self.code as i32),
        );
        for (key, addr) in [
            (MASTER_ADDR_METADATA_KEY, self.master_addr),
            (CONTROLLER_LEADER_METADATA_KEY, self.leader_addr),
        ] {
            if let Some(value) = addr.and_then(|addr| addr.parse().ok()) {
                metadata.insert(key, value);
            }
        }
        status
    }

    /// The error a service of the cluster sent, read back from its status; `None` when the
    /// status carries no error code this build knows: the transport made it (or a peer newer
    /// than this build sent a code added since, which is read as a transport failure too). The
    /// gRPC code is not read: the error code says everything it says.
    pub fn from_status(status: &tonic::Status) -> Option<ErrorStatus> {
        let metadata = status.metadata();
        let text = |key| {
            metadata
                .get(key)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Some(ErrorStatus {
            code: error_code(status)?,
            message: status.message().to_owned(),
            master_addr: text(MASTER_ADDR_METADATA_KEY),
            leader_addr: text(CONTROLLER_LEADER_METADATA_KEY),
        })
    }
}

impl From<ErrorStatus> for tonic::Status {
    fn from(error: ErrorStatus) -> tonic::Status {
        error.into_status()
    }
}

/// An error status with no address attached: `ErrorStatus::new(code, message).into_status()`.
pub fn error_status(code: ErrorCode, message: impl Into<String>) -> tonic::Status {
    ErrorStatus::new(code, message).into_status()
}

/// The error code of a status, if it carries one this build knows (see
/// [`ErrorStatus::from_status`]), without copying its message.
pub fn error_code(status: &tonic::Status) -> Option<ErrorCode> {
    status
        .metadata()
        .get(ERROR_CODE_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .and_then(|number| ErrorCode::try_from(number).ok())
}

/// True when a service of the cluster made this status (it carries an error code, known to this
/// build or not); false when the transport did. A controller forwarding a request passes the
/// leader's own answers on and reads everything else as "leader unreachable".
pub fn carries_error_code(status: &tonic::Status) -> bool {
    status.metadata().contains_key(ERROR_CODE_METADATA_KEY)
}

/// `message` cut to at most [`STATUS_MESSAGE_BYTES_MAX`] bytes, at a character boundary, with a
/// marker saying how much was cut. Every error status of the cluster's services carries its
/// text through this function ([`ErrorStatus::into_status`] calls it).
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

/// The RocketMQ 5 API's code for an error code: in the v5 API (`crate::v5`) an answer carries
/// `Status{code, message}` in its body, with upstream's numbers. Every error code upstream also
/// has is the same number there (`tests/error_codes.rs` pins it); the cluster's own four map to
/// the upstream code that says the same to an official client.
pub fn v5_code(code: ErrorCode) -> crate::v5::Code {
    use crate::v5::Code;
    match code {
        // No master in the group now (an election is running): the group's high availability
        // is what is missing, and the client tries again.
        ErrorCode::NotMaster => Code::HaNotAvailable,
        // The controller quorum, this broker's upstream, did not answer in time.
        ErrorCode::ControllerNotAvailable => Code::ProxyTimeout,
        ErrorCode::Conflict => Code::PreconditionFailed,
        ErrorCode::BrokerGroupNotFound => Code::NotFound,
        shared => Code::try_from(shared as i32).unwrap_or(Code::InternalError),
    }
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

    /// Every code of the enum (the golden test in proto/tests/error_codes.rs pins their numbers).
    fn every_code() -> impl Iterator<Item = ErrorCode> {
        (0..100_000).filter_map(|number| ErrorCode::try_from(number).ok())
    }

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
        let status = error_status(ErrorCode::IllegalTopic, "t".repeat(10_000));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= STATUS_MESSAGE_BYTES_MAX);
        assert_eq!(
            status.metadata().get(ERROR_CODE_METADATA_KEY).unwrap(),
            "40002"
        );
    }

    #[test]
    fn every_code_reads_back_as_sent_with_its_addresses() {
        for code in every_code() {
            let sent = ErrorStatus::new(code, format!("refused: {}", code.as_str_name()))
                .with_master_addr(Some("10.0.0.1:10911".into()))
                .with_leader_addr(Some("10.0.0.2:9876".into()));
            let status = sent.clone().into_status();
            assert_eq!(status.code(), grpc_code(code), "{code:?}");
            assert_eq!(ErrorStatus::from_status(&status), Some(sent), "{code:?}");
            assert_eq!(error_code(&status), Some(code));
            assert!(carries_error_code(&status));
        }
    }

    #[test]
    fn an_address_that_is_not_metadata_is_left_out() {
        let status = ErrorStatus::new(ErrorCode::NotMaster, "slave")
            .with_master_addr(Some("bad\naddr".into()))
            .into_status();
        let read = ErrorStatus::from_status(&status).unwrap();
        assert_eq!(read.code, ErrorCode::NotMaster);
        assert_eq!(read.master_addr, None);
        assert_eq!(read.message, "slave");
    }

    #[test]
    fn a_status_without_a_known_code_is_the_transports() {
        let transport = tonic::Status::unavailable("connection refused");
        assert_eq!(ErrorStatus::from_status(&transport), None);
        assert!(!carries_error_code(&transport));

        let mut newer = tonic::Status::invalid_argument("a code added after this build");
        newer.metadata_mut().insert(
            ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from(49_999),
        );
        assert_eq!(ErrorStatus::from_status(&newer), None);
        assert!(carries_error_code(&newer), "a service made it all the same");

        let mut garbled = tonic::Status::internal("x");
        garbled.metadata_mut().insert(
            ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("forty"),
        );
        assert_eq!(error_code(&garbled), None);
    }

    #[test]
    fn the_grpc_code_follows_the_table() {
        use tonic::Code;
        for (code, grpc) in [
            (ErrorCode::BadRequest, Code::InvalidArgument),
            (ErrorCode::IllegalOffset, Code::InvalidArgument),
            (ErrorCode::MessageBodyTooLarge, Code::InvalidArgument),
            (ErrorCode::Unauthorized, Code::Unauthenticated),
            (ErrorCode::Forbidden, Code::PermissionDenied),
            (ErrorCode::TopicNotFound, Code::NotFound),
            (ErrorCode::BrokerGroupNotFound, Code::NotFound),
            (ErrorCode::RequestTimeout, Code::DeadlineExceeded),
            (ErrorCode::MasterPersistenceTimeout, Code::DeadlineExceeded),
            (ErrorCode::Conflict, Code::FailedPrecondition),
            (ErrorCode::TooManyRequests, Code::ResourceExhausted),
            (ErrorCode::MessageCorrupted, Code::DataLoss),
            (ErrorCode::NotImplemented, Code::Unimplemented),
            (ErrorCode::NotMaster, Code::Unavailable),
            (ErrorCode::ControllerNotAvailable, Code::Unavailable),
            (ErrorCode::InternalError, Code::Internal),
            (ErrorCode::Ok, Code::Internal),
            (ErrorCode::Unspecified, Code::Internal),
        ] {
            assert_eq!(grpc_code(code), grpc, "{code:?}");
        }
    }

    #[test]
    fn no_request_error_travels_as_a_server_failure() {
        // A 4xxxx code is the caller's fault: generic tooling must never see it as the server's
        // (INTERNAL, UNKNOWN) nor as "retry, it is safe" (UNAVAILABLE).
        for code in every_code().filter(|code| (40000..50000).contains(&(*code as i32))) {
            assert!(
                !matches!(
                    grpc_code(code),
                    tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable
                ),
                "{code:?}"
            );
        }
    }

    #[test]
    fn every_error_code_has_a_v5_code_with_its_number_where_upstream_has_one() {
        for number in 0..100_000 {
            let Ok(code) = ErrorCode::try_from(number) else {
                continue;
            };
            let v5 = v5_code(code);
            if crate::v5::Code::try_from(number).is_ok() {
                assert_eq!(v5 as i32, number, "{code:?}");
            } else {
                assert_ne!(
                    v5,
                    crate::v5::Code::InternalError,
                    "{code:?} has no mapping"
                );
            }
        }
    }
}
