//! The `broker` process end to end: a real process on 127.0.0.1 with an ephemeral port and a
//! temporary store, driven over gRPC, stopped with SIGTERM and killed with SIGKILL.
//!
//! Invariants: every send answered `SEND_OK` under `SYNC_FLUSH` is read back after a SIGKILL and
//! restart; bad input gets its documented code and changes nothing; the broker keeps serving after
//! bad input and garbage bytes; SIGTERM stops it cleanly (no recovery needed at the next start);
//! a born timestamp outside the sane window is refused with `BAD_REQUEST` and changes nothing.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use cluster_tests::BrokerProcess;
use proto::client::broker_client::BrokerClient;
use proto::client::{self as wire, PullStatus};
use proto::common::{ErrorCode, SendStatus};
use tonic::transport::Channel;

async fn connect(broker: &BrokerProcess) -> BrokerClient<Channel> {
    BrokerClient::connect(format!("http://{}", broker.addr()))
        .await
        .expect("connect to the broker")
        .max_decoding_message_size(32 << 20)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

fn message(id: &str, body: &[u8]) -> wire::Message {
    wire::Message {
        body: Bytes::copy_from_slice(body),
        tag: "paid".into(),
        keys: vec![format!("order-{id}")],
        properties: [("region".to_owned(), "eu".to_owned())].into(),
        message_id: id.into(),
        born_timestamp_ms: now_ms(),
    }
}

async fn send(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    queue_id: u32,
    messages: Vec<wire::Message>,
) -> Result<wire::SendResponse, tonic::Status> {
    client
        .send(wire::SendRequest {
            topic: topic.into(),
            queue_id,
            messages,
        })
        .await
        .map(|r| r.into_inner())
}

fn error_code(status: &tonic::Status) -> i32 {
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .unwrap_or_else(|| panic!("every error carries its code: {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn pull(
    client: &mut BrokerClient<Channel>,
    queue_offset: u64,
    poll_timeout_ms: u32,
) -> wire::PullResponse {
    client
        .pull(wire::PullRequest {
            topic: "orders".into(),
            queue_id: 0,
            queue_offset,
            max_messages: 64,
            max_bytes: 0,
            tag_expression: "*".into(),
            poll_timeout_ms,
        })
        .await
        .expect("pull")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_serves_sends_and_pulls_and_survives_bad_input_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--flush-disk-type", "SYNC_FLUSH"]);
    let mut client = connect(&broker).await;

    // Unknown topic, then the topic.
    let err = send(&mut client, "orders", 0, vec![message("m0", b"x")])
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::TopicNotFound as i32);
    let created = client
        .create_topic(wire::CreateTopicRequest {
            topic: "orders".into(),
            queue_count: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);

    // Sends: every one SEND_OK under SYNC_FLUSH, queue offsets in order.
    for i in 0..10u64 {
        let response = send(
            &mut client,
            "orders",
            0,
            vec![message(&format!("m{i}"), format!("body {i}").as_bytes())],
        )
        .await
        .unwrap();
        assert_eq!(response.status, SendStatus::SendOk as i32);
        assert_eq!(response.queue_offset, i);
    }
    let batch = (10..15)
        .map(|i| message(&format!("m{i}"), b"batched"))
        .collect();
    let response = send(&mut client, "orders", 0, batch).await.unwrap();
    assert_eq!((response.queue_offset, response.message_ids.len()), (10, 5));

    // Bad input: the documented codes, and nothing written.
    let cases: Vec<(wire::SendRequest, ErrorCode)> = vec![
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![message("e", b"")],
            },
            ErrorCode::MessageBodyEmpty,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![message("big", &vec![1u8; 5 << 20])],
            },
            ErrorCode::MessageBodyTooLarge,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 9,
                messages: vec![message("q", b"x")],
            },
            ErrorCode::BadRequest,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![],
            },
            ErrorCode::BadRequest,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![wire::Message {
                    properties: [("TAGS".to_owned(), "x".to_owned())].into(),
                    ..message("r", b"x")
                }],
            },
            ErrorCode::IllegalMessagePropertyKey,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![wire::Message {
                    properties: [("p".to_owned(), "v".repeat(40_000))].into(),
                    ..message("p", b"x")
                }],
            },
            ErrorCode::MessagePropertiesTooLarge,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![wire::Message {
                    tag: "a||b".into(),
                    ..message("t", b"x")
                }],
            },
            ErrorCode::IllegalMessageTag,
        ),
        (
            wire::SendRequest {
                topic: "orders".into(),
                queue_id: 0,
                messages: vec![wire::Message {
                    message_id: String::new(),
                    ..message("i", b"x")
                }],
            },
            ErrorCode::BadRequest,
        ),
    ];
    for (request, code) in cases {
        let err = client.send(request).await.unwrap_err();
        assert_eq!(error_code(&err), code as i32, "{err:?}");
    }
    let err = client
        .create_topic(wire::CreateTopicRequest {
            topic: "bad topic".into(),
            queue_count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::IllegalTopic as i32);

    // Garbage bytes on the port do not stop the broker.
    let mut garbage = std::net::TcpStream::connect(broker.addr()).unwrap();
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1000))
        .unwrap();
    drop(garbage);

    // Pull: everything sent, with its fields, and nothing of the refused sends.
    let pulled = pull(&mut client, 0, 0).await;
    assert_eq!(pulled.status, PullStatus::Found as i32);
    assert_eq!(pulled.messages.len(), 15);
    let first = &pulled.messages[0];
    assert_eq!(
        (first.message_id.as_str(), first.tag.as_str()),
        ("m0", "paid")
    );
    assert_eq!(first.keys, vec!["order-m0".to_owned()]);
    assert_eq!(
        first.properties.get("region").map(String::as_str),
        Some("eu")
    );
    assert_eq!(&first.body[..], b"body 0");

    // Long polling: a pull waiting at the end is answered by the next send, long before its
    // 30 s timeout.
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { pull(&mut client, 15, 30_000).await }
    });
    send(&mut client, "orders", 0, vec![message("m15", b"late")])
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long poll must return when a message arrives")
        .unwrap();
    assert_eq!(woken.status, PullStatus::Found as i32);
    assert_eq!(woken.messages[0].message_id, "m15");

    // SIGTERM: a clean stop, no abort marker left.
    broker.signal(libc::SIGTERM);
    assert!(broker.wait().success());
    assert!(!dir.path().join("abort").exists());

    // Restart, send more, SIGKILL, restart: every SEND_OK message is there.
    let broker = BrokerProcess::start(dir.path(), &["--flush-disk-type", "SYNC_FLUSH"]);
    let mut client = connect(&broker).await;
    for i in 16..40u64 {
        let response = send(
            &mut client,
            "orders",
            0,
            vec![message(&format!("m{i}"), b"before kill")],
        )
        .await
        .unwrap();
        assert_eq!(response.status, SendStatus::SendOk as i32);
    }
    broker.signal(libc::SIGKILL);
    broker.wait();
    let broker = BrokerProcess::start(dir.path(), &["--flush-disk-type", "SYNC_FLUSH"]);
    let mut client = connect(&broker).await;
    let pulled = pull(&mut client, 0, 0).await;
    let ids: Vec<_> = pulled
        .messages
        .iter()
        .map(|m| m.message_id.clone())
        .collect();
    let expected: Vec<_> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, expected);
}

