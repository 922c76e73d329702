//! The controller's side of automatic failover, against a real one-node controller over gRPC,
//! with brokers played by the real controller link (`ControllerLink`) over a broker stand-in that
//! reports what each test sets (log end, log epoch, resignation) and records what it is answered.
//!
//! Invariants checked:
//! - a lease goes only to the current master of a controlled group, at the incarnation it was
//!   elected with;
//! - no successor is elected before the old master's last lease has run out plus the margin
//!   (measured against the lease as the master itself computed it);
//! - every election raises the master epoch by exactly one and elects from the alive in-sync set
//!   (unless unclean), best ranked first;
//! - a restarted master and a resigned master are replaced at once;
//! - static groups never get an election.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::{ClusterKey, SignedChannel};
use controller::config::ControllerConfig;
use controller::node::ControllerNode;
use controller_client::broker_link::{
    BrokerIdentity, BrokerMetadata, ControllerLink, InSyncSetProposer, LeaseAnswer,
    MetadataSyncError,
};
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const GROUP: &str = "broker-a";
/// The stand-in brokers and the test's own calls sign with it, as members.
const TEST_SECRET: &str = "failover-test-cluster-secret";

fn key() -> ClusterKey {
    ClusterKey::new(TEST_SECRET).unwrap()
}
/// How often the stand-in brokers heartbeat: well inside the shortest lease used here.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// How often tests look at the controller's state.
const POLL: Duration = Duration::from_millis(10);

/// A one-node controller on a free loopback port, with the given lease settings.
async fn start_controller(dir: &Path, lease_ms: u64, margin_ms: u64) -> ControllerNode {
    ControllerNode::start(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // A quorum of one never dials its own address, so the port need not be known yet.
        peers: "1=127.0.0.1:1".to_owned(),
        data_dir: dir.to_path_buf(),
        broker_lease_ms: lease_ms,
        lease_margin_ms: margin_ms,
        broker_heartbeat_timeout_ms: (lease_ms + margin_ms).max(3_000),
        cluster_secret: TEST_SECRET.to_owned(),
        ..ControllerConfig::default()
    })
    .await
    .unwrap()
}

/// What a broker reports and what it was answered.
#[derive(Default)]
struct StandIn {
    max_offset: AtomicU64,
    log_epoch: AtomicU64,
    master_epoch: AtomicU64,
    resigned: AtomicBool,
    /// Resign as soon as asked (a master with nothing left to ship).
    resign_when_asked: AtomicBool,
    wake: Mutex<Option<Arc<Notify>>>,
    view: Mutex<Option<pb::GroupView>>,
    leases: Mutex<Vec<LeaseAnswer>>,
}

impl StandIn {
    fn last_lease(&self) -> Option<LeaseAnswer> {
        self.leases.lock().unwrap().last().copied()
    }

    fn asked_to_resign(&self) -> bool {
        self.leases.lock().unwrap().iter().any(|l| l.resign)
    }
}

impl BrokerMetadata for StandIn {
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
        self.max_offset.load(Ordering::Relaxed)
    }

    fn log_epoch(&self) -> u64 {
        self.log_epoch.load(Ordering::Relaxed)
    }

    fn master_epoch(&self) -> u64 {
        self.master_epoch.load(Ordering::Relaxed)
    }

    fn resigned(&self) -> bool {
        self.resigned.load(Ordering::Relaxed)
    }

    fn group_view_changed(&self, view: &pb::GroupView) {
        self.master_epoch
            .store(view.master_epoch, Ordering::Relaxed);
        *self.view.lock().unwrap() = Some(view.clone());
    }

    fn lease_answered(&self, answer: LeaseAnswer) {
        self.leases.lock().unwrap().push(answer);
        if answer.resign && self.resign_when_asked.load(Ordering::Relaxed) {
            self.resigned.store(true, Ordering::Relaxed);
            if let Some(wake) = self.wake.lock().unwrap().as_ref() {
                wake.notify_one();
            }
        }
    }
}

/// One broker process: registered, heartbeating until stopped.
struct Broker {
    id: u64,
    incarnation: u64,
    state: Arc<StandIn>,
    proposer: InSyncSetProposer,
    heartbeats: JoinHandle<()>,
}

