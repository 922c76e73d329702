//! RocketMQ 5 applications through the v5 API (`apache.rocketmq.v2`), with the official Python
//! client `rocketmq-python-client` 5.1.2, unchanged (installed by `scripts/v5-python-env.sh`).
//!
//! Invariant: every message the client's `send` answered with a receipt is in the group's log,
//! once, with what the application gave it (body, tag, keys, user properties, and a FIFO
//! message's group), also when the group's master is killed with SIGKILL while the application
//! sends: the receipt means what `SEND_OK` means (SYNC_MASTER + SYNC_FLUSH here).

use std::collections::HashMap;
use std::time::Duration;

use cluster_tests::failover::{
    group_state, runtime, start_group, wait_for_full_set, QUEUES, TOPIC,
};
use cluster_tests::v5::{
    finish, lines, missing, receipts, start_producer, start_push_consumer, start_rust_client,
    start_simple_consumer, Receipt, V5_LISTEN,
};
use cluster_tests::{read_queues, wait_until, BrokerProcess};

/// Checks every receipt against the log the group's master serves now.
fn check_receipts(master_addr: &str, receipts: &[Receipt]) {
    let rt = runtime();
    let stored = rt.block_on(async {
        let consumer = client::PullConsumer::connect(master_addr)
            .await
            .expect("connect to the master");
        read_queues(&consumer, TOPIC, QUEUES).await
    });
    let mut by_id: HashMap<&str, Vec<&client::ReceivedMessage>> = HashMap::new();
    for message in &stored {
        by_id.entry(&message.message_id).or_default().push(message);
    }
    let mut lost = Vec::new();
    for receipt in receipts {
        let Some(copies) = by_id.get(receipt.id.as_str()) else {
            lost.push(receipt.seq);
            continue;
        };
        let message = copies[0];
        assert_eq!(
            message.body,
            format!("message {}", receipt.seq).as_bytes(),
            "{}",
            receipt.id
        );
        assert_eq!(message.properties["seq"], receipt.seq.to_string());
        match &receipt.group {
            Some(group) => assert_eq!(
                message.properties.get("__SHARDINGKEY"),
                Some(group),
                "a FIFO message keeps its group"
            ),
            None => {
                assert_eq!(message.tag.as_deref(), Some("even"));
                assert_eq!(message.keys, vec![format!("k{}", receipt.seq)]);
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} messages with a receipt are not in the log: seq {:?}",
        lost.len(),
        receipts.len(),
        &lost[..lost.len().min(20)]
    );
}

/// Once the group's in-sync set is full: its master's id, and a slave's v5 address (the access
/// point the tests give the clients: everything they do is handed to the master).
fn master_and_slave_endpoint(controllers: &str, brokers: &[BrokerProcess]) -> (u64, String) {
    let state = wait_for_full_set(controllers, Duration::from_secs(30));
    let master = state.master.expect("a master");
    let slave = (0..brokers.len() as u64)
        .find(|id| *id != master)
        .expect("a slave");
    let endpoint = brokers[slave as usize].v5_addr().expect("v5_listen is set");
    (master, endpoint.to_owned())
}

fn native_addr_of(brokers: &[BrokerProcess], id: u64) -> String {
    brokers[id as usize].addr().to_owned()
}

#[test]
fn the_official_python_client_sends_through_any_member_of_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &V5_LISTEN);
    // The access point is a slave: routes, settings and sends all work through it.
    let (master, endpoint) = master_and_slave_endpoint(&controllers, &brokers);
    let endpoint = endpoint.as_str();
    let out = dir.path().join("receipts.jsonl");
    let summary = finish(start_producer(endpoint, TOPIC, 200, &out));
    assert_eq!(summary["ok"], 200, "every send answered: {summary}");
    let receipts = receipts(&out);
    assert_eq!(receipts.len(), 200);
    check_receipts(&native_addr_of(&brokers, master), &receipts);
}

#[test]
fn a_python_producer_loses_nothing_when_the_master_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), &V5_LISTEN);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    let master = state.master.expect("a master");
    // The master itself as the access point: the application holds the address that dies.
    let endpoint = brokers[master as usize]
        .v5_addr()
        .expect("v5_listen is set")
        .to_owned();
    let out = dir.path().join("receipts.jsonl");
    let producer = start_producer(&endpoint, TOPIC, 3000, &out);
    assert!(
        wait_until(Duration::from_secs(60), || receipts(&out).len() >= 300),
        "the producer got no receipts"
    );
    brokers[master as usize].kill();
    let summary = finish(producer);
    let receipts = receipts(&out);
    eprintln!(
        "{} receipts, {} failed sends, longest gap between receipts {} s",
        receipts.len(),
        summary["failed"],
        summary["longest_gap_s"]
    );
    assert!(
        receipts.len() > 300,
        "no receipt after the master was killed: {summary}"
    );
    let after = group_state(&controllers);
    let successor = after.master.expect("a new master");
    assert_ne!(successor, master);
    check_receipts(&native_addr_of(&brokers, successor), &receipts);
}

