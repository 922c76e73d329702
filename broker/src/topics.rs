//! The topics this broker holds and their queue counts, persisted in `<store_path>/topics` with
//! the store's crash-safe metadata protocol (temp file, fsync, rename, fsync the directory).
//!
//! Step 3 makes the controller the source of truth for topics; this registry then becomes the
//! broker's local copy. Until then it is the truth for a standalone broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::store::{meta_file, record};

const TOPICS_FILE_NAME: &str = "topics";
const TOPICS_MAGIC: u32 = u32::from_le_bytes(*b"RMTP");
const TOPICS_FORMAT_VERSION: u16 = 1;
/// Most queues a topic may have: each is a consume queue on disk.
pub const QUEUE_COUNT_MAX: u32 = 1024;

/// Settings of one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub queue_count: u32,
}

/// Every topic of this broker.
#[derive(Debug)]
pub struct TopicRegistry {
    dir: PathBuf,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
}

impl TopicRegistry {
    /// Loads the registry from `dir` (an empty one if there is none yet).
    pub fn open(dir: &Path) -> Result<TopicRegistry, BrokerError> {
        let loaded = meta_file::load(dir, TOPICS_FILE_NAME, TOPICS_MAGIC, TOPICS_FORMAT_VERSION)?;
        let topics = match loaded {
            None => BTreeMap::new(),
            Some((_, payload)) => {
                serde_json::from_slice(&payload).map_err(|err| BrokerError::Registry {
                    reason: format!("{}: {err}", dir.join(TOPICS_FILE_NAME).display()),
                })?
            }
        };
        Ok(TopicRegistry {
            dir: dir.to_path_buf(),
            topics: RwLock::new(topics),
        })
    }

    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.topics
            .read()
            .expect("topic registry lock poisoned")
            .get(topic)
            .copied()
    }

    /// Creates `topic` with `queue_count` queues, durably. Returns false when it already exists
    /// with that count; another count is an error (changing a topic is not supported yet).
    pub fn create(&self, topic: &str, queue_count: u32) -> Result<bool, BrokerError> {
        record::validate_topic(topic)?;
        if !(1..=QUEUE_COUNT_MAX).contains(&queue_count) {
            return Err(BrokerError::BadRequest {
                reason: "queue_count must be between 1 and 1024",
            });
        }
        let mut topics = self.topics.write().expect("topic registry lock poisoned");
        match topics.get(topic) {
            Some(existing) if existing.queue_count == queue_count => return Ok(false),
            Some(existing) => {
                return Err(BrokerError::TopicExists {
                    topic: topic.to_owned(),
                    queue_count: existing.queue_count,
                })
            }
            None => {}
        }
        let mut next = topics.clone();
        next.insert(topic.to_owned(), TopicConfig { queue_count });
        let payload = serde_json::to_vec(&next).map_err(|err| BrokerError::Registry {
            reason: err.to_string(),
        })?;
        meta_file::save(
            &self.dir,
            TOPICS_FILE_NAME,
            TOPICS_MAGIC,
            TOPICS_FORMAT_VERSION,
            &payload,
        )?;
        *topics = next;
        tracing::info!(topic, queue_count, "topic created");
        Ok(true)
    }

    /// Makes the client topics exactly `wanted` (name -> queue count), as the controller says;
    /// the broker's own `%` topics (retry, dead letters, offsets, schedule) stay as they are. A
    /// topic that goes away keeps its data on disk (retention deletes it in time) but is no longer
    /// served. Durable before it returns; does nothing when nothing changes.
    pub fn sync(&self, wanted: &BTreeMap<String, u32>) -> Result<(), BrokerError> {
        for (topic, queue_count) in wanted {
            record::validate_topic(topic)?;
            if topic.starts_with('%') || !(1..=QUEUE_COUNT_MAX).contains(queue_count) {
                return Err(BrokerError::Registry {
                    reason: format!("controller sent topic {topic:?} with {queue_count} queues"),
                });
            }
        }
        let mut topics = self.topics.write().expect("topic registry lock poisoned");
        let next: BTreeMap<String, TopicConfig> = topics
            .iter()
            .filter(|(name, _)| name.starts_with('%'))
            .map(|(name, config)| (name.clone(), *config))
            .chain(wanted.iter().map(|(name, queue_count)| {
                (
                    name.clone(),
                    TopicConfig {
                        queue_count: *queue_count,
                    },
                )
            }))
            .collect();
        if next == *topics {
            return Ok(());
        }
        let payload = serde_json::to_vec(&next).map_err(|err| BrokerError::Registry {
            reason: err.to_string(),
        })?;
        meta_file::save(
            &self.dir,
            TOPICS_FILE_NAME,
            TOPICS_MAGIC,
            TOPICS_FORMAT_VERSION,
            &payload,
        )?;
        let added: Vec<&String> = next.keys().filter(|k| !topics.contains_key(*k)).collect();
        let removed: Vec<&String> = topics.keys().filter(|k| !next.contains_key(*k)).collect();
        tracing::info!(?added, ?removed, "topics synced from the controller");
        *topics = next;
        Ok(())
    }

    /// Checks that `topic` exists and has a queue `queue_id`.
    pub fn check_queue(&self, topic: &str, queue_id: u32) -> Result<(), BrokerError> {
        let queue_count = self
            .get(topic)
            .ok_or_else(|| BrokerError::TopicNotFound {
                topic: topic.to_owned(),
            })?
            .queue_count;
        if queue_id >= queue_count {
            return Err(BrokerError::QueueNotFound {
                topic: topic.to_owned(),
                queue_id,
                queue_count,
            });
        }
        Ok(())
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<(String, TopicConfig)> {
        self.topics
            .read()
            .expect("topic registry lock poisoned")
            .iter()
            .map(|(name, config)| (name.clone(), *config))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_survive_reopen_and_creation_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let registry = TopicRegistry::open(dir.path()).unwrap();
        assert!(registry.create("orders", 4).unwrap());
        assert!(!registry.create("orders", 4).unwrap());
        assert!(matches!(
            registry.create("orders", 8),
            Err(BrokerError::TopicExists { queue_count: 4, .. })
        ));
        assert!(registry.create("bad topic", 4).is_err());
        assert!(registry.create("t", 0).is_err());
        let reopened = TopicRegistry::open(dir.path()).unwrap();
        assert_eq!(reopened.get("orders"), Some(TopicConfig { queue_count: 4 }));
        assert_eq!(reopened.list().len(), 1);
    }

    #[test]
    fn sync_replaces_client_topics_and_keeps_the_brokers_own() {
        let dir = tempfile::tempdir().unwrap();
        let registry = TopicRegistry::open(dir.path()).unwrap();
        registry.create("old", 4).unwrap();
        registry.create("%RETRY%g", 1).unwrap();
        let wanted = BTreeMap::from([("orders".to_owned(), 8), ("old".to_owned(), 16)]);
        registry.sync(&wanted).unwrap();
        let reopened = TopicRegistry::open(dir.path()).unwrap();
        assert_eq!(reopened.get("orders"), Some(TopicConfig { queue_count: 8 }));
        assert_eq!(reopened.get("old"), Some(TopicConfig { queue_count: 16 }));
        assert_eq!(
            reopened.get("%RETRY%g"),
            Some(TopicConfig { queue_count: 1 })
        );
        registry.sync(&BTreeMap::new()).unwrap();
        assert_eq!(registry.get("orders"), None);
        assert!(registry.get("%RETRY%g").is_some());
        let bad = BTreeMap::from([("%OFFSETS%".to_owned(), 1)]);
        assert!(registry.sync(&bad).is_err());
        assert!(registry.get("%RETRY%g").is_some());
    }
}