impl Broker {
    async fn start(controller: &str, id: u64, role: pb::BrokerRole, incarnation: u64) -> Broker {
        Self::start_with(
            controller,
            id,
            role,
            incarnation,
            Arc::new(StandIn::default()),
        )
        .await
    }

    async fn start_with(
        controller: &str,
        id: u64,
        role: pb::BrokerRole,
        incarnation: u64,
        state: Arc<StandIn>,
    ) -> Broker {
        let identity = BrokerIdentity {
            cluster: "DefaultCluster".to_owned(),
            group: GROUP.to_owned(),
            broker_id: id,
            addr: format!("127.0.0.1:{}", 20911 + id),
            role,
            incarnation,
            election_priority: 0,
            replication: pb::ReplicationMode::Unspecified,
            v5_addr: String::new(),
        };
        let mut link = ControllerLink::new(controller, identity, state.clone(), key()).unwrap();
        *state.wake.lock().unwrap() = Some(link.wake_handle());
        link.register(Duration::from_millis(20)).await.unwrap();
        let proposer = link.in_sync_set_proposer();
        // Stopped by abort only: a crash, as far as the controller can tell.
        let heartbeats = tokio::spawn(link.run(HEARTBEAT_INTERVAL, std::future::pending()));
        Broker {
            id,
            incarnation,
            state,
            proposer,
            heartbeats,
        }
    }

    /// The process stops (as far as the controller can tell: no more heartbeats).
    fn stop(&self) {
        self.heartbeats.abort();
    }

