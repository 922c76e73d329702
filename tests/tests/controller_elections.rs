//! Master elections while the controller leader dies: three real `controller` processes, a group
//! of three CONTROLLED brokers played by heartbeat loops that speak the controller protocol (as
//! the broker's controller link does: registration, heartbeats to any controller, the master
//! widening the in-sync set to every live broker). In each round the master goes silent and the
//! controller leader is killed with SIGKILL around the moment it decides the election (before,
//! during, after), then restarted.
//!
//! Invariant: exactly one master per master epoch, across every view any controller or broker
//! was ever given; and every round ends with a master other than the silenced one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::SignedChannel;
use cluster_tests::{member_channel, wait_for_controller_leader, ControllerQuorum};
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;

const GROUP: &str = "broker-e";
const BROKERS: [u64; 3] = [1, 2, 3];
/// Lease and margin of the quorum: the election comes 400 ms after the master's last heartbeat.
const LEASE_MS: u64 = 300;
const MARGIN_MS: u64 = 100;

/// Every (master epoch -> master ids) pair seen anywhere.
type Views = Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>;

fn record(views: &Views, view: &pb::GroupView) {
    if let Some(master) = view.master_id {
        views
            .lock()
            .unwrap()
            .entry(view.master_epoch)
            .or_default()
            .insert(master);
    }
}

/// A client that signs as a member: the stand-in brokers' heartbeats are internal calls.
fn client(addr: &str) -> ControllerClient<SignedChannel> {
    ControllerClient::new(member_channel(addr))
}

/// A CONTROLLED broker: registers, then heartbeats every 50 ms while `running`, moving to the
/// next controller on any failure. As master, it asks for every broker in the in-sync set (they
/// all hold the same, empty, log here).
fn broker(controllers: Vec<String>, id: u64, running: Arc<AtomicBool>, views: Views) {
    tokio::spawn(async move {
        let mut current = 0;
        let mut registered = false;
        let mut master_epoch = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !running.load(Ordering::Relaxed) {
                continue;
            }
            let mut c = client(&controllers[current % controllers.len()]);
            let answer = if registered {
                c.broker_heartbeat(pb::BrokerHeartbeatRequest {
                    group: GROUP.to_owned(),
                    broker_id: id,
                    incarnation: 1000 + id,
                    log_epoch: 1,
                    master_epoch,
                    ..Default::default()
                })
                .await
                .map(|a| a.into_inner().group)
            } else {
                c.register_broker(pb::RegisterBrokerRequest {
                    cluster: "DefaultCluster".to_owned(),
                    group: GROUP.to_owned(),
                    broker_id: id,
                    addr: format!("127.0.0.1:{}", 40911 + id),
                    role: pb::BrokerRole::Controlled as i32,
                    incarnation: 1000 + id,
                    log_epoch: 1,
                    ..Default::default()
                })
                .await
                .map(|a| a.into_inner().group)
            };
            let view = match answer {
                Ok(view) => view,
                Err(_) => {
                    current += 1;
                    continue;
                }
            };
            registered = true;
            let Some(view) = view else { continue };
            record(&views, &view);
            master_epoch = view.master_epoch;
            let everyone: Vec<u64> = BROKERS.to_vec();
            if view.master_id == Some(id) && view.in_sync_set != everyone {
                let _ = c
                    .alter_in_sync_set(pb::AlterInSyncSetRequest {
                        group: GROUP.to_owned(),
                        master_id: id,
                        master_epoch: view.master_epoch,
                        in_sync_set_epoch: view.in_sync_set_epoch,
                        in_sync_set: everyone,
                    })
                    .await;
            }
        }
    });
}

