//! `topic status TOPIC` and `group progress GROUP --topic TOPIC`: per queue, what the masters
//! hold (RocketMQ's `mqadmin topicStatus` and `consumerProgress`). With a controller, the
//! topic's route names each broker group's master and each is asked; without one, the one
//! broker of `--broker` is.

use std::process::ExitCode;

use anyhow::Result;
use client::controller::ControllerConnection;
use client::{Admin, ClientError};
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::{QueryOffsetRequest, TopicStatus};
use serde_json::{json, Value};

/// Where a topic's queues are read: a broker group and its master's address (None when the
/// group has no live master).
pub struct Master {
    pub group: String,
    pub addr: Option<String>,
}

/// The masters of `topic`'s groups, from the controller's route.
pub async fn masters_of(conn: &ControllerConnection, topic: &str) -> Result<Vec<Master>> {
    let route = conn.route(topic).await?;
    if route.groups.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    Ok(route
        .groups
        .iter()
        .map(|g| Master {
            group: g.group.clone(),
            addr: g
                .brokers
                .iter()
                .find(|b| Some(b.broker_id) == g.master_id && b.alive)
                .map(|b| b.addr.clone()),
        })
        .collect())
}

/// Every topic a group's master holds, with its queues, or why they could not be read.
async fn master_topics(master: &Master) -> Result<Vec<TopicStatus>, String> {
    let addr = master.addr.as_deref().ok_or("no live master")?;
    let admin = Admin::connect_as(addr, crate::identity::credentials().as_ref())
        .await
        .map_err(|e| e.to_string())?;
    admin.list_topics().await.map_err(|e| e.to_string())
}

/// `topic`'s queues among `topics` (read from `master`), or why it is missing.
fn find_topic(master: &Master, topics: &[TopicStatus], topic: &str) -> Result<TopicStatus, String> {
    topics
        .iter()
        .find(|t| t.topic == topic)
        .cloned()
        .ok_or_else(|| {
            format!(
                "the master ({}) does not hold topic {topic}",
                master.addr.as_deref().unwrap_or_default()
            )
        })
}

pub async fn topic_status(masters: &[Master], json_out: bool, topic: &str) -> Result<ExitCode> {
    let mut groups = Vec::new();
    let mut failed = false;
    let mut total = 0;
    if !json_out {
        out!(
            "{:<16} {:>6} {:>14} {:>14} {:>14}",
            "GROUP",
            "QUEUE",
            "MIN_OFFSET",
            "MAX_OFFSET",
            "MESSAGES"
        );
    }
    for master in masters {
        match master_topics(master)
            .await
            .and_then(|topics| find_topic(master, &topics, topic))
        {
            Ok(status) => {
                let rows: Vec<Value> = status
                    .queues
                    .iter()
                    .map(|q| {
                        let messages = q.max_queue_offset - q.min_queue_offset;
                        total += messages;
                        if !json_out {
                            out!(
                                "{:<16} {:>6} {:>14} {:>14} {:>14}",
                                master.group,
                                q.queue_id,
                                q.min_queue_offset,
                                q.max_queue_offset,
                                messages
                            );
                        }
                        json!({
                            "queue_id": q.queue_id,
                            "min_offset": q.min_queue_offset,
                            "max_offset": q.max_queue_offset,
                            "messages": messages,
                        })
                    })
                    .collect();
                groups.push(json!({
                    "group": master.group,
                    "master_addr": master.addr,
                    "queues": rows,
                }));
            }
            Err(why) => {
                failed = true;
                if !json_out {
                    out!("{:<16} unavailable: {why}", master.group);
                }
                groups.push(json!({
                    "group": master.group,
                    "master_addr": master.addr,
                    "error": why,
                }));
            }
        }
    }
    if json_out {
        out!(
            "{}",
            json!({ "topic": topic, "groups": groups, "messages": total })
        );
    } else {
        out!("{topic}: {total} messages kept");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A JSON number as text for a table (`-` for null): `Value`'s own `Display` ignores widths.
fn number(value: &Value) -> String {
    value.as_u64().map_or("-".into(), |n| n.to_string())
}

/// A client of the consumer groups of the broker at `addr`, signed as this run's user.
async fn groups_client(addr: &str) -> Result<ConsumerGroupsClient<auth::SignedChannel>, String> {
    // Through `proto::dial`, so that `--tls-ca` applies.
    let endpoint = proto::dial::endpoint(addr, std::time::Duration::from_secs(2))
        .map_err(|_| "broker address is not host:port".to_owned())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::from(e).to_string())?;
    Ok(ConsumerGroupsClient::new(crate::identity::signed(channel)))
}

/// The group's committed offset on a queue (None: it has committed none there).
async fn committed(
    client: &mut ConsumerGroupsClient<auth::SignedChannel>,
    group: &str,
    topic: &str,
    queue_id: u32,
) -> Result<Option<u64>, ClientError> {
    let answer = client
        .query_offset(QueryOffsetRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id,
        })
        .await?
        .into_inner();
    Ok(answer.found.then_some(answer.queue_offset))
}

