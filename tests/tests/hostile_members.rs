//! Hostile internal calls, as real processes: three `controller`s and a `CONTROLLED` master of
//! group `broker-a`, on 127.0.0.1 with ephemeral ports.
//!
//! The attacker is a process on the network that is not a member: it does not hold the cluster
//! secret. It sends the packet that once poisoned the quorum for good (a Raft `AppendEntries`
//! whose committed vote is `{term: 2^64-1, node_id: 99}`) to every controller, then other
//! hostile Raft messages (a vote at term 2^64-1, garbage, a snapshot), broker registrations,
//! heartbeats and in-sync set changes; unsigned, signed with another cluster's key, and replayed
//! or stale copies of a member's signed call. A second attacker is a member gone wrong: it holds
//! the key but sends Raft messages that could never be valid (from a node outside the
//! membership, at an impossible term).
//!
//! Invariants:
//! - every hostile call is refused (UNAUTHENTICATED with code 40100 for non-members,
//!   PERMISSION_DENIED for impossible Raft messages) and changes nothing: the quorum keeps its
//!   leader and a plausible term, no controller reports a problem or logs a panic, the group
//!   keeps its master, epoch and in-sync set;
//! - the cluster keeps serving: a topic is created and a message sent afterwards is `SEND_OK`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth::{ClusterKey, SIGNATURE_METADATA_KEY};
use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, SendStatus};
use cluster_tests::{
    cli_json, controller_status, create_topic, group_broker, member_channel,
    wait_for_controller_leader, wait_for_masters, wait_until, ControllerQuorum,
    TEST_CLUSTER_SECRET,
};
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use proto::controller::raft_client::RaftClient;
use serde_json::json;
use tonic::transport::Channel;

const TOPIC: &str = "hostile";

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn error_code(status: &tonic::Status) -> Option<i32> {
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A refusal for want of membership: UNAUTHENTICATED, code 40100.
fn assert_unauthenticated<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(&format!("{what}: accepted"));
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "{what}: {status:?}"
    );
    assert_eq!(
        error_code(&status),
        Some(proto::common::ErrorCode::Unauthorized as i32),
        "{what}: {status:?}"
    );
}

fn raft_payload(value: serde_json::Value) -> pb::RaftPayload {
    pb::RaftPayload {
        json: serde_json::to_vec(&value).unwrap().into(),
    }
}

/// The packet that poisoned the quorum: a committed vote at term 2^64-1 for node 99.
fn poisoned_append() -> pb::RaftPayload {
    raft_payload(json!({
        "vote": {"leader_id": {"term": u64::MAX, "node_id": 99}, "committed": true},
        "prev_log_id": null,
        "entries": [],
        "leader_commit": null,
    }))
}

fn append_from(node_id: u64, term: u64) -> pb::RaftPayload {
    raft_payload(json!({
        "vote": {"leader_id": {"term": term, "node_id": node_id}, "committed": true},
        "prev_log_id": null,
        "entries": [],
        "leader_commit": null,
    }))
}

fn vote_request(node_id: u64, term: u64) -> pb::RaftPayload {
    raft_payload(json!({
        "vote": {"leader_id": {"term": term, "node_id": node_id}, "committed": false},
        "last_log_id": {"leader_id": {"term": term, "node_id": node_id}, "index": 1_000_000},
    }))
}

fn heartbeat(broker_id: u64) -> pb::BrokerHeartbeatRequest {
    pb::BrokerHeartbeatRequest {
        group: "broker-a".into(),
        broker_id,
        max_offset: u64::MAX / 2,
        ..Default::default()
    }
}

/// The request body as gRPC frames it (uncompressed flag, big-endian length, message): what a
/// member's signature covers.
fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A request carrying a signature header made by hand.
fn signed_by_hand<T: prost::Message + Clone>(
    message: &T,
    path: &str,
    timestamp_ms: u64,
    nonce: u128,
) -> tonic::Request<T> {
    let key = ClusterKey::new(TEST_CLUSTER_SECRET).unwrap();
    let signature = key.sign(path, timestamp_ms, nonce, &grpc_frame(message));
    let mut request = tonic::Request::new(message.clone());
    request.metadata_mut().insert(
        SIGNATURE_METADATA_KEY,
        signature.to_header().parse().unwrap(),
    );
    request
}

