//! Error texts are bounded: a request naming a 10,000-character topic or group is answered with
//! its error code, by the broker and by the controller, and not with `RESOURCE_EXHAUSTED`
//! (gRPC carries the text in a header, and a header block above 8 KiB is refused on the way).
//!
//! Invariant: every error status carries its stable code in `x-error-code`, whatever the request
//! held; its text is at most `proto::STATUS_MESSAGE_BYTES_MAX` bytes.

use bytes::Bytes;
use cluster_tests::{wait_for_controller_leader, BrokerProcess, ControllerQuorum};
use proto::client::broker_client::BrokerClient;
use proto::client::{self as wire};
use proto::common::ErrorCode;
use proto::controller::controller_client::ControllerClient;
use proto::controller::{CreateTopicRequest, ElectMasterRequest, GetRouteRequest};

/// A name far beyond every limit: its echo alone would pass gRPC's 8 KiB header limit.
fn long_name() -> String {
    "n".repeat(10_000)
}

/// The status's stable code; fails the test when it has none (a transport-level refusal).
fn error_code(status: &tonic::Status) -> i32 {
    assert_ne!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "the error did not reach the client: {status:?}"
    );
    assert!(
        status.message().len() <= proto::STATUS_MESSAGE_BYTES_MAX,
        "a {}-byte error text",
        status.message().len()
    );
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .unwrap_or_else(|| panic!("every error carries its code: {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_answers_a_ten_thousand_character_name_with_its_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = BrokerClient::connect(format!("http://{}", broker.addr()))
        .await
        .expect("connect to the broker");

    let err = client
        .create_topic(wire::CreateTopicRequest {
            topic: long_name(),
            queue_count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::IllegalTopic as i32, "{err:?}");

    let message = wire::Message {
        body: Bytes::from_static(b"x"),
        message_id: "m1".into(),
        born_timestamp_ms: 1_700_000_000_000,
        ..Default::default()
    };
    let err = client
        .send(wire::SendRequest {
            topic: long_name(),
            queue_id: 0,
            messages: vec![message.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::TopicNotFound as i32, "{err:?}");
    assert!(
        err.message().contains("bytes)"),
        "the echoed name is shortened and says its length: {}",
        err.message()
    );

    // A name inside a message: an illegal 10,000-character tag.
    client
        .create_topic(wire::CreateTopicRequest {
            topic: "orders".into(),
            queue_count: 1,
        })
        .await
        .expect("create orders");
    let err = client
        .send(wire::SendRequest {
            topic: "orders".into(),
            queue_id: 0,
            messages: vec![wire::Message {
                tag: long_name(),
                ..message
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&err),
        ErrorCode::IllegalMessageTag as i32,
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_answers_a_ten_thousand_character_name_with_its_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let addrs = quorum.addrs();
    wait_for_controller_leader(&addrs);
    let mut client = ControllerClient::connect(format!("http://{addrs}"))
        .await
        .expect("connect to the controller");

    let err = client
        .get_route(GetRouteRequest { topic: long_name() })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::TopicNotFound as i32, "{err:?}");

    let err = client
        .create_topic(CreateTopicRequest {
            topic: "orders".into(),
            queues_per_group: 1,
            groups: vec![long_name()],
            perm: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&err),
        ErrorCode::BrokerGroupNotFound as i32,
        "{err:?}"
    );

    let err = client
        .elect_master(ElectMasterRequest {
            group: long_name(),
            broker_id: None,
            unclean: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&err),
        ErrorCode::BrokerGroupNotFound as i32,
        "{err:?}"
    );
}