pub async fn group_progress(
    masters: &[Master],
    json_out: bool,
    group: &str,
    topic: &str,
) -> Result<ExitCode> {
    // The group's own retry topic is consumed with the topic, on each broker that has one.
    let retry_topic = format!("%RETRY%{group}");
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut diff_total = 0;
    for master in masters {
        // One listing and one connection per master, for the topic and the retry topic.
        let connected = match master_topics(master).await {
            Ok(topics) => {
                let addr = master.addr.as_deref().unwrap_or_default();
                groups_client(addr).await.map(|client| (topics, client))
            }
            Err(why) => Err(why),
        };
        let (topics, mut client) = match connected {
            Ok(connected) => connected,
            Err(why) => {
                errors.push(json!({ "broker_group": master.group, "error": why }));
                continue;
            }
        };
        for (name, required) in [(topic, true), (retry_topic.as_str(), false)] {
            let status = match find_topic(master, &topics, name) {
                Ok(status) => status,
                Err(_) if !required => continue,
                Err(why) => {
                    errors.push(json!({ "broker_group": master.group, "error": why }));
                    continue;
                }
            };
            for q in &status.queues {
                let consumer = match committed(&mut client, group, name, q.queue_id).await {
                    Ok(offset) => offset,
                    Err(err) => {
                        errors.push(
                            json!({ "broker_group": master.group, "error": err.to_string() }),
                        );
                        break;
                    }
                };
                // Without a commit the group has read nothing of what is kept.
                let diff = q.max_queue_offset
                    - consumer
                        .unwrap_or(q.min_queue_offset)
                        .min(q.max_queue_offset);
                diff_total += diff;
                rows.push(json!({
                    "broker_group": master.group,
                    "topic": name,
                    "queue_id": q.queue_id,
                    "broker_offset": q.max_queue_offset,
                    "consumer_offset": consumer,
                    "diff": diff,
                }));
            }
        }
    }
    if json_out {
        out!(
            "{}",
            json!({
                "group": group,
                "topic": topic,
                "queues": rows,
                "diff_total": diff_total,
                "errors": errors,
            })
        );
    } else {
        out!(
            "{:<16} {:<28} {:>6} {:>14} {:>16} {:>10}",
            "BROKER_GROUP",
            "TOPIC",
            "QUEUE",
            "BROKER_OFFSET",
            "CONSUMER_OFFSET",
            "DIFF"
        );
        for row in &rows {
            out!(
                "{:<16} {:<28} {:>6} {:>14} {:>16} {:>10}",
                row["broker_group"].as_str().unwrap_or_default(),
                row["topic"].as_str().unwrap_or_default(),
                number(&row["queue_id"]),
                number(&row["broker_offset"]),
                number(&row["consumer_offset"]),
                number(&row["diff"]),
            );
        }
        for error in &errors {
            out!(
                "{}: unavailable: {}",
                error["broker_group"].as_str().unwrap_or_default(),
                error["error"].as_str().unwrap_or_default()
            );
        }
        out!("{group} on {topic}: {diff_total} messages not consumed yet");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
