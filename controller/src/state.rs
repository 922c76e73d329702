//! The controller's replicated state: what the cluster is made of, and the commands that change
//! it. Everything here is deterministic: every controller applies the same commands in the same
//! order and ends with the same state. Liveness (which broker answered lately) is not here: it
//! lives in the leader's memory (`liveness.rs`), because writing every heartbeat to the Raft log
//! would make the log grow with time instead of with changes.
//!
//! A command that is refused (bad input, a conflict) changes nothing and answers a
//! [`CommandError`]; it still takes its place in the log, so that refusing is deterministic too.
//!
//! Why one file of about 750 lines (and its tests): the state machine must be read as one
//! deterministic whole. Every command and its `apply` arm are here, next to the state they
//! change, so that a reviewer can see that no arm reads a clock, a random number or anything but
//! the state and the command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::acl::{AclCommand, AclCommandError, AclState};

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
/// Most members an in-sync set may name: a broker group is one master and a few slaves, so a
/// longer set is a malformed request, not a large group.
pub const IN_SYNC_SET_MAX: usize = 64;

/// RocketMQ's permission bits on a topic.
pub const PERM_READ: u32 = 4;
pub const PERM_WRITE: u32 = 2;

/// The role a broker was configured with. `Master` and `Slave` are static roles, as in RocketMQ
/// 4: the broker states its role when it registers and nothing fails over. `Controlled` leaves
/// the role to the controller, which elects the group's master and fails it over
/// (`election.rs`). A group is either static or controlled, never a mix: a static master would
/// take mastership back from an elected one at its next registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfiguredRole {
    Master,
    Slave,
    Controlled,
}

impl ConfiguredRole {
    /// Whether the controller elects this broker's role.
    pub fn is_controlled(self) -> bool {
        self == ConfiguredRole::Controlled
    }
}

/// How a broker replicates while it is master, as it registered (RocketMQ's ASYNC_MASTER and
/// SYNC_MASTER); shown by cluster list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMode {
    /// Not reported: a static slave, or state written before brokers reported it.
    #[default]
    Unknown,
    Async,
    Sync,
}

impl ReplicationMode {
    /// The name a broker's `replication_mode` setting gives it.
    pub fn setting_name(self) -> &'static str {
        match self {
            ReplicationMode::Unknown => "none (a static slave)",
            ReplicationMode::Async => "ASYNC_MASTER",
            ReplicationMode::Sync => "SYNC_MASTER",
        }
    }
}

/// One broker of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: u64,
    pub addr: String,
    pub configured_role: ConfiguredRole,
    /// Chosen at random by the broker process when it starts, and registered: a master whose
    /// registered incarnation is not the one it was elected with is a new process, which holds
    /// no lease (0 in state written by versions before leases).
    #[serde(default)]
    pub incarnation: u64,
    /// Among election candidates equal in log epoch and max offset, the lowest wins (RocketMQ's
    /// brokerElectionPriority).
    #[serde(default)]
    pub election_priority: u32,
    #[serde(default)]
    pub replication: ReplicationMode,
    /// Where RocketMQ 5 clients reach its `apache.rocketmq.v2` service; empty when it does not
    /// serve it (and in state written before it could).
    #[serde(default)]
    pub v5_addr: String,
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
    /// The incarnation the master had when it became master (elected, or registered as a static
    /// master). Leases go only to that process; a master registered again with another one has
    /// restarted, and a controlled group elects again at once.
    #[serde(default)]
    pub master_incarnation: u64,
    /// Drained for maintenance: no queue of the group is writable in routes, and its master
    /// refuses sends.
    #[serde(default)]
    pub drained: bool,
}

impl BrokerGroup {
    /// Whether the controller elects this group's master: its brokers registered CONTROLLED
    /// (all of them or none, [`ClusterState::apply`] refuses a mix).
    pub fn is_controlled(&self) -> bool {
        self.brokers
            .values()
            .any(|broker| broker.configured_role.is_controlled())
    }

    /// Whether the group has ever had a master: until then every registered broker is a
    /// candidate, since no in-sync set has been formed yet.
    pub fn never_had_master(&self) -> bool {
        self.master_epoch == 0 || self.in_sync_set.is_empty()
    }

