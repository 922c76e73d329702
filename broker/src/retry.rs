//! Retry and dead letters: messages a consumer group failed to handle come back later, and after
//! too many tries go to the group's dead-letter topic.
//!
//! `SendBack` takes a message the group failed on. Below the group's max retries it is
//! stored in the schedule topic [`SCHEDULE_TOPIC`], in the queue of delay level
//! `3 + retry count` (RocketMQ's 18 levels, 1s ... 2h by default), with the time it is due; a
//! scheduler task per level delivers due messages to the group's retry topic `%RETRY%<group>`,
//! which the group's consumers read beside the topic itself. From the group's max retries on it
//! goes to `%DLQ%<group>` at once. Retry and dead-letter topics are registered topics of one
//! queue, visible in `ListTopics`.
//!
//! A group's max retries (RocketMQ's max reconsume times) is the controller's setting for that
//! group when the controller has one: the controller link replaces the whole table on every
//! metadata sync ([`RetryState::sync_group_max_retries`]), so a setting removed there stops
//! applying here. Groups without a setting, and brokers without a controller, use the
//! broker-wide `max_reconsume_times`. The table lives in memory only: after a restart the
//! broker-wide value applies until the first sync, which at worst retries a message more or
//! dead-letters it sooner, and loses nothing.
//!
//! The delay is real and survives restarts: scheduled messages are in the commit log, and each
//! level's progress is a committed offset (group [`SCHEDULER_GROUP`]) in the commit log too, so
//! both replicate with it. Delivery is at least once: a crash between delivering and
//! committing the progress delivers that message again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::error::BrokerError;
use crate::groups::ConsumerGroupState;
use crate::store::message::PROPERTY_UNIQUE_ID;
use crate::store::{now_ms, GetRequest, NewMessage, PutStatus, Store, StoredMessage, TagFilter};
use crate::topics::TopicRegistry;

/// Internal topic holding messages waiting for their delay, one queue per level.
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";
/// Queues of the schedule topic: one per level, for as many levels as a configuration may have,
/// so that changing the levels never changes the topic.
pub const SCHEDULE_QUEUES: u32 = 64;
/// Internal group under which each level's delivery progress is committed.
pub const SCHEDULER_GROUP: &str = "%SCHEDULER%";
/// Property: the topic a scheduled message goes to when due.
pub const PROPERTY_REAL_TOPIC: &str = "REAL_TOPIC";
/// Property: when a scheduled message is due, Unix milliseconds.
pub const PROPERTY_DELIVER_AT_MS: &str = "DELIVER_AT_MS";
/// Property: the topic the message was first sent to.
pub const PROPERTY_ORIGIN_TOPIC: &str = "ORIGIN_TOPIC";
/// Longest a level's task sleeps without a wake-up before it looks at its queue again.
const LEVEL_WAIT_MAX: Duration = Duration::from_secs(1);
/// RocketMQ's 18 delay levels.
pub const DEFAULT_DELAY_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";
/// Delay level of a message's first retry (RocketMQ: 3, 10 s); each retry goes one level up.
pub const FIRST_RETRY_LEVEL: usize = 3;

/// The retry topic of a group.
pub fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

/// The dead-letter topic of a group.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// Parses delay levels such as "1s 5s 10s 2m 1h 250ms".
pub fn parse_delay_levels(text: &str) -> Result<Vec<Duration>, DelayLevelsError> {
    let levels = text
        .split_whitespace()
        .map(|word| {
            let word_owned = || word.to_owned();
            let (number, unit) = word.split_at(
                word.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(word.len()),
            );
            // Only digits: an unreadable number is empty, or too large for any delay.
            let value: u64 = number.parse().map_err(|_| {
                if number.is_empty() {
                    DelayLevelsError::NotANumber { word: word_owned() }
                } else {
                    DelayLevelsError::TooLong { word: word_owned() }
                }
            })?;
            let unit_millis: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(DelayLevelsError::BadUnit { word: word_owned() }),
            };
            let millis = value
                .checked_mul(unit_millis)
                .ok_or_else(|| DelayLevelsError::TooLong { word: word_owned() })?;
            Ok(Duration::from_millis(millis))
        })
        .collect::<Result<Vec<Duration>, DelayLevelsError>>()?;
    if levels.is_empty() || levels.len() > DELAY_LEVELS_MAX {
        return Err(DelayLevelsError::Count {
            count: levels.len(),
        });
    }
    Ok(levels)
}

