//! The controller's replicated state: what the cluster is made of, and the commands that change
//! it. Everything here is deterministic: every controller applies the same commands in the same
//! order and ends with the same state. Liveness (which broker answered lately) is not here: it
//! lives in the leader's memory (`liveness.rs`), because writing every heartbeat to the Raft log
//! would make the log grow with time instead of with changes.
//!
//! A command that is refused (bad input, a conflict) changes nothing and answers a
//! [`CommandError`]; it still takes its place in the log, so that refusing is deterministic too.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Longest topic name, as the broker's store allows.
pub const TOPIC_BYTES_MAX: usize = 127;
/// Longest cluster, broker group or consumer group name (fits `%RETRY%<group>` in a topic name).
pub const NAME_BYTES_MAX: usize = 120;
/// Most queues a topic may have on one broker group.
pub const QUEUE_COUNT_MAX: u32 = 1024;
/// Most retries a consumer group may ask for (RocketMQ caps maxReconsumeTimes the same way).
pub const MAX_RETRIES_MAX: u32 = 64;
/// Longest broker address (`host:port`).
pub const ADDR_BYTES_MAX: usize = 255;

/// RocketMQ's permission bits on a topic.
pub const PERM_READ: u32 = 4;
pub const PERM_WRITE: u32 = 2;

/// The role a broker was configured with. Step 5 lets the controller assign roles; until then a
/// broker states its role when it registers, as in RocketMQ 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfiguredRole {
    Master,
    Slave,
}

/// One broker of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: u64,
    pub addr: String,
    pub configured_role: ConfiguredRole,
}

/// A broker group (RocketMQ's brokerName): one master, its slaves, and who is in sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerGroup {
    pub cluster: String,
    pub brokers: BTreeMap<u64, BrokerInfo>,
    pub master_id: Option<u64>,
    /// Raised each time the master changes; every message between brokers and controller carries
    /// it, and a stale one is refused.
    pub master_epoch: u64,
    pub in_sync_set: BTreeSet<u64>,
    pub in_sync_set_epoch: u64,
}

/// A topic: how many queues it has on each broker group, and whether it may be read and written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Broker group name -> queue count on that group.
    pub queues: BTreeMap<String, u32>,
    /// [`PERM_READ`] | [`PERM_WRITE`].
    pub perm: u32,
}

/// How a consumer group spreads messages over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageModel {
    /// Each queue to one member.
    Clustering,
    /// Every member reads every queue.
    Broadcasting,
}

/// Settings of a consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Retries before a message goes to the group's dead-letter topic.
    pub max_retries: u32,
    pub message_model: MessageModel,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            max_retries: 16,
            message_model: MessageModel::Clustering,
        }
    }
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub groups: BTreeMap<String, BrokerGroup>,
    pub topics: BTreeMap<String, Topic>,
    pub consumer_groups: BTreeMap<String, GroupSettings>,
    /// Raised by every command that changes topics or consumer-group settings: brokers compare it
    /// with what they last synced to learn that they must fetch their topics again.
    pub metadata_revision: u64,
}

/// A change to the state, as written to the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker joins its group, or says again where it is. Idempotent.
    RegisterBroker {
        cluster: String,
        group: String,
        broker: BrokerInfo,
    },
    /// Forgets a broker (it was decommissioned). The master of a group cannot be removed.
    UnregisterBroker {
        group: String,
        broker_id: u64,
    },
    /// Creates a topic. Creating it again with the same queues and permissions is a no-op;
    /// different ones are a conflict.
    CreateTopic {
        name: String,
        queues: BTreeMap<String, u32>,
        perm: u32,
    },
    DeleteTopic {
        name: String,
    },
    /// Sets the settings of a consumer group (creating its entry).
    SetGroupSettings {
        group: String,
        settings: GroupSettings,
    },
}

/// Why a command was refused. Refusals change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("broker group {0:?} is not registered")]
    GroupNotFound(String),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

