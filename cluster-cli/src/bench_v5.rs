//! `bench produce --api v5`: the same workload as the native path, through RocketMQ 5's API
//! (`apache.rocketmq.v2.SendMessage`) as the official clients use it: the topic's route from
//! the access point, round robin over the writable queues, each send to its queue's endpoints,
//! every call naming its client (`x-mq-client-id`).
//!
//! Like the native producer, it gathers concurrent sends into one request
//! (`SendMessageRequest.messages`, as the official Rust client's `batch_send` does) with the
//! same rules: at most `batch_max_messages` per request and `batch_max_in_flight` requests with
//! a partial batch in flight, sends that arrive while those are out wait and go together, to the
//! next queue's endpoint of the round robin; after an answer it yields while the senders it woke
//! send again, so that they join the next request. With `batch_max_messages` 1 each send is its
//! own request, as the official clients' `send` makes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long one send may take, as the official clients' request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the TCP connect to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A send's outcome: the status's name, or the error.
type Outcome = Result<String, String>;
/// A send waiting for its endpoint's next request.
type Waiting = (v5::Message, oneshot::Sender<Outcome>);

/// How sends are gathered into requests.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Most messages in one request (1: one request per send).
    pub max_messages: usize,
    /// Requests of one endpoint in flight at once while gathering.
    pub max_in_flight: usize,
}

/// Most times the gatherer yields after an answer, waiting for the senders it woke (as the
/// native producer's lane).
const GATHER_YIELDS_MAX: usize = 8;

/// How sends travel.
enum Route {
    /// Straight to the next queue's endpoint, one request per send.
    Direct,
    /// Through the gatherer.
    Gathered(mpsc::UnboundedSender<Waiting>),
}

/// A minimal RocketMQ 5 producer over the generated client.
pub struct V5Producer {
    topic: String,
    /// The client of each writable queue's endpoints (the broker chooses the queue within the
    /// group, as for the official clients).
    queues: Vec<MessagingServiceClient<auth::SignedChannel>>,
    route: Route,
    next: AtomicUsize,
    client_id: String,
    sequence: AtomicU64,
    /// Requests sent so far (messages sent: `sequence`).
    requests: std::sync::Arc<AtomicU64>,
}

impl V5Producer {
    /// Reads `topic`'s route from the access point `endpoint` (`host:port`).
    pub async fn connect(endpoint: &str, topic: &str, batching: Batching) -> Result<V5Producer> {
        if batching.max_messages == 0 || batching.max_in_flight == 0 {
            bail!("--batch-max-messages and --batch-max-in-flight must be at least 1");
        }
        let client_id = client_id();
        let route = query_route(endpoint, topic, &client_id).await?;
        let mut clients: HashMap<String, MessagingServiceClient<auth::SignedChannel>> =
            HashMap::new();
        let requests = std::sync::Arc::new(AtomicU64::new(0));
        let mut queues = Vec::new();
        for queue in route {
            let writable = queue.permission == v5::Permission::Write as i32
                || queue.permission == v5::Permission::ReadWrite as i32;
            let addr = queue_addr(&queue);
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
        let route = if batching.max_messages == 1 {
            Route::Direct
        } else {
            Route::Gathered(gather(
                queues.clone(),
                client_id.clone(),
                batching,
                requests.clone(),
            ))
        };
        Ok(V5Producer {
            topic: topic.to_owned(),
            queues,
            route,
            next: AtomicUsize::new(0),
            client_id,
            sequence: AtomicU64::new(0),
            requests,
        })
    }

    /// Sends one message; answers the outcome's name ("SEND_OK" for OK, as the native path
    /// names it, else the v5 code's name).
    pub async fn send(&self, body: Bytes) -> Outcome {
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
        match &self.route {
            Route::Direct => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
                self.requests.fetch_add(1, Ordering::Relaxed);
                send_request(self.queues[index].clone(), &self.client_id, vec![message]).await
            }
            .pop()
            .unwrap_or_else(|| Err("error: no answer".to_owned())),
            Route::Gathered(gatherer) => {
                let (reply, answer) = oneshot::channel();
                gatherer
                    .send((message, reply))
                    .map_err(|_| "error: the gatherer stopped".to_owned())?;
                answer
                    .await
                    .unwrap_or_else(|_| Err("error: the gatherer dropped the send".to_owned()))
            }
        }
    }
}

