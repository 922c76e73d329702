//! A broker with `acl_enabled`, started in this process, its ACL filled by hand
//! (`Broker::acl_directory`), as the controller's feed would fill it.
//!
//! The attacker: anyone who reaches the broker's ports, with no credentials, with a made-up
//! access key, with a user's access key and a guessed secret, or with a signature captured an
//! hour ago; and a real user who tries what its policies do not grant. Invariants: every RPC of
//! every API the broker serves refuses a caller without credentials (40100), whatever it is, so
//! a new RPC cannot be added unchecked (the list of RPCs called here is compared with the
//! protos'); a refused request changes nothing (no message stored, no offset committed); a user
//! may do what its policies grant and nothing else (40300), and sees only its own topics.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use auth::acl::{AclSnapshot, Effect, Policy, User};
use auth::{Action, ClusterKey, Credentials, SignedChannel};
use broker::config::BrokerConfig;
use broker::server::Broker;
use bytes::Bytes;
use proto::client as wire;
use proto::client::broker_client::BrokerClient;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::common::{ErrorCode, SendStatus};
use proto::replication::log_shipping_client::LogShippingClient;
use proto::replication::HaStatusRequest;
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

const SECRET: &str = "0123456789abcdef0123";

fn config(store: &std::path::Path) -> BrokerConfig {
    let config = BrokerConfig::default()
        .with_overrides(&[
            "listen=\"127.0.0.1:0\"".to_owned(),
            "v5_listen=\"127.0.0.1:0\"".to_owned(),
            "acl_enabled=true".to_owned(),
            format!("cluster_secret={SECRET:?}"),
            format!("store_path={:?}", store.display().to_string()),
        ])
        .unwrap();
    config.validate().unwrap();
    config
}

fn policy(resource: &str, action: Action) -> Policy {
    Policy {
        resource: resource.parse().unwrap(),
        actions: [action].into(),
        effect: Effect::Allow,
    }
}

/// `admin` may do everything; `app` may send to and consume `orders` as group `g1`.
fn fill(broker: &Broker) {
    let key = ClusterKey::new(SECRET).unwrap();
    let mut acl = AclSnapshot {
        revision: 1,
        ..AclSnapshot::default()
    };
    for (name, admin) in [("admin", true), ("app", false)] {
        acl.users.insert(
            name.into(),
            User {
                name: name.into(),
                secret: key.seal(name, &format!("{name}-secret-key")),
                admin,
            },
        );
    }
    acl.policies.insert(
        "app".into(),
        vec![
            policy("topic:orders", Action::Send),
            policy("topic:orders", Action::Consume),
            policy("group:g1", Action::Consume),
        ],
    );
    assert!(broker.acl_directory().replace(acl));
}

fn credentials(name: &str) -> Credentials {
    Credentials::new(name, &format!("{name}-secret-key")).unwrap()
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn signed(addr: std::net::SocketAddr, user: &str) -> SignedChannel {
    auth::Signed::unsigned(channel(addr).await).with_user(Some(credentials(user)))
}

fn code<T: std::fmt::Debug>(answer: Result<T, tonic::Status>) -> ErrorCode {
    let status = answer.unwrap_err();
    proto::status::error_code(&status).unwrap_or_else(|| panic!("no error code: {status:?}"))
}

fn message(id: &str) -> wire::Message {
    wire::Message {
        body: Bytes::from_static(b"m"),
        message_id: id.into(),
        born_timestamp_ms: 1_700_000_000_000,
        ..Default::default()
    }
}

fn send(topic: &str) -> wire::SendRequest {
    wire::SendRequest {
        topic: topic.into(),
        queue_id: 0,
        messages: vec![message("m1")],
    }
}

fn commit(group: &str) -> wire::CommitOffsetRequest {
    wire::CommitOffsetRequest {
        group: group.into(),
        topic: "orders".into(),
        queue_id: 0,
        queue_offset: 1,
    }
}

fn resource(name: &str) -> Option<v5::Resource> {
    Some(v5::Resource {
        name: name.into(),
        ..Default::default()
    })
}

fn queue(topic: &str) -> Option<v5::MessageQueue> {
    Some(v5::MessageQueue {
        topic: resource(topic),
        ..Default::default()
    })
}

/// A v5 request naming its client, as every official client's does.
fn v5_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-mq-client-id", "test-client".parse().unwrap());
    request
}

