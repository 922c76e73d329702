//! Golden test of the error numbers: a number on the wire never changes meaning.
//!
//! Invariant: every `ErrorCode` that RocketMQ 5's gRPC API also has carries upstream's number, so
//! that a RocketMQ 5 front end speaks it without a translation table; every code of ours alone
//! keeps the number pinned below and takes none that upstream gives another meaning.
//!
//! The upstream tables are copied by hand from `enum Code` in
//! `apache/rocketmq/v2/definition.proto` of github.com/apache/rocketmq-apis (commit 3e60073);
//! a code upstream adds later goes into `UPSTREAM_NOT_OURS`. A failure here means a number
//! changed: put it back, never edit the table to match.

use proto::common::ErrorCode;

/// Upstream's codes that this cluster has too, name -> number, as upstream spells them.
/// `CODE_UNSPECIFIED` is our `ERROR_CODE_UNSPECIFIED` (protobuf's prefix rule for our enum's name).
const UPSTREAM_SHARED: &[(&str, i32)] = &[
    ("CODE_UNSPECIFIED", 0),
    ("OK", 20000),
    ("BAD_REQUEST", 40000),
    ("ILLEGAL_TOPIC", 40002),
    ("ILLEGAL_CONSUMER_GROUP", 40003),
    ("ILLEGAL_MESSAGE_TAG", 40004),
    ("ILLEGAL_MESSAGE_KEY", 40005),
    ("ILLEGAL_MESSAGE_PROPERTY_KEY", 40007),
    ("MESSAGE_CORRUPTED", 40016),
    ("ILLEGAL_OFFSET", 40019),
    ("UNAUTHORIZED", 40100),
    ("FORBIDDEN", 40300),
    ("NOT_FOUND", 40400),
    ("TOPIC_NOT_FOUND", 40402),
    ("CONSUMER_GROUP_NOT_FOUND", 40403),
    ("OFFSET_NOT_FOUND", 40404),
    ("REQUEST_TIMEOUT", 40800),
    ("PAYLOAD_TOO_LARGE", 41300),
    ("MESSAGE_BODY_TOO_LARGE", 41301),
    ("MESSAGE_BODY_EMPTY", 41302),
    ("TOO_MANY_REQUESTS", 42900),
    ("MESSAGE_PROPERTIES_TOO_LARGE", 43101),
    ("INTERNAL_ERROR", 50000),
    ("HA_NOT_AVAILABLE", 50002),
    ("NOT_IMPLEMENTED", 50100),
    ("MASTER_PERSISTENCE_TIMEOUT", 50401),
    ("SLAVE_PERSISTENCE_TIMEOUT", 50402),
];

/// The rest of upstream's codes: this cluster does not have them, so their numbers are not ours
/// to take, and one added here later must take upstream's number.
const UPSTREAM_NOT_OURS: &[(&str, i32)] = &[
    ("MULTIPLE_RESULTS", 30000),
    ("ILLEGAL_ACCESS_POINT", 40001),
    ("ILLEGAL_MESSAGE_GROUP", 40006),
    ("INVALID_TRANSACTION_ID", 40008),
    ("ILLEGAL_MESSAGE_ID", 40009),
    ("ILLEGAL_FILTER_EXPRESSION", 40010),
    ("ILLEGAL_INVISIBLE_TIME", 40011),
    ("ILLEGAL_DELIVERY_TIME", 40012),
    ("INVALID_RECEIPT_HANDLE", 40013),
    ("MESSAGE_PROPERTY_CONFLICT_WITH_TYPE", 40014),
    ("UNRECOGNIZED_CLIENT_TYPE", 40015),
    ("CLIENT_ID_REQUIRED", 40017),
    ("ILLEGAL_POLLING_TIME", 40018),
    ("ILLEGAL_LITE_TOPIC", 40020),
    ("INVALID_CLIENT_PROPERTIES", 40021),
    ("PAYMENT_REQUIRED", 40200),
    ("MESSAGE_NOT_FOUND", 40401),
    ("PRECONDITION_FAILED", 42800),
    ("LITE_TOPIC_QUOTA_EXCEEDED", 42901),
    ("LITE_SUBSCRIPTION_QUOTA_EXCEEDED", 42902),
    ("REQUEST_HEADER_FIELDS_TOO_LARGE", 43100),
    ("INTERNAL_SERVER_ERROR", 50001),
    ("PROXY_TIMEOUT", 50400),
    ("UNSUPPORTED", 50500),
    ("VERSION_UNSUPPORTED", 50501),
    ("VERIFY_FIFO_MESSAGE_UNSUPPORTED", 50502),
    ("FAILED_TO_CONSUME_MESSAGE", 60000),
];

