//! `cluster-cli cluster elect` and `cluster list` against a real `controller` process, with a
//! group of three CONTROLLED brokers played by heartbeat loops that speak the controller protocol
//! (registration, heartbeats, resigning when asked), as the broker's controller link does.
//!
//! Invariants:
//! - a planned switchover moves mastership to the named in-sync broker, raising the master epoch
//!   by exactly one;
//! - an unclean election is never done without `--broker-id` and `--yes`, and a refused one
//!   changes nothing.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::{
    member_channel, wait_for_controller_leader, workspace_binary, ControllerQuorum,
};
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;

const GROUP: &str = "broker-c";

/// `cluster-cli` with `args`: exit code, stdout, stderr.
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(workspace_binary("cluster-cli", "cluster-cli"))
            .args(&args)
            .output()
            .expect("run cluster-cli");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

fn args(controller: &str, rest: &[&str]) -> Vec<String> {
    ["--controller", controller]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// A CONTROLLED broker as the controller sees it: registers, then heartbeats every 50 ms with
/// its log end, the master epoch it last learnt, and `resigned` once it was asked to resign.
fn controlled_broker(controller: String, id: u64, max_offset: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = ControllerClient::new(member_channel(&controller));
        let registered = client
            .register_broker(pb::RegisterBrokerRequest {
                cluster: "DefaultCluster".to_owned(),
                group: GROUP.to_owned(),
                broker_id: id,
                addr: format!("127.0.0.1:{}", 30911 + id),
                role: pb::BrokerRole::Controlled as i32,
                incarnation: 1000 + id,
                election_priority: 0,
                replication: pb::ReplicationMode::SyncMaster as i32,
                log_epoch: 1,
                max_offset,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut master_epoch = registered.group.map(|g| g.master_epoch).unwrap_or(0);
        let resigned = Arc::new(AtomicBool::new(false));
        loop {
            let answer = client
                .broker_heartbeat(pb::BrokerHeartbeatRequest {
                    group: GROUP.to_owned(),
                    broker_id: id,
                    max_offset,
                    incarnation: 1000 + id,
                    log_epoch: 1,
                    master_epoch,
                    resigned: resigned.load(Ordering::Relaxed),
                    ..Default::default()
                })
                .await;
            if let Ok(answer) = answer {
                let answer = answer.into_inner();
                if let Some(view) = answer.group {
                    master_epoch = view.master_epoch;
                }
                // Nothing left to ship: resign at once.
                if answer.resign {
                    resigned.store(true, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn group_detail(controller: &str) -> Option<pb::GroupDetail> {
    let mut client = ControllerClient::connect(format!("http://{controller}"))
        .await
        .ok()?;
    client
        .cluster_list(pb::ClusterListRequest {})
        .await
        .ok()?
        .into_inner()
        .groups
        .into_iter()
        .find(|g| g.name == GROUP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_elect_moves_mastership_and_refuses_unconfirmed_unclean_elections() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, &[]);
    let controller = quorum.addrs();
    tokio::task::spawn_blocking({
        let controller = controller.clone();
        move || wait_for_controller_leader(&controller)
    })
    .await
    .unwrap();
    let brokers: Vec<_> = (1..=3)
        .map(|id| controlled_broker(controller.clone(), id, 100 * id))
        .collect();

    // The first master is elected by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(detail) = group_detail(&controller).await {
            if detail.master_id.is_some() && detail.brokers.len() == 3 {
                break detail;
            }
        }
        assert!(Instant::now() < deadline, "no first master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let master = first.master_id.unwrap();
    let other = (1..=3).find(|id| *id != master).unwrap();

    let (code, table, _) = cli(args(&controller, &["cluster", "list"])).await;
    assert!(
        table.contains("CONF_ROLE") && table.contains("LOG_EPOCH"),
        "{table}"
    );
    assert!(
        table.contains("CONTROLLED") && table.contains("MASTER"),
        "{table}"
    );
    assert_eq!(code, 0, "{table}");

    // Unclean without --broker-id: a usage error before anything is sent.
    let (code, _, err) = cli(args(&controller, &["cluster", "elect", GROUP, "--unclean"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--broker-id"), "{err}");
    // Unclean without --yes: a warning naming what may be lost, and nothing done.
    let id = other.to_string();
    let (code, out, err) = cli(args(
        &controller,
        &["cluster", "elect", GROUP, "--broker-id", &id, "--unclean"],
    ))
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("warning: unclean election"), "{err}");
    assert!(err.contains("NOT in the in-sync set"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    // Clean, to a broker outside the in-sync set: refused by the controller.
    let (code, _, err) = cli(args(
        &controller,
        &["cluster", "elect", GROUP, "--broker-id", &id],
    ))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not in the in-sync set"), "{err}");
    let unchanged = group_detail(&controller).await.unwrap();
    assert_eq!(
        (unchanged.master_id, unchanged.master_epoch),
        (first.master_id, first.master_epoch)
    );

    // Confirmed: the master resigns when asked and the target is elected.
    let started = Instant::now();
    let (code, out, err) = cli(args(
        &controller,
        &[
            "--json",
            "cluster",
            "elect",
            GROUP,
            "--broker-id",
            &id,
            "--unclean",
            "--yes",
        ],
    ))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["master_id"], other, "{answer}");
    assert_eq!(answer["master_epoch"], first.master_epoch + 1, "{answer}");
    assert_eq!(
        answer["in_sync_set"],
        serde_json::json!([other]),
        "{answer}"
    );
    assert_eq!(answer["unclean"], true, "{answer}");
    let lost = (100 * master).saturating_sub(100 * other);
    assert_eq!(answer["possibly_lost_bytes"], lost, "{answer}");
    assert!(err.contains("unclean election done"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for broker in brokers {
        broker.abort();
    }
}
