//! The maintenance and inspection commands of `cluster-cli` against a real multi-master
//! cluster (`scripts/cluster.sh up multi-master`): `topic status` counts what each master
//! holds, `group progress` shows per queue what a consumer group has left (its retry topic
//! included), and `broker drain` takes a group out of the write path (read-only in routes, its
//! master refusing sends with FORBIDDEN) until `broker undrain`, losing nothing.

use std::path::Path;

use cluster_tests::{cli_json, cluster_cli, cluster_env_controller_addr, run_script};
use serde_json::Value;

fn json(controllers: &str, args: &[&str]) -> Value {
    let mut all = vec!["--controller", controllers, "--json"];
    all.extend_from_slice(args);
    cli_json(&all).unwrap_or_else(|| panic!("no JSON from {args:?}"))
}

/// Messages each broker group holds of `topic`, from `topic status`.
fn held(controllers: &str, topic: &str) -> Vec<(String, u64)> {
    let status = json(controllers, &["topic", "status", topic]);
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let messages = g["queues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q["messages"].as_u64().unwrap())
                .sum();
            (g["group"].as_str().unwrap().to_owned(), messages)
        })
        .collect()
}

fn send(controllers: &str, count: u32) -> Value {
    json(
        controllers,
        &["send", "--topic", "orders", "--count", &count.to_string()],
    )
}

fn up(dir: &Path) -> String {
    let d = dir.to_str().unwrap();
    let (code, out, err) = run_script(
        "cluster.sh",
        &["up", "multi-master", "--dir", d, "--controllers", "1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    cluster_env_controller_addr(dir)
}

#[test]
fn topic_status_group_progress_and_drain_tell_and_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let (code, out) = cluster_cli(&[
        "--controller",
        &c,
        "topic",
        "create",
        "orders",
        "--queues",
        "2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(send(&c, 100)["statuses"]["SEND_OK"], 100);

    // topic status: four queues, 100 messages over both groups.
    let status = json(&c, &["topic", "status", "orders"]);
    assert_eq!(status["messages"], 100, "{status}");
    assert_eq!(held(&c, "orders").len(), 2);

    // group progress before the group consumed anything: everything is left, no offsets.
    let progress = json(&c, &["group", "progress", "billing", "--topic", "orders"]);
    assert_eq!(progress["diff_total"], 100, "{progress}");
    let queues = progress["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4, "{progress}");
    assert!(
        queues.iter().all(|q| q["consumer_offset"].is_null()),
        "{progress}"
    );

    let (code, out) = cluster_cli(&[
        "--controller",
        &c,
        "consume",
        "--topic",
        "orders",
        "--group",
        "billing",
        "--from",
        "first",
        "--count",
        "100",
        "--idle-exit-ms",
        "10000",
    ]);
    assert_eq!(code, 0, "{out}");
    // The consumer commits as it goes; its last commits land shortly after it stops.
    let settled = cluster_tests::wait_until(std::time::Duration::from_secs(10), || {
        json(&c, &["group", "progress", "billing", "--topic", "orders"])["diff_total"] == 0
    });
    let progress = json(&c, &["group", "progress", "billing", "--topic", "orders"]);
    assert!(settled, "{progress}");
    for q in progress["queues"].as_array().unwrap() {
        assert_eq!(q["consumer_offset"], q["broker_offset"], "{q}");
    }

    // Drain broker-a: read-only in the route, cluster list says so, sends go to broker-b.
    // The command answers once broker-a's master applied it.
    let drained = json(&c, &["broker", "drain", "broker-a"]);
    assert_eq!(
        (&drained["changed"], &drained["master_informed"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{drained}"
    );
    assert_eq!(json(&c, &["broker", "drain", "broker-a"])["changed"], false);
    let list = json(&c, &["cluster", "list"]);
    let drained: Vec<(&str, bool)> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["drained"].as_bool().unwrap()))
        .collect();
    assert_eq!(drained, [("broker-a", true), ("broker-b", false)]);
    let route = json(&c, &["topic", "route", "orders"]);
    let perms: Vec<u64> = route["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["perm"].as_u64().unwrap())
        .collect();
    assert_eq!(perms, [4, 6], "{route}");
    // A producer that talks to the drained master directly is refused, with nothing stored:
    // at once, since the drain command answered only once the master had applied it.
    let master_a = list["groups"][0]["brokers"][0]["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let send_direct = || {
        cluster_cli(&[
            "--broker", &master_a, "--json", "send", "--topic", "orders", "--count", "3",
        ])
    };
    let before = held(&c, "orders");
    let (code, out) = send_direct();
    assert_eq!(code, 1, "{out}");
    let refused: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(refused["errors"], 3, "{refused}");
    assert!(
        refused["first_error"].as_str().unwrap().contains("40300"),
        "{refused}"
    );
    assert_eq!(held(&c, "orders")[0], before[0]);

    // Producers following routes send to broker-b only.
    assert_eq!(send(&c, 40)["statuses"]["SEND_OK"], 40);
    let during = held(&c, "orders");
    assert_eq!(during[0], before[0], "a drained group took messages");
    assert_eq!(during[1].1, before[1].1 + 40);

    // Undrain: broker-a takes messages again.
    let undrained = json(&c, &["broker", "undrain", "broker-a"]);
    assert_eq!(
        (&undrained["changed"], &undrained["master_informed"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{undrained}"
    );
    assert_eq!(send(&c, 10)["statuses"]["SEND_OK"], 10);
    assert!(
        held(&c, "orders")[0].1 > before[0].1,
        "broker-a takes no messages once undrained"
    );

    // Output into a pipe nobody reads any more (`cluster-cli cluster list | head` once head has
    // exited) ends the command quietly, with 0, instead of a panic. The read end is closed
    // before the command can print: it first asks the controller over the network.
    let mut child = std::process::Command::new(cluster_tests::workspace_binary(
        "cluster-cli",
        "cluster-cli",
    ))
    .args(["--controller", &c, "cluster", "list"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    drop(child.stdout.take());
    let ended = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Unknown names change nothing and exit 2.
    let (code, _) = cluster_cli(&["--controller", &c, "broker", "drain", "broker-z"]);
    assert_eq!(code, 2);
    let (code, _) = cluster_cli(&["--controller", &c, "topic", "status", "nosuch"]);
    assert_eq!(code, 2);

    let (code, out, err) = run_script(
        "cluster.sh",
        &["down", "--dir", dir.path().to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
}
