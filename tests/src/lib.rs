//! Multi-process cluster tests: brokers (and, from step 3, controllers) started as real
//! processes on 127.0.0.1 with ephemeral ports and temporary directories, stopped and killed with
//! real signals.
//!
//! Map: `tests/tests/*.rs` hold the scenarios; this library is the harness they share:
//! [`BrokerProcess`] starts the `broker` binary and reads the address it listens on;
//! [`cluster_cli`] runs the admin tool.

use std::io::{BufRead, BufReader};
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

/// A `broker` process on 127.0.0.1 with an ephemeral port. Killed when dropped.
pub struct BrokerProcess {
    child: Child,
    addr: String,
}

impl BrokerProcess {
    /// Starts a broker with its store in `store`, plus `extra_args`.
    pub fn start(store: &Path, extra_args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(workspace_binary("broker", "broker"))
            .args(["--listen", "127.0.0.1:0", "--store-path"])
            .arg(store)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the broker's first line");
        let addr = line
            .trim()
            .strip_prefix("broker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        BrokerProcess { child, addr }
    }

    /// `host:port` the broker serves on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a signal (SIGTERM, SIGKILL, SIGSTOP, ...).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this harness started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
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