    /// Another broker of the group that registered a replication mode other than `mode` and
    /// is alive (as `is_alive` says): the mode is the group's, stated once by every broker, so
    /// a broker that registers another one is refused while such a broker runs. Brokers no
    /// longer alive do not count, so that a group's mode changes by stopping all its brokers
    /// and starting them with the new one. `Unknown` (a static slave) clashes with nothing.
    pub fn replication_clash(
        &self,
        broker_id: u64,
        mode: ReplicationMode,
        is_alive: impl Fn(u64) -> bool,
    ) -> Option<&BrokerInfo> {
        if mode == ReplicationMode::Unknown {
            return None;
        }
        self.brokers.values().find(|other| {
            other.id != broker_id
                && other.replication != ReplicationMode::Unknown
                && other.replication != mode
                && is_alive(other.id)
        })
    }

    /// The master restarted: its registered incarnation is not the one it became master with,
    /// so the process that held its lease is gone.
    pub fn master_restarted(&self) -> bool {
        self.master_id
            .and_then(|id| self.brokers.get(&id))
            .is_some_and(|master| master.incarnation != self.master_incarnation)
    }
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
    /// Each message group consumed in order (RocketMQ 5 consumers; false in state written
    /// before it existed).
    #[serde(default)]
    pub fifo: bool,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            max_retries: 16,
            message_model: MessageModel::Clustering,
            fifo: false,
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
    /// Users and their permissions (`acl.rs`); empty in state written before there were any.
    #[serde(default)]
    pub acl: AclState,
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
    /// Drains a broker group for maintenance, or undrains it.
    SetGroupDrained {
        group: String,
        drained: bool,
    },
    /// A master proposes a new in-sync set for its group (RocketMQ 5's AlterSyncStateSet, Kafka's
    /// AlterPartition). Accepted only from the current master at the current master epoch, and
    /// only against the in-sync set epoch the master last saw: a master deposed meanwhile, or one
    /// racing another change, must not overwrite what it has not seen. Accepted, the epoch rises
    /// by one; the master applies the set only once it is accepted.
    AlterInSyncSet {
        group: String,
        master_id: u64,
        master_epoch: u64,
        in_sync_set_epoch: u64,
        in_sync_set: BTreeSet<u64>,
    },
    /// The controller leader elects a master for a controlled group (automatically, or for a
    /// planned switchover). A compare-and-set on `master_epoch`: decided against one state, it
    /// is refused if the group moved on meanwhile, so two deciders (a switchover racing a
    /// failover, or two leaders in turn) elect at most one master per epoch. Accepted, the master
    /// epoch and the in-sync set epoch rise by one. Unless `unclean`, the new master comes from
    /// the in-sync set (any registered broker while the group has never had a master) and the
    /// new set keeps only members of the old one.
    ElectMaster {
        group: String,
        /// The group's master epoch the election was decided at.
        master_epoch: u64,
        master_id: u64,
        in_sync_set: BTreeSet<u64>,
        /// Elect outside the in-sync set: acknowledged messages the new master lacks are lost.
        unclean: bool,
    },
    /// A change to users or their permissions (`acl.rs`).
    Acl(AclCommand),
}

