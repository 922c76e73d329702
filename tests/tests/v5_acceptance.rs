//! An existing RocketMQ 5 application against `scripts/cluster.sh up 2m-2s-sync`, through the
//! official Python client 5.1.2, unchanged: one producer sends NORMAL and FIFO messages
//! (message groups `order-N % 50`) while a SimpleConsumer group and a FIFO PushConsumer group
//! consume and acknowledge; mid-run the master of `broker-a` is killed with SIGKILL, and later
//! started again.
//!
//! Invariant: every message id the producer holds a receipt for (an OK answer) is consumed by
//! each group (lost = 0), and each message group is consumed in send order by the FIFO group.
//! Duplicates and the producer's longest gap between receipts are printed, and the gap (the
//! failover as the application feels it) is under 2 s, as the issue asks.

use std::path::Path;
use std::time::Duration;

use cluster_tests::v5::{
    finish, lines, missing, order_violation, receipts, start_producer, start_push_consumer,
    start_simple_consumer, undelivered,
};
use cluster_tests::{cli_json, cluster_cli, cluster_env_controller_addr, run_script, wait_until};

const TOPIC: &str = "payments";
const COUNT: u32 = 3000;

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 temporary path")
}

/// The id of `group`'s master, from the controller.
fn master_of(controllers: &str, group: &str) -> Option<u64> {
    let list = cli_json(&["--controller", controllers, "--json", "cluster", "list"])?;
    list["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?["master_id"]
        .as_u64()
}

fn duplicates(consumed: &[serde_json::Value]) -> usize {
    let done: Vec<&str> = consumed
        .iter()
        .filter(|m| m["result"] == "success" || m["acked"] == true)
        .filter_map(|m| m["id"].as_str())
        .collect();
    let distinct: std::collections::HashSet<&&str> = done.iter().collect();
    done.len() - distinct.len()
}

#[test]
fn a_rocketmq_5_application_loses_nothing_across_a_master_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let (code, stdout, stderr) = run_script(
        "cluster.sh",
        &["up", "2m-2s-sync", "--dir", dir_arg(&cluster)],
    );
    assert_eq!(code, 0, "up: {stdout}\n{stderr}");
    let controllers = cluster_env_controller_addr(&cluster);
    let env = std::fs::read_to_string(cluster.join("cluster.env")).unwrap();
    let endpoint = env
        .lines()
        .find_map(|line| line.strip_prefix("ROCKETMQ_ENDPOINT="))
        .expect("ROCKETMQ_ENDPOINT in cluster.env")
        .to_owned();
    let cli = |args: &[&str]| {
        let mut all = vec!["--controller", controllers.as_str()];
        all.extend_from_slice(args);
        let (code, out) = cluster_cli(&all);
        assert_eq!(code, 0, "cluster-cli {args:?}: {out}");
    };
    cli(&["topic", "create", TOPIC, "--queues", "4"]);
    cli(&["group", "settings", "v5-push", "--fifo", "true"]);

    let sent = dir.path().join("receipts.jsonl");
    let simple_out = dir.path().join("simple.jsonl");
    let push_out = dir.path().join("push.jsonl");
    let producer = start_producer(&endpoint, TOPIC, COUNT, &sent);
    let simple = start_simple_consumer(
        &endpoint,
        TOPIC,
        "v5-simple",
        COUNT as usize,
        0,
        &simple_out,
    );
    let push = start_push_consumer(&endpoint, TOPIC, "v5-push", COUNT as usize, 0, &push_out);

    assert!(
        wait_until(Duration::from_secs(60), || receipts(&sent).len() >= 500),
        "the producer got no receipts"
    );
    let master = master_of(&controllers, "broker-a").expect("broker-a has a master");
    let node = format!("broker-a-{master}");
    let (code, out, err) = run_script(
        "cluster.sh",
        &[
            "kill",
            &node,
            "--signal",
            "KILL",
            "--dir",
            dir_arg(&cluster),
        ],
    );
    assert_eq!(code, 0, "kill {node}: {out}{err}");
    assert!(
        wait_until(Duration::from_secs(15), || {
            master_of(&controllers, "broker-a").is_some_and(|m| m != master)
        }),
        "broker-a elected no successor"
    );
    let (code, out, err) = run_script("cluster.sh", &["start", &node, "--dir", dir_arg(&cluster)]);
    assert_eq!(code, 0, "start {node}: {out}{err}");

    let produced = finish(producer);
    let simple_summary = finish(simple);
    let push_summary = finish(push);
    let receipts = receipts(&sent);
    let (simple_consumed, push_consumed) = (lines(&simple_out), lines(&push_out));
    eprintln!(
        "v5 acceptance: {} receipts, {} failed sends, longest gap {} s; SimpleConsumer {} \
         duplicates, PushConsumer {} duplicates",
        receipts.len(),
        produced["failed"],
        produced["longest_gap_s"],
        duplicates(&simple_consumed),
        duplicates(&push_consumed)
    );
    // The SimpleConsumer application had a message when a receive handed it over (an
    // acknowledgement sent to the killed master may get no answer although it was applied);
    // the PushConsumer's when its listener consumed it.
    let (lost_simple, lost_push) = (
        undelivered(&receipts, &simple_consumed),
        missing(&receipts, &push_consumed),
    );
    assert!(
        lost_simple.is_empty(),
        "the SimpleConsumer group never got seq {lost_simple:?}: {simple_summary}"
    );
    assert!(
        lost_push.is_empty(),
        "the PushConsumer group never got seq {lost_push:?}: {push_summary}"
    );
    assert_eq!(
        order_violation(&push_consumed),
        None,
        "the FIFO group's order"
    );
    // Nothing is left handed out and unacknowledged: the SimpleConsumer group's committed
    // offset reached the end of every queue (an acknowledgement whose answer was lost was
    // applied, or its message came again and was acknowledged then). Its script acknowledges
    // synchronously; the PushConsumer's client acknowledges in the background and may stop
    // with the last acknowledgements unsent, so its group is not checked this way.
    let progress = cli_json(&[
        "--controller",
        &controllers,
        "--json",
        "group",
        "progress",
        "--topic",
        TOPIC,
        "v5-simple",
    ])
    .expect("group progress");
    assert_eq!(progress["diff_total"], 0, "v5-simple lags: {progress}");
    let gap = produced["longest_gap_s"]
        .as_f64()
        .expect("the producer's longest gap");
    assert!(gap < 2.0, "the producer waited {gap} s for a receipt");
    let (code, _, _) = run_script("cluster.sh", &["down", "--dir", dir_arg(&cluster)]);
    assert_eq!(code, 0, "down");
}
