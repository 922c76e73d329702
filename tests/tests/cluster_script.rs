//! `scripts/cluster.sh` brings each of the four topologies up and down cleanly. For each: `up`
//! waits until every group has a master and every broker is in sync, `cluster list --json`
//! shows the topology (groups, brokers, replication mode, one master each), messages sent
//! through the controller are all consumed, `status` tells a paused node from a running one,
//! and `down` stops every process with SIGTERM, each store closed cleanly (no abort marker
//! left). A stopped cluster comes up again with its data; bad usage changes nothing. `up` does
//! not depend on what the kernel's TCP tables hold last (a line that is not a listener once made
//! it exit 1 without a word), and no exit other than 0 is silent.

use std::path::Path;

use cluster_tests::{cluster_cli, cluster_env_controller_addr, run_script, run_script_with_env};
use serde_json::Value;

/// What `up` must have built: group names and brokers per group, and the replication mode.
struct Topology {
    name: &'static str,
    groups: &'static [&'static str],
    brokers_per_group: usize,
    replication: &'static str,
}

const TOPOLOGIES: &[Topology] = &[
    Topology {
        name: "single-master",
        groups: &["broker-a"],
        brokers_per_group: 1,
        replication: "ASYNC_MASTER",
    },
    Topology {
        name: "multi-master",
        groups: &["broker-a", "broker-b"],
        brokers_per_group: 1,
        replication: "ASYNC_MASTER",
    },
    Topology {
        name: "2m-2s-async",
        groups: &["broker-a", "broker-b"],
        brokers_per_group: 2,
        replication: "ASYNC_MASTER",
    },
    Topology {
        name: "2m-2s-sync",
        groups: &["broker-a", "broker-b"],
        brokers_per_group: 2,
        replication: "SYNC_MASTER",
    },
];

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 temporary path")
}

fn up(topology: &str, dir: &Path, controllers: &str) {
    let (code, stdout, stderr) = run_script(
        "cluster.sh",
        &[
            "up",
            topology,
            "--dir",
            dir_arg(dir),
            "--controllers",
            controllers,
        ],
    );
    assert_eq!(code, 0, "up {topology}: {stdout}\n{stderr}");
    assert!(
        stdout.contains("cluster up: ") && stdout.contains("CONTROLLER_ADDR="),
        "up {topology} printed: {stdout}"
    );
}

/// `down`: exit 0, no node process left, every broker store closed cleanly.
fn down_cleanly(dir: &Path, brokers: &[String]) {
    let pids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            (path.extension()? == "pid").then(|| std::fs::read_to_string(path).unwrap())
        })
        .collect();
    let (code, stdout, stderr) = run_script("cluster.sh", &["down", "--dir", dir_arg(dir)]);
    assert_eq!(code, 0, "down: {stdout}\n{stderr}");
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(dir_arg(dir)),
            "process {pid} still runs after down"
        );
    }
    for broker in brokers {
        assert!(
            !dir.join(broker).join("abort").exists(),
            "{broker} did not stop cleanly: its store's abort marker is left"
        );
    }
}

fn check_list(topology: &Topology, controllers: &str) -> Vec<String> {
    let (code, stdout) = cluster_cli(&["--controller", controllers, "--json", "cluster", "list"]);
    assert_eq!(code, 0, "cluster list: {stdout}");
    let list: Value = serde_json::from_str(stdout.trim()).expect("cluster list JSON");
    let groups = list["groups"].as_array().expect("groups");
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, topology.groups, "{}: groups", topology.name);
    let mut nodes = Vec::new();
    for g in groups {
        assert_eq!(
            g["replication"], topology.replication,
            "{}: {g}",
            topology.name
        );
        let brokers = g["brokers"].as_array().expect("brokers");
        assert_eq!(
            brokers.len(),
            topology.brokers_per_group,
            "{}: {g}",
            topology.name
        );
        let masters = brokers.iter().filter(|b| b["role"] == "MASTER").count();
        assert_eq!(masters, 1, "{}: one master per group: {g}", topology.name);
        assert_eq!(
            g["master_id"],
            brokers.iter().find(|b| b["role"] == "MASTER").unwrap()["id"]
        );
        for b in brokers {
            assert_eq!(b["alive"], true, "{b}");
            assert_eq!(b["in_sync"], true, "{b}");
            nodes.push(format!("{}-{}", g["name"].as_str().unwrap(), b["id"]));
        }
    }
    nodes
}

