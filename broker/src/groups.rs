//! Consumer groups: committed offsets and live members.
//!
//! Offsets are records of the internal topic [`OFFSET_TOPIC`] in the commit log, one per commit:
//! they are as durable as messages under the flush policy, survive restarts (the table is rebuilt
//! by reading the topic at start), and replicate and fail over with the log, so a
//! failover never rewinds a group. Under `SYNC_MASTER` a commit is answered only once the
//! in-sync set holds its record (like a send), and a slave that becomes master first takes every
//! offset record its log holds, confirmed or not: a consumer is never rewound past a commit it
//! was told succeeded. Every `offset_snapshot_interval_ms` the whole table is written
//! again, so that retention (which deletes whole old segments) never takes the last record of a
//! live offset.
//!
//! On a slave the log is its master's copy and nothing else writes to it: the table follows the
//! offset records as they replicate ([`ConsumerGroupState::follow`]), and a commit made on the
//! slave (consumers fell back to it while the master was unreachable) is kept in memory, over
//! the replicated value, until a replicated commit of the same queue reaches it. The consumer
//! commits again to the master when it returns, so such a commit is neither lost nor
//! overwritten by the master's older value.
//!
//! Membership is kept in memory: a member that has not sent a heartbeat for
//! `consumer_heartbeat_timeout_ms` is gone. Members compute their queue assignment from the
//! sorted member list, so every member agrees without a coordinator.
//!
//! Record body (little-endian): version u8 (1), group length u16, group, topic length u16,
//! topic, queue id u32, queue offset u64.
//!
//! The gRPC service over this state, with its permission checks, is `group_service.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::BrokerError;
use crate::store::{GetRequest, NewMessage, PutStatus, Store, TagFilter};
use crate::topics::TopicRegistry;

/// Internal topic of committed offsets (queue 0). Names starting with `%` are the broker's.
pub const OFFSET_TOPIC: &str = "%OFFSETS%";
const OFFSET_RECORD_VERSION: u8 = 1;
/// Longest consumer instance id.
pub const CLIENT_ID_BYTES_MAX: usize = 255;
/// Longest consumer group name: `%RETRY%` + the group must still be a legal topic name.
pub const GROUP_BYTES_MAX: usize = 120;

type OffsetKey = (String, String, u32);

/// Committed offsets and live members of every consumer group.
pub struct ConsumerGroupState {
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    /// Held across (append, table update) so the table applies commits in log order.
    offsets: tokio::sync::Mutex<HashMap<OffsetKey, u64>>,
    /// Commits made on a slave, over the replicated table.
    slave_commits: Mutex<HashMap<OffsetKey, u64>>,
    /// The queue offset in the offset topic up to which the table is read.
    next_record: std::sync::atomic::AtomicU64,
    members: Mutex<HashMap<String, BTreeMap<String, Instant>>>,
    heartbeat_timeout: Duration,
}

impl ConsumerGroupState {
    /// Rebuilds the offset table by reading every offset record in the log.
    pub async fn load(
        store: Arc<Store>,
        topics: Arc<TopicRegistry>,
        heartbeat_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let mut table = HashMap::new();
        let (queue_offset, _) = store.queue_offsets(OFFSET_TOPIC, 0).unwrap_or((0, 0));
        // Everything consumers may see (on a slave, up to the confirm offset its checkpoint
        // saved; the rest comes with `follow`).
        store
            .wait_readable(store.confirm_offset(), Duration::from_secs(60))
            .await;
        let next = read_offset_records(&store, queue_offset, &mut table, Reach::Confirmed)?;
        tracing::info!(offsets = table.len(), "consumer offsets loaded");
        Ok(ConsumerGroupState {
            store,
            topics,
            offsets: tokio::sync::Mutex::new(table),
            slave_commits: Mutex::new(HashMap::new()),
            next_record: std::sync::atomic::AtomicU64::new(next),
            members: Mutex::new(HashMap::new()),
            heartbeat_timeout,
        })
    }

