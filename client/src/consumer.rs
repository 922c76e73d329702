//! The pull consumer: reads one queue of one broker from a queue offset, with long polling. The
//! caller keeps its offsets. And `Admin`: one broker's topics (a broker without a controller).

use std::time::Duration;

use auth::{Credentials, SignedChannel};
use proto::client::broker_client::BrokerClient;
use proto::client::PullStatus;

use crate::error::ClientError;
use crate::message::ReceivedMessage;
use crate::producer::RESPONSE_BYTES_MAX;

/// What one pull found.
#[derive(Clone, Debug)]
pub struct PullResult {
    pub status: PullStatus,
    pub messages: Vec<ReceivedMessage>,
    /// Where the next pull of this queue starts.
    pub next_queue_offset: u64,
    pub min_queue_offset: u64,
    pub max_queue_offset: u64,
}

/// A consumer that pulls queues explicitly.
#[derive(Clone)]
pub struct PullConsumer {
    client: BrokerClient<SignedChannel>,
}

impl PullConsumer {
    /// Connects to the broker at `addr` (`host:port`), anonymously.
    pub async fn connect(addr: &str) -> Result<PullConsumer, ClientError> {
        PullConsumer::connect_as(addr, None).await
    }

    /// Connects to the broker at `addr`, signing every call with `credentials` (none:
    /// anonymous).
    pub async fn connect_as(
        addr: &str,
        credentials: Option<&Credentials>,
    ) -> Result<PullConsumer, ClientError> {
        // Through `proto::dial` like every connection, so that the process's TLS applies.
        let channel = crate::pool::endpoint(addr)?.connect().await?;
        let client = BrokerClient::new(crate::pool::signed(channel, credentials))
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        Ok(PullConsumer { client })
    }

    pub(crate) fn with_client(client: BrokerClient<SignedChannel>) -> PullConsumer {
        PullConsumer { client }
    }

    /// Reads up to `max_messages` of (topic, queue) from `queue_offset` whose tag matches
    /// `tag_expression` ("*", or "a || b"), waiting up to `poll_timeout` when there is none yet.
    pub async fn pull(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_messages: u32,
        tag_expression: &str,
        poll_timeout: Duration,
    ) -> Result<PullResult, ClientError> {
        let mut client = self.client.clone();
        let request = proto::client::PullRequest {
            topic: topic.to_owned(),
            queue_id,
            queue_offset,
            max_messages,
            max_bytes: 0,
            tag_expression: tag_expression.to_owned(),
            poll_timeout_ms: poll_timeout.as_millis().min(u32::MAX as u128) as u32,
        };
        // A broker that accepted the connection but stopped answering (a paused process) must
        // cost a timeout, not a pull that never returns.
        let deadline = poll_timeout + PULL_ANSWER_MARGIN;
        let response = tokio::time::timeout(deadline, client.pull(request))
            .await
            .map_err(|_| ClientError::Timeout {
                timeout_ms: deadline.as_millis() as u64,
            })??
            .into_inner();
        Ok(PullResult {
            status: PullStatus::try_from(response.status).unwrap_or(PullStatus::Unspecified),
            messages: response
                .messages
                .into_iter()
                .map(ReceivedMessage::from)
                .collect(),
            next_queue_offset: response.next_queue_offset,
            min_queue_offset: response.min_queue_offset,
            max_queue_offset: response.max_queue_offset,
        })
    }
}

/// How long a pull may take beyond its long-polling wait before it counts as timed out.
pub const PULL_ANSWER_MARGIN: Duration = Duration::from_secs(3);

/// Topic administration against one broker.
#[derive(Clone)]
pub struct Admin {
    client: BrokerClient<SignedChannel>,
}

impl Admin {
    /// Connects to the broker at `addr` (`host:port`), anonymously.
    pub async fn connect(addr: &str) -> Result<Admin, ClientError> {
        Admin::connect_as(addr, None).await
    }

    /// Connects to the broker at `addr`, signing every call with `credentials` (none:
    /// anonymous); creating a topic needs admin on the cluster.
    pub async fn connect_as(
        addr: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Admin, ClientError> {
        let channel = crate::pool::endpoint(addr)?.connect().await?;
        Ok(Admin {
            client: BrokerClient::new(crate::pool::signed(channel, credentials)),
        })
    }

    pub(crate) fn with_client(client: BrokerClient<SignedChannel>) -> Admin {
        Admin { client }
    }

    /// Creates a topic (idempotent for the same queue count). Returns whether it was new.
    pub async fn create_topic(&self, topic: &str, queue_count: u32) -> Result<bool, ClientError> {
        let mut client = self.client.clone();
        Ok(client
            .create_topic(proto::client::CreateTopicRequest {
                topic: topic.to_owned(),
                queue_count,
            })
            .await?
            .into_inner()
            .created)
    }

    /// Every topic with its queues' offsets.
    pub async fn list_topics(&self) -> Result<Vec<proto::client::TopicStatus>, ClientError> {
        let mut client = self.client.clone();
        Ok(client
            .list_topics(proto::client::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }
}