/// Invariant: what the official Rust client (`rocketmq` 5.0.0, unchanged) sends through one
/// endpoint is in the log as sent, and its SimpleConsumer, through the same endpoint, receives
/// and acknowledges every message it holds a receipt for. The endpoint is a slave: both the
/// sends and the consumption are handed to the master.
#[test]
fn the_official_rust_client_sends_and_receives_through_one_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &V5_LISTEN);
    let (master, endpoint) = master_and_slave_endpoint(&controllers, &brokers);
    let endpoint = endpoint.as_str();
    let sent = dir.path().join("receipts.jsonl");
    let out = sent.to_str().unwrap();
    let summary = finish(start_rust_client(&["produce", endpoint, TOPIC, "300", out]));
    assert_eq!(summary["ok"], 300, "every send answered: {summary}");
    let receipts = receipts(&sent);
    assert_eq!(receipts.len(), 300);
    check_receipts(&native_addr_of(&brokers, master), &receipts);

    let got = dir.path().join("consumed.jsonl");
    let summary = finish(start_rust_client(&[
        "consume",
        endpoint,
        TOPIC,
        "rust-simple",
        "300",
        got.to_str().unwrap(),
    ]));
    let lost = missing(&receipts, &lines(&got));
    assert!(lost.is_empty(), "never consumed: seq {lost:?}; {summary}");
}

/// Invariant: a SimpleConsumer group receives every message a producer holds a receipt for,
/// and a message it does not acknowledge comes back after its invisible duration with its
/// delivery attempt raised; acknowledged ones do not come back.
#[test]
fn the_official_python_client_receives_and_acknowledges_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &V5_LISTEN);
    let (_, endpoint) = master_and_slave_endpoint(&controllers, &brokers);
    let endpoint = endpoint.as_str();
    let sent = dir.path().join("receipts.jsonl");
    let summary = finish(start_producer(endpoint, TOPIC, 200, &sent));
    assert_eq!(summary["ok"], 200, "{summary}");
    let receipts = receipts(&sent);

    let received_path = dir.path().join("received.jsonl");
    let summary = finish(start_simple_consumer(
        endpoint,
        TOPIC,
        "v5-simple",
        receipts.len(),
        3,
        &received_path,
    ));
    let received: Vec<serde_json::Value> = std::fs::read_to_string(&received_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let acked: std::collections::HashSet<&str> = received
        .iter()
        .filter(|m| m["acked"] == true)
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let missing: Vec<u64> = receipts
        .iter()
        .filter(|r| !acked.contains(r.id.as_str()))
        .map(|r| r.seq)
        .collect();
    assert!(
        missing.is_empty(),
        "never acknowledged: seq {missing:?}; {summary}"
    );
    // The three held back came again, as second deliveries.
    let held: Vec<&serde_json::Value> = received.iter().filter(|m| m["acked"] == false).collect();
    assert_eq!(held.len(), 3, "{summary}");
    for message in held {
        let again = received
            .iter()
            .find(|m| m["id"] == message["id"] && m["acked"] == true)
            .unwrap_or_else(|| panic!("{} did not come back", message["id"]));
        assert_eq!(again["attempt"], 2, "{again}");
    }
    // FIFO messages keep their group on delivery.
    assert!(received
        .iter()
        .filter(|m| m["seq"].as_u64().unwrap() % 2 == 1)
        .all(
            |m| m["group"].as_str() == Some(&format!("order-{}", m["seq"].as_u64().unwrap() % 50))
        ));
    eprintln!(
        "first receipt at {} s, last at {} s",
        received[0]["t"],
        received[received.len() - 1]["t"]
    );
    // Acknowledged messages are not delivered twice.
    let deliveries = received.len();
    assert_eq!(deliveries, receipts.len() + 3, "{summary}");
}

