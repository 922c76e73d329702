//! A broker's link against a real one-node controller in this process: registration, the
//! group views and settings it hands the broker, heartbeats with replication progress, and the
//! master's in-sync set proposals, which the controller accepts only with current epochs.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auth::ClusterKey;
use controller::config::ControllerConfig;
use controller::node::ControllerNode;
use controller_client::broker_link::*;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;

/// A broker that remembers what the link handed it, and reports what the test sets.
#[derive(Default)]
struct RecordingBroker {
    settings: Mutex<Vec<pb::GroupSettings>>,
    settings_syncs: Mutex<u32>,
    views: Mutex<Vec<pb::GroupView>>,
    max_offset: AtomicU64,
    report: Mutex<ReplicationReport>,
}

impl RecordingBroker {
    fn last_view(&self) -> pb::GroupView {
        self.views
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the link handed over no group view")
    }
}

impl BrokerMetadata for RecordingBroker {
    fn sync_topics(&self, _topics: &[pb::GroupTopic]) -> Result<(), MetadataSyncError> {
        Ok(())
    }

    fn sync_group_settings(&self, settings: &[pb::GroupSettings]) -> Result<(), MetadataSyncError> {
        *self.settings.lock().unwrap() = settings.to_vec();
        *self.settings_syncs.lock().unwrap() += 1;
        Ok(())
    }

    fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Relaxed)
    }

    fn replication_report(&self) -> ReplicationReport {
        self.report.lock().unwrap().clone()
    }

    fn group_view_changed(&self, view: &pb::GroupView) {
        self.views.lock().unwrap().push(view.clone());
    }
}

/// A broker that implements only the required methods: the replication ones have defaults,
/// so brokers written before replication still compile and link.
struct PlainBroker;

impl BrokerMetadata for PlainBroker {
    fn sync_topics(&self, _topics: &[pb::GroupTopic]) -> Result<(), MetadataSyncError> {
        Ok(())
    }

    fn sync_group_settings(
        &self,
        _settings: &[pb::GroupSettings],
    ) -> Result<(), MetadataSyncError> {
        Ok(())
    }

    fn max_offset(&self) -> u64 {
        0
    }
}

/// A one-node controller on a free loopback port, in `dir`.
async fn start_controller(dir: &std::path::Path) -> ControllerNode {
    ControllerNode::start(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // A quorum of one never dials its own address, so the port need not be known yet.
        peers: "1=127.0.0.1:1".to_owned(),
        data_dir: dir.to_path_buf(),
        cluster_secret: TEST_SECRET.to_owned(),
        ..ControllerConfig::default()
    })
    .await
    .unwrap()
}

const TEST_SECRET: &str = "link-test-cluster-secret";

fn key() -> ClusterKey {
    ClusterKey::new(TEST_SECRET).unwrap()
}

fn identity(broker_id: u64, role: pb::BrokerRole) -> BrokerIdentity {
    BrokerIdentity {
        cluster: "DefaultCluster".to_owned(),
        group: "broker-a".to_owned(),
        broker_id,
        addr: format!("127.0.0.1:{}", 10911 + broker_id),
        role,
        incarnation: 1,
        election_priority: 0,
        replication: pb::ReplicationMode::Unspecified,
        v5_addr: String::new(),
    }
}

fn proposal(view: &pb::GroupView, in_sync_set: &[u64]) -> pb::AlterInSyncSetRequest {
    pb::AlterInSyncSetRequest {
        group: view.name.clone(),
        master_id: view.master_id.expect("the group has a master"),
        master_epoch: view.master_epoch,
        in_sync_set_epoch: view.in_sync_set_epoch,
        in_sync_set: in_sync_set.to_vec(),
    }
}

#[test]
fn the_proposer_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<InSyncSetProposer>();
}

