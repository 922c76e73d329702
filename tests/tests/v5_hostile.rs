//! The v5 API (`apache.rocketmq.v2`) against bad and hostile input, from a raw gRPC client.
//!
//! The attacker: any client that can reach the v5 port and sends what it likes (no client id,
//! absurd names, sizes and durations, message types not served, forged, altered, replayed or
//! foreign receipt handles). Invariant: each is answered with upstream's code in the body,
//! nothing is stored or acknowledged by it, and the broker serves a well-formed client
//! afterwards.

use bytes::Bytes;
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

use cluster_tests::BrokerProcess;

const TOPIC: &str = "orders";

/// A standalone broker serving the v5 API (bodies up to 1 KiB) with topic [`TOPIC`] of one
/// queue, and a v5 client of it.
async fn start_broker(dir: &std::path::Path) -> (BrokerProcess, MessagingServiceClient<Channel>) {
    let broker = BrokerProcess::start(
        dir,
        &[
            "--set",
            "v5_listen=\"127.0.0.1:0\"",
            "--set",
            "max_message_bytes=1024",
        ],
    );
    client::Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic(TOPIC, 1)
        .await
        .unwrap();
    let client = v5_client(broker.v5_addr().expect("v5 address")).await;
    (broker, client)
}

async fn v5_client(addr: &str) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the v5 API")
}

/// `message` with the client id header.
fn named<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-mq-client-id", "hostile-test@1".parse().unwrap());
    request
}

fn resource(name: &str) -> Option<v5::Resource> {
    Some(v5::Resource {
        resource_namespace: String::new(),
        name: name.to_owned(),
    })
}

