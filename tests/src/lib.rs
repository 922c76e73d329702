//! Multi-process cluster tests: brokers (and, from step 3, controllers) started as real
//! processes on 127.0.0.1 with ephemeral ports and temporary directories, stopped and killed with
//! real signals.
//!
//! Map: `tests/tests/*.rs` hold the scenarios; this library is the harness they share:
//! [`BrokerProcess`] starts the `broker` binary and reads the address it listens on (and its
//! metrics endpoint's, when `metrics_listen` is set);
//! [`ControllerQuorum`] runs `controller` processes; [`cluster_cli`] and [`cli_json`] run the
//! admin tool; [`run_script`] (and [`run_script_with_env`]) runs `scripts/*.sh` with this build's
//! binaries; [`group_broker`]
//! and [`wait_for_masters`] build a multi-master cluster; [`failover`] holds the failover
//! scenarios' group, producer and history check.

pub mod failover;
pub mod v5;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// A binary of this workspace's build (`broker`, `cluster-cli`), brought up to date once per
/// test process with `cargo build` (a no-op when nothing changed): `cargo test` builds a binary
/// only for its own package's integration tests, so without this a scenario could run a stale
/// one.
pub fn workspace_binary(package: &str, binary: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // The test binary is target/<profile>/deps/NAME; binaries are target/<profile>/BINARY.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let mut built = BUILT.lock().expect("build lock");
    if !built.iter().any(|b| b == binary) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", package, "--bin", binary]);
        // The variables `cargo test` sets for this test binary describe the tests package, not
        // the build: ring's build script (TLS) reruns when they change, so inheriting them
        // rebuilt ring and everything above it at every test run (15 s per binary).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
            {
                command.env_remove(name.as_ref());
            }
        }
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "building {binary} failed");
        built.push(binary.to_owned());
    }
    profile_dir.join(binary)
}

/// The directory of this build's `controller`, `broker` and `cluster-cli` (each brought up to
/// date), for the scripts' `BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    workspace_binary("controller", "controller");
    workspace_binary("cluster-cli", "cluster-cli");
    workspace_binary("broker", "broker")
        .parent()
        .expect("target/<profile>")
        .to_path_buf()
}

/// Runs `scripts/NAME` with `args` and this build's binaries; its exit code, stdout and stderr.
pub fn run_script(name: &str, args: &[&str]) -> (i32, String, String) {
    run_script_with_env(name, args, &[])
}

/// [`run_script`] with `env` added to the script's environment.
pub fn run_script_with_env(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .envs(env.iter().copied())
        .env("BIN_DIR", bin_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run the script");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `CONTROLLER_ADDR` a cluster started by `scripts/cluster.sh up --dir DIR` wrote to
/// `DIR/cluster.env`.
pub fn cluster_env_controller_addr(dir: &Path) -> String {
    let env = std::fs::read_to_string(dir.join("cluster.env")).expect("cluster.env");
    env.lines()
        .find_map(|line| line.strip_prefix("CONTROLLER_ADDR="))
        .expect("CONTROLLER_ADDR in cluster.env")
        .to_owned()
}

/// Runs `cluster-cli` with `args` and returns its exit code and stdout.
pub fn cluster_cli(args: &[&str]) -> (i32, String) {
    let output = Command::new(workspace_binary("cluster-cli", "cluster-cli"))
        .args(args)
        .output()
        .expect("run cluster-cli");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).expect("cluster-cli prints UTF-8"),
    )
}

/// How many times `needle` occurs in the log file at `path` (0 when there is none yet); for
/// waiting on a line a process logs.
pub fn log_mentions(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.matches(needle).count())
        .unwrap_or(0)
}

/// Reads a starting process's stdout up to its ready line, `<ready_prefix>ADDR`, and answers
/// ADDR and, if the process printed `metrics listening on ADDR` before it (`metrics_listen` set),
/// that address.
fn read_ready_line(child: &mut Child, ready_prefix: &str) -> ReadyLines {
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut ready = ReadyLines::default();
    loop {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the process's stdout");
        if let Some(addr) = line.trim().strip_prefix("metrics listening on ") {
            ready.metrics_addr = Some(addr.to_owned());
            continue;
        }
        if let Some(addr) = line.trim().strip_prefix("v5 listening on ") {
            ready.v5_addr = Some(addr.to_owned());
            continue;
        }
        ready.addr = line
            .trim()
            .strip_prefix(ready_prefix)
            .unwrap_or_else(|| panic!("unexpected line {line:?} before {ready_prefix:?}"))
            .to_owned();
        return ready;
    }
}

