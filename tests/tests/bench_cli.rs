//! `cluster-cli bench produce` and `bench consume` against a real broker, in JSON.
//!
//! Invariant: what `bench produce` reports as sent `SEND_OK` is what `bench consume` receives,
//! with and without batching, and stamped messages give an end-to-end latency.

use cluster_tests::{cluster_cli, BrokerProcess};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[test]
fn bench_produce_then_bench_consume_reads_every_message_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = &broker.addr().to_owned();
    let (code, out) = cluster_cli(&[
        "--broker", addr, "--json", "topic", "create", "bench", "--queues", "4",
    ]);
    assert_eq!(code, 0, "{out}");

    for batch in ["64", "1"] {
        let (code, out) = cluster_cli(&[
            "--broker",
            addr,
            "--json",
            "bench",
            "produce",
            "--topic",
            "bench",
            "--count",
            "3000",
            "--size",
            "200",
            "--in-flight",
            "32",
            "--batch-max-messages",
            batch,
            "--sent-at",
        ]);
        assert_eq!(code, 0, "{out}");
        let summary = json(&out);
        assert_eq!(summary["statuses"]["SEND_OK"], 3000, "{out}");
        assert_eq!(summary["batch_max_messages"], batch.parse::<u64>().unwrap());
        assert!(summary["msgs_per_s"].as_f64().unwrap() > 0.0);
    }

    let (code, out) = cluster_cli(&[
        "--broker",
        addr,
        "--json",
        "bench",
        "consume",
        "--topic",
        "bench",
        "--group",
        "bench-readers",
        "--count",
        "6000",
        "--idle-exit-ms",
        "10000",
    ]);
    assert_eq!(code, 0, "{out}");
    let summary = json(&out);
    assert_eq!(summary["received"], 6000, "{out}");
    assert_eq!(summary["stamped"], 6000, "{out}");
    let latency = &summary["end_to_end_latency_us"];
    assert!(latency["p50"].as_u64().unwrap() > 0, "{out}");
    assert!(latency["p50"].as_u64() <= latency["p999"].as_u64(), "{out}");

    // Nothing more to read: the group stops after the idle time with fewer than asked (exit 1).
    let (code, out) = cluster_cli(&[
        "--broker",
        addr,
        "--json",
        "bench",
        "consume",
        "--topic",
        "bench",
        "--group",
        "bench-readers",
        "--count",
        "1",
        "--idle-exit-ms",
        "1500",
    ]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(json(&out)["received"], 0, "{out}");
}

/// `bench floor` measures the bare path (three threads, two fdatasyncs per message) in the
/// directory it is given, reports what the idle-path benchmark reads, and leaves no file behind.
/// Bad input is refused before anything is created.
#[test]
fn bench_floor_reports_the_bare_path_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let (code, out) = cluster_cli(&[
        "--json", "bench", "floor", "--dir", path, "--count", "200", "--size", "512",
    ]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["count"], 200, "{out}");
    assert_eq!(report["size"], 512, "{out}");
    assert_eq!(report["fsync"], true, "{out}");
    let p50 = report["p50_us"].as_u64().unwrap();
    let p99 = report["p99_us"].as_u64().unwrap();
    // Two fdatasyncs and four loopback sends cannot take no time.
    assert!(p50 > 0 && p50 <= p99, "{out}");
    assert!(report["msgs_per_s"].as_f64().unwrap() > 0.0, "{out}");
    assert!(report["cpu_us_per_msg"].as_f64().unwrap() >= 0.0, "{out}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench floor left its files behind"
    );

    // Without the fdatasyncs: the round trips alone, and said so.
    let (code, out) = cluster_cli(&[
        "--json",
        "bench",
        "floor",
        "--dir",
        path,
        "--count",
        "50",
        "--no-fsync",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["fsync"], false, "{out}");

    let (code, out) = cluster_cli(&["--json", "bench", "floor", "--dir", path, "--count", "0"]);
    assert_ne!(code, 0, "{out}");
    let (code, out) = cluster_cli(&[
        "--json",
        "bench",
        "floor",
        "--dir",
        "/nonexistent/dir",
        "--count",
        "10",
    ]);
    assert_ne!(code, 0, "{out}");
}

/// `bench rpc` times the broker's cheapest RPC through the whole gRPC stack and reports it; it
/// measures one broker, so it refuses `--controller`.
#[test]
fn bench_rpc_times_round_trips_to_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = &broker.addr().to_owned();
    let (code, out) = cluster_cli(&["--broker", addr, "--json", "bench", "rpc", "--count", "200"]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["count"], 200, "{out}");
    let p50 = report["p50_us"].as_u64().unwrap();
    assert!(
        p50 > 0 && p50 <= report["p99_us"].as_u64().unwrap(),
        "{out}"
    );
    assert!(report["rpcs_per_s"].as_f64().unwrap() > 0.0, "{out}");

    let (code, out) = cluster_cli(&[
        "--controller",
        addr,
        "--json",
        "bench",
        "rpc",
        "--count",
        "10",
    ]);
    assert_ne!(code, 0, "{out}");
    let (code, out) = cluster_cli(&["--broker", addr, "--json", "bench", "rpc", "--count", "0"]);
    assert_ne!(code, 0, "{out}");
}
