//! `scripts/local-cluster.sh` (README's first command, the cluster docs/OPERATIONS.md starts by
//! hand): it brings up three controllers and two masters, `controller status` and `cluster list`
//! show them, `cluster-cli` sends and consumes through the controller over both groups with no
//! message lost, and SIGTERM stops every process it started.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cluster_tests::{cli_json, free_port, wait_until, workspace_binary};

#[test]
fn the_local_cluster_script_starts_a_usable_three_controller_two_master_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = workspace_binary("broker", "broker")
        .parent()
        .unwrap()
        .to_path_buf();
    workspace_binary("replication", "controller");
    workspace_binary("cluster-cli", "cluster-cli");
    let controller_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let broker_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/local-cluster.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .env("BIN_DIR", &bin_dir)
        .env("CLUSTER_DIR", dir.path())
        .env("CONTROLLER_PORTS", join(&controller_ports))
        .env("BROKER_PORTS", join(&broker_ports))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The script's lines arrive on a thread, so that waiting for "ready" has a deadline.
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let controllers = loop {
        match lines.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                if let Some(addrs) = line.strip_prefix("cluster ready: CONTROLLER_ADDR=") {
                    break addrs.to_owned();
                }
            }
            Err(_) => {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!(
                    "the script never said ready: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    };

    let status = cli_json(&[
        "--controller",
        &controllers,
        "--json",
        "controller",
        "status",
    ])
    .expect("controller status answers");
    assert!(status["leader_id"].is_u64(), "{status}");
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["reachable"] == true), "{status}");
    let list = cli_json(&["--controller", &controllers, "--json", "cluster", "list"])
        .expect("cluster list answers");
    let groups = list["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broker-a", "broker-b"], "{list}");
    for group in groups {
        let brokers = group["brokers"].as_array().unwrap();
        assert!(
            brokers
                .iter()
                .any(|b| b["role"] == "MASTER" && b["alive"] == true),
            "{list}"
        );
    }

    // Used through the controller alone: a topic over both groups, sends and a consumer.
    let cli = |args: &[&str]| {
        let mut all = vec!["--controller", controllers.as_str(), "--json"];
        all.extend_from_slice(args);
        cli_json(&all).unwrap_or_else(|| panic!("cluster-cli {args:?} printed no JSON"))
    };
    let created = cli(&["topic", "create", "orders", "--queues", "2"]);
    assert_eq!(created["unsynced_groups"].as_array().unwrap().len(), 0);
    let sent = cli(&[
        "send", "--topic", "orders", "--count", "200", "--mode", "async",
    ]);
    assert_eq!(sent["statuses"]["SEND_OK"], 200, "{sent}");
    let consumed = cli(&[
        "consume", "--topic", "orders", "--group", "audit", "--from", "first", "--count", "200",
    ]);
    assert_eq!(consumed["received"], 200, "{consumed}");
    let route = cli(&["topic", "route", "orders"]);
    assert_eq!(route["groups"].as_array().unwrap().len(), 2, "{route}");

    // SIGTERM stops everything it started.
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let exited = wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(exited, "the script did not stop on SIGTERM");
    let all_ports = controller_ports.iter().chain(&broker_ports);
    for port in all_ports {
        let closed = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", *port)).is_err()
        });
        assert!(closed, "port {port} still served after the script stopped");
    }
}
