//! The `Telemetry` stream: a client opens it to each broker it talks to and writes its settings
//! first (and again every few minutes); the server answers each with its own, with status OK
//! (the official clients ignore settings without it, and a push consumer does not start until
//! it has them), and keeps the stream open for as long as the client does.
//!
//! What the server's settings say: the largest body a producer may send, that producers check
//! a message's type against the queue's, how often a producer tries a send (3 attempts, as the
//! clients' default), and for consumers the group's redelivery backoff (the broker's delay
//! levels from the fourth, as today's retries wait), whether the group consumes in order (its
//! FIFO setting on the controller), how long a receive polls, and how many messages one
//! receive brings.

use std::sync::Arc;
use std::time::Duration;

use proto::v5;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::status::ok;
use super::ServerStream;
use crate::config::BrokerSettings;
use crate::retry::RetryState;
use crate::store::StoreConfig;

/// Send attempts a producer makes, the first included (the official clients' default).
const PRODUCER_ATTEMPTS: i32 = 3;
/// How long a receive long-polls when the client leaves it to the server.
const LONG_POLLING: Duration = Duration::from_secs(20);
/// Messages one receive brings at most, for a push consumer.
const RECEIVE_BATCH: i32 = 32;
/// Calls other than long polls time out after this (the clients' default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers queued for one stream: a client writes its settings a few times an hour.
const ANSWERS_QUEUED_MAX: usize = 4;
/// The first delay level redelivery uses: RocketMQ's retries start at level 3 (10 s by
/// default); the first two are for scheduled messages.
const FIRST_RETRY_LEVEL: usize = 2;

/// What the server tells clients.
#[derive(Clone)]
pub struct ServerSettings {
    max_body_bytes: i32,
    /// One pause per redelivery attempt.
    retry_delays: Vec<Duration>,
    max_attempts: i32,
    /// Which groups consume in order (the controller's group settings); None: none does.
    groups: Option<Arc<RetryState>>,
}

impl ServerSettings {
    pub fn new(
        settings: &BrokerSettings,
        store: &StoreConfig,
        groups: Option<Arc<RetryState>>,
    ) -> ServerSettings {
        let levels =
            crate::retry::parse_delay_levels(&settings.message_delay_level).unwrap_or_default();
        ServerSettings {
            max_body_bytes: i32::try_from(store.max_message_bytes).unwrap_or(i32::MAX),
            retry_delays: levels.into_iter().skip(FIRST_RETRY_LEVEL).collect(),
            // The first delivery and every redelivery before the dead-letter topic.
            max_attempts: i32::try_from(settings.max_reconsume_times)
                .unwrap_or(i32::MAX - 1)
                .saturating_add(1),
            groups,
        }
    }

    /// The server's answer to a client's settings.
    pub fn answer_to(&self, client: &v5::Settings) -> v5::Settings {
        let pub_sub = match &client.pub_sub {
            Some(v5::settings::PubSub::Subscription(subscription)) => {
                let fifo = match (&self.groups, &subscription.group) {
                    (Some(groups), Some(group)) => groups.is_fifo(&group.name),
                    _ => false,
                };
                v5::settings::PubSub::Subscription(v5::Subscription {
                    group: subscription.group.clone(),
                    subscriptions: subscription.subscriptions.clone(),
                    fifo: Some(fifo),
                    receive_batch_size: Some(RECEIVE_BATCH),
                    long_polling_timeout: Some(duration(LONG_POLLING)),
                    lite_subscription_quota: None,
                    max_lite_topic_size: None,
                })
            }
            Some(v5::settings::PubSub::Publishing(publishing)) => {
                v5::settings::PubSub::Publishing(self.publishing(publishing.topics.clone()))
            }
            None => v5::settings::PubSub::Publishing(self.publishing(Vec::new())),
        };
        let consumer = matches!(pub_sub, v5::settings::PubSub::Subscription(_));
        v5::Settings {
            client_type: client.client_type,
            access_point: client.access_point.clone(),
            backoff_policy: Some(if consumer {
                self.redelivery()
            } else {
                producer_retry()
            }),
            request_timeout: Some(duration(REQUEST_TIMEOUT)),
            pub_sub: Some(pub_sub),
            user_agent: client.user_agent.clone(),
            // The clients would export their metrics to an endpoint given here; none is.
            metric: Some(v5::Metric {
                on: false,
                endpoints: None,
            }),
            client_properties: Default::default(),
        }
    }

    fn publishing(&self, topics: Vec<v5::Resource>) -> v5::Publishing {
        v5::Publishing {
            topics,
            max_body_size: self.max_body_bytes,
            validate_message_type: true,
        }
    }