/// Most delay levels `message_delay_level` may name.
pub const DELAY_LEVELS_MAX: usize = 64;

/// Why `message_delay_level` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DelayLevelsError {
    #[error("{word:?} does not start with a number")]
    NotANumber { word: String },
    #[error("{word:?}: the unit must be ms, s, m, h or d")]
    BadUnit { word: String },
    #[error("{word:?} is longer than any delay can be")]
    TooLong { word: String },
    #[error("between 1 and {DELAY_LEVELS_MAX} levels, not {count}")]
    Count { count: usize },
}

/// Send-back and the schedule.
pub struct RetryState {
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    groups: Arc<ConsumerGroupState>,
    levels: Vec<Duration>,
    /// Broker-wide max retries, for groups the controller has no setting for.
    max_reconsume_times: u32,
    /// Max retries per group, as the controller last sent them. A plain lock: it is read once
    /// per send-back and replaced once per metadata change, and never held across an await.
    group_max_retries: RwLock<HashMap<String, u32>>,
    /// The groups that consume each message group in order, as the controller last sent them
    /// (RocketMQ 5 consumption holds a message group back while one of it is in flight).
    fifo_groups: RwLock<HashSet<String>>,
    /// One per level: a send-back stored a message in that level's queue. The level's task
    /// sleeps on it, not on the readable offset (which moves with every message the broker
    /// stores: 18 task wake-ups per message, most of a light load's cost in this runtime).
    level_stored: Vec<Arc<Notify>>,
}

impl RetryState {
    pub fn new(
        store: Arc<Store>,
        topics: Arc<TopicRegistry>,
        groups: Arc<ConsumerGroupState>,
        levels: Vec<Duration>,
        max_reconsume_times: u32,
    ) -> Result<Arc<RetryState>, BrokerError> {
        assert!(
            levels.len() <= SCHEDULE_QUEUES as usize,
            "parse_delay_levels bounds the levels"
        );
        topics.create(SCHEDULE_TOPIC, SCHEDULE_QUEUES)?;
        let levels_len = levels.len();
        Ok(Arc::new(RetryState {
            store,
            topics,
            groups,
            levels,
            max_reconsume_times,
            group_max_retries: RwLock::new(HashMap::new()),
            fifo_groups: RwLock::new(HashSet::new()),
            level_stored: (0..levels_len).map(|_| Arc::new(Notify::new())).collect(),
        }))
    }

    /// Makes the per-group max retries exactly `table` (group name to max retries), dropping
    /// groups it does not name, so that a setting deleted on the controller stops applying.
    pub fn sync_group_max_retries(&self, table: HashMap<String, u32>) {
        *self
            .group_max_retries
            .write()
            .expect("group max retries lock poisoned") = table;
    }

    /// Makes the FIFO groups exactly `groups`.
    pub fn sync_fifo_groups(&self, groups: HashSet<String>) {
        *self.fifo_groups.write().expect("fifo groups lock poisoned") = groups;
    }

    /// Whether `group` consumes each message group in order.
    pub fn is_fifo(&self, group: &str) -> bool {
        self.fifo_groups
            .read()
            .expect("fifo groups lock poisoned")
            .contains(group)
    }

    /// Send-backs `group` gets before its messages go to its dead-letter topic.
    pub fn max_retries(&self, group: &str) -> u32 {
        self.group_max_retries
            .read()
            .expect("group max retries lock poisoned")
            .get(group)
            .copied()
            .unwrap_or(self.max_reconsume_times)
    }

    /// Hands the message at `commit_log_offset` (of `topic`, at `queue_offset`) back for
    /// `group`. Returns (dead-lettered, retry count).
    pub async fn send_back(
        &self,
        group: &str,
        commit_log_offset: u64,
        topic: &str,
        queue_offset: u64,
    ) -> Result<(bool, u32), BrokerError> {
        self.hand_back(group, commit_log_offset, topic, queue_offset, false)
            .await
    }