/// What applying a command answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied (or was already so).
    Done {
        /// False when the command found everything as asked and changed nothing.
        changed: bool,
    },
    Refused(CommandError),
}

impl CommandResult {
    pub fn into_result(self) -> Result<bool, CommandError> {
        match self {
            CommandResult::Done { changed } => Ok(changed),
            CommandResult::Refused(err) => Err(err),
        }
    }
}

/// Checks a cluster, broker group or consumer group name: the characters a topic name allows.
pub fn validate_name(kind: &str, name: &str, max: usize) -> Result<(), CommandError> {
    if name.is_empty() || name.len() > max {
        return Err(CommandError::Invalid(format!(
            "{kind} name must be 1 to {max} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|'))
    {
        return Err(CommandError::Invalid(format!(
            "{kind} name {name:?}: only A-Z a-z 0-9 _ - | are allowed"
        )));
    }
    Ok(())
}

impl ClusterState {
    /// Applies one command. Refused commands leave the state exactly as it was.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let result = match command {
            Command::RegisterBroker {
                cluster,
                group,
                broker,
            } => self.register_broker(cluster, group, broker),
            Command::UnregisterBroker { group, broker_id } => {
                self.unregister_broker(group, *broker_id)
            }
            Command::CreateTopic { name, queues, perm } => self.create_topic(name, queues, *perm),
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => {
                    self.metadata_revision += 1;
                    Ok(true)
                }
                None => Err(CommandError::TopicNotFound(name.clone())),
            },
            Command::SetGroupSettings { group, settings } => {
                self.set_group_settings(group, *settings)
            }
        };
        match result {
            Ok(changed) => CommandResult::Done { changed },
            Err(err) => CommandResult::Refused(err),
        }
    }

    fn register_broker(
        &mut self,
        cluster: &str,
        group_name: &str,
        broker: &BrokerInfo,
    ) -> Result<bool, CommandError> {
        validate_name("cluster", cluster, NAME_BYTES_MAX)?;
        validate_name("broker group", group_name, NAME_BYTES_MAX)?;
        if broker.addr.is_empty() || broker.addr.len() > ADDR_BYTES_MAX {
            return Err(CommandError::Invalid(format!(
                "broker address must be 1 to {ADDR_BYTES_MAX} bytes"
            )));
        }
        if let Some(group) = self.groups.get(group_name) {
            if group.cluster != cluster {
                return Err(CommandError::Conflict(format!(
                    "broker group {group_name:?} belongs to cluster {:?}, not {cluster:?}",
                    group.cluster
                )));
            }
            if broker.configured_role == ConfiguredRole::Master {
                if let Some(master) = group.master_id.filter(|id| *id != broker.id) {
                    return Err(CommandError::Conflict(format!(
                        "broker group {group_name:?} already has master {master}; broker {} \
                         cannot also be its master",
                        broker.id
                    )));
                }
            }
            if let Some(other) = group
                .brokers
                .values()
                .find(|b| b.id != broker.id && b.addr == broker.addr)
            {
                return Err(CommandError::Conflict(format!(
                    "address {} is already broker {} of group {group_name:?}",
                    broker.addr, other.id
                )));
            }
        }
        let group = self
            .groups
            .entry(group_name.to_owned())
            .or_insert_with(|| BrokerGroup {
                cluster: cluster.to_owned(),
                ..BrokerGroup::default()
            });
        let mut changed = group.brokers.get(&broker.id) != Some(broker);
        group.brokers.insert(broker.id, broker.clone());
        match broker.configured_role {
            ConfiguredRole::Master if group.master_id != Some(broker.id) => {
                group.master_id = Some(broker.id);
                group.master_epoch += 1;
                // A new master starts alone in its in-sync set; slaves join as they catch up.
                group.in_sync_set = BTreeSet::from([broker.id]);
                group.in_sync_set_epoch += 1;
                changed = true;
            }
            ConfiguredRole::Slave if group.master_id == Some(broker.id) => {
                // A static master restarted as a slave: the group has no master until one
                // registers (step 5 elects one instead).
                group.master_id = None;
                group.in_sync_set.remove(&broker.id);
                group.in_sync_set_epoch += 1;
                changed = true;
            }
            _ => {}
        }
        Ok(changed)
    }

    fn unregister_broker(
        &mut self,
        group_name: &str,
        broker_id: u64,
    ) -> Result<bool, CommandError> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| CommandError::GroupNotFound(group_name.to_owned()))?;
        if group.master_id == Some(broker_id) {
            return Err(CommandError::Conflict(format!(
                "broker {broker_id} is the master of {group_name:?}; move mastership first"
            )));
        }
        if group.brokers.remove(&broker_id).is_none() {
            return Ok(false);
        }
        if group.in_sync_set.remove(&broker_id) {
            group.in_sync_set_epoch += 1;
        }
        Ok(true)
    }

    fn create_topic(
        &mut self,
        name: &str,
        queues: &BTreeMap<String, u32>,
        perm: u32,
    ) -> Result<bool, CommandError> {
        if name.is_empty() || name.len() > TOPIC_BYTES_MAX {
            return Err(CommandError::Invalid(format!(
                "topic name must be 1 to {TOPIC_BYTES_MAX} bytes"
            )));
        }
        if name.starts_with('%') {
            return Err(CommandError::Invalid(
                "topic names starting with % are the brokers' own (retry, dead letters, offsets)"
                    .into(),
            ));
        }
        validate_name("topic", name, TOPIC_BYTES_MAX)?;
        if queues.is_empty() {
            return Err(CommandError::Invalid(
                "a topic needs queues on at least one broker group".into(),
            ));
        }
        for (group, count) in queues {
            if !self.groups.contains_key(group) {
                return Err(CommandError::GroupNotFound(group.clone()));
            }
            if !(1..=QUEUE_COUNT_MAX).contains(count) {
                return Err(CommandError::Invalid(format!(
                    "queue count on {group:?} must be 1 to {QUEUE_COUNT_MAX}"
                )));
            }
        }
        if perm & !(PERM_READ | PERM_WRITE) != 0 {
            return Err(CommandError::Invalid(
                "perm must combine 4 (read) and 2 (write)".into(),
            ));
        }
        let topic = Topic {
            queues: queues.clone(),
            perm,
        };
        match self.topics.get(name) {
            Some(existing) if *existing == topic => Ok(false),
            Some(existing) => Err(CommandError::Conflict(format!(
                "topic {name:?} exists with queues {:?} and perm {}",
                existing.queues, existing.perm
            ))),
            None => {
                self.topics.insert(name.to_owned(), topic);
                self.metadata_revision += 1;
                Ok(true)
            }
        }
    }

    fn set_group_settings(
        &mut self,
        group: &str,
        settings: GroupSettings,
    ) -> Result<bool, CommandError> {
        validate_name("consumer group", group, NAME_BYTES_MAX)?;
        if settings.max_retries > MAX_RETRIES_MAX {
            return Err(CommandError::Invalid(format!(
                "max_retries must be at most {MAX_RETRIES_MAX}"
            )));
        }
        if self.consumer_groups.get(group) == Some(&settings) {
            return Ok(false);
        }
        self.consumer_groups.insert(group.to_owned(), settings);
        self.metadata_revision += 1;
        Ok(true)
    }

    /// Topics with queues on `group`, and their queue count there.
    pub fn topics_of_group(&self, group: &str) -> Vec<(String, u32, u32)> {
        self.topics
            .iter()
            .filter_map(|(name, topic)| {
                topic
                    .queues
                    .get(group)
                    .map(|count| (name.clone(), *count, topic.perm))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: u64, role: ConfiguredRole) -> BrokerInfo {
        BrokerInfo {
            id,
            addr: format!("127.0.0.1:{}", 10911 + id),
            configured_role: role,
        }
    }

    fn register(state: &mut ClusterState, group: &str, b: BrokerInfo) -> CommandResult {
        state.apply(&Command::RegisterBroker {
            cluster: "c".into(),
            group: group.into(),
            broker: b,
        })
    }

    #[test]
    fn registering_a_master_raises_the_epoch_once() {
        let mut state = ClusterState::default();
        let master = broker(0, ConfiguredRole::Master);
        assert_eq!(
            register(&mut state, "a", master.clone()),
            CommandResult::Done { changed: true }
        );
        assert_eq!(
            register(&mut state, "a", master),
            CommandResult::Done { changed: false }
        );
        let group = &state.groups["a"];
        assert_eq!(group.master_id, Some(0));
        assert_eq!(group.master_epoch, 1);
        assert_eq!(group.in_sync_set, BTreeSet::from([0]));
    }

    #[test]
    fn a_second_master_is_refused_and_changes_nothing() {
        let mut state = ClusterState::default();
        register(&mut state, "a", broker(0, ConfiguredRole::Master));
        let before = state.clone();
        let result = register(&mut state, "a", broker(1, ConfiguredRole::Master));
        assert!(matches!(
            result,
            CommandResult::Refused(CommandError::Conflict(_))
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn topics_need_registered_groups_and_conflicts_change_nothing() {
        let mut state = ClusterState::default();
        let queues = BTreeMap::from([("a".to_owned(), 4)]);
        let create = |queues: &BTreeMap<String, u32>| Command::CreateTopic {
            name: "orders".into(),
            queues: queues.clone(),
            perm: PERM_READ | PERM_WRITE,
        };
        assert_eq!(
            state.apply(&create(&queues)),
            CommandResult::Refused(CommandError::GroupNotFound("a".into()))
        );
        register(&mut state, "a", broker(0, ConfiguredRole::Master));
        assert_eq!(
            state.apply(&create(&queues)),
            CommandResult::Done { changed: true }
        );
        assert_eq!(
            state.apply(&create(&queues)),
            CommandResult::Done { changed: false }
        );
        let revision = state.metadata_revision;
        let before = state.clone();
        let other = BTreeMap::from([("a".to_owned(), 8)]);
        assert!(matches!(
            state.apply(&create(&other)),
            CommandResult::Refused(CommandError::Conflict(_))
        ));
        assert_eq!(state, before);
        assert_eq!(state.metadata_revision, revision);
        assert_eq!(state.topics_of_group("a"), vec![("orders".into(), 4, 6)]);
    }

    #[test]
    fn bad_names_are_refused() {
        let mut state = ClusterState::default();
        for bad in ["", "a b", "%RETRY%x", &"x".repeat(200)] {
            register(&mut state, "a", broker(0, ConfiguredRole::Master));
            let result = state.apply(&Command::CreateTopic {
                name: bad.into(),
                queues: BTreeMap::from([("a".to_owned(), 1)]),
                perm: 6,
            });
            assert!(
                matches!(result, CommandResult::Refused(CommandError::Invalid(_))),
                "{bad:?}: {result:?}"
            );
        }
        assert!(state.topics.is_empty());
    }

    #[test]
    fn the_master_cannot_be_unregistered() {
        let mut state = ClusterState::default();
        register(&mut state, "a", broker(0, ConfiguredRole::Master));
        register(&mut state, "a", broker(1, ConfiguredRole::Slave));
        assert!(matches!(
            state.apply(&Command::UnregisterBroker {
                group: "a".into(),
                broker_id: 0
            }),
            CommandResult::Refused(CommandError::Conflict(_))
        ));
        assert_eq!(
            state.apply(&Command::UnregisterBroker {
                group: "a".into(),
                broker_id: 1
            }),
            CommandResult::Done { changed: true }
        );
    }
}