#[tokio::test]
async fn the_master_changes_the_in_sync_set_only_with_current_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path()).await;
    let addr = node.local_addr.to_string();
    let master = Arc::new(RecordingBroker::default());
    let slave = Arc::new(RecordingBroker::default());
    let mut master_link = ControllerLink::new(
        &addr,
        identity(0, pb::BrokerRole::Master),
        master.clone(),
        key(),
    )
    .unwrap();
    master_link
        .register(Duration::from_millis(50))
        .await
        .unwrap();
    let mut slave_link = ControllerLink::new(
        &addr,
        identity(1, pb::BrokerRole::Slave),
        slave.clone(),
        key(),
    )
    .unwrap();
    slave_link
        .register(Duration::from_millis(50))
        .await
        .unwrap();

    // Registration hands over the view: the slave learns where its master is.
    let seen_by_slave = slave.last_view();
    assert_eq!(seen_by_slave.master_id, Some(0));
    assert_eq!(seen_by_slave.master_addr, "127.0.0.1:10911");
    assert_eq!(seen_by_slave.in_sync_set, vec![0]);
    master_link.heartbeat().await.unwrap();
    let before = master.last_view();
    assert_eq!(before.master_addr, "127.0.0.1:10911");

    let proposer = master_link.in_sync_set_proposer();
    let patience = Duration::from_secs(5);
    let accepted = proposer
        .propose(proposal(&before, &[0, 1]), patience)
        .await
        .unwrap();
    assert_eq!(accepted.in_sync_set, vec![0, 1]);
    assert_eq!(accepted.in_sync_set_epoch, before.in_sync_set_epoch + 1);
    assert_eq!(accepted.master_epoch, before.master_epoch);
    assert_eq!(accepted.master_addr, "127.0.0.1:10911");

    // The same proposal again carries the old in-sync set epoch: refused, not retried.
    let err = proposer
        .propose(proposal(&before, &[0, 1]), patience)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProposeError::Refused(m) if m.to_string().contains("changed meanwhile")),
        "{err}"
    );
    // A master epoch that is not the group's: a deposed master must not change the set.
    let stale = pb::AlterInSyncSetRequest {
        master_epoch: before.master_epoch - 1,
        ..proposal(&accepted, &[0])
    };
    let err = proposer.propose(stale, patience).await.unwrap_err();
    assert!(
        matches!(&err, ProposeError::Refused(m) if m.to_string().contains("stale master")),
        "{err}"
    );

    // A malformed proposal is refused by the service before it reaches the Raft log.
    let err = proposer
        .propose(proposal(&accepted, &[]), patience)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProposeError::Refused(m) if m.to_string().contains("at least the master")),
        "{err}"
    );

    // Every heartbeat answer hands the view over again, now with the accepted set.
    slave_link.heartbeat().await.unwrap();
    let seen_by_slave = slave.last_view();
    assert_eq!(seen_by_slave.in_sync_set, vec![0, 1]);
    assert_eq!(seen_by_slave.in_sync_set_epoch, accepted.in_sync_set_epoch);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeats_carry_replication_progress_to_cluster_list() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path()).await;
    let addr = node.local_addr.to_string();
    let master = Arc::new(RecordingBroker::default());
    let slave = Arc::new(RecordingBroker::default());
    let mut master_link = ControllerLink::new(
        &addr,
        identity(0, pb::BrokerRole::Master),
        master.clone(),
        key(),
    )
    .unwrap();
    master_link
        .register(Duration::from_millis(50))
        .await
        .unwrap();
    let mut slave_link = ControllerLink::new(
        &addr,
        identity(1, pb::BrokerRole::Slave),
        slave.clone(),
        key(),
    )
    .unwrap();
    slave_link
        .register(Duration::from_millis(50))
        .await
        .unwrap();
    let mut admin = ControllerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let brokers = |list: pb::ClusterListResponse| {
        let group = list.groups.into_iter().next().expect("one group");
        let mut brokers = group.brokers.into_iter();
        (brokers.next().unwrap(), brokers.next().unwrap())
    };

    // No report on the slave from its master yet: lag from the two commit-log ends.
    master.max_offset.store(600, Ordering::Relaxed);
    *master.report.lock().unwrap() = ReplicationReport {
        confirm_offset: 500,
        replicas: Vec::new(),
    };
    slave.max_offset.store(450, Ordering::Relaxed);
    *slave.report.lock().unwrap() = ReplicationReport {
        confirm_offset: 440,
        replicas: Vec::new(),
    };
    master_link.heartbeat().await.unwrap();
    slave_link.heartbeat().await.unwrap();
    let list = admin.cluster_list(pb::ClusterListRequest {}).await.unwrap();
    let (master_view, slave_view) = brokers(list.into_inner());
    assert_eq!(master_view.broker_id, 0);
    assert_eq!(
        (master_view.confirm_offset, master_view.lag_bytes),
        (500, 0)
    );
    assert_eq!(master_view.lag_ms, None);
    assert!(!master_view.replica_connected);
    assert_eq!(slave_view.confirm_offset, 440);
    assert_eq!(slave_view.lag_bytes, 150);
    assert_eq!(slave_view.lag_ms, None);
    assert!(!slave_view.replica_connected);

    // The master reports on its slave: its numbers win.
    master.report.lock().unwrap().replicas = vec![pb::ReplicaProgress {
        broker_id: 1,
        acked_offset: 500,
        lag_bytes: 100,
        lag_ms: 25,
        connected: true,
    }];
    master_link.heartbeat().await.unwrap();
    let list = admin.cluster_list(pb::ClusterListRequest {}).await.unwrap();
    let (master_view, slave_view) = brokers(list.into_inner());
    assert_eq!(master_view.lag_bytes, 0);
    assert_eq!(slave_view.lag_bytes, 100);
    assert_eq!(slave_view.lag_ms, Some(25));
    assert!(slave_view.replica_connected);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_proposal_with_no_controller_reachable_gives_up_after_its_patience() {
    // Port 1 on loopback refuses connections at once: every attempt fails fast, so the loop
    // and not a single call's timeout is what ends.
    let link = ControllerLink::new(
        "127.0.0.1:1",
        identity(0, pb::BrokerRole::Master),
        Arc::new(PlainBroker),
        key(),
    )
    .unwrap();
    let request = pb::AlterInSyncSetRequest {
        group: "broker-a".to_owned(),
        master_id: 0,
        master_epoch: 1,
        in_sync_set_epoch: 1,
        in_sync_set: vec![0],
    };
    let started = tokio::time::Instant::now();
    let err = link
        .in_sync_set_proposer()
        .propose(request, Duration::from_millis(350))
        .await
        .unwrap_err();
    assert!(matches!(err, ProposeError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn group_settings_set_on_the_controller_reach_the_broker_at_the_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path()).await;
    let addr = node.local_addr.to_string();
    let broker = Arc::new(RecordingBroker::default());
    let identity = identity(0, pb::BrokerRole::Master);
    let mut link = ControllerLink::new(&addr, identity, broker.clone(), key()).unwrap();
    // Retries until the controller has elected itself.
    link.register(Duration::from_millis(50)).await.unwrap();
    assert!(broker.settings.lock().unwrap().is_empty());
    assert_eq!(*broker.settings_syncs.lock().unwrap(), 1);

    let settings = pb::GroupSettings {
        group: "orders-consumers".to_owned(),
        max_retries: 2,
        message_model: pb::MessageModel::Clustering as i32,
        fifo: true,
    };
    let mut admin = ControllerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    admin
        .set_group_settings(pb::SetGroupSettingsRequest {
            settings: Some(settings.clone()),
        })
        .await
        .unwrap();
    link.heartbeat().await.unwrap();
    assert_eq!(*broker.settings.lock().unwrap(), vec![settings]);
    assert_eq!(*broker.settings_syncs.lock().unwrap(), 2);

    // The revision did not move: the heartbeat fetches nothing.
    link.heartbeat().await.unwrap();
    assert_eq!(*broker.settings_syncs.lock().unwrap(), 2);
    node.shutdown().await.unwrap();
}

/// The replication mode is the group's: a broker that registers another mode than an alive
/// broker of its group is refused for good, with an error naming both; once the brokers that
/// stated the old mode have stopped, the group may be started again with a new one.
#[tokio::test]
async fn brokers_of_one_group_register_one_replication_mode() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path()).await;
    let addr = node.local_addr.to_string();
    let with_mode = |id, mode| BrokerIdentity {
        replication: mode,
        ..identity(id, pb::BrokerRole::Controlled)
    };
    let link = |id, mode| {
        ControllerLink::new(
            &addr,
            with_mode(id, mode),
            Arc::new(RecordingBroker::default()),
            key(),
        )
        .unwrap()
    };
    let mut first = link(0, pb::ReplicationMode::SyncMaster);
    first.register(Duration::from_millis(50)).await.unwrap();

    let refused = link(1, pb::ReplicationMode::AsyncMaster)
        .register(Duration::from_millis(50))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, LinkError::Refused(_))
            && message.contains("replicates as SYNC_MASTER")
            && message.contains("registers ASYNC_MASTER"),
        "{message}"
    );

    let mut second = link(1, pb::ReplicationMode::SyncMaster);
    second.register(Duration::from_millis(50)).await.unwrap();

    // Both stop (their stopping notices mark them not alive at once): the group starts again
    // in the other mode.
    first.say_stopping().await;
    second.say_stopping().await;
    link(0, pb::ReplicationMode::AsyncMaster)
        .register(Duration::from_millis(50))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}
