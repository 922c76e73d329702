//! `bench produce --api v5`: the same workload as the native path, through RocketMQ 5's API
//! (`apache.rocketmq.v2.SendMessage`) as the official clients use it: the topic's route from
//! the access point, one message per request, round robin over the writable queues, each sent
//! to its queue's endpoints, every call naming its client (`x-mq-client-id`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

/// How long one send may take, as the official clients' request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the TCP connect to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A minimal RocketMQ 5 producer over the generated client.
pub struct V5Producer {
    topic: String,
    /// The client of each writable queue's endpoints (the broker chooses the queue within
    /// the group, as for the official clients).
    queues: Vec<MessagingServiceClient<Channel>>,
    next: AtomicUsize,
    client_id: String,
    sequence: AtomicU64,
}

impl V5Producer {
    /// Reads `topic`'s route from the access point `endpoint` (`host:port`).
    pub async fn connect(endpoint: &str, topic: &str) -> Result<V5Producer> {
        let client_id = format!("cluster-cli-bench@{}", std::process::id());
        let mut access = client_of(endpoint)?;
        let route = access
            .query_route(named(
                v5::QueryRouteRequest {
                    topic: Some(resource(topic)),
                    endpoints: None,
                },
                &client_id,
            ))
            .await
            .context("QueryRoute")?
            .into_inner();
        let status = route.status.unwrap_or_default();
        if status.code != v5::Code::Ok as i32 {
            bail!(
                "QueryRoute of {topic}: code {}: {}",
                status.code,
                status.message
            );
        }
        let mut clients: HashMap<String, MessagingServiceClient<Channel>> = HashMap::new();
        let mut queues = Vec::new();
        for queue in route.message_queues {
            let writable = queue.permission == v5::Permission::Write as i32
                || queue.permission == v5::Permission::ReadWrite as i32;
            let addr = queue
                .broker
                .and_then(|b| b.endpoints)
                .and_then(|e| e.addresses.into_iter().next())
                .map(|a| format!("{}:{}", a.host, a.port));
            let (true, Some(addr)) = (writable, addr) else {
                continue;
            };
            let client = match clients.get(&addr) {
                Some(client) => client.clone(),
                None => {
                    let client = client_of(&addr)?;
                    clients.insert(addr, client.clone());
                    client
                }
            };
            queues.push(client);
        }
        if queues.is_empty() {
            bail!("the route of {topic} has no writable queue");
        }
        Ok(V5Producer {
            topic: topic.to_owned(),
            queues,
            next: AtomicUsize::new(0),
            client_id,
            sequence: AtomicU64::new(0),
        })
    }

    /// Sends one message; answers the outcome's name ("SEND_OK" for OK, as the native path
    /// names it, else the v5 code's name).
    pub async fn send(&self, body: Bytes) -> Result<String, String> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let client = &self.queues[index];
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let message = v5::Message {
            topic: Some(resource(&self.topic)),
            user_properties: HashMap::new(),
            system_properties: Some(v5::SystemProperties {
                message_id: format!("{}-{sequence}", self.client_id),
                message_type: v5::MessageType::Normal as i32,
                body_encoding: v5::Encoding::Identity as i32,
                born_timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            }),
            body,
        };
        let mut client = client.clone();
        let answer = client
            .send_message(named(
                v5::SendMessageRequest {
                    messages: vec![message],
                },
                &self.client_id,
            ))
            .await
            .map_err(|status| format!("error: {}", status.message()))?
            .into_inner();
        let code = answer.status.map_or(0, |s| s.code);
        if code == v5::Code::Ok as i32 {
            return Ok("SEND_OK".to_owned());
        }
        Ok(v5::Code::try_from(code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("CODE_{code}")))
    }
}

fn client_of(addr: &str) -> Result<MessagingServiceClient<Channel>> {
    let endpoint = proto::dial::endpoint(addr, CONNECT_TIMEOUT)?.timeout(REQUEST_TIMEOUT);
    Ok(MessagingServiceClient::new(endpoint.connect_lazy()))
}

fn resource(name: &str) -> v5::Resource {
    v5::Resource {
        resource_namespace: String::new(),
        name: name.to_owned(),
    }
}

fn named<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = client_id.parse() {
        request.metadata_mut().insert("x-mq-client-id", value);
    }
    request
}