/// Invariant: a PushConsumer group consumes every message a producer holds a receipt for,
/// also when the group's master is killed with SIGKILL mid-run (messages handed out and not
/// acknowledged come again: duplicates, counted, never a loss); a FAILURE comes back.
#[test]
fn a_python_push_consumer_gets_every_message_across_a_master_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, mut brokers) = start_group(dir.path(), &V5_LISTEN);
    let (master, endpoint) = master_and_slave_endpoint(&controllers, &brokers);
    let sent = dir.path().join("receipts.jsonl");
    let summary = finish(start_producer(&endpoint, TOPIC, 1000, &sent));
    assert_eq!(summary["ok"], 1000, "{summary}");
    let receipts = receipts(&sent);

    let consumed_path = dir.path().join("consumed.jsonl");
    let consumer = start_push_consumer(
        &endpoint,
        TOPIC,
        "v5-push",
        receipts.len(),
        3,
        &consumed_path,
    );
    assert!(
        wait_until(Duration::from_secs(60), || lines(&consumed_path).len()
            >= 200),
        "the push consumer consumed nothing"
    );
    brokers[master as usize].kill();
    let summary = finish(consumer);
    let consumed = lines(&consumed_path);
    let ok: std::collections::HashSet<&str> = consumed
        .iter()
        .filter(|m| m["result"] == "success")
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let lost: Vec<u64> = receipts
        .iter()
        .filter(|r| !ok.contains(r.id.as_str()))
        .map(|r| r.seq)
        .collect();
    let duplicates = consumed.iter().filter(|m| m["result"] == "success").count() - ok.len();
    eprintln!(
        "push consumer: {} deliveries, {} distinct consumed, {duplicates} duplicates, lost {}",
        consumed.len(),
        ok.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: seq {lost:?}; {summary}");
    // A FAILURE comes back: as a second delivery from the same master, or (if the master was
    // killed meanwhile) as a first delivery from the new one, which starts from the committed
    // offset.
    for (at, failed) in consumed
        .iter()
        .enumerate()
        .filter(|(_, m)| m["result"] == "failure")
    {
        assert!(
            consumed[at + 1..].iter().any(|m| m["id"] == failed["id"]),
            "{} was not delivered again after its FAILURE",
            failed["id"]
        );
    }
}

/// Invariant: a consumer group set FIFO on the controller consumes each message group's
/// messages in the order they were sent, through the official PushConsumer (which learns the
/// setting from the server's settings answer), also when a message fails at first: its
/// successors wait until it is consumed. Nothing is lost. (With the group not FIFO, the same
/// run consumes some successors first: measured, seq 465 of order-15 before seq 15.)
#[test]
fn a_fifo_group_consumes_each_message_group_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_quorum, controllers, brokers) = start_group(dir.path(), &V5_LISTEN);
    wait_for_full_set(&controllers, Duration::from_secs(30));
    let (code, out) = cluster_tests::cluster_cli(&[
        "--controller",
        &controllers,
        "group",
        "settings",
        "v5-fifo",
        "--fifo",
        "true",
    ]);
    assert_eq!(code, 0, "group settings: {out}");
    assert!(out.contains("fifo true"), "{out}");
    let endpoint = brokers[0].v5_addr().expect("v5_listen is set").to_owned();
    // Sending takes seconds: the brokers apply the setting at their next heartbeat (200 ms).
    let sent = dir.path().join("receipts.jsonl");
    let summary = finish(start_producer(&endpoint, TOPIC, 500, &sent));
    assert_eq!(summary["ok"], 500, "{summary}");
    let receipts = receipts(&sent);

    let consumed_path = dir.path().join("consumed.jsonl");
    // The first three deliveries fail once: the client retries them itself (after the
    // group's first backoff, 10 s) while the server holds their message groups back.
    let summary = finish(start_push_consumer(
        &endpoint,
        TOPIC,
        "v5-fifo",
        receipts.len(),
        3,
        &consumed_path,
    ));
    let consumed = lines(&consumed_path);
    let got: std::collections::HashSet<&str> =
        consumed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let lost: Vec<u64> = receipts
        .iter()
        .filter(|r| !got.contains(r.id.as_str()))
        .map(|r| r.seq)
        .collect();
    assert!(lost.is_empty(), "lost: seq {lost:?}; {summary}");
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for message in consumed.iter().filter(|m| m["result"] == "success") {
        let Some(group) = message["group"].as_str() else {
            continue;
        };
        let seq = message["seq"].as_u64().unwrap();
        if let Some(previous) = last_seq.insert(group.to_owned(), seq) {
            assert!(
                previous < seq,
                "message group {group}: seq {seq} consumed after {previous}"
            );
        }
    }
    // Odd seq numbers are FIFO, in groups order-1, order-3, ... order-49.
    assert_eq!(last_seq.len(), 25, "every message group was consumed");
}