fn send_and_consume(controllers: &str, group: &str, expect: u64) {
    let (code, out) = cluster_cli(&[
        "--controller",
        controllers,
        "send",
        "--topic",
        "tour",
        "--count",
        "40",
    ]);
    assert_eq!(code, 0, "send: {out}");
    let (code, out) = cluster_cli(&[
        "--controller",
        controllers,
        "--json",
        "consume",
        "--topic",
        "tour",
        "--group",
        group,
        "--from",
        "first",
        "--count",
        &expect.to_string(),
        "--idle-exit-ms",
        "10000",
    ]);
    assert_eq!(code, 0, "consume: {out}");
}

#[test]
fn each_topology_comes_up_serves_and_goes_down_cleanly() {
    for topology in TOPOLOGIES {
        let dir = tempfile::tempdir().unwrap();
        // The sync topology with the default three controllers, the others with one (quicker).
        let controllers = if topology.name == "2m-2s-sync" {
            "3"
        } else {
            "1"
        };
        up(topology.name, dir.path(), controllers);
        let addr = cluster_env_controller_addr(dir.path());
        let nodes = check_list(topology, &addr);
        let (code, out) = cluster_cli(&["--controller", &addr, "topic", "create", "tour"]);
        assert_eq!(code, 0, "topic create: {out}");
        send_and_consume(&addr, "tour-1", 40);

        let (code, status, _) = run_script("cluster.sh", &["status", "--dir", dir_arg(dir.path())]);
        assert_eq!(code, 0, "status: {status}");
        let node = &nodes[nodes.len() - 1];
        let signal = |signal: &str| {
            let (code, out, err) = run_script(
                "cluster.sh",
                &[
                    "kill",
                    node,
                    "--signal",
                    signal,
                    "--dir",
                    dir_arg(dir.path()),
                ],
            );
            assert_eq!(code, 0, "kill --signal {signal}: {out}{err}");
        };
        signal("STOP");
        let (code, status, _) = run_script("cluster.sh", &["status", "--dir", dir_arg(dir.path())]);
        assert_eq!(code, 1, "status with a paused node: {status}");
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(node.as_str()) && l.contains("paused")),
            "{status}"
        );
        signal("CONT");
        let (code, logs, _) =
            run_script("cluster.sh", &["logs", node, "--dir", dir_arg(dir.path())]);
        assert!(code == 0 && logs.contains("broker serving"), "logs: {logs}");
        down_cleanly(dir.path(), &nodes);

        if topology.name == "single-master" {
            // Up again in the same directory: same cluster, same messages.
            up(topology.name, dir.path(), controllers);
            send_and_consume(&cluster_env_controller_addr(dir.path()), "tour-2", 80);
            down_cleanly(dir.path(), &nodes);
        }
        eprintln!("{}: up, served, down cleanly", topology.name);
    }
}