    fn redelivery(&self) -> v5::RetryPolicy {
        v5::RetryPolicy {
            max_attempts: self.max_attempts,
            strategy: Some(v5::retry_policy::Strategy::CustomizedBackoff(
                v5::CustomizedBackoff {
                    next: self.retry_delays.iter().map(|d| duration(*d)).collect(),
                },
            )),
        }
    }

    /// Answers every settings the client writes on `inbound`, until it closes the stream. A
    /// call without a client id gets that refusal once, and the stream ends.
    pub fn answer(
        &self,
        mut inbound: Streaming<v5::TelemetryCommand>,
        refused: Option<v5::Status>,
    ) -> ServerStream<v5::TelemetryCommand> {
        let (answers, stream) = mpsc::channel(ANSWERS_QUEUED_MAX);
        if let Some(refusal) = refused {
            // A channel of room 4 takes one answer without waiting.
            let _ = answers.try_send(Ok(v5::TelemetryCommand {
                status: Some(refusal),
                command: None,
            }));
            return Box::pin(ReceiverStream::new(stream));
        }
        let server = self.clone();
        tokio::spawn(async move {
            while let Some(command) = inbound.next().await {
                let answer = match command {
                    Ok(v5::TelemetryCommand {
                        command: Some(v5::telemetry_command::Command::Settings(settings)),
                        ..
                    }) => v5::TelemetryCommand {
                        status: Some(ok()),
                        command: Some(v5::telemetry_command::Command::Settings(
                            server.answer_to(&settings),
                        )),
                    },
                    // Results of commands this server never sends: nothing to answer.
                    Ok(_) => continue,
                    Err(status) => {
                        tracing::debug!(%status, "a client's telemetry stream ended");
                        break;
                    }
                };
                if answers.send(Ok::<_, Status>(answer)).await.is_err() {
                    break;
                }
            }
        });
        Box::pin(ReceiverStream::new(stream))
    }
}

/// A producer retries a failed send at once, then after a short backoff.
fn producer_retry() -> v5::RetryPolicy {
    v5::RetryPolicy {
        max_attempts: PRODUCER_ATTEMPTS,
        strategy: Some(v5::retry_policy::Strategy::ExponentialBackoff(
            v5::ExponentialBackoff {
                initial: Some(duration(Duration::from_millis(10))),
                max: Some(duration(Duration::from_secs(1))),
                multiplier: 2.0,
            },
        )),
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        // Settings' durations are seconds to minutes.
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerSettings {
        let config = crate::config::BrokerConfig::default();
        ServerSettings::new(&config.broker, &config.store, None)
    }

    #[test]
    fn a_producer_learns_the_body_limit_and_type_checks() {
        let answer = server().answer_to(&v5::Settings {
            client_type: Some(v5::ClientType::Producer as i32),
            pub_sub: Some(v5::settings::PubSub::Publishing(v5::Publishing::default())),
            ..Default::default()
        });
        let Some(v5::settings::PubSub::Publishing(publishing)) = answer.pub_sub else {
            panic!("a producer is answered with publishing settings");
        };
        let config = crate::config::BrokerConfig::default();
        assert_eq!(
            publishing.max_body_size as u32,
            config.store.max_message_bytes
        );
        assert!(publishing.validate_message_type);
        assert_eq!(answer.backoff_policy.unwrap().max_attempts, 3);
        assert!(!answer.metric.unwrap().on);
    }

    #[test]
    fn a_consumer_learns_its_redelivery_backoff_from_the_delay_levels() {
        let answer = server().answer_to(&v5::Settings {
            client_type: Some(v5::ClientType::PushConsumer as i32),
            pub_sub: Some(v5::settings::PubSub::Subscription(
                v5::Subscription::default(),
            )),
            ..Default::default()
        });
        let policy = answer.backoff_policy.unwrap();
        // 16 redeliveries by default (max_reconsume_times), plus the first delivery.
        assert_eq!(policy.max_attempts, 17);
        let Some(v5::retry_policy::Strategy::CustomizedBackoff(backoff)) = policy.strategy else {
            panic!("consumers get the delay levels");
        };
        // "1s 5s 10s 30s ...": redelivery starts at 10 s.
        assert_eq!(backoff.next[0].seconds, 10);
        let Some(v5::settings::PubSub::Subscription(subscription)) = answer.pub_sub else {
            panic!("a consumer is answered with subscription settings");
        };
        assert_eq!(subscription.long_polling_timeout.unwrap().seconds, 20);
        assert_eq!(subscription.fifo, Some(false));
    }
}