/// Codes of ours alone, name -> number: pinned, so that a number never changes meaning.
const OURS_ONLY: &[(&str, i32)] = &[
    ("BROKER_GROUP_NOT_FOUND", 40405),
    ("CONFLICT", 40900),
    ("CONTROLLER_NOT_AVAILABLE", 50300),
    ("NOT_MASTER", 50301),
];

/// Our name for upstream's `name`.
fn our_name(upstream_name: &str) -> &str {
    match upstream_name {
        "CODE_UNSPECIFIED" => "ERROR_CODE_UNSPECIFIED",
        name => name,
    }
}

/// Every code of our enum, by number.
fn every_code() -> Vec<ErrorCode> {
    (0..100_000)
        .filter_map(|number| ErrorCode::try_from(number).ok())
        .collect()
}

#[test]
fn every_shared_code_has_upstreams_number() {
    for &(name, number) in UPSTREAM_SHARED {
        let code = ErrorCode::from_str_name(our_name(name))
            .unwrap_or_else(|| panic!("{name} is listed as shared, but ErrorCode lacks it"));
        assert_eq!(code as i32, number, "{name}: ours differs from upstream's");
    }
}

#[test]
fn no_code_of_ours_takes_a_number_upstream_gives_another_meaning() {
    for &(name, number) in UPSTREAM_NOT_OURS {
        assert_eq!(
            ErrorCode::from_str_name(name),
            None,
            "{name} is ours now: move it to UPSTREAM_SHARED, with upstream's number"
        );
        if let Ok(code) = ErrorCode::try_from(number) {
            panic!(
                "{} has number {number}, which upstream gives {name}",
                code.as_str_name()
            );
        }
    }
}

#[test]
fn our_own_codes_keep_their_numbers() {
    for &(name, number) in OURS_ONLY {
        let code = ErrorCode::from_str_name(name)
            .unwrap_or_else(|| panic!("{name} is pinned, but ErrorCode lacks it"));
        assert_eq!(code as i32, number, "{name} changed its number");
        assert!(
            UPSTREAM_SHARED
                .iter()
                .chain(UPSTREAM_NOT_OURS)
                .all(|&(_, upstream)| upstream != number),
            "{name}'s number {number} is upstream's for another code"
        );
    }
}

#[test]
fn every_code_is_pinned_once() {
    let codes = every_code();
    for code in &codes {
        let name = code.as_str_name();
        let pins = UPSTREAM_SHARED
            .iter()
            .filter(|(upstream, _)| our_name(upstream) == name)
            .chain(OURS_ONLY.iter().filter(|(ours, _)| *ours == name))
            .count();
        assert_eq!(
            pins, 1,
            "{name} ({}) must be pinned in exactly one table: UPSTREAM_SHARED if upstream has \
             it (with upstream's number), OURS_ONLY otherwise",
            *code as i32
        );
    }
    assert_eq!(codes.len(), UPSTREAM_SHARED.len() + OURS_ONLY.len());
}

/// The v5 API's `Code` (compiled from our copy of upstream's `definition.proto`) is upstream's
/// table exactly: every code of both tables above with its number, and nothing else.
#[test]
fn the_v5_wire_code_enum_is_upstreams_table() {
    use proto::v5::Code;
    let upstream: Vec<(&str, i32)> = UPSTREAM_SHARED
        .iter()
        .chain(UPSTREAM_NOT_OURS)
        .copied()
        .collect();
    for &(name, number) in &upstream {
        let code = Code::from_str_name(name)
            .unwrap_or_else(|| panic!("{name} is upstream's, but proto::v5::Code lacks it"));
        assert_eq!(
            code as i32, number,
            "{name}: the v5 wire differs from upstream"
        );
    }
    let defined = (0..100_000)
        .filter(|number| Code::try_from(*number).is_ok())
        .count();
    assert_eq!(
        defined,
        upstream.len(),
        "proto::v5::Code has codes upstream has not"
    );
}
