//! The producer's batching against a scripted broker (a real gRPC server on loopback whose answers
//! the test controls): what travels in which RPC, and what each caller is told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::client::broker_server::{Broker, BrokerServer};
use proto::client::{self as wire};
use proto::common::ErrorCode;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::*;

const TOPIC: &str = "orders";

/// What the scripted broker saw and will do.
#[derive(Default)]
struct Script {
    /// Every Send RPC in arrival order: queue id and message ids.
    requests: Vec<(u32, Vec<String>)>,
    next_queue_offset: HashMap<u32, u64>,
    next_commit_log_offset: u64,
    /// Answer the sends with these indexes in `requests` with a retriable INTERNAL_ERROR.
    fail_requests: Vec<usize>,
}

#[derive(Clone)]
struct ScriptedBroker {
    script: Arc<Mutex<Script>>,
    /// Sends are answered only while this is true.
    open: watch::Receiver<bool>,
    queue_count: u32,
}

fn status_with_code(code: ErrorCode, message: &str) -> Status {
    proto::error_status(code, message)
}

#[tonic::async_trait]
impl Broker for ScriptedBroker {
    async fn send(
        &self,
        request: Request<wire::SendRequest>,
    ) -> Result<Response<wire::SendResponse>, Status> {
        let request = request.into_inner();
        let ids: Vec<String> = request
            .messages
            .iter()
            .map(|m| m.message_id.clone())
            .collect();
        let index = {
            let mut script = self.script.lock().unwrap();
            script.requests.push((request.queue_id, ids.clone()));
            script.requests.len() - 1
        };
        let mut open = self.open.clone();
        open.wait_for(|open| *open).await.unwrap();
        if request
            .messages
            .iter()
            .any(|m| m.properties.contains_key("bad"))
        {
            // As the real broker: every message is checked before any is written.
            return Err(status_with_code(
                ErrorCode::IllegalMessagePropertyKey,
                "property name \"bad\" is reserved",
            ));
        }
        let mut script = self.script.lock().unwrap();
        if script.fail_requests.contains(&index) {
            return Err(status_with_code(ErrorCode::InternalError, "disk hiccup"));
        }
        let next = script
            .next_queue_offset
            .entry(request.queue_id)
            .or_default();
        let queue_offset = *next;
        *next += ids.len() as u64;
        // Offsets 1000 apart: a client that computed them instead of reading them would differ.
        let commit_log_offsets: Vec<u64> = (0..ids.len() as u64)
            .map(|i| script.next_commit_log_offset + 1000 * i)
            .collect();
        script.next_commit_log_offset += 1000 * ids.len() as u64;
        Ok(Response::new(wire::SendResponse {
            status: proto::common::SendStatus::SendOk as i32,
            queue_id: request.queue_id,
            queue_offset,
            commit_log_offset: commit_log_offsets[0],
            message_ids: ids,
            commit_log_offsets,
        }))
    }

    async fn pull(
        &self,
        _request: Request<wire::PullRequest>,
    ) -> Result<Response<wire::PullResponse>, Status> {
        Err(Status::unimplemented("pull"))
    }

    async fn create_topic(
        &self,
        _request: Request<wire::CreateTopicRequest>,
    ) -> Result<Response<wire::CreateTopicResponse>, Status> {
        Err(Status::unimplemented("create_topic"))
    }

    async fn list_topics(
        &self,
        _request: Request<wire::ListTopicsRequest>,
    ) -> Result<Response<wire::ListTopicsResponse>, Status> {
        Ok(Response::new(wire::ListTopicsResponse {
            topics: vec![wire::TopicStatus {
                topic: TOPIC.to_owned(),
                queue_count: self.queue_count,
                queues: Vec::new(),
            }],
        }))
    }
}

struct Harness {
    producer: Producer,
    script: Arc<Mutex<Script>>,
    open: watch::Sender<bool>,
}

impl Harness {
    async fn start(queue_count: u32, config: ProducerConfig) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let (open, open_rx) = watch::channel(true);
        let broker = ScriptedBroker {
            script: script.clone(),
            open: open_rx,
            queue_count,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BrokerServer::new(broker))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let producer = Producer::connect(&addr.to_string(), config).await.unwrap();
        Harness {
            producer,
            script,
            open,
        }
    }

    fn requests(&self) -> Vec<(u32, Vec<String>)> {
        self.script.lock().unwrap().requests.clone()
    }

    /// Polls (with a deadline) until `done` holds.
    async fn wait_until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Closes the broker's gate, sends one message (it takes the topic lane's RPC and is held), then
    /// starts `messages` sends that must wait in the lane, and waits until they do.
    async fn gather(
        &self,
        messages: Vec<Message>,
    ) -> (
        tokio::task::JoinHandle<Result<SendResult, ClientError>>,
        Vec<tokio::task::JoinHandle<Result<SendResult, ClientError>>>,
    ) {
        self.open.send_replace(false);
        let first = self.producer.send_async(Message::new(TOPIC, "first"));
        self.wait_until("the first RPC", |h| h.requests().len() == 1)
            .await;
        let count = messages.len();
        let waiting = messages
            .into_iter()
            .map(|m| self.producer.send_async(m))
            .collect();
        self.wait_until("the sends to wait in the lane", |h| {
            h.producer.lane_waiting(TOPIC) == count
        })
        .await;
        (first, waiting)
    }
}

