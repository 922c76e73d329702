//! Wire <-> domain conversions of the controller's answers: group views, replication modes,
//! replica lag, routes, group settings, Raft states.

use super::*;

pub(super) fn role_to_wire(role: ConfiguredRole) -> pb::BrokerRole {
    match role {
        ConfiguredRole::Master => pb::BrokerRole::Master,
        ConfiguredRole::Slave => pb::BrokerRole::Slave,
        ConfiguredRole::Controlled => pb::BrokerRole::Controlled,
    }
}

pub(super) fn group_view(state: &ClusterState, name: &str) -> Option<pb::GroupView> {
    let group = state.groups.get(name)?;
    let master = group.master_id.and_then(|id| group.brokers.get(&id));
    Some(pb::GroupView {
        name: name.to_owned(),
        master_id: group.master_id,
        master_epoch: group.master_epoch,
        in_sync_set: group.in_sync_set.iter().copied().collect(),
        in_sync_set_epoch: group.in_sync_set_epoch,
        master_addr: master.map(|m| m.addr.clone()).unwrap_or_default(),
        drained: group.drained,
        master_v5_addr: master.map(|m| m.v5_addr.clone()).unwrap_or_default(),
    })
}

/// The group's replication mode: its master's, else the first any broker registered. Alive
/// brokers of a group all registered the same one (registration refuses another,
/// `BrokerGroup::replication_clash`); a different one can only be a stopped broker's.
pub(super) fn group_replication(group: &BrokerGroup) -> pb::ReplicationMode {
    let master = group.master_id.and_then(|id| group.brokers.get(&id));
    let known = master
        .map(|m| m.replication)
        .filter(|mode| *mode != ReplicationMode::Unknown)
        .or_else(|| {
            group
                .brokers
                .values()
                .map(|b| b.replication)
                .find(|mode| *mode != ReplicationMode::Unknown)
        });
    replication_to_wire(known.unwrap_or_default())
}

/// A registered replication mode as the wire says it.
pub(super) fn replication_to_wire(mode: ReplicationMode) -> pb::ReplicationMode {
    match mode {
        ReplicationMode::Async => pb::ReplicationMode::AsyncMaster,
        ReplicationMode::Sync => pb::ReplicationMode::SyncMaster,
        ReplicationMode::Unknown => pb::ReplicationMode::Unspecified,
    }
}

/// A registration's replication mode (a wire enum number); any number that is not a master's
/// mode (a static slave sends none) registers as `Unknown`.
pub(super) fn replication_from_wire(mode: i32) -> ReplicationMode {
    match pb::ReplicationMode::try_from(mode) {
        Ok(pb::ReplicationMode::AsyncMaster) => ReplicationMode::Async,
        Ok(pb::ReplicationMode::SyncMaster) => ReplicationMode::Sync,
        _ => ReplicationMode::Unknown,
    }
}

/// How far a slave is behind its master, as cluster list shows it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ReplicaLag {
    pub(super) lag_bytes: u64,
    /// Known only from the master's report.
    pub(super) lag_ms: Option<u64>,
    /// The master reports the slave's log stream open.
    pub(super) connected: bool,
}

/// The lag of `broker_id`: from the master's own report on it when there is one (the master
/// measures against its write offset and knows the stream), else from the two brokers' reported
/// commit-log ends, which is all the controller has. The master itself is never behind, and
/// without the master's heartbeat nothing is known.
pub(super) fn replica_lag(
    group: &BrokerGroup,
    broker_id: u64,
    seen: Option<&Seen>,
    master_seen: Option<&Seen>,
) -> ReplicaLag {
    if group.master_id.is_none_or(|master| master == broker_id) {
        return ReplicaLag::default();
    }
    let Some(master_seen) = master_seen else {
        return ReplicaLag::default();
    };
    match master_seen.replica(broker_id) {
        Some(progress) => ReplicaLag {
            lag_bytes: progress.lag_bytes,
            lag_ms: Some(progress.lag_ms),
            connected: progress.connected,
        },
        None => ReplicaLag {
            lag_bytes: master_seen
                .max_offset
                .saturating_sub(seen.map(|s| s.max_offset).unwrap_or(0)),
            lag_ms: None,
            connected: false,
        },
    }
}

