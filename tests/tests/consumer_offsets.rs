//! Consumer-group offsets against a real broker: committed offsets survive SIGTERM and SIGKILL
//! (they are records in the commit log), bad commits get their codes, members expire.
//!
//! Invariant: an offset committed and acknowledged before a crash is the one the group finds
//! after the restart; it never moves backwards on its own.

use std::collections::HashMap;

use client::{Admin, Message, Producer, ProducerConfig};
use cluster_tests::BrokerProcess;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::{CommitOffsetRequest, HeartbeatRequest, QueryOffsetRequest};
use proto::common::ErrorCode;

async fn groups(broker: &BrokerProcess) -> ConsumerGroupsClient<tonic::transport::Channel> {
    ConsumerGroupsClient::connect(format!("http://{}", broker.addr()))
        .await
        .unwrap()
}

async fn query(
    client: &mut ConsumerGroupsClient<tonic::transport::Channel>,
    queue_id: u32,
) -> Option<u64> {
    let response = client
        .query_offset(QueryOffsetRequest {
            group: "billing".into(),
            topic: "orders".into(),
            queue_id,
        })
        .await
        .unwrap()
        .into_inner();
    response.found.then_some(response.queue_offset)
}

fn code(status: &tonic::Status) -> i32 {
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    Admin::connect(broker.addr())
        .await
        .unwrap()
        .create_topic("orders", 2)
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..20 {
        producer
            .send(Message::new("orders", format!("m{i}")))
            .await
            .unwrap();
    }
    let mut client = groups(&broker).await;
    let mut committed = HashMap::new();
    for queue_id in 0..2 {
        for offset in [3, 7] {
            client
                .commit_offset(CommitOffsetRequest {
                    group: "billing".into(),
                    topic: "orders".into(),
                    queue_id,
                    queue_offset: offset + u64::from(queue_id),
                })
                .await
                .unwrap();
        }
        committed.insert(queue_id, 7 + u64::from(queue_id));
    }
    // Bad commits: beyond the end, unknown topic, illegal group.
    let beyond = client
        .commit_offset(CommitOffsetRequest {
            group: "billing".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&beyond), ErrorCode::IllegalOffset as i32);
    let unknown = client
        .commit_offset(CommitOffsetRequest {
            group: "billing".into(),
            topic: "nope".into(),
            queue_id: 0,
            queue_offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&unknown), ErrorCode::TopicNotFound as i32);
    let illegal = client
        .commit_offset(CommitOffsetRequest {
            group: "%x".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&illegal), ErrorCode::IllegalConsumerGroup as i32);
    // The internal offset topic is not for users.
    let admin = Admin::connect(broker.addr()).await.unwrap();
    assert!(admin.create_topic("%OFFSETS%", 1).await.is_err());

    // Heartbeats list the live members, sorted.
    let members = client
        .heartbeat(HeartbeatRequest {
            group: "billing".into(),
            client_id: "b-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members, vec!["b-1".to_owned()]);
    let members = client
        .heartbeat(HeartbeatRequest {
            group: "billing".into(),
            client_id: "a-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members, vec!["a-1".to_owned(), "b-1".to_owned()]);

    broker.signal(libc::SIGTERM);
    assert!(broker.wait().success());
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = groups(&broker).await;
    for (queue_id, offset) in &committed {
        assert_eq!(
            query(&mut client, *queue_id).await,
            Some(*offset),
            "after SIGTERM"
        );
    }
    client
        .commit_offset(CommitOffsetRequest {
            group: "billing".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 9,
        })
        .await
        .unwrap();
    broker.signal(libc::SIGKILL);
    broker.wait();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = groups(&broker).await;
    assert_eq!(query(&mut client, 0).await, Some(9), "after SIGKILL");
    assert_eq!(query(&mut client, 1).await, Some(8));
}