fn config() -> ProducerConfig {
    ProducerConfig {
        send_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_waiting_for_a_busy_lane_leave_in_one_rpc_and_each_gets_its_own_result() {
    let harness = Harness::start(1, config()).await;
    let messages = (0..10)
        .map(|i| Message::new(TOPIC, format!("m{i}")))
        .collect();
    let (first, waiting) = harness.gather(messages).await;
    harness.open.send_replace(true);
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.queue_offset, first.commit_log_offset), (0, 0));
    let mut results = Vec::new();
    for handle in waiting {
        results.push(handle.await.unwrap().unwrap());
    }
    let requests = harness.requests();
    assert_eq!(requests.len(), 2, "one RPC for the first, one for the ten");
    let batch_ids = &requests[1].1;
    assert_eq!(batch_ids.len(), 10);
    for result in &results {
        assert_eq!(result.status, SendStatus::SendOk);
        // Its place in the RPC (the order the spawned sends reached the lane).
        let index = batch_ids
            .iter()
            .position(|id| *id == result.message_id)
            .expect("every caller's own id is in the batch") as u64;
        assert_eq!(result.queue_offset, 1 + index);
        assert_eq!(result.commit_log_offset, 1000 * (1 + index));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_at_most_batch_max_messages_and_a_full_one_leaves_at_once() {
    let harness = Harness::start(
        1,
        ProducerConfig {
            batch_max_messages: 4,
            ..config()
        },
    )
    .await;
    harness.open.send_replace(false);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            harness
                .producer
                .send_async(Message::new(TOPIC, format!("m{i}")))
        })
        .collect();
    // One message alone (the idle lane's RPC), two full batches of four on extra RPCs without
    // waiting for the first to end, and one message waiting.
    harness
        .wait_until("the full batches to leave", |h| {
            h.requests().len() == 3 && h.producer.lane_waiting(TOPIC) == 1
        })
        .await;
    harness.open.send_replace(true);
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let mut sizes: Vec<usize> = harness.requests().iter().map(|r| r.1.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 1, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_resent_one_by_one_so_only_the_bad_message_fails() {
    let harness = Harness::start(1, config()).await;
    let messages = (0..6)
        .map(|i| {
            let m = Message::new(TOPIC, format!("m{i}"));
            if i == 3 {
                m.with_property("bad", "yes")
            } else {
                m
            }
        })
        .collect();
    let (first, waiting) = harness.gather(messages).await;
    harness.open.send_replace(true);
    first.await.unwrap().unwrap();
    let mut results = Vec::new();
    for handle in waiting {
        results.push(handle.await.unwrap());
    }
    for (index, result) in results.iter().enumerate() {
        if index == 3 {
            assert!(
                matches!(
                    result,
                    Err(ClientError::Broker {
                        code: ErrorCode::IllegalMessagePropertyKey,
                        ..
                    })
                ),
                "{result:?}"
            );
        } else {
            assert_eq!(result.as_ref().unwrap().status, SendStatus::SendOk);
        }
    }
    let requests = harness.requests();
    // The first, the refused batch of six, then six single resends with the batch's ids.
    assert_eq!(requests.len(), 8, "{requests:?}");
    let batch_ids = &requests[1].1;
    assert_eq!(batch_ids.len(), 6);
    let mut resent: Vec<String> = requests[2..]
        .iter()
        .map(|(queue_id, ids)| {
            assert_eq!(*queue_id, 0, "resent to the same queue");
            assert_eq!(ids.len(), 1, "one by one");
            ids[0].clone()
        })
        .collect();
    resent.sort();
    let mut expected = batch_ids.clone();
    expected.sort();
    assert_eq!(resent, expected, "the same ids");
    let stored: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| &r.message_id)
        .collect();
    assert_eq!(stored.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_failure_retries_the_whole_batch_on_the_next_queue_with_the_same_ids() {
    let harness = Harness::start(2, config()).await;
    let messages = (0..9)
        .map(|i| Message::new(TOPIC, format!("m{i}")))
        .collect();
    let (first, waiting) = harness.gather(messages).await;
    // The gathered batch (the second RPC) fails once.
    harness.script.lock().unwrap().fail_requests = vec![1];
    harness.open.send_replace(true);
    let first = first.await.unwrap().unwrap();
    let mut results = vec![first];
    for handle in waiting {
        results.push(handle.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| r.status == SendStatus::SendOk));
    let requests = harness.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let (failed_queue, failed_ids) = &requests[1];
    let (retry_queue, retry_ids) = &requests[2];
    assert_eq!(failed_ids.len(), 9);
    assert_eq!(retry_ids, failed_ids, "the whole batch, with the same ids");
    assert_eq!(*retry_queue, (failed_queue + 1) % 2, "on the next queue");
    // Every message was stored once, at a distinct (queue, offset).
    let mut places: Vec<(u32, u64)> = results
        .iter()
        .map(|r| (r.queue_id, r.queue_offset))
        .collect();
    places.sort();
    places.dedup();
    assert_eq!(places.len(), 10);
    assert!(results[1..].iter().all(|r| r.queue_id == *retry_queue));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_too_long_in_its_lane_times_out_and_is_never_sent() {
    let harness = Harness::start(
        1,
        ProducerConfig {
            send_timeout: Duration::from_millis(300),
            retries: 2,
            ..ProducerConfig::default()
        },
    )
    .await;
    // The broker holds every answer: the first message's RPC times out three times (900 ms),
    // while the second waits in the lane and gives up after 300 ms.
    harness.open.send_replace(false);
    let first = harness.producer.send_async(Message::new(TOPIC, "first"));
    harness
        .wait_until("the first RPC", |h| h.requests().len() == 1)
        .await;
    let started = Instant::now();
    let second = harness
        .producer
        .send(Message::new(TOPIC, "second"))
        .await
        .unwrap_err();
    assert!(matches!(second, ClientError::Timeout { .. }), "{second}");
    assert!(started.elapsed() < Duration::from_millis(900));
    let first = first.await.unwrap().unwrap_err();
    assert!(matches!(first, ClientError::Timeout { .. }), "{first}");
    let requests = harness.requests();
    assert_eq!(requests.len(), 3, "the first message's three attempts only");
    assert!(requests.iter().all(|(_, ids)| ids == &requests[0].1));
    // The lane is free again: a new message goes out.
    harness.open.send_replace(true);
    harness
        .producer
        .send(Message::new(TOPIC, "third"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_max_messages_of_one_sends_one_rpc_per_message() {
    let harness = Harness::start(
        1,
        ProducerConfig {
            batch_max_messages: 1,
            ..config()
        },
    )
    .await;
    let handles: Vec<_> = (0..20)
        .map(|i| {
            harness
                .producer
                .send_async(Message::new(TOPIC, format!("m{i}")))
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let requests = harness.requests();
    assert_eq!(requests.len(), 20);
    assert!(requests.iter().all(|(_, ids)| ids.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_sends_are_batched_too_and_close_waits_for_them() {
    let harness = Harness::start(1, config()).await;
    harness.open.send_replace(false);
    for i in 0..30 {
        harness
            .producer
            .send_oneway(Message::new(TOPIC, format!("m{i}")));
    }
    harness
        .wait_until("the one-way sends to gather", |h| {
            h.producer.lane_waiting(TOPIC) == 29
        })
        .await;
    harness.open.send_replace(true);
    harness.producer.close().await;
    let requests = harness.requests();
    assert_eq!(requests.iter().map(|r| r.1.len()).sum::<usize>(), 30);
    assert_eq!(requests.len(), 2);
}

#[test]
fn config_ranges_are_checked() {
    let bad = [
        ProducerConfig {
            batch_max_messages: 0,
            ..ProducerConfig::default()
        },
        ProducerConfig {
            batch_max_messages: 1025,
            ..ProducerConfig::default()
        },
        ProducerConfig {
            batch_max_bytes: 0,
            ..ProducerConfig::default()
        },
        ProducerConfig {
            batch_max_in_flight: 0,
            ..ProducerConfig::default()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
    ProducerConfig::default().validate().unwrap();
}

fn queue(group: &str, queue_id: u32, alive: bool) -> QueueRef {
    QueueRef {
        group: group.to_owned(),
        queue_id,
        master_addr: format!("{group}:1"),
        master_alive: alive,
    }
}

#[test]
fn routed_choice_skips_dead_masters_and_the_group_that_just_failed() {
    let queues = [
        queue("a", 0, true),
        queue("a", 1, true),
        queue("b", 0, false),
        QueueRef {
            master_addr: String::new(),
            ..queue("c", 0, true)
        },
    ];
    let picked: Vec<_> = (0..4)
        .map(|turn| choose_queue(&queues, None, turn).unwrap().clone())
        .collect();
    assert!(
        picked.iter().all(|q| q.group == "a"),
        "b's master is dead and c has none: {picked:?}"
    );
    assert_ne!(picked[0].queue_id, picked[1].queue_id, "round-robin");

    // After a failure in a, another live group is preferred; with none, a again.
    let two_live = [queue("a", 0, true), queue("b", 0, true)];
    for turn in 0..4 {
        assert_eq!(choose_queue(&two_live, Some("a"), turn).unwrap().group, "b");
    }
    assert_eq!(choose_queue(&queues, Some("a"), 0).unwrap().group, "a");

    // Nobody alive as far as the controller knows: any queue with a master, rather than none.
    let all_dead = [queue("a", 0, false), queue("b", 0, false)];
    assert!(choose_queue(&all_dead, None, 0).is_some());
    let no_master = [QueueRef {
        master_addr: String::new(),
        ..queue("a", 0, true)
    }];
    assert!(choose_queue(&no_master, None, 0).is_none());
}