/// The route of `topic`; a topic that does not exist has no groups.
pub fn topic_route(
    state: &ClusterState,
    topic: &str,
    alive: &dyn Fn(&str, u64) -> bool,
) -> pb::TopicRoute {
    let groups = state
        .topics
        .get(topic)
        .map(|t| {
            t.queues
                .iter()
                .map(|(group_name, count)| {
                    let group = state.groups.get(group_name);
                    let drained = group.is_some_and(|g| g.drained);
                    pb::QueueGroupRoute {
                        group: group_name.clone(),
                        queue_count: *count,
                        // A drained group's queues stay readable, not writable.
                        perm: if drained {
                            t.perm & !PERM_WRITE
                        } else {
                            t.perm
                        },
                        master_id: group.and_then(|g| g.master_id),
                        master_epoch: group.map(|g| g.master_epoch).unwrap_or(0),
                        brokers: group
                            .map(|g| {
                                g.brokers
                                    .values()
                                    .map(|b| pb::BrokerRoute {
                                        broker_id: b.id,
                                        addr: b.addr.clone(),
                                        role: if g.master_id == Some(b.id) {
                                            pb::BrokerRole::Master as i32
                                        } else {
                                            pb::BrokerRole::Slave as i32
                                        },
                                        alive: alive(group_name, b.id),
                                        v5_addr: b.v5_addr.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    pb::TopicRoute {
        topic: topic.to_owned(),
        groups,
    }
}

pub(super) fn settings_to_wire(group: &str, settings: &GroupSettings) -> pb::GroupSettings {
    pb::GroupSettings {
        group: group.to_owned(),
        max_retries: settings.max_retries,
        message_model: match settings.message_model {
            MessageModel::Clustering => pb::MessageModel::Clustering as i32,
            MessageModel::Broadcasting => pb::MessageModel::Broadcasting as i32,
        },
        fifo: settings.fifo,
    }
}

pub(super) fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "LEADER",
        ServerState::Follower => "FOLLOWER",
        ServerState::Candidate => "CANDIDATE",
        ServerState::Learner => "LEARNER",
        ServerState::Shutdown => "SHUTDOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> BrokerGroup {
        let broker = |id: u64, role| {
            (
                id,
                BrokerInfo {
                    id,
                    addr: format!("127.0.0.1:{}", 10911 + id),
                    configured_role: role,
                    incarnation: 1,
                    election_priority: 0,
                    replication: ReplicationMode::Unknown,
                    v5_addr: String::new(),
                },
            )
        };
        BrokerGroup {
            cluster: "c".into(),
            brokers: BTreeMap::from([
                broker(0, ConfiguredRole::Master),
                broker(1, ConfiguredRole::Slave),
                broker(2, ConfiguredRole::Slave),
            ]),
            master_id: Some(0),
            master_epoch: 1,
            in_sync_set: BTreeSet::from([0]),
            in_sync_set_epoch: 1,
            master_incarnation: 1,
            drained: false,
        }
    }

    fn seen(max_offset: u64, replicas: Vec<pb::ReplicaProgress>) -> Seen {
        Seen {
            at: Instant::now(),
            max_offset,
            synced_revision: 0,
            confirm_offset: 0,
            replicas,
            incarnation: 1,
            log_epoch: 0,
            master_epoch: 0,
            resigned: false,
            store: StoreReport::default(),
            master_gone: None,
        }
    }

    #[test]
    fn a_slave_lag_comes_from_its_master_report_else_from_the_commit_log_ends() {
        let group = group();
        let master = seen(
            600,
            vec![pb::ReplicaProgress {
                broker_id: 1,
                acked_offset: 500,
                lag_bytes: 100,
                lag_ms: 25,
                connected: true,
            }],
        );
        let reported = replica_lag(&group, 1, Some(&seen(450, vec![])), Some(&master));
        assert_eq!(
            reported,
            ReplicaLag {
                lag_bytes: 100,
                lag_ms: Some(25),
                connected: true
            }
        );
        let unreported = replica_lag(&group, 2, Some(&seen(450, vec![])), Some(&master));
        assert_eq!(
            unreported,
            ReplicaLag {
                lag_bytes: 150,
                lag_ms: None,
                connected: false
            }
        );
        // A slave ahead of the master's last report is not behind at all.
        let ahead = replica_lag(&group, 2, Some(&seen(700, vec![])), Some(&master));
        assert_eq!(ahead.lag_bytes, 0);
        // Not heard from yet: its whole log is missing, as far as the controller knows.
        assert_eq!(replica_lag(&group, 2, None, Some(&master)).lag_bytes, 600);
    }

    #[test]
    fn the_master_and_a_masterless_group_show_no_lag() {
        let mut group = group();
        let master = seen(600, vec![]);
        assert_eq!(
            replica_lag(&group, 0, Some(&master), Some(&master)),
            ReplicaLag::default()
        );
        assert_eq!(
            replica_lag(&group, 1, Some(&seen(0, vec![])), None),
            ReplicaLag::default(),
            "the master's report is unknown"
        );
        group.master_id = None;
        assert_eq!(
            replica_lag(&group, 1, Some(&seen(0, vec![])), Some(&master)),
            ReplicaLag::default()
        );
    }
}
