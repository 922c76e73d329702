//! The broker as the binary runs it, started in this process through the library
//! (`Broker::start`): it serves a send, and `run_until` stops it cleanly (the abort marker gone,
//! so the next start needs no recovery, and the message is there after it).

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use broker::config::BrokerConfig;
use broker::server::Broker;
use broker::store::ABORT_FILE_NAME;
use bytes::Bytes;
use proto::client as wire;
use proto::client::broker_client::BrokerClient;
use proto::common::SendStatus;

fn config(store: &std::path::Path) -> BrokerConfig {
    let config = BrokerConfig::default()
        .with_overrides(&[
            "listen=\"127.0.0.1:0\"".to_owned(),
            format!("store_path={:?}", store.display().to_string()),
        ])
        .unwrap();
    config.validate().unwrap();
    config
}

async fn connect(broker: &Broker) -> BrokerClient<tonic::transport::Channel> {
    BrokerClient::connect(format!("http://{}", broker.local_addr()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_from_the_library_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let broker = Broker::start(config(&store)).await.unwrap();
    assert!(store.join(ABORT_FILE_NAME).exists(), "open while serving");
    let mut client = connect(&broker).await;
    client
        .create_topic(wire::CreateTopicRequest {
            topic: "orders".into(),
            queue_count: 1,
        })
        .await
        .unwrap();
    let sent = client
        .send(wire::SendRequest {
            topic: "orders".into(),
            queue_id: 0,
            messages: vec![wire::Message {
                body: Bytes::from_static(b"kept"),
                message_id: "m1".into(),
                born_timestamp_ms: 1_700_000_000_000,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.status, SendStatus::SendOk as i32);
    drop(client);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(broker.run_until(async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the broker stops within its graces")
        .unwrap()
        .unwrap();
    assert!(!store.join(ABORT_FILE_NAME).exists(), "closed cleanly");

    let again = Broker::start(config(&store)).await.unwrap();
    let pulled = connect(&again)
        .await
        .pull(wire::PullRequest {
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: 0,
            max_messages: 10,
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.messages.len(), 1, "{pulled:?}");
    assert_eq!(pulled.messages[0].body, Bytes::from_static(b"kept"));
}