/// (master id, master epoch, in-sync set) of broker-a.
fn group_view(controllers: &str) -> Option<(u64, u64, Vec<u64>)> {
    let list = cli_json(&["--controller", controllers, "--json", "cluster", "list"])?;
    let group = list["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "broker-a")?
        .clone();
    let master = group["master_id"].as_u64()?;
    let mut in_sync: Vec<u64> = group["in_sync_set"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    in_sync.sort();
    Some((master, group["master_epoch"].as_u64()?, in_sync))
}

#[test]
fn hostile_internal_calls_are_refused_and_the_quorum_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let controllers = quorum.addrs();
    wait_for_controller_leader(&controllers);
    let master = group_broker(dir.path(), "broker-a", &controllers);
    wait_for_masters(&controllers, 1);
    let before = group_view(&controllers).expect("broker-a's view");
    let term_before = controller_status(&controllers).unwrap()["term"]
        .as_u64()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let other_key = ClusterKey::new("another-cluster-secret").unwrap();
        for member in &quorum.members {
            let addr = member.addr.as_str();
            // Non-members: unsigned, then signed with another cluster's key.
            let mut raft = RaftClient::new(channel(addr));
            let mut foreign =
                RaftClient::new(auth::SignedChannel::new(channel(addr), other_key.clone()));
            assert_unauthenticated(
                "poisoned append",
                raft.append_entries(poisoned_append()).await,
            );
            assert_unauthenticated(
                "poisoned append, foreign key",
                foreign.append_entries(poisoned_append()).await,
            );
            assert_unauthenticated(
                "vote at 2^64-1",
                raft.vote(vote_request(99, u64::MAX)).await,
            );
            assert_unauthenticated(
                "garbage",
                raft.append_entries(pb::RaftPayload {
                    json: Bytes::from_static(b"\xff\x00{{{"),
                })
                .await,
            );
            assert_unauthenticated(
                "snapshot",
                raft.install_snapshot(raft_payload(json!({"vote": null})))
                    .await,
            );
            let mut controller = ControllerClient::new(channel(addr));
            assert_unauthenticated(
                "register",
                controller
                    .register_broker(pb::RegisterBrokerRequest {
                        cluster: "DefaultCluster".into(),
                        group: "broker-a".into(),
                        broker_id: 9,
                        addr: "127.0.0.1:1".into(),
                        role: pb::BrokerRole::Master as i32,
                        ..Default::default()
                    })
                    .await,
            );
            assert_unauthenticated("heartbeat", controller.broker_heartbeat(heartbeat(0)).await);
            assert_unauthenticated(
                "in-sync set",
                controller
                    .alter_in_sync_set(pb::AlterInSyncSetRequest {
                        group: "broker-a".into(),
                        master_id: before.0,
                        master_epoch: before.1,
                        in_sync_set: vec![before.0],
                        ..Default::default()
                    })
                    .await,
            );

            // A member's signed call, replayed, and one signed too long ago.
            let path = "/broker.controller.v1.Controller/BrokerHeartbeat";
            let nonce: u128 = rand_nonce(member.id);
            let first = controller
                .broker_heartbeat(signed_by_hand(&heartbeat(7), path, now_ms(), nonce))
                .await;
            assert!(
                !matches!(&first, Err(s) if s.code() == tonic::Code::Unauthenticated),
                "a fresh member signature was refused: {first:?}"
            );
            assert_unauthenticated(
                "replayed heartbeat",
                controller
                    .broker_heartbeat(signed_by_hand(&heartbeat(7), path, now_ms(), nonce))
                    .await,
            );
            assert_unauthenticated(
                "stale heartbeat",
                controller
                    .broker_heartbeat(signed_by_hand(
                        &heartbeat(7),
                        path,
                        now_ms() - 120_000,
                        nonce + 1,
                    ))
                    .await,
            );

            // A member gone wrong: signed, but impossible Raft messages.
            let mut rogue = RaftClient::new(member_channel(addr));
            for (what, result) in [
                (
                    "poisoned append, signed",
                    rogue.append_entries(poisoned_append()).await,
                ),
                (
                    "append from a member at 2^64-1",
                    rogue.append_entries(append_from(2, u64::MAX)).await,
                ),
                (
                    "vote from node 99",
                    rogue.vote(vote_request(99, term_before + 1)).await,
                ),
            ] {
                let status = result.expect_err(what);
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{what}: {status:?}"
                );
            }
            let garbage = rogue
                .append_entries(pb::RaftPayload {
                    json: Bytes::from_static(b"\xff\x00{{{"),
                })
                .await
                .expect_err("signed garbage");
            assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
        }
    });

    // Nothing changed, and everything still serves.
    let status = controller_status(&controllers).expect("controller status");
    let term_after = status["term"].as_u64().unwrap();
    assert!(
        term_after < term_before + 10,
        "term moved from {term_before} to {term_after}"
    );
    for member in status["members"].as_array().unwrap() {
        assert_eq!(member["reachable"], true, "{member}");
        assert_eq!(
            member["status"]["problem"].as_str().unwrap_or(""),
            "",
            "{member}"
        );
    }
    assert_eq!(group_view(&controllers), Some(before.clone()));
    for member in &quorum.members {
        let log = dir.path().join(format!("controller-{}.log", member.id));
        assert_eq!(
            cluster_tests::log_mentions(&log, "panicked"),
            0,
            "controller {} panicked",
            member.id
        );
    }
    create_topic(&controllers, TOPIC, 2);
    let sent = rt.block_on(send_until_ok(&controllers));
    assert_eq!(sent.status, SendStatus::SendOk);
    assert!(wait_until(Duration::from_secs(5), || group_view(
        &controllers
    ) == Some(
        before.clone()
    )));
    drop(master);
}