impl V5Producer {
    /// Requests and messages sent so far.
    pub fn send_stats(&self) -> client::SendStats {
        client::SendStats {
            rpcs: self.requests.load(Ordering::Relaxed),
            messages: self.sequence.load(Ordering::Relaxed),
        }
    }
}

/// Starts the gatherer: it takes the first waiting send, waits for a free request slot (sends
/// that arrive meanwhile wait behind it), lets the senders woken by the last answer send again,
/// then sends everything waiting, up to the batch bound, in one request to the next queue's
/// endpoint, and answers each send from its entry.
fn gather(
    queues: Vec<MessagingServiceClient<auth::SignedChannel>>,
    client_id: String,
    batching: Batching,
    requests: std::sync::Arc<AtomicU64>,
) -> mpsc::UnboundedSender<Waiting> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
    let slots = std::sync::Arc::new(Semaphore::new(batching.max_in_flight));
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Some(first) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut waiting = rx.len();
            for _ in 0..GATHER_YIELDS_MAX {
                if waiting + 1 >= batching.max_messages {
                    break;
                }
                tokio::task::yield_now().await;
                if rx.len() == waiting {
                    break;
                }
                waiting = rx.len();
            }
            let mut batch = vec![first];
            while batch.len() < batching.max_messages {
                match rx.try_recv() {
                    Ok(waiting) => batch.push(waiting),
                    Err(_) => break,
                }
            }
            let client = queues[next % queues.len()].clone();
            next = next.wrapping_add(1);
            let client_id = client_id.clone();
            requests.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let outcomes = send_request(client, &client_id, messages).await;
                // The slot goes back before the answers: the gatherer, woken, yields while
                // the senders answered here send again.
                drop(slot);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            });
        }
    });
    tx
}

/// One `SendMessage` of `messages`: each message's outcome, in order.
async fn send_request(
    mut client: MessagingServiceClient<auth::SignedChannel>,
    client_id: &str,
    messages: Vec<v5::Message>,
) -> Vec<Outcome> {
    let count = messages.len();
    let answer = match client
        .send_message(named(v5::SendMessageRequest { messages }, client_id))
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) => return vec![Err(format!("error: {}", status.message())); count],
    };
    let overall = answer.status.map_or(0, |s| s.code);
    (0..count)
        .map(|i| {
            let code = answer
                .entries
                .get(i)
                .and_then(|entry| entry.status.as_ref())
                .map_or(overall, |s| s.code);
            Ok(code_name(code))
        })
        .collect()
}

/// "SEND_OK" for OK, as the native path names it, else the v5 code's name.
fn code_name(code: i32) -> String {
    if code == v5::Code::Ok as i32 {
        return "SEND_OK".to_owned();
    }
    v5::Code::try_from(code)
        .map(|c| c.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("CODE_{code}"))
}

/// The name every call of this bench gives its client (`x-mq-client-id`).
pub fn client_id() -> String {
    format!("cluster-cli-bench@{}", std::process::id())
}

/// `topic`'s queues, from the access point `endpoint` (`host:port`).
pub async fn query_route(
    endpoint: &str,
    topic: &str,
    client_id: &str,
) -> Result<Vec<v5::MessageQueue>> {
    let mut access = client_of(endpoint)?;
    let route = access
        .query_route(named(
            v5::QueryRouteRequest {
                topic: Some(resource(topic)),
                endpoints: None,
            },
            client_id,
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
    Ok(route.message_queues)
}

/// The address of a queue's endpoints (the first: the cluster gives one).
pub fn queue_addr(queue: &v5::MessageQueue) -> Option<String> {
    queue
        .broker
        .as_ref()
        .and_then(|b| b.endpoints.as_ref())
        .and_then(|e| e.addresses.first())
        .map(|a| format!("{}:{}", a.host, a.port))
}

pub fn client_of(addr: &str) -> Result<MessagingServiceClient<auth::SignedChannel>> {
    let endpoint = proto::dial::endpoint(addr, CONNECT_TIMEOUT)?.timeout(REQUEST_TIMEOUT);
    Ok(MessagingServiceClient::new(crate::identity::signed(
        endpoint.connect_lazy(),
    )))
}

pub fn resource(name: &str) -> v5::Resource {
    v5::Resource {
        resource_namespace: String::new(),
        name: name.to_owned(),
    }
}

pub fn named<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = client_id.parse() {
        request.metadata_mut().insert("x-mq-client-id", value);
    }
    request
}