    /// Moves the message at `commit_log_offset` (of `topic`, at `queue_offset`) to `group`'s
    /// dead-letter topic at once, whatever its retry count: a RocketMQ 5 consumer gave up on it,
    /// or its deliveries ran out. Returns the retry count it is stored with.
    pub async fn dead_letter(
        &self,
        group: &str,
        commit_log_offset: u64,
        topic: &str,
        queue_offset: u64,
    ) -> Result<u32, BrokerError> {
        let (_, retry_count) = self
            .hand_back(group, commit_log_offset, topic, queue_offset, true)
            .await?;
        Ok(retry_count)
    }

    async fn hand_back(
        &self,
        group: &str,
        commit_log_offset: u64,
        topic: &str,
        queue_offset: u64,
        dead_now: bool,
    ) -> Result<(bool, u32), BrokerError> {
        crate::groups::check_group(group)?;
        let original = self.store.read_message_at(commit_log_offset)?;
        if original.topic() != topic || original.queue_offset() != queue_offset {
            return Err(BrokerError::BadRequest {
                reason: "no message of that topic and queue offset is at that commit-log offset",
            });
        }
        let retry_count = original.retry_count() + 1;
        let dead = dead_now || original.retry_count() >= self.max_retries(group);
        let mut message = copy_of(&original, topic);
        message.retry_count = retry_count;
        if dead {
            let dlq = dlq_topic(group);
            self.topics.create(&dlq, 1)?;
            message.topic = dlq;
            message.queue_id = 0;
            tracing::warn!(
                group,
                message_id = original.property(PROPERTY_UNIQUE_ID),
                retry_count,
                "message moved to the dead-letter topic"
            );
        } else {
            let retry = retry_topic(group);
            self.topics.create(&retry, 1)?;
            let level =
                (FIRST_RETRY_LEVEL + original.retry_count() as usize).min(self.levels.len());
            let due = now_ms() + self.levels[level - 1].as_millis() as u64;
            message
                .properties
                .push((PROPERTY_REAL_TOPIC.to_owned(), retry));
            message
                .properties
                .push((PROPERTY_DELIVER_AT_MS.to_owned(), due.to_string()));
            message.topic = SCHEDULE_TOPIC.to_owned();
            message.queue_id = (level - 1) as u32;
        }
        let scheduled_level = (!dead).then_some(message.queue_id as usize);
        let appended = self.store.append(message).await?;
        if let Some(level) = scheduled_level {
            // The level's task is told once the message is readable (replicated, indexed): told
            // earlier, it would find nothing and sleep again. A permit is kept while the task is
            // busy, so it looks again when it is done.
            let (store, stored) = (self.store.clone(), self.level_stored[level].clone());
            let end_offset = appended.end_offset;
            tokio::spawn(async move {
                store.wait_readable(end_offset, LEVEL_WAIT_MAX).await;
                stored.notify_one();
            });
        }
        if appended.status != PutStatus::Ok {
            return Err(BrokerError::NotDurable);
        }
        Ok((dead, retry_count))
    }