#[test]
fn bad_usage_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(dir.path());
    for args in [
        vec!["up", "three-masters", "--dir", d],
        vec!["up", "single-master", "--dir", d, "--controllers", "2"],
        vec!["status", "--dir", d],
        vec!["bogus"],
    ] {
        let (code, _, stderr) = run_script("cluster.sh", &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("cluster.sh:"), "{args:?}: {stderr}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused command wrote into the directory"
    );
    up("single-master", dir.path(), "1");
    for args in [
        vec!["up", "single-master", "--dir", d],
        vec!["up", "multi-master", "--dir", d],
        vec!["kill", "broker-z-9", "--dir", d],
        vec!["kill", "broker-a-0", "--signal", "HUP", "--dir", d],
    ] {
        let (code, _, stderr) = run_script("cluster.sh", &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    down_cleanly(dir.path(), &["broker-a-0".to_owned()]);
}

/// The free-port scan reads every line of `/proc/net/tcp` and `/proc/net/tcp6`; on a busy machine
/// the last line is often a connection, not a listener. Copies of both tables with such a line
/// appended last (what `CLUSTER_TCP_TABLES` is for) must not stop `up`.
#[test]
fn up_works_when_the_last_line_of_the_tcp_tables_is_not_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let tables = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["tcp", "tcp6"] {
        let mut table = std::fs::read_to_string(format!("/proc/net/{name}")).unwrap_or_else(|_| {
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
                .to_owned()
        });
        // An established connection (state 01) from 127.0.0.1:40000 to 127.0.0.1:9876.
        table.push_str(
            "  99: 0100007F:9C40 0100007F:2694 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n",
        );
        let path = tables.path().join(name);
        std::fs::write(&path, table).unwrap();
        paths.push(path.to_str().expect("a UTF-8 temporary path").to_owned());
    }
    let (code, stdout, stderr) = run_script_with_env(
        "cluster.sh",
        &[
            "up",
            "single-master",
            "--dir",
            dir_arg(dir.path()),
            "--controllers",
            "1",
        ],
        &[("CLUSTER_TCP_TABLES", &paths.join(" "))],
    );
    assert_eq!(code, 0, "up: {stdout}\n{stderr}");
    assert!(stdout.contains("cluster up: "), "up printed: {stdout}");
    down_cleanly(dir.path(), &["broker-a-0".to_owned()]);

    // A stopped cluster's status exits 1, and says so.
    let (code, _, stderr) = run_script("cluster.sh", &["status", "--dir", dir_arg(dir.path())]);
    assert_eq!(code, 1, "status of a stopped cluster: {stderr}");
    assert!(
        stderr.contains("cluster.sh: not every node is running"),
        "{stderr}"
    );
}

/// `up --tls --acl` runs a topology encrypted and checked: `up` itself gets ready over TLS as the
/// built-in admin, `cluster.env` names the CA and the admin's credentials for cluster-cli, which
/// then works, while cluster-cli without the CA cannot reach the cluster and without the
/// credentials is refused; the cluster comes up again with TLS and the ACL after `down`, and
/// `--tls` or `--acl` on a plaintext cluster's directory is refused.
#[test]
fn up_with_tls_and_acl_serves_only_over_tls_to_users() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "up",
        "single-master",
        "--dir",
        dir_arg(dir.path()),
        "--controllers",
        "1",
        "--tls",
        "--acl",
    ];
    let (code, stdout, stderr) = run_script("cluster.sh", &args);
    assert_eq!(code, 0, "up --tls: {stdout}\n{stderr}");
    let env = std::fs::read_to_string(dir.path().join("cluster.env")).unwrap();
    let ca = env
        .lines()
        .find_map(|line| line.strip_prefix("CLUSTER_TLS_CA="))
        .expect("CLUSTER_TLS_CA in cluster.env")
        .to_owned();
    assert!(Path::new(&ca).exists(), "{ca}");
    let credentials = env
        .lines()
        .find_map(|line| line.strip_prefix("CLUSTER_CREDENTIALS="))
        .expect("CLUSTER_CREDENTIALS in cluster.env")
        .to_owned();
    let controllers = cluster_env_controller_addr(dir.path());
    let (code, _) = cluster_cli(&[
        "--credentials",
        &credentials,
        "--controller",
        &controllers,
        "cluster",
        "list",
    ]);
    assert_eq!(code, 2, "a plaintext cluster-cli reached a TLS cluster");
    let (code, out) = cluster_cli(&[
        "--tls-ca",
        &ca,
        "--controller",
        &controllers,
        "--json",
        "cluster",
        "list",
    ]);
    assert_eq!(
        code, 2,
        "cluster list without credentials was answered: {out}"
    );
    let (code, out) = cluster_cli(&[
        "--tls-ca",
        &ca,
        "--credentials",
        &credentials,
        "--controller",
        &controllers,
        "--json",
        "cluster",
        "list",
    ]);
    assert_eq!(code, 0, "cluster list over TLS as the admin: {out}");
    let (code, status, _) = run_script("cluster.sh", &["status", "--dir", dir_arg(dir.path())]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("https://"), "{status}");
    down_cleanly(dir.path(), &["broker-a-0".to_owned()]);
    // Again, with its data and its certificates (no --tls needed).
    let (code, stdout, stderr) = run_script(
        "cluster.sh",
        &["up", "single-master", "--dir", dir_arg(dir.path())],
    );
    assert_eq!(code, 0, "up again: {stdout}\n{stderr}");
    down_cleanly(dir.path(), &["broker-a-0".to_owned()]);

    let plain = tempfile::tempdir().unwrap();
    up("single-master", plain.path(), "1");
    down_cleanly(plain.path(), &["broker-a-0".to_owned()]);
    let (code, _, stderr) = run_script(
        "cluster.sh",
        &[
            "up",
            "single-master",
            "--dir",
            dir_arg(plain.path()),
            "--tls",
        ],
    );
    assert_eq!(code, 2, "--tls on a plaintext cluster: {stderr}");
    assert!(stderr.contains("plaintext cluster"), "{stderr}");
    let (code, _, stderr) = run_script(
        "cluster.sh",
        &[
            "up",
            "single-master",
            "--dir",
            dir_arg(plain.path()),
            "--acl",
        ],
    );
    assert_eq!(code, 2, "--acl on a cluster without the ACL: {stderr}");
    assert!(stderr.contains("without the ACL"), "{stderr}");
}