/// The max queue offset of every queue of `orders` and the committed offset of `g1`, as the
/// admin sees them: what a refused request must leave as it was.
async fn state(admin: &SignedChannel) -> (Vec<u64>, bool) {
    let topics = BrokerClient::new(admin.clone())
        .list_topics(wire::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    let offsets = topics
        .iter()
        .filter(|t| t.topic == "orders")
        .flat_map(|t| t.queues.iter().map(|q| q.max_queue_offset))
        .collect();
    let committed = ConsumerGroupsClient::new(admin.clone())
        .query_offset(wire::QueryOffsetRequest {
            group: "g1".into(),
            topic: "orders".into(),
            queue_id: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .found;
    (offsets, committed)
}

fn v5_message() -> v5::Message {
    v5::Message {
        topic: resource("orders"),
        body: Bytes::from_static(b"m"),
        system_properties: Some(v5::SystemProperties {
            message_id: "01ABC".into(),
            message_type: v5::MessageType::Normal as i32,
            body_encoding: v5::Encoding::Identity as i32,
            born_timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls [`state`] until it is `expected` (the dispatcher makes a stored message visible a
/// moment after its send is answered), or fails after 10 s.
async fn wait_state(admin: &SignedChannel, expected: (Vec<u64>, bool)) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = state(admin).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now:?}, not {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A broker with the ACL filled and topics `orders` and `payments` made by the admin; the
/// admin's channel.
async fn start(dir: &tempfile::TempDir) -> (Broker, SignedChannel) {
    let broker = Broker::start(config(&dir.path().join("store")))
        .await
        .unwrap();
    fill(&broker);
    let admin = signed(broker.local_addr(), "admin").await;
    for topic in ["orders", "payments"] {
        BrokerClient::new(admin.clone())
            .create_topic(wire::CreateTopicRequest {
                topic: topic.into(),
                queue_count: 1,
            })
            .await
            .unwrap();
    }
    (broker, admin)
}

/// Calls every RPC of the v5 API without credentials: each must answer 40100 in its body.
async fn v5_refusals(v5_addr: std::net::SocketAddr, called: &mut BTreeSet<String>) {
    let mut refused = |path: &str, code: ErrorCode| {
        assert_eq!(code, ErrorCode::Unauthorized, "{path}");
        called.insert(format!("/{path}"));
    };
    let v5_message = v5_message();
    let mut v5c = MessagingServiceClient::new(channel(v5_addr).await);
    let body = |status: Option<v5::Status>| match status.map(|s| s.code) {
        Some(40100) => ErrorCode::Unauthorized,
        Some(40300) => ErrorCode::Forbidden,
        other => panic!("not a refusal: {other:?}"),
    };
    let service = "apache.rocketmq.v2.MessagingService";
    let answer = v5c
        .query_route(v5_request(v5::QueryRouteRequest {
            topic: resource("orders"),
            endpoints: None,
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/QueryRoute"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .heartbeat(v5_request(v5::HeartbeatRequest {
            group: resource("g1"),
            client_type: v5::ClientType::SimpleConsumer as i32,
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/Heartbeat"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .send_message(v5_request(v5::SendMessageRequest {
            messages: vec![v5_message.clone()],
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/SendMessage"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .query_assignment(v5_request(v5::QueryAssignmentRequest {
            topic: resource("orders"),
            group: resource("g1"),
            endpoints: None,
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/QueryAssignment"),
        body(answer.into_inner().status),
    );
    let mut items = v5c
        .receive_message(v5_request(v5::ReceiveMessageRequest {
            group: resource("g1"),
            message_queue: queue("orders"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let first = items.message().await.unwrap().unwrap();
    let Some(v5::receive_message_response::Content::Status(status)) = first.content else {
        panic!("a receive's refusal is its status: {first:?}");
    };
    refused(&format!("{service}/ReceiveMessage"), body(Some(status)));
    let answer = v5c
        .ack_message(v5_request(v5::AckMessageRequest {
            group: resource("g1"),
            topic: resource("orders"),
            entries: vec![v5::AckMessageEntry::default()],
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/AckMessage"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .forward_message_to_dead_letter_queue(v5_request(
            v5::ForwardMessageToDeadLetterQueueRequest {
                group: resource("g1"),
                topic: resource("orders"),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    refused(
        &format!("{service}/ForwardMessageToDeadLetterQueue"),
        body(answer.into_inner().status),
    );
    let mut items = v5c
        .pull_message(v5_request(v5::PullMessageRequest {
            group: resource("g1"),
            message_queue: queue("orders"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let first = items.message().await.unwrap().unwrap();
    let Some(v5::pull_message_response::Content::Status(status)) = first.content else {
        panic!("a pull's refusal is its status: {first:?}");
    };
    refused(&format!("{service}/PullMessage"), body(Some(status)));
    let answer = v5c
        .update_offset(v5_request(v5::UpdateOffsetRequest {
            group: resource("g1"),
            message_queue: queue("orders"),
            offset: 1,
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/UpdateOffset"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .get_offset(v5_request(v5::GetOffsetRequest {
            group: resource("g1"),
            message_queue: queue("orders"),
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/GetOffset"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .query_offset(v5_request(v5::QueryOffsetRequest {
            message_queue: queue("orders"),
            ..Default::default()
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/QueryOffset"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .end_transaction(v5_request(v5::EndTransactionRequest {
            topic: resource("orders"),
            ..Default::default()
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/EndTransaction"),
        body(answer.into_inner().status),
    );
    let mut items = v5c
        .telemetry(v5_request(tokio_stream::iter(vec![
            v5::TelemetryCommand::default(),
        ])))
        .await
        .unwrap()
        .into_inner();
    let first = items.message().await.unwrap().unwrap();
    refused(&format!("{service}/Telemetry"), body(first.status));
    let answer = v5c
        .notify_client_termination(v5_request(v5::NotifyClientTerminationRequest {
            group: resource("g1"),
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/NotifyClientTermination"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .change_invisible_duration(v5_request(v5::ChangeInvisibleDurationRequest {
            group: resource("g1"),
            topic: resource("orders"),
            ..Default::default()
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/ChangeInvisibleDuration"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .recall_message(v5_request(v5::RecallMessageRequest {
            topic: resource("orders"),
            recall_handle: "h".into(),
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/RecallMessage"),
        body(answer.into_inner().status),
    );
    let answer = v5c
        .sync_lite_subscription(v5_request(v5::SyncLiteSubscriptionRequest {
            topic: resource("orders"),
            group: resource("g1"),
            ..Default::default()
        }))
        .await
        .unwrap();
    refused(
        &format!("{service}/SyncLiteSubscription"),
        body(answer.into_inner().status),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_a_caller_without_credentials_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(&dir).await;
    let addr = broker.local_addr();
    let before = state(&admin).await;
    assert_eq!(before, (vec![0], false));

    // No credentials: every RPC of every API, refused with 40100.
    let anonymous = channel(addr).await;
    let mut called = BTreeSet::new();
    let mut refused = |path: &str, code: ErrorCode| {
        assert_eq!(code, ErrorCode::Unauthorized, "{path}");
        called.insert(format!("/{path}"));
    };
    let mut native = BrokerClient::new(anonymous.clone());
    refused(
        "broker.client.v1.Broker/Send",
        code(native.send(send("orders")).await),
    );
    refused(
        "broker.client.v1.Broker/Pull",
        code(
            native
                .pull(wire::PullRequest {
                    topic: "orders".into(),
                    ..Default::default()
                })
                .await,
        ),
    );
    refused(
        "broker.client.v1.Broker/CreateTopic",
        code(
            native
                .create_topic(wire::CreateTopicRequest {
                    topic: "stolen".into(),
                    queue_count: 1,
                })
                .await,
        ),
    );
    refused(
        "broker.client.v1.Broker/ListTopics",
        code(native.list_topics(wire::ListTopicsRequest {}).await),
    );
    let mut groups = ConsumerGroupsClient::new(anonymous.clone());
    refused(
        "broker.client.v1.ConsumerGroups/CommitOffset",
        code(groups.commit_offset(commit("g1")).await),
    );
    refused(
        "broker.client.v1.ConsumerGroups/QueryOffset",
        code(
            groups
                .query_offset(wire::QueryOffsetRequest {
                    group: "g1".into(),
                    topic: "orders".into(),
                    queue_id: 0,
                })
                .await,
        ),
    );
    refused(
        "broker.client.v1.ConsumerGroups/Heartbeat",
        code(
            groups
                .heartbeat(wire::HeartbeatRequest {
                    group: "g1".into(),
                    client_id: "intruder".into(),
                })
                .await,
        ),
    );
    refused(
        "broker.client.v1.ConsumerGroups/SendBack",
        code(
            groups
                .send_back(wire::SendBackRequest {
                    group: "g1".into(),
                    topic: "orders".into(),
                    ..Default::default()
                })
                .await,
        ),
    );
    let mut shipping = LogShippingClient::new(anonymous.clone());
    refused(
        "broker.replication.v1.LogShipping/HaStatus",
        code(shipping.ha_status(HaStatusRequest {}).await),
    );
    refused(
        "broker.replication.v1.LogShipping/Replicate",
        code(shipping.replicate(tokio_stream::empty()).await),
    );

    v5_refusals(broker.v5_addr().unwrap(), &mut called).await;
    let listed: BTreeSet<String> = broker::access::PERMISSIONS
        .iter()
        .map(|(path, _)| path.to_string())
        .collect();
    assert_eq!(
        called, listed,
        "every RPC the broker serves is called here without credentials"
    );
    assert_eq!(state(&admin).await, before, "refusals changed nothing");

    // Signatures that do not verify: refused by the guard before any service.
    let mut native = BrokerClient::new(anonymous);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (forger, signed_at) in [
        (Credentials::new("ghost", "ghost-secret-key").unwrap(), now),
        (Credentials::new("app", "guessed-secret").unwrap(), now),
        (credentials("app"), now - 3600),
    ] {
        let mut request = tonic::Request::new(send("orders"));
        let headers = forger.sign(signed_at);
        let metadata = request.metadata_mut();
        metadata.insert("authorization", headers.authorization.parse().unwrap());
        metadata.insert("x-mq-date-time", headers.date_time.parse().unwrap());
        assert_eq!(
            code(native.send(request).await),
            ErrorCode::Unauthorized,
            "{forger:?} at {signed_at}"
        );
    }
    assert_eq!(state(&admin).await, before, "forged sends stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_do_what_its_policies_grant_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(&dir).await;
    let addr = broker.local_addr();
    let v5_addr = broker.v5_addr().unwrap();
    let body = |status: Option<v5::Status>| match status.map(|s| s.code) {
        Some(40300) => ErrorCode::Forbidden,
        other => panic!("not a refusal: {other:?}"),
    };
    let v5_message = v5_message();
    // A user: what its policies grant, and 40300 for the rest.
    let app = signed(addr, "app").await;
    let mut native = BrokerClient::new(app.clone());
    let sent = native.send(send("orders")).await.unwrap().into_inner();
    assert_eq!(sent.status, SendStatus::SendOk as i32);
    assert_eq!(
        code(native.send(send("payments")).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            native
                .create_topic(wire::CreateTopicRequest {
                    topic: "mine".into(),
                    queue_count: 1,
                })
                .await
        ),
        ErrorCode::Forbidden
    );
    let visible: Vec<String> = native
        .list_topics(wire::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.topic)
        .collect();
    assert_eq!(visible, ["orders"], "a user sees only its topics");
    let mut groups = ConsumerGroupsClient::new(app.clone());
    assert_eq!(
        code(groups.commit_offset(commit("g2")).await),
        ErrorCode::Forbidden,
        "another application's group"
    );
    wait_state(&admin, (vec![1], false)).await;
    groups.commit_offset(commit("g1")).await.unwrap();
    wait_state(&admin, (vec![1], true)).await;
    let mut shipping = LogShippingClient::new(app.clone());
    assert_eq!(
        code(shipping.ha_status(HaStatusRequest {}).await),
        ErrorCode::Forbidden
    );

    // The same user through the v5 API.
    let mut v5c = MessagingServiceClient::new(signed(v5_addr, "app").await);
    let answer = v5c
        .send_message(v5_request(v5::SendMessageRequest {
            messages: vec![v5_message.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status.unwrap().code, v5::Code::Ok as i32);
    let answer = v5c
        .send_message(v5_request(v5::SendMessageRequest {
            messages: vec![v5_message.clone(), {
                let mut other = v5_message.clone();
                other.topic = resource("payments");
                other
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        body(answer.status),
        ErrorCode::Forbidden,
        "a request with one forbidden topic sends nothing"
    );
    wait_state(&admin, (vec![2], true)).await;
    let answer = v5c
        .query_route(v5_request(v5::QueryRouteRequest {
            topic: resource("payments"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(body(answer.status), ErrorCode::Forbidden);
}
