//! Test fixtures shared by the pure decisions' tests (`election`, `switchover`, `gone`): one
//! group of three controlled brokers and a broker's heartbeat as the leader saw it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::liveness::{Seen, StoreReport};
use crate::state::{BrokerGroup, BrokerInfo, ConfiguredRole, ReplicationMode};

/// Controlled brokers 0, 1, 2 (incarnations 100 + id) registered with `replication`; master 0
/// at master epoch 3, elected with incarnation 100; all three in the in-sync set (epoch 5).
pub(crate) fn three_brokers(replication: ReplicationMode) -> BrokerGroup {
    let broker = |id: u64| {
        (
            id,
            BrokerInfo {
                id,
                addr: format!("127.0.0.1:{}", 10911 + id),
                configured_role: ConfiguredRole::Controlled,
                incarnation: 100 + id,
                election_priority: 0,
                replication,
                v5_addr: String::new(),
            },
        )
    };
    BrokerGroup {
        cluster: "c".into(),
        brokers: BTreeMap::from([broker(0), broker(1), broker(2)]),
        master_id: Some(0),
        master_epoch: 3,
        in_sync_set: BTreeSet::from([0, 1, 2]),
        in_sync_set_epoch: 5,
        master_incarnation: 100,
        drained: false,
    }
}

/// Broker `id`'s heartbeat at `at`, of the group above: its incarnation, master epoch and log
/// epoch 3, 100 messages, a sound store, no "master gone" report.
pub(crate) fn heard(id: u64, at: Instant) -> (u64, Seen) {
    (
        id,
        Seen {
            at,
            max_offset: 100,
            synced_revision: 0,
            confirm_offset: 0,
            replicas: Vec::new(),
            incarnation: 100 + id,
            log_epoch: 3,
            master_epoch: 3,
            resigned: false,
            store: StoreReport::default(),
            master_gone: None,
        },
    )
}