/// A born timestamp before 2000-01-01 or more than a day ahead of the broker's clock (2^64-1
/// among them) is refused with `BAD_REQUEST`, a batch holding one is refused whole, and nothing
/// changes: no message is written, and no topic is auto-created for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_born_timestamp_outside_the_sane_window_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--set", "auto_create_topic_enable=true"]);
    let mut client = connect(&broker).await;
    client
        .create_topic(wire::CreateTopicRequest {
            topic: "orders".into(),
            queue_count: 1,
        })
        .await
        .expect("create orders");

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let at = |born_timestamp_ms: u64| wire::Message {
        born_timestamp_ms,
        ..message("m", b"x")
    };
    for born in [
        u64::MAX,
        now_ms() + 2 * DAY_MS,
        0,
        946_684_800_000 - 1, // 1999-12-31T23:59:59.999Z
    ] {
        for topic in ["orders", "auto-created"] {
            let err = send(&mut client, topic, 0, vec![at(born)])
                .await
                .unwrap_err();
            assert_eq!(
                error_code(&err),
                ErrorCode::BadRequest as i32,
                "born {born} to {topic}: {err:?}"
            );
        }
        let err = send(&mut client, "orders", 0, vec![at(now_ms()), at(born)])
            .await
            .unwrap_err();
        assert_eq!(error_code(&err), ErrorCode::BadRequest as i32, "{err:?}");
    }
    let topics = client
        .list_topics(wire::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        topics.topics.iter().all(|t| t.topic != "auto-created"),
        "a refused send auto-created its topic: {topics:?}"
    );

    // The window's edges are accepted, and the first stored message takes queue offset 0.
    let first = send(&mut client, "orders", 0, vec![at(946_684_800_000)])
        .await
        .unwrap();
    assert_eq!(first.queue_offset, 0);
    let born_soon = now_ms() + DAY_MS - 60_000;
    send(&mut client, "orders", 0, vec![at(born_soon)])
        .await
        .unwrap();
    // Readable once dispatched: long polls until both are there.
    let mut born = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while born.len() < 2 && std::time::Instant::now() < deadline {
        let pulled = pull(&mut client, born.len() as u64, 1_000).await;
        born.extend(pulled.messages.iter().map(|m| m.born_timestamp_ms));
    }
    assert_eq!(born, vec![946_684_800_000, born_soon]);
}