/// Polls every controller's cluster list (each answers from the leader, or from its own applied
/// state without one) and records the group views.
fn watch_views(controllers: Vec<String>, views: Views) {
    tokio::spawn(async move {
        loop {
            for addr in &controllers {
                if let Ok(list) = client(addr).cluster_list(pb::ClusterListRequest {}).await {
                    for g in list.into_inner().groups.iter().filter(|g| g.name == GROUP) {
                        record(
                            &views,
                            &pb::GroupView {
                                master_id: g.master_id,
                                master_epoch: g.master_epoch,
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// The controller leader, confirmed: it says LEADER, has applied its whole log, holds the
/// highest term any controller reports, and a majority names it leader. Its address and id.
/// Without these checks a test would read or kill the wrong one: a controller without a leader
/// (one just restarted) answers from its own state, which may be behind; so does a leader still
/// applying its log, and a deposed leader that has not heard of its successor yet (a controller
/// just restarted may resume its old leadership for a moment, at its old term).
async fn confirmed_leader(controllers: &[String]) -> Option<(String, u64)> {
    let mut statuses = Vec::new();
    for addr in controllers {
        if let Ok(status) = client(addr).node_status(pb::NodeStatusRequest {}).await {
            statuses.push((addr.clone(), status.into_inner()));
        }
    }
    let highest_term = statuses.iter().map(|(_, s)| s.term).max()?;
    statuses
        .iter()
        .find(|(_, s)| {
            s.state == "LEADER"
                && s.last_log_index == s.applied_index
                && s.term == highest_term
                && statuses
                    .iter()
                    .filter(|(_, other)| other.leader_id == Some(s.id))
                    .count()
                    > controllers.len() / 2
        })
        .map(|(addr, s)| (addr.clone(), s.id))
}

/// The group as the confirmed leader sees it: (master, master epoch, in-sync set); recorded in
/// `views`.
async fn group(controllers: &[String], views: &Views) -> Option<(Option<u64>, u64, Vec<u64>)> {
    let (addr, _) = confirmed_leader(controllers).await?;
    let list = client(&addr)
        .cluster_list(pb::ClusterListRequest {})
        .await
        .ok()?;
    let g = list
        .into_inner()
        .groups
        .into_iter()
        .find(|g| g.name == GROUP)?;
    record(
        views,
        &pb::GroupView {
            master_id: g.master_id,
            master_epoch: g.master_epoch,
            ..Default::default()
        },
    );
    Some((g.master_id, g.master_epoch, g.in_sync_set))
}

async fn leader(controllers: &[String]) -> Option<u64> {
    confirmed_leader(controllers).await.map(|(_, id)| id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_per_epoch_while_the_controller_leader_dies_mid_election() {
    let dir = tempfile::tempdir().unwrap();
    let lease = format!("broker_lease_ms={LEASE_MS}");
    let margin = format!("lease_margin_ms={MARGIN_MS}");
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &["--set", &lease, "--set", &margin]);
    let addrs = quorum.addrs();
    let controllers: Vec<String> = addrs.split(',').map(str::to_owned).collect();
    tokio::task::spawn_blocking({
        let addrs = addrs.clone();
        move || wait_for_controller_leader(&addrs)
    })
    .await
    .unwrap();
    let views: Views = Arc::default();
    let running: BTreeMap<u64, Arc<AtomicBool>> = BROKERS
        .iter()
        .map(|id| (*id, Arc::new(AtomicBool::new(true))))
        .collect();
    for (id, flag) in &running {
        broker(controllers.clone(), *id, flag.clone(), views.clone());
    }
    watch_views(controllers.clone(), views.clone());

    // Kill the leader this long after the master's last heartbeat: before, around and after
    // the moment (400 ms) it may elect.
    for (round, kill_after_ms) in [250u64, 380, 400, 420, 600].into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (master, epoch) = loop {
            if let Some((Some(master), epoch, set)) = group(&controllers, &views).await {
                if set == BROKERS.to_vec() {
                    break (master, epoch);
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no master with everybody in sync: {:?}",
                group(&controllers, &views).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader_id = loop {
            if let Some(id) = leader(&controllers).await {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no controller leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        running[&master].store(false, Ordering::Relaxed);
        // The fault is injected at a chosen moment, not waited for: a timed schedule.
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        quorum.kill(leader_id, libc::SIGKILL);

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((Some(now), now_epoch, _)) = group(&controllers, &views).await {
                if now != master && now_epoch > epoch {
                    eprintln!(
                        "round {round}: master {master} at epoch {epoch} silenced, leader \
                         {leader_id} killed after {kill_after_ms} ms: master {now} at epoch \
                         {now_epoch}"
                    );
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: master {master} (epoch {epoch}) not replaced after the leader \
                 {leader_id} was killed {kill_after_ms} ms into its silence: {:?}",
                group(&controllers, &views).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restart_addrs = tokio::task::spawn_blocking(move || {
            quorum.restart(leader_id);
            quorum
        });
        quorum = restart_addrs.await.unwrap();
        running[&master].store(true, Ordering::Relaxed);
    }

    let views = views.lock().unwrap().clone();
    eprintln!("masters by master epoch: {views:?}");
    for (epoch, masters) in &views {
        assert_eq!(
            masters.len(),
            1,
            "master epoch {epoch} had masters {masters:?}; all: {views:?}"
        );
    }
    assert!(
        views.len() >= 6,
        "five elections after the first were expected: {views:?}"
    );
}