/// What a process printed before it served: its address, and its other listeners'.
#[derive(Default)]
struct ReadyLines {
    addr: String,
    metrics_addr: Option<String>,
    v5_addr: Option<String>,
}

/// A `broker` process on 127.0.0.1 with an ephemeral port. Killed when dropped.
pub struct BrokerProcess {
    child: Child,
    addr: String,
    metrics_addr: Option<String>,
    v5_addr: Option<String>,
}

impl BrokerProcess {
    /// Starts a broker with its store in `store`, plus `extra_args` (which may name another
    /// `--listen` than 127.0.0.1 with an ephemeral port).
    pub fn start(store: &Path, extra_args: &[&str]) -> BrokerProcess {
        // The log goes next to the store (`<store>.log`), for reading after a failed test; for
        // a store that is a temporary directory itself, inside it (`broker.log`), so that it
        // goes with the directory instead of piling up in the system's temporary directory.
        let log_path = if store.parent() == Some(std::env::temp_dir().as_path()) {
            store.join("broker.log")
        } else {
            store.with_extension("log")
        };
        let log = std::fs::create_dir_all(log_path.parent().unwrap_or(store))
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
            })
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let listen: &[&str] = if extra_args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(workspace_binary("broker", "broker"))
            .args(listen)
            .arg("--store-path")
            .arg(store)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the broker");
        let ready = read_ready_line(&mut child, "broker listening on ");
        BrokerProcess {
            child,
            addr: ready.addr,
            metrics_addr: ready.metrics_addr,
            v5_addr: ready.v5_addr,
        }
    }

    /// `host:port` the broker serves on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `host:port` of its `/metrics` endpoint, when started with `metrics_listen` set.
    pub fn metrics_addr(&self) -> Option<&str> {
        self.metrics_addr.as_deref()
    }

    /// `host:port` of its RocketMQ 5 API, when started with `v5_listen` set.
    pub fn v5_addr(&self) -> Option<&str> {
        self.v5_addr.as_deref()
    }

    /// Sends a signal (SIGTERM, SIGKILL, SIGSTOP, ...).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this harness started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Stops the process with SIGTERM (a clean stop) and reaps it.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    /// Kills the process with SIGKILL and reaps it: once this returns its sockets are closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("reap the broker")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1, for processes that must know each other's addresses before
