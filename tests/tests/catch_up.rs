//! A slave that starts empty against a master that already holds 1 GiB, and a replica that lies
//! about what it holds, both against real broker processes on 127.0.0.1.
//!
//! Invariants:
//! - an empty slave catches up the whole log (many segments, far more than the master's
//!   in-flight bound) and ends byte-identical to the master, then joins the in-sync set;
//! - a slave with a new store (a replaced disk) joins a master whose retention deleted offset 0:
//!   it begins at the master's first offset, ends byte-identical to the master from there, joins
//!   the in-sync set, and after a restart follows the master on;
//! - a replica acknowledging an offset beyond the master's end is refused with `BAD_REQUEST`,
//!   and the master's confirm offset never moves past what it wrote.

use std::time::{Duration, Instant};

use cluster_tests::{
    assert_same_log, cli_json, cluster_cli, group_member, wait_until, BrokerProcess,
    TEST_CLUSTER_SECRET,
};
use proto::replication as pb;
use proto::replication::log_shipping_client::LogShippingClient;

const TOPIC: &str = "ledger";
/// The log the slave must catch up: 1 GiB of 256 KiB bodies.
const BODY_BYTES: usize = 256 << 10;
const MESSAGES: u64 = 4096;

/// Per broker id of `broker-a`: (max offset, in the in-sync set), from `cluster list`.
fn members(controllers: &str) -> Vec<(u64, u64, bool)> {
    let Some(list) = cli_json(&["--controller", controllers, "--json", "cluster", "list"]) else {
        return Vec::new();
    };
    let Some(group) = list["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["name"] == "broker-a"))
    else {
        return Vec::new();
    };
    let set: Vec<u64> = group["in_sync_set"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|i| i.as_u64()).collect())
        .unwrap_or_default();
    group["brokers"]
        .as_array()
        .map(|brokers| {
            brokers
                .iter()
                .map(|b| {
                    let id = b["id"].as_u64().unwrap_or(u64::MAX);
                    (id, b["max_offset"].as_u64().unwrap_or(0), set.contains(&id))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the topic once the controller has a leader and knows `broker-a` (the tests run in
/// parallel, and a loaded machine starts both slower than the first command comes).
fn create_topic(controllers: &str) {
    cluster_tests::wait_for_controller_leader(controllers);
    let registered = wait_until(Duration::from_secs(20), || !members(controllers).is_empty());
    assert!(registered, "broker-a never registered");
    cluster_tests::create_topic(controllers, TOPIC, 4);
}

/// `bench produce` of `count` messages of `size` bytes to `master`: every one `SEND_OK`.
fn produce(master: &BrokerProcess, count: u64, size: usize) {
    let (code, out) = cluster_cli(&[
        "--broker",
        master.addr(),
        "--json",
        "bench",
        "produce",
        "--topic",
        TOPIC,
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
        "--in-flight",
        "16",
    ]);
    assert_eq!(code, 0, "bench produce: {out}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("bench summary");
    assert_eq!(
        summary["statuses"]["SEND_OK"].as_u64(),
        Some(count),
        "{summary}"
    );
}

#[test]
fn an_empty_slave_catches_up_a_master_holding_one_gib() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = cluster_tests::ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    // 64 MiB segments: the log spans 16 of them. Retention by disk is off: a shared test machine
    // may be fuller than the default 75 %, and the slave needs the log from offset 0.
    let settings = [
        "--set",
        "segment_bytes=67108864",
        "--set",
        "disk_max_used_ratio=1.0",
    ];
    let master = group_member(
        dir.path(),
        "broker-a",
        0,
        "ASYNC_MASTER",
        &controllers,
        &settings,
    );
    create_topic(&controllers);
    produce(&master, MESSAGES, BODY_BYTES);
    let filled = wait_until(Duration::from_secs(20), || {
        members(&controllers)
            .first()
            .is_some_and(|(_, max, _)| *max >= MESSAGES * BODY_BYTES as u64)
    });
    assert!(filled, "{:?}", members(&controllers));
    let end = members(&controllers)[0].1;

    // The slave starts with an empty store and must fetch all of it.
    let started = Instant::now();
    let slave = group_member(dir.path(), "broker-a", 1, "SLAVE", &controllers, &settings);
    let caught_up = wait_until(Duration::from_secs(300), || {
        let members = members(&controllers);
        members.len() == 2 && members[1].1 >= end && members[1].2
    });
    let took = started.elapsed();
    assert!(
        caught_up,
        "the slave did not catch up {end} bytes: {:?}",
        members(&controllers)
    );
    eprintln!(
        "an empty slave caught up {end} bytes in {took:?} ({:.0} MB/s, process start included)",
        end as f64 / took.as_secs_f64() / 1e6
    );
    assert_same_log(
        &dir.path().join("broker-a-0"),
        &dir.path().join("broker-a-1"),
        end,
    );
    drop(slave);
    drop(master);
}

#[test]
fn a_slave_with_a_new_store_joins_a_master_whose_retention_deleted_offset_0() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = cluster_tests::ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    // 256 KiB segments (messages up to 64 KiB), retention checked every 200 ms; by disk it is
    // off (see above).
    let settings = [
        "--set",
        "segment_bytes=262144",
        "--set",
        "max_message_bytes=65536",
        "--set",
        "disk_max_used_ratio=1.0",
        "--set",
        "retention_check_interval_ms=200",
    ];
    let master = group_member(
        dir.path(),
        "broker-a",
        0,
        "ASYNC_MASTER",
        &controllers,
        &settings,
    );
    create_topic(&controllers);
    produce(&master, 2_000, 1024);

    // Every segment the master is not writing becomes older than any retention: it deletes
    // them, offset 0 with them.
    let master_dir = dir.path().join("broker-a-0");
    let first_segment = master_dir.join("commitlog").join(format!("{:020}", 0));
    let aged = std::time::SystemTime::now() - Duration::from_secs(100 * 3600);
    let deleted = wait_until(Duration::from_secs(20), || {
        for entry in std::fs::read_dir(master_dir.join("commitlog")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none() {
                if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                    let _ = file.set_modified(aged);
                }
            }
        }
        !first_segment.exists()
    });
    assert!(
        deleted,
        "retention did not delete the master's first segment"
    );
    produce(&master, 200, 1024);
    let end = members(&controllers)[0].1;

    // The new slave begins where the master's log now begins.
    let slave = group_member(dir.path(), "broker-a", 1, "SLAVE", &controllers, &settings);
    let caught_up = |end: u64| {
        wait_until(Duration::from_secs(60), || {
            let members = members(&controllers);
            members.len() == 2
                && members[0].1 >= end
                && members[1].1 == members[0].1
                && members[1].2
        })
    };
    assert!(caught_up(end), "{:?}", members(&controllers));
    let end = members(&controllers)[0].1;
    assert_same_log(&master_dir, &dir.path().join("broker-a-1"), end);
    let slave_first_segment = dir
        .path()
        .join("broker-a-1/commitlog")
        .join(format!("{:020}", 0));
    assert!(!slave_first_segment.exists(), "the slave's log begins at 0");

    // Restarted, it opens where it was and follows the master on.
    drop(slave);
    let slave = group_member(dir.path(), "broker-a", 1, "SLAVE", &controllers, &settings);
    produce(&master, 200, 1024);
    let end = members(&controllers)[0].1;
    assert!(caught_up(end), "{:?}", members(&controllers));
    assert_same_log(&master_dir, &dir.path().join("broker-a-1"), end);
    drop(slave);
    drop(master);
}

#[test]
fn a_replica_claiming_more_than_the_master_wrote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = cluster_tests::ControllerQuorum::start(dir.path(), 1, &[]);
    let controllers = quorum.addrs();
    let master = group_member(
        dir.path(),
        "broker-a",
        0,
        "SYNC_MASTER",
        &controllers,
        &["--set", "min_in_sync_replicas=1"],
    );
    create_topic(&controllers);
    produce(&master, 100, 100);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The test opens the stream as a member would: signed with the cluster key.
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", master.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let key = auth::ClusterKey::new(TEST_CLUSTER_SECRET).unwrap();
        let mut client = LogShippingClient::new(auth::SignedChannel::new(channel, key));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::ReplicaMessage {
            body: Some(pb::replica_message::Body::Hello(pb::Hello {
                group: "broker-a".into(),
                broker_id: 7,
                addr: "127.0.0.1:1".into(),
                epochs: vec![],
                max_offset: 0,
                min_offset: 0,
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .replicate(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let welcome = match inbound.message().await.unwrap().and_then(|m| m.body) {
            Some(pb::master_message::Body::Welcome(welcome)) => welcome,
            other => panic!("expected a Welcome, got {other:?}"),
        };
        let end = welcome.master_write_offset;
        assert!(end > 0);
        tx.send(pb::ReplicaMessage {
            body: Some(pb::replica_message::Body::Ack(pb::Ack {
                master_epoch: welcome.master_epoch,
                written_offset: end + (1 << 30),
                flushed_offset: end + (1 << 30),
                store_fault: false,
                leaving: false,
            })),
        })
        .await
        .unwrap();
        let refusal = loop {
            match inbound.message().await {
                Ok(Some(_chunk)) => continue,
                Ok(None) => panic!("the stream ended without a refusal"),
                Err(status) => break status,
            }
        };
        let code: i32 = refusal
            .metadata()
            .get(proto::ERROR_CODE_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert_eq!(
            code,
            proto::common::ErrorCode::BadRequest as i32,
            "{refusal:?}"
        );
        assert!(refusal.message().contains("beyond"), "{refusal:?}");
    });

    // The lie moved nothing: in the master's own view, no replica holds more than the master
    // wrote, and its confirm offset is within its log.
    let status = cli_json(&[
        "--controller",
        &controllers,
        "--json",
        "ha",
        "status",
        "broker-a",
    ])
    .expect("ha status");
    let write_offset = status["write_offset"].as_u64().unwrap();
    assert!(
        status["confirm_offset"].as_u64().unwrap() <= write_offset,
        "{status}"
    );
    for replica in status["replicas"].as_array().unwrap() {
        assert!(
            replica["written_offset"].as_u64().unwrap() <= write_offset,
            "{status}"
        );
    }
}
