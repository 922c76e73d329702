//! `bench consume --api v5`: consumption through RocketMQ 5's API as a SimpleConsumer does it:
//! the topic's route from the access point, then, per broker group, `--receivers` loops that
//! each receive a batch (`ReceiveMessage`, long polling 2 s, invisible 30 s) and acknowledge it
//! in one `AckMessage` before the next. Every message handled goes to the caller's `handle`
//! (the same tally as the native consumer's); a failed receive or acknowledgement is counted and
//! retried after a pause (an unacknowledged message comes again after its invisible duration).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;

use crate::bench_v5::{client_id, client_of, named, query_route, queue_addr, resource};

/// Longest batch one receive may ask for (the server's bound).
pub const RECEIVE_BATCH_MAX: u32 = 32;
const LONG_POLLING: Duration = Duration::from_secs(2);
const INVISIBLE: Duration = Duration::from_secs(30);
/// Pause after a failed call before the loop tries again.
const FAILURE_PAUSE: Duration = Duration::from_millis(200);

/// Receive loops running until [`V5Consumers::stop`].
pub struct V5Consumers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Receives or acknowledgements that failed.
    failures: Arc<AtomicU64>,
}

impl V5Consumers {
    /// Starts `receivers` loops per broker group of `topic` for consumer group `group`;
    /// `handle` is called with each message received (before its acknowledgement).
    pub async fn start(
        endpoint: &str,
        topic: &str,
        group: &str,
        batch: u32,
        receivers: usize,
        handle: Arc<dyn Fn(&v5::Message) + Send + Sync>,
    ) -> Result<V5Consumers> {
        if receivers == 0 || !(1..=RECEIVE_BATCH_MAX).contains(&batch) {
            bail!("--receivers must be at least 1 and the batch 1 to {RECEIVE_BATCH_MAX}");
        }
        let client_id = client_id();
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for mut queue in query_route(endpoint, topic, &client_id).await? {
            let readable = queue.permission == v5::Permission::Read as i32
                || queue.permission == v5::Permission::ReadWrite as i32;
            let name = queue.broker.as_ref().map(|b| b.name.clone());
            let (true, Some(name), Some(addr)) = (readable, name, queue_addr(&queue)) else {
                continue;
            };
            if seen.insert(name) {
                // Every queue of the group: the server serves a receive from any of them.
                queue.id = -1;
                targets.push((client_of(&addr)?, queue));
            }
        }
        if targets.is_empty() {
            bail!("the route of {topic} has no readable queue");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (client, queue) in targets {
            for _ in 0..receivers {
                let receiver = Receiver {
                    client: client.clone(),
                    queue: queue.clone(),
                    group: group.to_owned(),
                    topic: topic.to_owned(),
                    client_id: client_id.clone(),
                    batch,
                };
                let (stop, failures, handle) = (stop.clone(), failures.clone(), handle.clone());
                tasks.push(tokio::spawn(async move {
                    receiver.run(&stop, &failures, handle.as_ref()).await
                }));
            }
        }
        Ok(V5Consumers {
            stop,
            tasks,
            failures,
        })
    }

    /// Stops the loops after their current call; answers how many receives or
    /// acknowledgements failed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            let _ = task.await;
        }
        self.failures.load(Ordering::Acquire)
    }
}

/// One receive loop.
struct Receiver {
    client: MessagingServiceClient<auth::SignedChannel>,
    queue: v5::MessageQueue,
    group: String,
    topic: String,
    client_id: String,
    batch: u32,
}

impl Receiver {
    async fn run(
        mut self,
        stop: &AtomicBool,
        failures: &AtomicU64,
        handle: &(dyn Fn(&v5::Message) + Send + Sync),
    ) {
        while !stop.load(Ordering::Acquire) {
            let messages = match self.receive().await {
                Ok(messages) => messages,
                Err(()) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(FAILURE_PAUSE).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            for message in &messages {
                handle(message);
            }
            if self.ack(&messages).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One receive: the messages, none when the long poll found nothing, or a failure.
    async fn receive(&mut self) -> Result<Vec<v5::Message>, ()> {
        let request = v5::ReceiveMessageRequest {
            group: Some(resource(&self.group)),
            message_queue: Some(self.queue.clone()),
            filter_expression: None,
            batch_size: self.batch as i32,
            invisible_duration: prost_types::Duration::try_from(INVISIBLE).ok(),
            auto_renew: false,
            long_polling_timeout: prost_types::Duration::try_from(LONG_POLLING).ok(),
            attempt_id: None,
        };
        let mut stream = self
            .client
            .receive_message(named(request, &self.client_id))
            .await
            .map_err(|_| ())?
            .into_inner();
        let (mut code, mut messages) = (0, Vec::new());
        while let Some(item) = stream.message().await.map_err(|_| ())? {
            match item.content {
                Some(v5::receive_message_response::Content::Status(status)) => code = status.code,
                Some(v5::receive_message_response::Content::Message(message)) => {
                    messages.push(message)
                }
                _ => {}
            }
        }
        if code == v5::Code::Ok as i32 || code == v5::Code::MessageNotFound as i32 {
            Ok(messages)
        } else {
            Err(())
        }
    }

    /// Acknowledges `messages` in one call.
    async fn ack(&mut self, messages: &[v5::Message]) -> Result<(), ()> {
        let entries = messages
            .iter()
            .filter_map(|m| {
                let system = m.system_properties.as_ref()?;
                Some(v5::AckMessageEntry {
                    message_id: system.message_id.clone(),
                    receipt_handle: system.receipt_handle.clone()?,
                    lite_topic: None,
                })
            })
            .collect();
        let answer = self
            .client
            .ack_message(named(
                v5::AckMessageRequest {
                    group: Some(resource(&self.group)),
                    topic: Some(resource(&self.topic)),
                    entries,
                },
                &self.client_id,
            ))
            .await
            .map_err(|_| ())?
            .into_inner();
        match answer.status {
            Some(status) if status.code == v5::Code::Ok as i32 => Ok(()),
            _ => Err(()),
        }
    }
}