/// A nonce per controller that no member will ever draw (members draw 128 random bits).
fn rand_nonce(controller_id: u64) -> u128 {
    (0x5eed_u128 << 64) | (now_ms() as u128 ^ controller_id as u128)
}

/// `controller` run on a stopped controller's store (`vote`, `repair-vote`): its JSON answer.
fn store_command(args: &[&str]) -> serde_json::Value {
    let output =
        std::process::Command::new(cluster_tests::workspace_binary("replication", "controller"))
            .args(args)
            .output()
            .expect("run controller");
    assert!(
        output.status.success(),
        "controller {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// The fault: every controller's persisted vote is poisoned anyway (as the packet above did
/// before the walls existed, or a corrupted disk could): a committed vote for node 99 at term
/// 2^64-1. Invariants: the quorum says so (controller status names the problem and exits 1;
/// cluster ready is not ready) instead of looking healthy; the documented repair (controller vote,
/// then repair-vote with one term above every last log term) brings it back with its metadata:
/// a leader, no problem, the topic created before still there, and a send is `SEND_OK`.
#[test]
fn a_poisoned_quorum_says_so_and_the_documented_repair_recovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let controllers = quorum.addrs();
    wait_for_controller_leader(&controllers);
    let _master = group_broker(dir.path(), "broker-a", &controllers);
    wait_for_masters(&controllers, 1);
    create_topic(&controllers, TOPIC, 2);

    let ids: Vec<u64> = quorum.members.iter().map(|m| m.id).collect();
    let store = |id: u64| dir.path().join(format!("controller-{id}"));
    for id in &ids {
        quorum.kill(*id, libc::SIGTERM);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for id in &ids {
        let mut poison = openraft::Vote::new(u64::MAX, 99);
        poison.commit();
        rt.block_on(controller::repair::write_vote_unchecked(
            &store(*id),
            poison,
        ))
        .unwrap();
        let report = store_command(&["vote", "--data-dir", store(*id).to_str().unwrap()]);
        assert!(report["poisoned"].is_string(), "{report}");
    }
    for id in &ids {
        quorum.restart(*id);
    }
    // Loud, not healthy-looking.
    let (code, output) =
        cluster_tests::cluster_cli(&["--controller", &controllers, "controller", "status"]);
    assert_ne!(
        code, 0,
        "controller status passed a poisoned quorum:\n{output}"
    );
    assert!(output.contains("PROBLEM"), "{output}");
    let (code, output) = cluster_tests::cluster_cli(&[
        "--controller",
        &controllers,
        "cluster",
        "ready",
        "--wait-s",
        "1",
    ]);
    assert_ne!(code, 0, "cluster ready passed a poisoned quorum:\n{output}");

    // The documented repair.
    for id in &ids {
        quorum.kill(*id, libc::SIGTERM);
    }
    let term = ids
        .iter()
        .map(|id| {
            store_command(&["vote", "--data-dir", store(*id).to_str().unwrap()])["last_log_term"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap()
        + 1;
    for id in &ids {
        let report = store_command(&[
            "repair-vote",
            "--data-dir",
            store(*id).to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--term",
            &term.to_string(),
            "--yes",
        ]);
        assert!(report["poisoned"].is_null(), "{report}");
    }
    for id in &ids {
        quorum.restart(*id);
    }
    wait_for_controller_leader(&controllers);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cluster_tests::cluster_cli(&["--controller", &controllers, "controller", "status"]).0
                == 0
        }),
        "the repaired quorum is not healthy"
    );
    let topics = cli_json(&["--controller", &controllers, "--json", "topic", "list"]).unwrap();
    assert!(topics.to_string().contains(TOPIC), "{topics}");
    let sent = rt.block_on(send_until_ok(&controllers));
    assert_eq!(sent.status, SendStatus::SendOk);
}

/// Sends one message through the routes until it is `SEND_OK` (20 s at most).
async fn send_until_ok(controllers: &str) -> client::SendResult {
    let producer = Producer::connect_controller(controllers, ProducerConfig::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match producer
            .send(Message::new(TOPIC, Bytes::from_static(b"after the attack")))
            .await
        {
            Ok(result) if result.status == SendStatus::SendOk => return result,
            other if Instant::now() < deadline => {
                eprintln!("not yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the cluster does not serve: {other:?}"),
        }
    }
}