/// they start (controllers list their peers). Another process could take it in between; the
/// window is a few milliseconds.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `ip`, as [`free_port`].
pub fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Creates `topic` with `queues` queues through `cluster-cli`, retrying for up to 20 s: a quorum
/// that has just elected its first leader may still refuse writes for a moment (creating an
/// existing topic with the same queues succeeds, so a retry after a lost answer is harmless).
pub fn create_topic(controllers: &str, topic: &str, queues: u32) {
    let mut last = (0, String::new());
    let created = wait_until(std::time::Duration::from_secs(20), || {
        last = cluster_cli(&[
            "--controller",
            controllers,
            "topic",
            "create",
            topic,
            "--queues",
            &queues.to_string(),
        ]);
        last.0 == 0
    });
    assert!(created, "topic create: exit {}: {}", last.0, last.1);
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One member of a controller quorum started by [`ControllerQuorum`]; its log goes to
/// `<dir>/controller-<id>.log`.
pub struct ControllerProcess {
    pub id: u64,
    pub addr: String,
    /// `host:port` of its `/metrics` endpoint, when started with `metrics_listen` set.
    pub metrics_addr: Option<String>,
    child: Option<Child>,
    /// Started with empty `--peers`, to join through `controller add`.
    joining: bool,
}

impl ControllerProcess {
    /// Sends a signal to the running process.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("controller is running");
        // SAFETY: kill(2) on the pid of a child this harness started and has not reaped.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A controller quorum of real `controller` processes on 127.0.0.1, each with its own data
/// directory under `dir`.
pub struct ControllerQuorum {
    dir: PathBuf,
    peers: String,
    extra_args: Vec<String>,
    pub members: Vec<ControllerProcess>,
}

impl ControllerQuorum {
    /// Starts `count` controllers (ids 1..=count) that initialise one quorum; `extra_args` go
    /// to each (e.g. `--set snapshot_logs_since_last=50`).
    pub fn start(dir: &Path, count: u64, extra_args: &[&str]) -> ControllerQuorum {
        Self::start_on(dir, "127.0.0.1", count, extra_args)
    }

    /// [`Self::start`] with every controller listening on `ip` (a loopback address of its own,
    /// for a test that cuts links with a firewall).
    pub fn start_on(dir: &Path, ip: &str, count: u64, extra_args: &[&str]) -> ControllerQuorum {
        let addrs: Vec<(u64, String)> = (1..=count)
            .map(|id| (id, format!("{ip}:{}", free_port_on(ip))))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut quorum = ControllerQuorum {
            dir: dir.to_path_buf(),
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            members: addrs
                .into_iter()
                .map(|(id, addr)| ControllerProcess {
                    id,
                    addr,
                    metrics_addr: None,
                    child: None,
                    joining: false,
                })
                .collect(),
        };
        for id in 1..=count {
            quorum.restart(id);
        }
        quorum
    }

    /// Starts controller `id` with empty `--peers` on a free port, in no quorum yet, to be
    /// brought in with `controller add`; answers its address. It is not in [`Self::addrs`].
    pub fn start_joining(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        self.members.push(ControllerProcess {
            id,
            addr: addr.clone(),
            metrics_addr: None,
            child: None,
            joining: true,
        });
        self.restart(id);
        addr
    }

    /// Every initial member's address, comma-separated, as `--controller` takes them.
    pub fn addrs(&self) -> String {
        self.members
            .iter()
            .filter(|m| !m.joining)
            .map(|m| m.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn member(&self, id: u64) -> &ControllerProcess {
        self.members
            .iter()
            .find(|m| m.id == id)
            .expect("controller id")
    }

    /// Starts controller `id` again (same port, same data) after it was killed, or for the
    /// first time; waits until it serves.
    pub fn restart(&mut self, id: u64) {
        let log = std::fs::File::create(self.dir.join(format!("controller-{id}.log")))
            .expect("create the controller log");
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("controller id");
        if let Some(mut old) = member.child.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let peers = if member.joining { "" } else { &self.peers };
        let mut child = Command::new(workspace_binary("controller", "controller"))
            .args(["--id", &id.to_string(), "--listen", &member.addr])
            .args(["--peers", peers])
            .args(["--set", &format!("cluster_secret={TEST_CLUSTER_SECRET:?}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("controller-{id}")))
            .args(&self.extra_args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        member.metrics_addr = read_ready_line(&mut child, "controller listening on ").metrics_addr;
        member.child = Some(child);
    }

    /// Kills controller `id` with `signal` and reaps it.
    pub fn kill(&mut self, id: u64, signal: libc::c_int) {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("controller id");
        member.signal(signal);
        if let Some(mut child) = member.child.take() {
            let _ = child.wait();
        }
    }
}

/// Runs `cluster-cli` with `args` (which should include `--json`) and parses its output; `None`
/// when it printed no JSON (the command failed).
pub fn cli_json(args: &[&str]) -> Option<serde_json::Value> {
    let (_, stdout) = cluster_cli(args);
    serde_json::from_str(stdout.trim()).ok()
}

/// `cluster-cli controller status --json` against `controllers`.
pub fn controller_status(controllers: &str) -> Option<serde_json::Value> {
    cli_json(&[
        "--controller",
        controllers,
        "--json",
        "controller",
        "status",
    ])
}

/// The controller leader's id, if the quorum has one.
pub fn controller_leader(controllers: &str) -> Option<u64> {
    controller_status(controllers)?["leader_id"].as_u64()
}

/// Waits (up to 20 s) until the quorum at `controllers` has a leader and returns its id; panics
/// otherwise.
pub fn wait_for_controller_leader(controllers: &str) -> u64 {
    let mut leader = None;
    let found = wait_until(std::time::Duration::from_secs(20), || {
        leader = controller_leader(controllers);
        leader.is_some()
    });
    assert!(found, "the controller quorum has no leader");
    leader.expect("found")
}

/// Starts the master of broker group `group`, registered with `controllers`, its store under
/// `dir/group`; `extra_args` go to the broker (e.g. `--set flush_disk_type="SYNC_FLUSH"`).
pub fn group_broker_with(
    dir: &Path,
    group: &str,
    controllers: &str,
    extra_args: &[&str],
) -> BrokerProcess {
    group_broker_at(&dir.join(group), group, controllers, extra_args)
}

/// A broker of `group` registered with `controllers`, its store in `store`.
fn group_broker_at(
    store: &Path,
    group: &str,
    controllers: &str,
    extra_args: &[&str],
) -> BrokerProcess {
    let mut args: Vec<String> = [
        "--set".to_owned(),
        format!("broker_name={group:?}"),
        "--set".to_owned(),
        format!("controller_addr={controllers:?}"),
        "--set".to_owned(),
        "controller_heartbeat_interval_ms=100".to_owned(),
        "--set".to_owned(),
        format!("cluster_secret={TEST_CLUSTER_SECRET:?}"),
    ]
    .into();
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProcess::start(store, &args)
}

/// A channel to `addr` (connected on first use) whose internal calls are signed with the test
/// cluster key, for tests that stand in for a broker or a controller.
pub fn member_channel(addr: &str) -> auth::SignedChannel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a host:port address")
        .connect_timeout(std::time::Duration::from_millis(200))
        .timeout(std::time::Duration::from_secs(2));
    let key = auth::ClusterKey::new(TEST_CLUSTER_SECRET).expect("the test secret is long enough");
    auth::SignedChannel::new(endpoint.connect_lazy(), key)
}

/// The cluster secret of every controller and of every broker registered with one that the
/// tests start.
pub const TEST_CLUSTER_SECRET: &str = "cluster-test-secret";

/// Starts broker `id` of `group` in `role` (`ASYNC_MASTER`, `SYNC_MASTER`, `SLAVE`), registered
/// with `controllers`, its store under `dir/<group>-<id>`: 16 MiB segments, 200 ms heartbeats and
/// replication keep-alives; `extra_args` go last (`--set KEY=VALUE`).
pub fn group_member(
    dir: &Path,
    group: &str,
    id: u64,
    role: &str,
    controllers: &str,
    extra_args: &[&str],
) -> BrokerProcess {
    let mut args: Vec<String> = [
        format!("broker_id={id}"),
        format!("broker_role={role:?}"),
        "replication_keepalive_ms=200".to_owned(),
        "segment_bytes=16777216".to_owned(),
    ]
    .into_iter()
    .flat_map(|setting| ["--set".to_owned(), setting])
    .collect();
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    group_broker_at(
        &dir.join(format!("{group}-{id}")),
        group,
        controllers,
        &args,
    )
}

/// [`group_broker_with`] without extra arguments.
pub fn group_broker(dir: &Path, group: &str, controllers: &str) -> BrokerProcess {
    group_broker_with(dir, group, controllers, &[])
}

/// Waits (up to 20 s) until `cluster list` shows `groups` broker groups, each with an alive
/// master; panics otherwise.
pub fn wait_for_masters(controllers: &str, groups: usize) {
    let ready = wait_until(std::time::Duration::from_secs(20), || {
        cli_json(&["--controller", controllers, "--json", "cluster", "list"]).is_some_and(|list| {
            let groups_list = list["groups"].as_array().cloned().unwrap_or_default();
            groups_list.len() == groups
                && groups_list.iter().all(|g| {
                    g["brokers"].as_array().is_some_and(|bs| {
                        bs.iter()
                            .any(|b| b["role"] == "MASTER" && b["alive"] == true)
                    })
                })
        })
    });
    assert!(ready, "brokers did not register with the controller");
}

/// Every message of queues `0..queues` of `topic` as one pull consumer reads them now, queue
/// after queue, from queue offset 0 until a pull comes back empty (no waiting).
pub async fn read_queues(
    consumer: &client::PullConsumer,
    topic: &str,
    queues: u32,
) -> Vec<client::ReceivedMessage> {
    let mut all = Vec::new();
    for queue_id in 0..queues {
        let mut queue_offset = 0;
        loop {
            let result = consumer
                .pull(
                    topic,
                    queue_id,
                    queue_offset,
                    256,
                    "*",
                    std::time::Duration::ZERO,
                )
                .await
                .expect("pull");
            if result.messages.is_empty() {
                break;
            }
            queue_offset = result.next_queue_offset;
            all.extend(result.messages);
        }
    }
    all
}

/// Whether the cached route of `topic` shows `group`'s master alive on every queue, at `addr`
/// when one is given.
pub async fn group_alive(
    routes: &client::routes::Routes,
    topic: &str,
    group: &str,
    addr: Option<&str>,
) -> bool {
    let route = routes.get(topic).await.expect("route");
    client::routes::writable_queues(&route)
        .iter()
        .filter(|q| q.group == group)
        .all(|q| q.master_alive && addr.is_none_or(|a| q.master_addr == a))
}

/// The segment files of the store in `store_dir`, by base offset.
fn segment_files(store_dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut segments: Vec<_> = std::fs::read_dir(store_dir.join("commitlog"))
        .expect("commit log directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.parse::<u64>().ok().map(|base| (base, e.path()))
        })
        .collect();
    segments.sort();
    segments
}

/// Compares the commit logs of two stores up to `end`, from the master's first segment on,
/// segment by segment, a few MiB at a time (two 1 GiB logs are not read into memory); the slave
/// must hold the same segments. Panics at the first difference.
pub fn assert_same_log(master_dir: &Path, slave_dir: &Path, end: u64) {
    let master = segment_files(master_dir);
    let slave = segment_files(slave_dir);
    let bases = |s: &[(u64, std::path::PathBuf)]| s.iter().map(|(b, _)| *b).collect::<Vec<_>>();
    let covering: Vec<u64> = bases(&master).into_iter().filter(|b| *b < end).collect();
    assert_eq!(
        covering,
        bases(&slave)
            .into_iter()
            .filter(|b| *b < end)
            .collect::<Vec<_>>(),
        "the slave's segments do not start where the master's do"
    );
    let mut compared = 0u64;
    for (index, base) in covering.iter().enumerate() {
        let next = covering.get(index + 1).copied().unwrap_or(end).min(end);
        let mut a = std::fs::File::open(&master[index].1)
            .unwrap()
            .take(next - base);
        let mut b = std::fs::File::open(&slave[index].1)
            .unwrap()
            .take(next - base);
        let (mut buf_a, mut buf_b) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
        let mut at = *base;
        loop {
            let n = read_full(&mut a, &mut buf_a);
            let m = read_full(&mut b, &mut buf_b);
            assert_eq!(n, m, "segment {base}: lengths differ");
            if n == 0 {
                break;
            }
            if buf_a[..n] != buf_b[..n] {
                let first = (0..n).find(|i| buf_a[*i] != buf_b[*i]).unwrap();
                panic!("the logs differ at offset {}", at + first as u64);
            }
            at += n as u64;
            compared += n as u64;
        }
        assert_eq!(at, next, "segment {base} is shorter than the log");
    }
    // From the master's first segment: retention may have deleted the ones before it.
    let first = covering.first().copied().unwrap_or(end);
    assert_eq!(compared, end - first, "the segments do not cover the log");
}

fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// A small ext4 file system in an image file, loop-mounted at a directory, for disk-full tests:
/// a broker's store put there fills it without touching the machine's disk. Unmounted when
/// dropped. Needs root to mount (CI runs as root); `mkfs.ext4` and `mount` come with the
/// system's base packages.
pub struct LoopFs {
    image: PathBuf,
    mount_point: PathBuf,
    filler: PathBuf,
}

impl LoopFs {
    /// Makes a file system of `size_bytes` (no blocks reserved for root, so that it fills like
    /// any disk) in `image_dir` and mounts it at `mount_point`.
    pub fn mount(image_dir: &Path, mount_point: &Path, size_bytes: u64) -> LoopFs {
        // SAFETY: geteuid has no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "disk-full tests need root to loop-mount a small file system"
        );
        let image = image_dir.join(format!(
            "{}.ext4",
            mount_point.file_name().unwrap().to_string_lossy()
        ));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .expect("create the image file");
        run_checked(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", image.to_str().unwrap()],
        );
        std::fs::create_dir_all(mount_point).expect("create the mount point");
        run_checked(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount_point.to_str().unwrap(),
            ],
        );
        LoopFs {
            image,
            mount_point: mount_point.to_path_buf(),
            filler: mount_point.join("filler"),
        }
    }

    /// Bytes free on the file system now.
    pub fn available_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount_point.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes only into the zeroed struct passed; the path is a C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail as u64 * stat.f_frsize as u64
    }

    /// Takes all but `leave_bytes` of the free space with one file (written, so that the space
    /// is really used); with 0, writes until the file system refuses (ENOSPC).
    pub fn fill(&self, leave_bytes: u64) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("open the filler");
        let chunk = vec![0xa5u8; 1 << 20];
        loop {
            let available = self.available_bytes();
            if available <= leave_bytes {
                break;
            }
            let want = ((available - leave_bytes) as usize).min(chunk.len());
            match file.write_all(&chunk[..want]) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("fill the file system: {err}"),
            }
        }
        // A full file system may refuse the flush as well: what was written counts either way.
        let _ = file.sync_all();
    }

    /// Gives the filler's space back.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Lazily, so that a process still holding a file there does not keep it mounted.
        let _ = Command::new("umount")
            .args(["-l", self.mount_point.to_str().unwrap()])
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Runs a system command, panicking with its output if it fails.
fn run_checked(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