    fn report(&self, log_epoch: u64, max_offset: u64) {
        self.state.log_epoch.store(log_epoch, Ordering::Relaxed);
        self.state.max_offset.store(max_offset, Ordering::Relaxed);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// A client of `node` that signs as a member: the tests send heartbeats of their own.
async fn client(node: &ControllerNode) -> ControllerClient<SignedChannel> {
    let channel = Channel::from_shared(format!("http://{}", node.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ControllerClient::new(SignedChannel::new(channel, key()))
}

async fn group_detail(client: &mut ControllerClient<SignedChannel>) -> Option<pb::GroupDetail> {
    client
        .cluster_list(pb::ClusterListRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups
        .into_iter()
        .find(|g| g.name == GROUP)
}

/// Polls the group until `done` holds or `timeout` passes; answers the group and when `done`
/// was first seen to hold.
async fn wait_for_group(
    client: &mut ControllerClient<SignedChannel>,
    timeout: Duration,
    done: impl Fn(&pb::GroupDetail) -> bool,
) -> (pb::GroupDetail, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        let detail = group_detail(client).await;
        let now = Instant::now();
        if let Some(detail) = detail.filter(|d| done(d)) {
            return (detail, now);
        }
        assert!(
            now < deadline,
            "the group did not reach the expected state within {timeout:?}: {:?}",
            group_detail(client).await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `condition` holds, polling.
async fn wait_until(timeout: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Sets each broker's reported log, then waits until the controller has heard all of them.
async fn report_and_wait(
    client: &mut ControllerClient<SignedChannel>,
    brokers: &[&Broker],
    log_end: impl Fn(u64) -> u64,
) {
    for b in brokers {
        b.report(1, log_end(b.id));
    }
    wait_for_group(client, Duration::from_secs(5), |d| {
        brokers.iter().all(|b| {
            d.brokers
                .iter()
                .any(|v| v.broker_id == b.id && v.max_offset == log_end(b.id) && v.log_epoch == 1)
        })
    })
    .await;
}

/// Three controlled brokers 1, 2, 3, the group's first master elected; answers the brokers in
/// id order and the master's id.
async fn controlled_group_of_three(
    controller: &str,
    client: &mut ControllerClient<SignedChannel>,
) -> (Vec<Broker>, u64) {
    let mut brokers = Vec::new();
    for id in 1..=3 {
        brokers.push(Broker::start(controller, id, pb::BrokerRole::Controlled, 100 + id).await);
    }
    let (detail, _) =
        wait_for_group(client, Duration::from_secs(5), |d| d.master_id.is_some()).await;
    (brokers, detail.master_id.unwrap())
}

/// The master widens the in-sync set to every broker, as it would once they caught up.
async fn all_in_sync(brokers: &[Broker], master: u64) -> pb::GroupView {
    let master = brokers.iter().find(|b| b.id == master).unwrap();
    wait_until(Duration::from_secs(5), "the master's view", || {
        master
            .state
            .view
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|v| v.master_id == Some(master.id))
    })
    .await;
    let view = master.state.view.lock().unwrap().clone().unwrap();
    master
        .proposer
        .propose(
            pb::AlterInSyncSetRequest {
                group: GROUP.to_owned(),
                master_id: master.id,
                master_epoch: view.master_epoch,
                in_sync_set_epoch: view.in_sync_set_epoch,
                in_sync_set: brokers.iter().map(|b| b.id).collect(),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_controlled_group_of_three_gets_its_first_master_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A long lease: an election that waited for it would show.
    let node = start_controller(dir.path(), 5_000, 200).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let started = Instant::now();
    let (brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "first master took {:?}",
        started.elapsed()
    );
    let detail = group_detail(&mut client).await.unwrap();
    assert_eq!(detail.master_epoch, 1);
    assert_eq!(detail.in_sync_set, vec![master]);
    for b in &detail.brokers {
        assert_eq!(b.configured_role, pb::BrokerRole::Controlled as i32);
        let role = if b.broker_id == master {
            pb::BrokerRole::Master
        } else {
            pb::BrokerRole::Slave
        };
        assert_eq!(b.role, role as i32, "broker {}", b.broker_id);
    }
    drop(brokers);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_master_at_its_elected_incarnation_is_granted_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path(), 1_000, 200).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let (brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    for broker in &brokers {
        wait_until(Duration::from_secs(5), "a heartbeat answer", || {
            broker
                .state
                .last_lease()
                .is_some_and(|l| l.master_epoch == 1)
        })
        .await;
        let lease = broker.state.last_lease().unwrap();
        assert_eq!(
            lease.valid_until.is_some(),
            broker.id == master,
            "broker {}: {lease:?}",
            broker.id
        );
        assert!(!lease.resign);
    }
    // The master's id with another incarnation (a second process, or a stale one): no lease.
    let heartbeat = |incarnation| pb::BrokerHeartbeatRequest {
        group: GROUP.to_owned(),
        broker_id: master,
        incarnation,
        ..Default::default()
    };
    let answer = client
        .broker_heartbeat(heartbeat(999))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.lease_ms, 0);
    let elected_incarnation = 100 + master;
    let answer = client
        .broker_heartbeat(heartbeat(elected_incarnation))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.lease_ms, 1_000);
    assert_eq!(answer.group.unwrap().master_id, Some(master));
    drop(brokers);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_master_is_replaced_by_the_best_in_sync_member_only_after_its_lease_and_margin() {
    let dir = tempfile::tempdir().unwrap();
    let margin = Duration::from_millis(200);
    let node = start_controller(dir.path(), 600, 200).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let (brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    let view = all_in_sync(&brokers, master).await;
    assert_eq!(view.in_sync_set.len(), 3);
    let slaves: Vec<&Broker> = brokers.iter().filter(|b| b.id != master).collect();
    let old_master = brokers.iter().find(|b| b.id == master).unwrap();
    // The second slave holds more of the log than the first: it must win.
    let (second, master_id) = (slaves[1].id, master);
    let all: Vec<&Broker> = brokers.iter().collect();
    report_and_wait(&mut client, &all, |id| match id {
        id if id == master_id => 900,
        id if id == second => 800,
        _ => 500,
    })
    .await;
    wait_until(Duration::from_secs(5), "a lease", || {
        old_master
            .state
            .last_lease()
            .is_some_and(|l| l.valid_until.is_some())
    })
    .await;

    old_master.stop();
    // The last lease the master holds, as it computed it: from its heartbeat's send time.
    let last_lease_end = old_master
        .state
        .leases
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.valid_until)
        .max()
        .unwrap();
    let (detail, elected_at) = wait_for_group(&mut client, Duration::from_secs(5), |d| {
        d.master_epoch == view.master_epoch + 1
    })
    .await;
    assert!(
        elected_at >= last_lease_end + margin,
        "elected {:?} before the old lease ended plus the margin",
        (last_lease_end + margin).duration_since(elected_at)
    );
    assert!(
        elected_at < last_lease_end + margin + Duration::from_secs(1),
        "elected {:?} after the lease wait",
        elected_at.duration_since(last_lease_end + margin)
    );
    assert_eq!(detail.master_id, Some(slaves[1].id));
    let expected: BTreeSet<u64> = slaves.iter().map(|b| b.id).collect();
    assert_eq!(
        detail.in_sync_set.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "the in-sync set without the lost master"
    );
    // The new master learns of it and gets its lease from the same answer.
    wait_until(Duration::from_secs(2), "the new master's lease", || {
        slaves[1]
            .state
            .last_lease()
            .is_some_and(|l| l.master_epoch == detail.master_epoch && l.valid_until.is_some())
    })
    .await;
    drop(brokers);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_master_registering_with_a_new_incarnation_is_replaced_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the test allows for the election.
    let node = start_controller(dir.path(), 5_000, 200).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let (mut brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    let view = all_in_sync(&brokers, master).await;
    let all: Vec<&Broker> = brokers.iter().collect();
    report_and_wait(
        &mut client,
        &all,
        |id| if id == master { 900 } else { 700 + id },
    )
    .await;
    let index = brokers.iter().position(|b| b.id == master).unwrap();
    let old = brokers.remove(index);
    wait_until(Duration::from_secs(5), "a lease", || {
        old.state
            .last_lease()
            .is_some_and(|l| l.valid_until.is_some())
    })
    .await;
    old.stop();
    // Restarted: its unflushed tail is gone, so the slaves hold more now.
    let restarted_state = Arc::new(StandIn::default());
    restarted_state.log_epoch.store(1, Ordering::Relaxed);
    restarted_state.max_offset.store(600, Ordering::Relaxed);
    let restarted_at = Instant::now();
    let restarted = Broker::start_with(
        &addr,
        master,
        pb::BrokerRole::Controlled,
        old.incarnation + 1,
        restarted_state,
    )
    .await;
    let (detail, elected_at) = wait_for_group(&mut client, Duration::from_secs(3), |d| {
        d.master_epoch == view.master_epoch + 1
    })
    .await;
    assert!(
        elected_at.duration_since(restarted_at) < Duration::from_secs(2),
        "took {:?}: the election waited",
        elected_at.duration_since(restarted_at)
    );
    let best = brokers.iter().map(|b| b.id).max().unwrap();
    assert_eq!(detail.master_id, Some(best), "the longest log: 700 + id");
    assert!(!detail.in_sync_set.contains(&master), "{detail:?}");
    // The restarted process is a slave now, without a lease.
    wait_until(
        Duration::from_secs(2),
        "the restarted broker's answer",
        || {
            restarted
                .state
                .last_lease()
                .is_some_and(|l| l.master_epoch == detail.master_epoch)
        },
    )
    .await;
    assert_eq!(restarted.state.last_lease().unwrap().valid_until, None);
    drop((brokers, restarted, old));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_planned_switchover_asks_the_master_to_resign_and_elects_the_target_once_it_has() {
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the switchover may take: it must not wait for it.
    let node = start_controller(dir.path(), 5_000, 200).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let (brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    let view = all_in_sync(&brokers, master).await;
    let old_master = brokers.iter().find(|b| b.id == master).unwrap();
    old_master
        .state
        .resign_when_asked
        .store(true, Ordering::Relaxed);
    let target = brokers.iter().find(|b| b.id != master).unwrap().id;
    let mut watch = client
        .watch_routes(pb::WatchRoutesRequest {
            topics: vec!["orders".to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    client
        .create_topic(pb::CreateTopicRequest {
            topic: "orders".to_owned(),
            queues_per_group: 2,
            ..Default::default()
        })
        .await
        .unwrap();

    let started = Instant::now();
    let answer = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: Some(target),
            unclean: false,
        })
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "switchover took {took:?}");
    assert!(old_master.state.asked_to_resign());
    let group = answer.group.unwrap();
    assert_eq!(group.master_id, Some(target));
    assert_eq!(group.master_epoch, view.master_epoch + 1);
    assert!(!group.in_sync_set.contains(&master));
    assert_eq!(answer.possibly_lost_bytes, 0);

    // The route watch is pushed the new master at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let update = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("the route watch was not pushed the new master")
            .unwrap()
            .unwrap();
        let route = &update.routes[0];
        if route
            .groups
            .first()
            .is_some_and(|g| g.master_id == Some(target))
        {
            assert_eq!(route.groups[0].master_epoch, group.master_epoch);
            break;
        }
    }

    // A second switchover to the current master is refused and changes nothing.
    let err = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: Some(target),
            unclean: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("already the master"), "{err}");
    assert_eq!(
        group_detail(&mut client).await.unwrap().master_epoch,
        group.master_epoch
    );
    drop(brokers);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn unclean_elections_need_a_broker_id_and_count_what_may_be_lost() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path(), 300, 100).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let (brokers, master) = controlled_group_of_three(&addr, &mut client).await;
    let before = group_detail(&mut client).await.unwrap();
    assert_eq!(before.in_sync_set, vec![master], "nobody caught up yet");

    let err = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: None,
            unclean: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("needs broker_id"), "{err}");
    // Outside the in-sync set, without unclean: refused.
    let outsider = brokers.iter().find(|b| b.id != master).unwrap();
    let err = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: Some(outsider.id),
            unclean: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("not in the in-sync set"), "{err}");
    // No alive in-sync member but the master: nothing to move to.
    let err = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: None,
            unclean: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("no alive member"), "{err}");
    let after = group_detail(&mut client).await.unwrap();
    assert_eq!(
        (after.master_id, after.master_epoch, &after.in_sync_set),
        (before.master_id, before.master_epoch, &before.in_sync_set),
        "refusals change nothing"
    );

    // The master dies; the only in-sync member is gone, so the operator elects unclean. The
    // master does not resign (it is dead): the election waits for its lease.
    let old_master = brokers.iter().find(|b| b.id == master).unwrap();
    let (outsider_id, master_id) = (outsider.id, master);
    report_and_wait(&mut client, &[old_master, outsider], |id| {
        if id == master_id {
            1_000
        } else {
            assert_eq!(id, outsider_id);
            400
        }
    })
    .await;
    old_master.stop();
    let answer = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: Some(outsider.id),
            unclean: true,
        })
        .await
        .unwrap()
        .into_inner();
    let group = answer.group.unwrap();
    assert_eq!(group.master_id, Some(outsider.id));
    assert_eq!(group.in_sync_set, vec![outsider.id]);
    assert_eq!(group.master_epoch, before.master_epoch + 1);
    assert_eq!(answer.possibly_lost_bytes, 600);
    drop(brokers);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn static_groups_never_get_an_election() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_controller(dir.path(), 200, 100).await;
    let addr = node.local_addr.to_string();
    let mut client = client(&node).await;
    let master = Broker::start(&addr, 1, pb::BrokerRole::Master, 1).await;
    let slave = Broker::start(&addr, 2, pb::BrokerRole::Slave, 2).await;
    let (before, _) = wait_for_group(&mut client, Duration::from_secs(5), |d| {
        d.master_id == Some(1)
    })
    .await;
    wait_until(Duration::from_secs(2), "a heartbeat answer", || {
        master.state.last_lease().is_some()
    })
    .await;
    assert_eq!(
        master.state.last_lease().unwrap().valid_until,
        None,
        "static masters get no lease"
    );
    master.stop();
    // Far past the lease wait (300 ms): the master stays, silent or not.
    let deadline = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < deadline {
        let now = group_detail(&mut client).await.unwrap();
        assert_eq!(
            (now.master_id, now.master_epoch),
            (Some(1), before.master_epoch)
        );
        tokio::time::sleep(POLL).await;
    }
    let err = client
        .elect_master(pb::ElectMasterRequest {
            group: GROUP.to_owned(),
            broker_id: Some(2),
            unclean: true,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("static roles"), "{err}");
    // Nor may a controlled broker join it.
    let err = client
        .register_broker(pb::RegisterBrokerRequest {
            cluster: "DefaultCluster".to_owned(),
            group: GROUP.to_owned(),
            broker_id: 3,
            addr: "127.0.0.1:20914".to_owned(),
            role: pb::BrokerRole::Controlled as i32,
            incarnation: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("cannot mix"), "{err}");
    drop((master, slave));
    node.shutdown().await.unwrap();
}