    /// On a slave: applies the offset records that replicate, as they become readable, until
    /// the task is aborted. Starts by reading the whole offset topic again, and does so again
    /// after every truncation: a deposed master's table holds commits from the tail its
    /// rejoining cut, which no later record may overwrite.
    pub async fn follow(self: Arc<Self>) {
        let mut readable = self.store.subscribe_readable_offset();
        let mut generation = None;
        loop {
            let now = self.store.truncation_generation();
            if generation != Some(now) {
                generation = Some(now);
                if let Err(err) = self.reload().await {
                    tracing::warn!(error = %err, "cannot read the replicated consumer offsets");
                }
            }
            let from = self.next_record.load(std::sync::atomic::Ordering::Acquire);
            let mut records = HashMap::new();
            match read_offset_records(&self.store, from, &mut records, Reach::Confirmed) {
                Ok(next) => {
                    if !records.is_empty() {
                        let mut table = self.offsets.lock().await;
                        let mut slave_commits = self
                            .slave_commits
                            .lock()
                            .expect("slave commits lock poisoned");
                        for (key, offset) in records {
                            // The master has caught up with a commit made here.
                            if slave_commits
                                .get(&key)
                                .is_some_and(|local| offset >= *local)
                            {
                                slave_commits.remove(&key);
                            }
                            table.insert(key, offset);
                        }
                    }
                    self.next_record
                        .store(next, std::sync::atomic::Ordering::Release);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read replicated consumer offsets");
                }
            }
            // The readable offset moves with every message replicated; offset records are few.
            // Read only once the offset topic's queue holds a record not read yet (a cheap
            // in-memory check), or after a truncation.
            loop {
                if readable.changed().await.is_err() {
                    return;
                }
                let next = self.next_record.load(std::sync::atomic::Ordering::Acquire);
                let recorded = self
                    .store
                    .queue_offsets(OFFSET_TOPIC, 0)
                    .is_some_and(|(_, max)| max > next);
                if recorded || generation != Some(self.store.truncation_generation()) {
                    break;
                }
            }
        }
    }

    /// Rebuilds the table from every offset record consumers may see.
    async fn reload(&self) -> Result<(), BrokerError> {
        let mut table = self.offsets.lock().await;
        let (queue_offset, _) = self.store.queue_offsets(OFFSET_TOPIC, 0).unwrap_or((0, 0));
        let mut fresh = HashMap::new();
        let next = read_offset_records(&self.store, queue_offset, &mut fresh, Reach::Confirmed)?;
        *table = fresh;
        self.next_record
            .store(next, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// This broker became master. First its table takes every offset record its log holds,
    /// also those above its confirm offset: a commit the old master acknowledged only once this
    /// broker held it (`SYNC_MASTER`) may not have been confirmed here yet, and skipping it
    /// would rewind its consumers. Then the commits consumers made here while it was a slave
    /// are written to its log like any commit (unless the table already went past them).
    pub async fn promote(&self) {
        {
            let mut table = self.offsets.lock().await;
            let from = self.next_record.load(std::sync::atomic::Ordering::Acquire);
            let store = self.store.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut records = HashMap::new();
                read_offset_records(&store, from, &mut records, Reach::Written)
                    .map(|next| (next, records))
            })
            .await;
            match read {
                Ok(Ok((next, records))) => {
                    table.extend(records);
                    self.next_record
                        .store(next, std::sync::atomic::Ordering::Release);
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot read this log's last consumer offsets")
                }
                Err(err) => tracing::warn!(error = %err, "offset read task failed"),
            }
        }
        let commits = std::mem::take(
            &mut *self
                .slave_commits
                .lock()
                .expect("slave commits lock poisoned"),
        );
        let mut table = self.offsets.lock().await;
        for (key, offset) in commits {
            if table.get(&key).is_some_and(|current| *current >= offset) {
                continue;
            }
            match self.append(&key, offset).await {
                Ok(_) => {
                    table.insert(key, offset);
                }
                Err(err) => {
                    tracing::warn!(group = %key.0, topic = %key.1, queue_id = key.2, error = %err, "cannot write a commit made while this broker was a slave");
                }
            }
        }
    }