fn message(kind: v5::MessageType, body: Bytes, group: Option<&str>) -> v5::Message {
    v5::Message {
        topic: resource(TOPIC),
        user_properties: Default::default(),
        system_properties: Some(v5::SystemProperties {
            message_id: format!("01{:032X}", rand_id()),
            message_type: kind as i32,
            body_encoding: v5::Encoding::Identity as i32,
            born_timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            message_group: group.map(str::to_owned),
            ..Default::default()
        }),
        body,
    }
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn send(client: &mut MessagingServiceClient<Channel>, m: v5::Message) -> i32 {
    client
        .send_message(named(v5::SendMessageRequest { messages: vec![m] }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .code
}

fn receive_request(group: &str, batch: i32) -> v5::ReceiveMessageRequest {
    v5::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(v5::MessageQueue {
            topic: resource(TOPIC),
            id: 0,
            ..Default::default()
        }),
        batch_size: batch,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A receive's status and messages.
async fn receive(
    client: &mut MessagingServiceClient<Channel>,
    request: v5::ReceiveMessageRequest,
) -> (i32, Vec<v5::Message>) {
    let mut stream = client
        .receive_message(named(request))
        .await
        .unwrap()
        .into_inner();
    let (mut code, mut messages) = (0, Vec::new());
    while let Some(item) = stream.message().await.unwrap() {
        match item.content {
            Some(v5::receive_message_response::Content::Status(s)) => code = s.code,
            Some(v5::receive_message_response::Content::Message(m)) => messages.push(m),
            _ => {}
        }
    }
    (code, messages)
}

async fn ack(client: &mut MessagingServiceClient<Channel>, group: &str, handle: &str) -> i32 {
    client
        .ack_message(named(v5::AckMessageRequest {
            group: resource(group),
            topic: resource(TOPIC),
            entries: vec![v5::AckMessageEntry {
                message_id: String::new(),
                receipt_handle: handle.to_owned(),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_upstreams_codes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mut client) = start_broker(dir.path()).await;

    // No client id: refused, whatever the call.
    let anonymous = client
        .query_route(v5::QueryRouteRequest {
            topic: resource(TOPIC),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        anonymous.status.unwrap().code,
        v5::Code::ClientIdRequired as i32
    );
    assert!(anonymous.message_queues.is_empty());

    // Names.
    let route = |name: String| v5::QueryRouteRequest {
        topic: resource(&name),
        endpoints: None,
    };
    for (name, code) in [
        ("n".repeat(10_000), v5::Code::IllegalTopic),
        (String::new(), v5::Code::IllegalTopic),
        ("no-such-topic".to_owned(), v5::Code::TopicNotFound),
    ] {
        let answer = client
            .query_route(named(route(name)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status.unwrap().code, code as i32);
    }

    // Sends that must store nothing.
    let body = Bytes::from_static(b"x");
    let mut unknown = message(v5::MessageType::Normal, body.clone(), None);
    unknown.topic = resource("no-such-topic");
    let mut no_system = message(v5::MessageType::Normal, body.clone(), None);
    no_system.system_properties = None;
    let mut unknown_type = message(v5::MessageType::Normal, body.clone(), None);
    unknown_type
        .system_properties
        .as_mut()
        .unwrap()
        .message_type = 77;
    for (m, code) in [
        (
            message(v5::MessageType::Delay, body.clone(), None),
            v5::Code::Unsupported,
        ),
        (
            message(v5::MessageType::Transaction, body.clone(), None),
            v5::Code::Unsupported,
        ),
        (
            message(v5::MessageType::Fifo, body.clone(), None),
            v5::Code::IllegalMessageGroup,
        ),
        (
            message(v5::MessageType::Normal, body.clone(), Some("g")),
            v5::Code::MessagePropertyConflictWithType,
        ),
        (
            message(v5::MessageType::Normal, Bytes::from(vec![0u8; 2048]), None),
            v5::Code::MessageBodyTooLarge,
        ),
        (
            message(v5::MessageType::Normal, Bytes::new(), None),
            v5::Code::MessageBodyEmpty,
        ),
        (unknown, v5::Code::TopicNotFound),
        (no_system, v5::Code::BadRequest),
        (unknown_type, v5::Code::BadRequest),
    ] {
        assert_eq!(send(&mut client, m).await, code as i32, "{code:?}");
    }
    let empty = client
        .send_message(named(v5::SendMessageRequest { messages: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.status.unwrap().code, v5::Code::BadRequest as i32);
    let (code, nothing) = receive(&mut client, receive_request("g1", 32)).await;
    assert_eq!(code, v5::Code::MessageNotFound as i32, "nothing was stored");
    assert!(nothing.is_empty());

    // Receives out of bounds.
    let mut absurd = receive_request("g1", 10_000);
    assert_eq!(
        receive(&mut client, absurd.clone()).await.0,
        v5::Code::BadRequest as i32
    );
    absurd.batch_size = 1;
    absurd.invisible_duration = Some(prost_types::Duration {
        seconds: 365 * 86_400,
        nanos: 0,
    });
    assert_eq!(
        receive(&mut client, absurd.clone()).await.0,
        v5::Code::IllegalInvisibleTime as i32
    );
    absurd.invisible_duration = None;
    absurd.long_polling_timeout = Some(prost_types::Duration {
        seconds: -3_600,
        nanos: 0,
    });
    assert_eq!(
        receive(&mut client, absurd).await.0,
        v5::Code::IllegalPollingTime as i32
    );

    // One message, received by two groups independently.
    assert_eq!(
        send(
            &mut client,
            message(v5::MessageType::Normal, body.clone(), None)
        )
        .await,
        20000
    );
    let (code, got) = receive(&mut client, receive_request("g1", 32)).await;
    assert_eq!((code, got.len()), (20000, 1));
    let (_, other_group) = receive(&mut client, receive_request("g2", 32)).await;
    assert_eq!(other_group.len(), 1, "groups consume independently");
    let handle = got[0]
        .system_properties
        .as_ref()
        .unwrap()
        .receipt_handle
        .clone()
        .unwrap();
    assert_eq!(
        got[0].system_properties.as_ref().unwrap().delivery_attempt,
        Some(1)
    );

    // Forged, altered, foreign and misdirected handles: refused, the message stays in flight.
    let mut altered = handle.clone().into_bytes();
    altered[20] = if altered[20] == b'a' { b'b' } else { b'a' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in ["", "not hex at all", &"ab".repeat(5_000), &altered] {
        assert_eq!(
            ack(&mut client, "g1", bad).await,
            v5::Code::InvalidReceiptHandle as i32,
            "{bad:.40}"
        );
    }
    assert_eq!(
        ack(&mut client, "g3", &handle).await,
        v5::Code::InvalidReceiptHandle as i32,
        "another group's"
    );
    let (_, again) = receive(&mut client, receive_request("g1", 32)).await;
    assert!(again.is_empty(), "still invisible: nothing acknowledged it");

    // The real one, once.
    assert_eq!(ack(&mut client, "g1", &handle).await, 20000);
    assert_eq!(
        ack(&mut client, "g1", &handle).await,
        v5::Code::InvalidReceiptHandle as i32,
        "replayed"
    );
    let (code, after) = receive(&mut client, receive_request("g1", 32)).await;
    assert_eq!((code, after.len()), (v5::Code::MessageNotFound as i32, 0));

    // And a renewal needs a current handle too.
    let renew = client
        .change_invisible_duration(named(v5::ChangeInvisibleDurationRequest {
            group: resource("g1"),
            topic: resource(TOPIC),
            receipt_handle: handle,
            invisible_duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            message_id: String::new(),
            lite_topic: None,
            suspend: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        renew.status.unwrap().code,
        v5::Code::InvalidReceiptHandle as i32
    );
}

/// Invariant: in one request of several messages, a bad one is refused alone with its code
/// (the request's status is that refusal), and the others are stored, answered OK, at
/// consecutive offsets in request order, and received in that order. One acknowledgement of
/// them all answers each OK and moves the group's committed offset past them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_in_a_batch_fails_alone_and_the_rest_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut client) = start_broker(dir.path()).await;
    let mut messages: Vec<v5::Message> = (0..8)
        .map(|i| message(v5::MessageType::Normal, Bytes::from(format!("m{i}")), None))
        .collect();
    messages[3].body = Bytes::from(vec![b'x'; 4096]);
    let answer = client
        .send_message(named(v5::SendMessageRequest { messages }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status.unwrap().code,
        v5::Code::MessageBodyTooLarge as i32
    );
    let codes: Vec<i32> = answer
        .entries
        .iter()
        .map(|e| e.status.as_ref().unwrap().code)
        .collect();
    let ok = v5::Code::Ok as i32;
    assert_eq!(
        codes,
        [
            ok,
            ok,
            ok,
            v5::Code::MessageBodyTooLarge as i32,
            ok,
            ok,
            ok,
            ok
        ]
    );
    let offsets: Vec<i64> = answer
        .entries
        .iter()
        .filter(|e| e.status.as_ref().unwrap().code == ok)
        .map(|e| e.offset)
        .collect();
    assert_eq!(
        offsets,
        (0..7).collect::<Vec<i64>>(),
        "consecutive, in order"
    );
    let (code, got) = receive(&mut client, receive_request("g-batch", 32)).await;
    assert_eq!(code, ok);
    let bodies: Vec<Bytes> = got.iter().map(|m| m.body.clone()).collect();
    let sent: Vec<Bytes> = [0, 1, 2, 4, 5, 6, 7]
        .iter()
        .map(|i| Bytes::from(format!("m{i}")))
        .collect();
    assert_eq!(bodies, sent);

    let entries = got
        .iter()
        .map(|m| {
            let system = m.system_properties.clone().unwrap();
            v5::AckMessageEntry {
                message_id: system.message_id,
                receipt_handle: system.receipt_handle.unwrap(),
                lite_topic: None,
            }
        })
        .collect();
    let acked = client
        .ack_message(named(v5::AckMessageRequest {
            group: resource("g-batch"),
            topic: resource(TOPIC),
            entries,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.status.unwrap().code, ok);
    assert!(acked
        .entries
        .iter()
        .all(|e| e.status.as_ref().unwrap().code == ok));
    let mut groups = proto::client::consumer_groups_client::ConsumerGroupsClient::connect(format!(
        "http://{}",
        broker.addr()
    ))
    .await
    .unwrap();
    let committed = groups
        .query_offset(proto::client::QueryOffsetRequest {
            group: "g-batch".into(),
            topic: TOPIC.into(),
            queue_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((committed.found, committed.queue_offset), (true, 7));
    let (code, again) = receive(&mut client, receive_request("g-batch", 32)).await;
    assert_eq!((code, again.len()), (v5::Code::MessageNotFound as i32, 0));
}
