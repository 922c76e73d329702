//! `cluster-cli` against a real broker: topic administration and the send drill, in JSON.
//!
//! Invariant: `send --keys-out` lists exactly the messages answered `SEND_OK`, and the summary
//! counts them; the exit code says whether everything was `SEND_OK`.

use cluster_tests::{cluster_cli, BrokerProcess};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[test]
fn topic_create_send_and_list_in_json() {
    let dir = tempfile::tempdir().unwrap();
    // Short delay levels, so that retried messages come back within the test.
    let broker = BrokerProcess::start(
        dir.path(),
        &["--set", "message_delay_level=\"50ms 50ms 100ms 100ms\""],
    );
    let addr = &broker.addr().to_owned();

    let (code, out) = cluster_cli(&[
        "--broker", addr, "--json", "topic", "create", "drill", "--queues", "2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["created"], true);

    let keys = dir.path().join("keys.txt");
    let keys_arg = keys.to_str().unwrap();
    for mode in ["sync", "async", "oneway"] {
        let (code, out) = cluster_cli(&[
            "--broker",
            addr,
            "--json",
            "send",
            "--topic",
            "drill",
            "--count",
            "50",
            "--size",
            "100",
            "--mode",
            mode,
            "--keys-out",
            keys_arg,
        ]);
        assert_eq!(code, 0, "{out}");
        let summary = json(&out);
        assert_eq!(summary["sent"], 50);
        if mode == "oneway" {
            assert!(
                summary["statuses"].as_object().unwrap().is_empty(),
                "one-way sends have no answers"
            );
        } else {
            assert_eq!(summary["statuses"]["SEND_OK"], 50, "{out}");
            let written = std::fs::read_to_string(&keys).unwrap();
            assert_eq!(written.lines().count(), 50);
        }
    }

    let (code, out) = cluster_cli(&["--broker", addr, "--json", "topic", "list"]);
    assert_eq!(code, 0);
    let listed = json(&out);
    let drill = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "drill")
        .expect("the drill topic is listed");
    let queues = drill["queues"].as_array().unwrap();
    let stored: u64 = queues
        .iter()
        .map(|q| q["max_queue_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, 150, "every send of the three modes arrived");

    // Consume everything with a listener that fails every 7th delivery: every key sent SEND_OK
    // is handled (the failed ones come back through the retry topic).
    let consumed = dir.path().join("consumed.txt");
    let (code, out) = cluster_cli(&[
        "--broker",
        addr,
        "--json",
        "consume",
        "--topic",
        "drill",
        "--group",
        "drillers",
        "--count",
        "150",
        "--fail-every",
        "7",
        "--idle-exit-ms",
        "20000",
        "--keys-out",
        consumed.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let summary = json(&out);
    assert!(summary["received"].as_u64().unwrap() >= 150, "{out}");
    assert!(summary["reconsume_later"].as_u64().unwrap() > 0, "{out}");
    let handled: std::collections::HashSet<String> = std::fs::read_to_string(&consumed)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for key in std::fs::read_to_string(&keys).unwrap().lines() {
        assert!(
            handled.contains(key),
            "key {key} answered SEND_OK was never handled"
        );
    }

    // The producer benchmark runs and reports what it measured.
    let (code, out) = cluster_cli(&[
        "--broker",
        addr,
        "--json",
        "bench",
        "produce",
        "--topic",
        "drill",
        "--count",
        "200",
        "--in-flight",
        "8",
    ]);
    assert_eq!(code, 0, "{out}");
    let bench = json(&out);
    assert_eq!(bench["statuses"]["SEND_OK"], 200, "{out}");
    assert!(bench["msgs_per_s"].as_f64().unwrap() > 0.0);

    // A send to an unknown topic fails, and says so in its exit code.
    let (code, _) = cluster_cli(&[
        "--broker", addr, "--json", "send", "--topic", "nope", "--count", "1",
    ]);
    assert_eq!(code, 1);
    // No broker: exit code 2.
    drop(broker);
    let (code, _) = cluster_cli(&["--broker", addr, "topic", "list"]);
    assert_eq!(code, 2);
}