    /// Writes every committed offset again every `interval` (see the module documentation),
    /// until the task is aborted.
    pub async fn snapshot_every(self: Arc<Self>, interval: Duration) {
        // The first tick is immediate: after a long downtime the loaded offsets may sit in
        // segments retention is about to delete, so they are written again at once.
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match self.snapshot().await {
                Ok(count) => tracing::debug!(count, "consumer offsets written again"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not write the consumer offsets again")
                }
            }
        }
    }

    /// Commits `queue_offset` for (group, topic, queue). Returns the end of the offset record
    /// written on a master (the caller waits for its replication), None on a slave (which
    /// keeps the commit in memory; see the module documentation).
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<u64>, BrokerError> {
        check_group(group)?;
        self.topics.check_queue(topic, queue_id)?;
        self.commit_internal(group, topic, queue_id, queue_offset)
            .await
    }

    /// Commits without the checks on names and queues: for the broker's own groups (the
    /// scheduler's progress), whose names start with `%`.
    pub(crate) async fn commit_internal(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let max = self
            .store
            .queue_offsets(topic, queue_id)
            .map_or(0, |(_, max)| max);
        if queue_offset > max {
            return Err(BrokerError::OffsetBeyondEnd {
                queue_offset,
                max_queue_offset: max,
            });
        }
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        if self.store.is_replica_only() {
            self.slave_commits
                .lock()
                .expect("slave commits lock poisoned")
                .insert(key, queue_offset);
            return Ok(None);
        }
        let mut table = self.offsets.lock().await;
        let end_offset = self.append(&key, queue_offset).await?;
        table.insert(key, queue_offset);
        Ok(Some(end_offset))
    }

    /// Writes one offset record; returns its end offset.
    async fn append(&self, key: &OffsetKey, queue_offset: u64) -> Result<u64, BrokerError> {
        let message = NewMessage::new(OFFSET_TOPIC, 0, encode(key, queue_offset));
        let appended = self.store.append(message).await?;
        if appended.status != PutStatus::Ok {
            // The record is in the log and will count after a restart; the caller is told it is
            // not yet durable.
            return Err(BrokerError::NotDurable);
        }
        Ok(appended.end_offset)
    }

    /// The committed offset of (group, topic, queue).
    pub async fn query(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        let local = self
            .slave_commits
            .lock()
            .expect("slave commits lock poisoned")
            .get(&key)
            .copied();
        match local {
            Some(offset) => Some(offset),
            None => self.offsets.lock().await.get(&key).copied(),
        }
    }

    /// Every committed offset as [`ConsumerGroupState::query`] answers it: ((group, topic,
    /// queue id), committed queue offset), sorted. For the consumer-lag metric.
    pub async fn committed_offsets(&self) -> Vec<((String, String, u32), u64)> {
        let mut all: BTreeMap<OffsetKey, u64> = self
            .offsets
            .lock()
            .await
            .iter()
            .map(|(key, offset)| (key.clone(), *offset))
            .collect();
        let slave_commits = self
            .slave_commits
            .lock()
            .expect("slave commits lock poisoned");
        all.extend(
            slave_commits
                .iter()
                .map(|(key, offset)| (key.clone(), *offset)),
        );
        all.into_iter().collect()
    }

    /// Writes every committed offset again (see the module documentation).
    pub async fn snapshot(&self) -> Result<usize, BrokerError> {
        let table = self.offsets.lock().await;
        for (key, offset) in table.iter() {
            self.append(key, *offset).await?;
        }
        Ok(table.len())
    }

    /// Records a heartbeat; returns the live members, sorted.
    pub fn heartbeat(&self, group: &str, client_id: &str) -> Result<Vec<String>, BrokerError> {
        check_group(group)?;
        if client_id.is_empty() || client_id.len() > CLIENT_ID_BYTES_MAX {
            return Err(BrokerError::BadRequest {
                reason: "client_id must be 1 to 255 bytes",
            });
        }
        let now = Instant::now();
        let mut members = self.members.lock().expect("members lock poisoned");
        let group_members = members.entry(group.to_owned()).or_default();
        group_members.insert(client_id.to_owned(), now);
        group_members.retain(|id, seen| {
            id == client_id || now.duration_since(*seen) < self.heartbeat_timeout
        });
        Ok(group_members.keys().cloned().collect())
    }
}

/// Reads the offset records from `queue_offset` on into `table`; answers where to go on from.
/// How far [`read_offset_records`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// What consumers may see (below the confirm offset).
    Confirmed,
    /// Everything written: a new master's own log (see [`ConsumerGroupState::promote`]).
    Written,
}

fn read_offset_records(
    store: &Store,
    mut queue_offset: u64,
    table: &mut HashMap<OffsetKey, u64>,
    reach: Reach,
) -> Result<u64, BrokerError> {
    loop {
        let request = GetRequest {
            topic: OFFSET_TOPIC,
            queue_id: 0,
            queue_offset,
            max_count: 1024,
            max_bytes: 16 << 20,
            filter: &TagFilter::All,
        };
        let result = match reach {
            Reach::Confirmed => store.get_messages(&request)?,
            Reach::Written => store.get_messages_written(&request)?,
        };
        if result.messages.is_empty() {
            if result.next_queue_offset > queue_offset {
                // Below what retention kept: go on from where the queue starts now.
                queue_offset = result.next_queue_offset;
                continue;
            }
            return Ok(queue_offset);
        }
        for message in &result.messages {
            match decode(&message.body()) {
                Some((key, offset)) => {
                    table.insert(key, offset);
                }
                None => tracing::warn!(
                    commit_log_offset = message.commit_log_offset(),
                    "skipping an offset record this version cannot read"
                ),
            }
        }
        queue_offset = result.next_queue_offset;
    }
}