    /// Starts one delivery task per delay level.
    pub fn start_scheduler(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.levels.len() as u32)
            .map(|queue_id| {
                let state = self.clone();
                tokio::spawn(async move { state.deliver_level(queue_id).await })
            })
            .collect()
    }

    async fn deliver_level(&self, queue_id: u32) {
        loop {
            if let Err(err) = self.deliver_due(queue_id).await {
                tracing::warn!(level = queue_id + 1, error = %err, "delayed delivery failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Waits until this level's queue may hold a readable entry at `queue_offset` or beyond: a
    /// send-back to this level notifies it once its message is readable; an entry in the queue
    /// but not yet readable (stored by another path) is waited for on the readable offset, only
    /// then. The caller bounds the wait ([`LEVEL_WAIT_MAX`]).
    async fn level_grows(
        &self,
        queue_id: u32,
        queue_offset: u64,
        readable: &mut watch::Receiver<u64>,
    ) {
        let stored = self
            .store
            .queue_offsets(SCHEDULE_TOPIC, queue_id)
            .is_some_and(|(_, max)| max > queue_offset);
        if !stored {
            self.level_stored[queue_id as usize].notified().await;
            return;
        }
        if readable.changed().await.is_err() {
            // The store is gone: the caller's timeout ends the wait.
            std::future::pending::<()>().await;
        }
    }

    /// Delivers this level's due messages, then waits for the next one to be due (or to arrive).
    async fn deliver_due(&self, queue_id: u32) -> Result<(), BrokerError> {
        let mut readable = self.store.subscribe_readable_offset();
        let mut queue_offset = match self
            .groups
            .query(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue_id)
            .await
        {
            Some(offset) => offset,
            None => self
                .store
                .queue_offsets(SCHEDULE_TOPIC, queue_id)
                .map_or(0, |(min, _)| min),
        };
        let result = self.store.get_messages(&GetRequest {
            topic: SCHEDULE_TOPIC,
            queue_id,
            queue_offset,
            max_count: 32,
            max_bytes: 4 << 20,
            filter: &TagFilter::All,
        })?;
        if result.messages.is_empty() {
            if result.next_queue_offset != queue_offset {
                // Retention moved the queue's start past the progress: skip to it.
                self.groups
                    .commit_internal(
                        SCHEDULER_GROUP,
                        SCHEDULE_TOPIC,
                        queue_id,
                        result.next_queue_offset,
                    )
                    .await?;
                return Ok(());
            }
            let _ = tokio::time::timeout(
                LEVEL_WAIT_MAX,
                self.level_grows(queue_id, queue_offset, &mut readable),
            )
            .await;
            return Ok(());
        }
        for scheduled in &result.messages {
            let due = scheduled
                .property(PROPERTY_DELIVER_AT_MS)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let now = now_ms();
            if due > now {
                // Messages of one level are due in the order they were stored: wait for this one.
                tokio::time::sleep(Duration::from_millis((due - now).min(1_000))).await;
                return Ok(());
            }
            // Only retry topics are destinations; anything else cannot have come from
            // send-back, and is skipped rather than blocking the level for every group.
            let Some(real_topic) = scheduled
                .property(PROPERTY_REAL_TOPIC)
                .filter(|t| t.starts_with("%RETRY%") && self.topics.get(t).is_some())
            else {
                tracing::warn!(
                    commit_log_offset = scheduled.commit_log_offset(),
                    "scheduled message without a valid destination: skipped"
                );
                queue_offset = scheduled.queue_offset() + 1;
                self.groups
                    .commit_internal(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue_id, queue_offset)
                    .await?;
                continue;
            };
            let mut message = copy_of(scheduled, real_topic);
            message.topic = real_topic.to_owned();
            message.queue_id = 0;
            message
                .properties
                .retain(|(name, _)| name != PROPERTY_REAL_TOPIC && name != PROPERTY_DELIVER_AT_MS);
            let appended = self.store.append(message).await?;
            if appended.status != PutStatus::Ok {
                return Err(BrokerError::NotDurable);
            }
            queue_offset = scheduled.queue_offset() + 1;
            self.groups
                .commit_internal(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue_id, queue_offset)
                .await?;
        }
        Ok(())
    }
}

/// A new message with the body, properties and retry count of `stored`, remembering the topic
/// it first went to.
fn copy_of(stored: &StoredMessage, topic: &str) -> NewMessage {
    // The schedule's own properties are set afresh, never duplicated.
    let mut properties: Vec<(String, String)> = stored
        .properties()
        .filter(|(name, _)| *name != PROPERTY_REAL_TOPIC && *name != PROPERTY_DELIVER_AT_MS)
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    if !properties
        .iter()
        .any(|(name, _)| name == PROPERTY_ORIGIN_TOPIC)
    {
        properties.push((PROPERTY_ORIGIN_TOPIC.to_owned(), topic.to_owned()));
    }
    NewMessage {
        topic: stored.topic().to_owned(),
        queue_id: stored.queue_id(),
        body: stored.body(),
        properties,
        born_timestamp_ms: stored.born_timestamp_ms(),
        retry_count: stored.retry_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry state over a fresh store, with the broker-wide max retries `max_reconsume_times`.
    async fn retry_state(
        dir: &std::path::Path,
        max_reconsume_times: u32,
    ) -> (Arc<Store>, Arc<TopicRegistry>, Arc<RetryState>) {
        let config = crate::store::StoreConfig {
            store_path: dir.to_path_buf(),
            ..crate::store::StoreConfig::default()
        };
        let store = Arc::new(Store::open(config).unwrap());
        let topics = Arc::new(TopicRegistry::open(dir).unwrap());
        topics.create("orders", 1).unwrap();
        let groups = Arc::new(
            ConsumerGroupState::load(store.clone(), topics.clone(), Duration::from_secs(10))
                .await
                .unwrap(),
        );
        let levels = parse_delay_levels(DEFAULT_DELAY_LEVELS).unwrap();
        let state = RetryState::new(
            store.clone(),
            topics.clone(),
            groups,
            levels,
            max_reconsume_times,
        )
        .unwrap();
        (store, topics, state)
    }

    /// Sends back, for `group`, a message already handed back `retry_count` times (as its
    /// redelivery from the retry topic carries it). Returns whether it was dead-lettered.
    async fn send_back_after(
        store: &Store,
        state: &RetryState,
        group: &str,
        retry_count: u32,
    ) -> bool {
        let mut message = NewMessage::new("orders", 0, format!("{group} {retry_count}"));
        message.retry_count = retry_count;
        let appended = store.append(message).await.unwrap();
        let (dead, new_count) = state
            .send_back(
                group,
                appended.commit_log_offset,
                "orders",
                appended.queue_offset,
            )
            .await
            .unwrap();
        assert_eq!(new_count, retry_count + 1);
        dead
    }

    #[tokio::test]
    async fn controller_max_retries_wins_over_the_broker_wide_default() {
        let dir = tempfile::tempdir().unwrap();
        let (store, topics, state) = retry_state(dir.path(), 4).await;
        state.sync_group_max_retries(HashMap::from([("strict".to_owned(), 2)]));
        assert_eq!(state.max_retries("strict"), 2);
        assert_eq!(state.max_retries("lenient"), 4);

        assert!(!send_back_after(&store, &state, "strict", 0).await);
        assert!(!send_back_after(&store, &state, "strict", 1).await);
        assert!(send_back_after(&store, &state, "strict", 2).await);
        assert!(topics.get(&dlq_topic("strict")).is_some());

        // A group the controller has no setting for still gets the broker-wide four retries.
        for retry_count in 0..4 {
            assert!(!send_back_after(&store, &state, "lenient", retry_count).await);
        }
        assert!(topics.get(&dlq_topic("lenient")).is_none());
        assert!(send_back_after(&store, &state, "lenient", 4).await);
        assert!(topics.get(&dlq_topic("lenient")).is_some());
    }

    #[tokio::test]
    async fn group_settings_sync_replaces_the_whole_table() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _topics, state) = retry_state(dir.path(), 16).await;
        state.sync_group_max_retries(HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)]));
        assert!(send_back_after(&store, &state, "a", 1).await);
        state.sync_group_max_retries(HashMap::from([("b".to_owned(), 5)]));
        // "a" lost its setting on the controller: it falls back to the broker-wide sixteen.
        assert_eq!(state.max_retries("a"), 16);
        assert!(!send_back_after(&store, &state, "a", 1).await);
        assert_eq!(state.max_retries("b"), 5);
        state.sync_group_max_retries(HashMap::new());
        assert_eq!(state.max_retries("b"), 16);
    }

    #[test]
    fn rocketmq_delay_levels_parse() {
        let levels = parse_delay_levels(DEFAULT_DELAY_LEVELS).unwrap();
        assert_eq!(levels.len(), 18);
        assert_eq!(levels[2], Duration::from_secs(10));
        assert_eq!(levels[17], Duration::from_secs(7200));
        assert_eq!(
            parse_delay_levels("250ms").unwrap(),
            vec![Duration::from_millis(250)]
        );
        assert!(matches!(
            parse_delay_levels("5x"),
            Err(DelayLevelsError::BadUnit { .. })
        ));
        assert!(matches!(
            parse_delay_levels("x5s"),
            Err(DelayLevelsError::NotANumber { .. })
        ));
        assert_eq!(
            parse_delay_levels(""),
            Err(DelayLevelsError::Count { count: 0 })
        );
        assert!(matches!(
            parse_delay_levels("99999999999999999999d"),
            Err(DelayLevelsError::TooLong { .. })
        ));
        assert!(matches!(
            parse_delay_levels("999999999999999d"),
            Err(DelayLevelsError::TooLong { .. })
        ));
        assert_eq!(
            parse_delay_levels(&"1s ".repeat(65)),
            Err(DelayLevelsError::Count { count: 65 })
        );
    }
}