/// Why a command was refused. Refusals change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("broker group {} is not registered", proto::Echo(.0))]
    GroupNotFound(String),
    #[error("topic {} does not exist", proto::Echo(.0))]
    TopicNotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Acl(#[from] AclCommandError),
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
            Command::SetGroupDrained { group, drained } => match self.groups.get_mut(group) {
                Some(g) => {
                    let changed = std::mem::replace(&mut g.drained, *drained) != *drained;
                    // Routes change with it; and a broker reports the revision it applied, so
                    // the command can wait for the group's master to have heard of it.
                    if changed {
                        self.metadata_revision += 1;
                    }
                    Ok(changed)
                }
                None => Err(CommandError::GroupNotFound(group.clone())),
            },
            Command::AlterInSyncSet {
                group,
                master_id,
                master_epoch,
                in_sync_set_epoch,
                in_sync_set,
            } => self.alter_in_sync_set(
                group,
                *master_id,
                *master_epoch,
                *in_sync_set_epoch,
                in_sync_set,
            ),
            Command::ElectMaster {
                group,
                master_epoch,
                master_id,
                in_sync_set,
                unclean,
            } => self.elect_master(group, *master_epoch, *master_id, in_sync_set, *unclean),
            Command::Acl(command) => self.acl.apply(command).map_err(CommandError::from),
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
        if broker.v5_addr.len() > ADDR_BYTES_MAX {
            return Err(CommandError::Invalid(format!(
                "a broker's v5 address must be at most {ADDR_BYTES_MAX} bytes"
            )));
        }
        if let Some(group) = self.groups.get(group_name) {
            if group.cluster != cluster {
                return Err(CommandError::Conflict(format!(
                    "broker group {group_name:?} belongs to cluster {:?}, not {cluster:?}",
                    group.cluster
                )));
            }
            if let Some(other) = group.brokers.values().find(|b| {
                b.id != broker.id
                    && b.configured_role.is_controlled() != broker.configured_role.is_controlled()
            }) {
                let (static_id, controlled_id) = if broker.configured_role.is_controlled() {
                    (other.id, broker.id)
                } else {
                    (broker.id, other.id)
                };
                return Err(CommandError::Conflict(format!(
                    "broker group {group_name:?} cannot mix static and controlled roles: broker \
                     {static_id} has a static role (MASTER or SLAVE, no automatic failover), \
                     broker {controlled_id} is CONTROLLED (the controller elects the master); \
                     configure every broker of the group the same way"
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
                group.master_incarnation = broker.incarnation;
                // A new master starts alone in its in-sync set; slaves join as they catch up.
                group.in_sync_set = BTreeSet::from([broker.id]);
                group.in_sync_set_epoch += 1;
                changed = true;
            }
            ConfiguredRole::Master => {
                // A static master restarted: it is master by configuration, in this process too.
                group.master_incarnation = broker.incarnation;
            }
            ConfiguredRole::Slave if group.master_id == Some(broker.id) => {
                // A static master restarted as a slave: the group has no master until one
                // registers (a controlled group elects one instead).
                group.master_id = None;
                group.in_sync_set.remove(&broker.id);
                group.in_sync_set_epoch += 1;
                changed = true;
            }
            // A controlled broker never makes itself master: the controller leader elects one
            // (at once for a group that never had a master, `election.rs`). A restarted
            // controlled master stays named master until then, without a lease: its new
            // incarnation differs from `master_incarnation`.
            ConfiguredRole::Slave | ConfiguredRole::Controlled => {}
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

    fn alter_in_sync_set(
        &mut self,
        group_name: &str,
        master_id: u64,
        master_epoch: u64,
        in_sync_set_epoch: u64,
        in_sync_set: &BTreeSet<u64>,
    ) -> Result<bool, CommandError> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| CommandError::GroupNotFound(group_name.to_owned()))?;
        // Epochs first: a deposed master's proposal is stale whatever it names, and saying so
        // tells it to step down rather than to fix its request.
        if group.master_id != Some(master_id) || group.master_epoch != master_epoch {
            let current = match group.master_id {
                Some(id) => format!("master {id}"),
                None => "no master".to_owned(),
            };
            return Err(CommandError::Conflict(format!(
                "stale master or master epoch: broker {master_id} at master epoch \
                 {master_epoch} proposed, but broker group {group_name:?} has {current} at master \
                 epoch {}",
                group.master_epoch
            )));
        }
        if group.in_sync_set_epoch != in_sync_set_epoch {
            return Err(CommandError::Conflict(format!(
                "in-sync set changed meanwhile (epoch {in_sync_set_epoch}, now {})",
                group.in_sync_set_epoch
            )));
        }
        if in_sync_set.len() > IN_SYNC_SET_MAX {
            return Err(CommandError::Invalid(format!(
                "an in-sync set names at most {IN_SYNC_SET_MAX} brokers, not {}",
                in_sync_set.len()
            )));
        }
        if !in_sync_set.contains(&master_id) {
            return Err(CommandError::Invalid(format!(
                "the in-sync set {in_sync_set:?} must contain the master {master_id}"
            )));
        }
        if let Some(unknown) = in_sync_set
            .iter()
            .find(|id| !group.brokers.contains_key(id))
        {
            return Err(CommandError::Invalid(format!(
                "broker {unknown} is not registered in broker group {group_name:?}"
            )));
        }
        if group.in_sync_set == *in_sync_set {
            return Ok(false);
        }
        group.in_sync_set = in_sync_set.clone();
        group.in_sync_set_epoch += 1;
        Ok(true)
    }

    fn elect_master(
        &mut self,
        group_name: &str,
        master_epoch: u64,
        master_id: u64,
        in_sync_set: &BTreeSet<u64>,
        unclean: bool,
    ) -> Result<bool, CommandError> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| CommandError::GroupNotFound(group_name.to_owned()))?;
        if !group.is_controlled() {
            return Err(CommandError::Conflict(format!(
                "broker group {group_name:?} has static roles (MASTER or SLAVE): its master is \
                 the broker configured so, and the controller elects none"
            )));
        }
        // The compare-and-set first: an election decided against an older state is stale
        // whatever it names.
        if group.master_epoch != master_epoch {
            return Err(CommandError::Conflict(format!(
                "master epoch changed meanwhile: the election was decided at master epoch \
                 {master_epoch}, broker group {group_name:?} is at {}",
                group.master_epoch
            )));
        }
        let Some(incarnation) = group.brokers.get(&master_id).map(|b| b.incarnation) else {
            return Err(CommandError::Invalid(format!(
                "broker {master_id} is not registered in broker group {group_name:?}"
            )));
        };
        if !unclean && !group.never_had_master() && !group.in_sync_set.contains(&master_id) {
            return Err(CommandError::Conflict(format!(
                "broker {master_id} is not in the in-sync set {:?} of broker group \
                 {group_name:?}: it may lack acknowledged messages (only an unclean election \
                 may choose it)",
                group.in_sync_set
            )));
        }
        if in_sync_set.len() > IN_SYNC_SET_MAX {
            return Err(CommandError::Invalid(format!(
                "an in-sync set names at most {IN_SYNC_SET_MAX} brokers, not {}",
                in_sync_set.len()
            )));
        }
        if !in_sync_set.contains(&master_id) {
            return Err(CommandError::Invalid(format!(
                "the new in-sync set {in_sync_set:?} must contain the new master {master_id}"
            )));
        }
        if let Some(unknown) = in_sync_set
            .iter()
            .find(|id| !group.brokers.contains_key(id))
        {
            return Err(CommandError::Invalid(format!(
                "broker {unknown} is not registered in broker group {group_name:?}"
            )));
        }
        if !unclean {
            // Nobody becomes in sync by an election: only the master's proposals add members.
            if let Some(added) = in_sync_set
                .iter()
                .find(|id| **id != master_id && !group.in_sync_set.contains(id))
            {
                return Err(CommandError::Invalid(format!(
                    "broker {added} is not in the in-sync set {:?} of broker group \
                     {group_name:?}; an election keeps only members of it",
                    group.in_sync_set
                )));
            }
        }
        group.master_id = Some(master_id);
        group.master_epoch += 1;
        group.master_incarnation = incarnation;
        group.in_sync_set = in_sync_set.clone();
        group.in_sync_set_epoch += 1;
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
            incarnation: 100 + id,
            election_priority: 0,
            replication: ReplicationMode::Unknown,
            v5_addr: String::new(),
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
    fn a_group_states_its_replication_mode_once_among_its_alive_brokers() {
        let mut group = BrokerGroup::default();
        for (id, mode) in [
            (0, ReplicationMode::Sync),
            (1, ReplicationMode::Sync),
            (2, ReplicationMode::Unknown),
        ] {
            let mut b = broker(id, ConfiguredRole::Controlled);
            b.replication = mode;
            group.brokers.insert(id, b);
        }
        let everyone = |_| true;
        // The same mode, a static slave's none, and a broker registering again: no clash.
        assert!(group
            .replication_clash(3, ReplicationMode::Sync, everyone)
            .is_none());
        assert!(group
            .replication_clash(3, ReplicationMode::Unknown, everyone)
            .is_none());
        // Another mode clashes with an alive broker that stated one, never with a static slave.
        let clash = group.replication_clash(3, ReplicationMode::Async, everyone);
        assert!(matches!(clash, Some(other) if other.replication == ReplicationMode::Sync));
        // A broker changing its own mode clashes with the others, not with its old record.
        assert!(group
            .replication_clash(0, ReplicationMode::Async, everyone)
            .is_some_and(|other| other.id == 1));
        // Once the brokers that stated the old mode are stopped, a new mode may be stated.
        assert!(group
            .replication_clash(0, ReplicationMode::Async, |id| id == 2)
            .is_none());
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

    /// Group "a": master 0 (master epoch 1), slaves 1 and 2, in-sync set {0} at epoch 1.
    fn group_of_three() -> ClusterState {
        let mut state = ClusterState::default();
        register(&mut state, "a", broker(0, ConfiguredRole::Master));
        register(&mut state, "a", broker(1, ConfiguredRole::Slave));
        register(&mut state, "a", broker(2, ConfiguredRole::Slave));
        let group = &state.groups["a"];
        assert_eq!(
            (group.master_epoch, group.in_sync_set_epoch),
            (1, 1),
            "fixture"
        );
        state
    }

    fn alter(master_id: u64, master_epoch: u64, in_sync_set_epoch: u64, set: &[u64]) -> Command {
        Command::AlterInSyncSet {
            group: "a".into(),
            master_id,
            master_epoch,
            in_sync_set_epoch,
            in_sync_set: set.iter().copied().collect(),
        }
    }

    impl Command {
        fn with_group(self, name: &str) -> Command {
            match self {
                Command::AlterInSyncSet {
                    master_id,
                    master_epoch,
                    in_sync_set_epoch,
                    in_sync_set,
                    ..
                } => Command::AlterInSyncSet {
                    group: name.into(),
                    master_id,
                    master_epoch,
                    in_sync_set_epoch,
                    in_sync_set,
                },
                other => other,
            }
        }
    }

    /// Applies `command`, expects a refusal that `expected` accepts, and checks that the whole
    /// state is unchanged.
    fn assert_refused(
        state: &mut ClusterState,
        command: Command,
        expected: impl Fn(&CommandError) -> bool,
    ) -> CommandError {
        let before = state.clone();
        let result = state.apply(&command);
        assert_eq!(*state, before, "a refusal changed the state: {command:?}");
        match result {
            CommandResult::Refused(err) if expected(&err) => err,
            other => panic!("{command:?}: unexpected {other:?}"),
        }
    }

    #[test]
    fn the_master_widens_and_narrows_the_in_sync_set_each_time_raising_its_epoch() {
        let mut state = group_of_three();
        assert_eq!(
            state.apply(&alter(0, 1, 1, &[0, 1])),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["a"];
        assert_eq!(group.in_sync_set, BTreeSet::from([0, 1]));
        assert_eq!(group.in_sync_set_epoch, 2);
        assert_eq!(group.master_epoch, 1, "the master epoch is not touched");

        assert_eq!(
            state.apply(&alter(0, 1, 2, &[0])),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["a"];
        assert_eq!(group.in_sync_set, BTreeSet::from([0]));
        assert_eq!(group.in_sync_set_epoch, 3);
    }

    #[test]
    fn proposing_the_current_in_sync_set_changes_nothing() {
        let mut state = group_of_three();
        state.apply(&alter(0, 1, 1, &[0, 2]));
        let before = state.clone();
        assert_eq!(
            state.apply(&alter(0, 1, 2, &[0, 2])),
            CommandResult::Done { changed: false }
        );
        assert_eq!(state, before, "same set: the epoch is not raised");
    }

    #[test]
    fn an_in_sync_set_change_for_an_unknown_group_is_refused() {
        let mut state = group_of_three();
        let err = assert_refused(
            &mut state,
            Command::AlterInSyncSet {
                group: "b".into(),
                master_id: 0,
                master_epoch: 1,
                in_sync_set_epoch: 1,
                in_sync_set: BTreeSet::from([0]),
            },
            |err| matches!(err, CommandError::GroupNotFound(_)),
        );
        assert_eq!(err, CommandError::GroupNotFound("b".into()));
    }

    #[test]
    fn an_in_sync_set_change_from_a_stale_master_or_master_epoch_is_refused() {
        let mut state = group_of_three();
        let conflict = |err: &CommandError| matches!(err, CommandError::Conflict(_));
        // Not the master.
        let err = assert_refused(&mut state, alter(1, 1, 1, &[0, 1]), conflict);
        assert!(err.to_string().contains("stale master"), "{err}");
        assert!(
            err.to_string().contains("has master 0 at master epoch 1"),
            "{err}"
        );
        // The master, but at an older master epoch.
        let err = assert_refused(&mut state, alter(0, 0, 1, &[0, 1]), conflict);
        assert!(err.to_string().contains("stale master"), "{err}");
        // A group without a master accepts no proposal.
        register(&mut state, "a", broker(0, ConfiguredRole::Slave));
        let err = assert_refused(&mut state, alter(0, 1, 2, &[0]), conflict);
        assert!(err.to_string().contains("has no master"), "{err}");
    }

    #[test]
    fn an_in_sync_set_change_against_an_older_in_sync_set_epoch_is_refused() {
        let mut state = group_of_three();
        state.apply(&alter(0, 1, 1, &[0, 1]));
        let err = assert_refused(&mut state, alter(0, 1, 1, &[0, 2]), |err| {
            matches!(err, CommandError::Conflict(_))
        });
        assert_eq!(
            err.to_string(),
            "conflict: in-sync set changed meanwhile (epoch 1, now 2)"
        );
    }

    #[test]
    fn an_in_sync_set_without_the_master_or_with_unknown_brokers_is_refused() {
        let mut state = group_of_three();
        let invalid = |err: &CommandError| matches!(err, CommandError::Invalid(_));
        let err = assert_refused(&mut state, alter(0, 1, 1, &[1, 2]), invalid);
        assert!(
            err.to_string().contains("must contain the master 0"),
            "{err}"
        );
        assert_refused(&mut state, alter(0, 1, 1, &[]), invalid);
        let err = assert_refused(&mut state, alter(0, 1, 1, &[0, 7]), invalid);
        assert!(
            err.to_string().contains("broker 7 is not registered"),
            "{err}"
        );
        let too_many: Vec<u64> = (0..=IN_SYNC_SET_MAX as u64).collect();
        assert_refused(&mut state, alter(0, 1, 1, &too_many), invalid);
    }

    /// Group "c": controlled brokers 0, 1 and 2, no master yet.
    fn controlled_group() -> ClusterState {
        let mut state = ClusterState::default();
        for id in 0..3 {
            assert_eq!(
                register(&mut state, "c", broker(id, ConfiguredRole::Controlled)),
                CommandResult::Done { changed: true }
            );
        }
        state
    }

    fn elect(master_epoch: u64, master_id: u64, set: &[u64], unclean: bool) -> Command {
        Command::ElectMaster {
            group: "c".into(),
            master_epoch,
            master_id,
            in_sync_set: set.iter().copied().collect(),
            unclean,
        }
    }

    #[test]
    fn a_controlled_registration_never_makes_a_master() {
        let state = controlled_group();
        let group = &state.groups["c"];
        assert!(group.is_controlled());
        assert_eq!(group.master_id, None);
        assert_eq!((group.master_epoch, group.in_sync_set_epoch), (0, 0));
        assert!(group.in_sync_set.is_empty());
        assert_eq!(group.brokers[&2].incarnation, 102);
    }

    #[test]
    fn a_group_mixing_static_and_controlled_roles_is_refused() {
        let mut state = controlled_group();
        for role in [ConfiguredRole::Master, ConfiguredRole::Slave] {
            let err = assert_refused(
                &mut state,
                Command::RegisterBroker {
                    cluster: "c".into(),
                    group: "c".into(),
                    broker: broker(3, role),
                },
                |err| matches!(err, CommandError::Conflict(_)),
            );
            assert!(
                err.to_string().contains("cannot mix static and controlled"),
                "{err}"
            );
        }
        let mut state = group_of_three();
        let err = assert_refused(
            &mut state,
            Command::RegisterBroker {
                cluster: "c".into(),
                group: "a".into(),
                broker: broker(3, ConfiguredRole::Controlled),
            },
            |err| matches!(err, CommandError::Conflict(_)),
        );
        assert!(err.to_string().contains("broker 3 is CONTROLLED"), "{err}");
    }

    #[test]
    fn the_first_election_may_choose_any_registered_broker() {
        let mut state = controlled_group();
        assert_eq!(
            state.apply(&elect(0, 2, &[2], false)),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["c"];
        assert_eq!(group.master_id, Some(2));
        assert_eq!((group.master_epoch, group.in_sync_set_epoch), (1, 1));
        assert_eq!(group.in_sync_set, BTreeSet::from([2]));
        assert_eq!(group.master_incarnation, 102);
        assert!(!group.master_restarted());
    }

    #[test]
    fn an_election_at_a_stale_master_epoch_is_refused() {
        let mut state = controlled_group();
        state.apply(&elect(0, 0, &[0], false));
        // The same decision again: the epoch moved on, so it must not elect a second master.
        let err = assert_refused(&mut state, elect(0, 1, &[1], false), |err| {
            matches!(err, CommandError::Conflict(_))
        });
        assert_eq!(
            err.to_string(),
            "conflict: master epoch changed meanwhile: the election was decided at master epoch \
             0, broker group \"c\" is at 1"
        );
        assert_refused(&mut state, elect(2, 1, &[1], false), |err| {
            matches!(err, CommandError::Conflict(_))
        });
    }

    #[test]
    fn an_election_of_an_unknown_broker_or_in_an_unknown_or_static_group_is_refused() {
        let mut state = controlled_group();
        let err = assert_refused(&mut state, elect(0, 7, &[7], false), |err| {
            matches!(err, CommandError::Invalid(_))
        });
        assert!(
            err.to_string().contains("broker 7 is not registered"),
            "{err}"
        );
        assert_refused(
            &mut state,
            Command::ElectMaster {
                group: "nope".into(),
                master_epoch: 0,
                master_id: 0,
                in_sync_set: BTreeSet::from([0]),
                unclean: false,
            },
            |err| matches!(err, CommandError::GroupNotFound(_)),
        );
        let mut state = group_of_three();
        let err = assert_refused(
            &mut state,
            Command::ElectMaster {
                group: "a".into(),
                master_epoch: 1,
                master_id: 1,
                in_sync_set: BTreeSet::from([1]),
                unclean: false,
            },
            |err| matches!(err, CommandError::Conflict(_)),
        );
        assert!(err.to_string().contains("static roles"), "{err}");
    }

    #[test]
    fn a_clean_election_stays_inside_the_in_sync_set() {
        let mut state = controlled_group();
        state.apply(&elect(0, 0, &[0], false));
        state.apply(&alter(0, 1, 1, &[0, 1]).with_group("c"));
        assert_eq!(state.groups["c"].in_sync_set, BTreeSet::from([0, 1]));
        // Broker 2 never caught up: electing it could lose acknowledged messages.
        let err = assert_refused(&mut state, elect(1, 2, &[2], false), |err| {
            matches!(err, CommandError::Conflict(_))
        });
        assert!(err.to_string().contains("not in the in-sync set"), "{err}");
        // Nor may an election add it to the set.
        let err = assert_refused(&mut state, elect(1, 1, &[1, 2], false), |err| {
            matches!(err, CommandError::Invalid(_))
        });
        assert!(
            err.to_string()
                .contains("broker 2 is not in the in-sync set"),
            "{err}"
        );
        // The new set must hold the new master, and only registered brokers.
        assert_refused(&mut state, elect(1, 1, &[0], false), |err| {
            matches!(err, CommandError::Invalid(_))
        });
        assert_refused(&mut state, elect(1, 1, &[1, 9], false), |err| {
            matches!(err, CommandError::Invalid(_))
        });
        assert_eq!(
            state.apply(&elect(1, 1, &[1], false)),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["c"];
        assert_eq!(group.master_id, Some(1));
        assert_eq!((group.master_epoch, group.in_sync_set_epoch), (2, 3));
        assert_eq!(group.in_sync_set, BTreeSet::from([1]));
        assert_eq!(group.master_incarnation, 101);
    }

    #[test]
    fn an_unclean_election_may_choose_outside_the_in_sync_set() {
        let mut state = controlled_group();
        state.apply(&elect(0, 0, &[0], false));
        assert_eq!(
            state.apply(&elect(1, 2, &[2], true)),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["c"];
        assert_eq!(group.master_id, Some(2));
        assert_eq!(group.master_epoch, 2);
        assert_eq!(group.in_sync_set, BTreeSet::from([2]));
        // Still refused: a set without the new master, or naming unknown brokers.
        assert_refused(&mut state, elect(2, 1, &[2], true), |err| {
            matches!(err, CommandError::Invalid(_))
        });
        assert_refused(&mut state, elect(2, 1, &[1, 9], true), |err| {
            matches!(err, CommandError::Invalid(_))
        });
    }

    #[test]
    fn a_master_registered_with_a_new_incarnation_has_restarted() {
        let mut state = controlled_group();
        state.apply(&elect(0, 0, &[0], false));
        let before = state.groups["c"].clone();
        let restarted = BrokerInfo {
            incarnation: 555,
            ..broker(0, ConfiguredRole::Controlled)
        };
        assert_eq!(
            register(&mut state, "c", restarted),
            CommandResult::Done { changed: true }
        );
        let group = &state.groups["c"];
        assert!(group.master_restarted());
        // Still named master, at the same epoch, until the controller elects again.
        assert_eq!(group.master_id, before.master_id);
        assert_eq!(group.master_epoch, before.master_epoch);
        assert_eq!(group.master_incarnation, 100);
        // Electing it again gives its new process the lease's incarnation and a new epoch.
        state.apply(&elect(1, 0, &[0], false));
        let group = &state.groups["c"];
        assert!(!group.master_restarted());
        assert_eq!((group.master_epoch, group.master_incarnation), (2, 555));
    }

    #[test]
    fn draining_a_group_is_idempotent_and_an_unknown_group_is_refused() {
        let mut state = group_of_three();
        let drain = |drained: bool| Command::SetGroupDrained {
            group: "a".into(),
            drained,
        };
        assert_eq!(
            state.apply(&drain(true)),
            CommandResult::Done { changed: true }
        );
        assert!(state.groups["a"].drained);
        assert_eq!(
            state.apply(&drain(true)),
            CommandResult::Done { changed: false }
        );
        assert_eq!(
            state.apply(&drain(false)),
            CommandResult::Done { changed: true }
        );
        assert!(!state.groups["a"].drained);
        let before = state.clone();
        let unknown = Command::SetGroupDrained {
            group: "nope".into(),
            drained: true,
        };
        assert!(matches!(state.apply(&unknown), CommandResult::Refused(_)));
        assert_eq!(state, before);
    }

    #[test]
    fn a_static_master_records_the_incarnation_it_registered_with() {
        let mut state = group_of_three();
        assert_eq!(state.groups["a"].master_incarnation, 100);
        let restarted = BrokerInfo {
            incarnation: 9,
            ..broker(0, ConfiguredRole::Master)
        };
        register(&mut state, "a", restarted);
        let group = &state.groups["a"];
        assert_eq!((group.master_epoch, group.master_incarnation), (1, 9));
        assert!(!group.master_restarted());
    }

    #[test]
    fn state_written_before_incarnations_still_loads() {
        let old = r#"{"id":1,"addr":"h:1","configured_role":"Master"}"#;
        let info: BrokerInfo = serde_json::from_str(old).unwrap();
        assert_eq!((info.incarnation, info.election_priority), (0, 0));
        let group = r#"{"cluster":"c","brokers":{},"master_id":null,"master_epoch":3,
            "in_sync_set":[],"in_sync_set_epoch":2}"#;
        let group: BrokerGroup = serde_json::from_str(group).unwrap();
        assert_eq!(group.master_incarnation, 0);
    }
}