/// A group name: the same characters as a topic, 1 to 255 bytes, not starting with `%`.
pub(crate) fn check_group(group: &str) -> Result<(), BrokerError> {
    let legal = !group.is_empty()
        && group.len() <= GROUP_BYTES_MAX
        && !group.starts_with('%')
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|'));
    if legal {
        Ok(())
    } else {
        Err(BrokerError::GroupInvalid {
            group: group.to_owned(),
        })
    }
}

fn encode((group, topic, queue_id): &OffsetKey, queue_offset: u64) -> Bytes {
    let mut out = Vec::with_capacity(1 + 2 + group.len() + 2 + topic.len() + 12);
    out.push(OFFSET_RECORD_VERSION);
    out.extend_from_slice(&(group.len() as u16).to_le_bytes());
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&queue_id.to_le_bytes());
    out.extend_from_slice(&queue_offset.to_le_bytes());
    Bytes::from(out)
}

fn decode(body: &[u8]) -> Option<(OffsetKey, u64)> {
    let (&version, rest) = body.split_first()?;
    if version != OFFSET_RECORD_VERSION {
        return None;
    }
    let (group, rest) = take_string(rest)?;
    let (topic, rest) = take_string(rest)?;
    if rest.len() != 12 {
        return None;
    }
    let queue_id = u32::from_le_bytes(rest[..4].try_into().ok()?);
    let queue_offset = u64::from_le_bytes(rest[4..].try_into().ok()?);
    Some(((group, topic, queue_id), queue_offset))
}

fn take_string(bytes: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((text.to_owned(), &bytes[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_and_refuse_garbage() {
        let key = ("g".to_owned(), "orders".to_owned(), 3);
        let body = encode(&key, 42);
        assert_eq!(decode(&body), Some((key, 42)));
        assert_eq!(decode(&body[..body.len() - 1]), None);
        assert_eq!(decode(&[2, 0, 0]), None);
    }

    #[test]
    fn group_names_follow_the_topic_rules_and_percent_is_reserved() {
        assert!(check_group("payments-consumers").is_ok());
        assert!(check_group("%RETRY%x").is_err());
        assert!(check_group("a b").is_err());
        assert!(check_group("").is_err());
    }

    #[tokio::test]
    async fn offsets_survive_a_restart_and_the_last_commit_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::store::StoreConfig {
            store_path: dir.path().to_path_buf(),
            ..crate::store::StoreConfig::default()
        };
        let topics = Arc::new(TopicRegistry::open(dir.path()).unwrap());
        topics.create("orders", 2).unwrap();
        {
            let store = Arc::new(Store::open(config.clone()).unwrap());
            for i in 0..5 {
                store
                    .append(NewMessage::new("orders", 1, format!("m{i}")))
                    .await
                    .unwrap();
            }
            let state =
                ConsumerGroupState::load(store.clone(), topics.clone(), Duration::from_secs(10))
                    .await
                    .unwrap();
            state.commit("g", "orders", 1, 2).await.unwrap();
            state.commit("g", "orders", 1, 4).await.unwrap();
            assert!(matches!(
                state.commit("g", "orders", 1, 6).await,
                Err(BrokerError::OffsetBeyondEnd { .. })
            ));
            assert!(matches!(
                state.commit("g", "orders", 5, 0).await,
                Err(BrokerError::QueueNotFound { .. })
            ));
            assert_eq!(state.snapshot().await.unwrap(), 1);
        }
        let store = Arc::new(Store::open(config).unwrap());
        let state = ConsumerGroupState::load(store, topics, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(state.query("g", "orders", 1).await, Some(4));
        assert_eq!(state.query("g", "orders", 0).await, None);
    }

    #[tokio::test]
    async fn members_expire_without_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::store::StoreConfig {
            store_path: dir.path().to_path_buf(),
            ..crate::store::StoreConfig::default()
        };
        let store = Arc::new(Store::open(config).unwrap());
        let topics = Arc::new(TopicRegistry::open(dir.path()).unwrap());
        let state = ConsumerGroupState::load(store, topics, Duration::ZERO)
            .await
            .unwrap();
        // With a zero timeout only the member heartbeating right now is alive.
        state.heartbeat("g", "b").unwrap();
        assert_eq!(state.heartbeat("g", "a").unwrap(), vec!["a".to_owned()]);
    }
}
