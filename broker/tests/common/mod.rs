//! Shared by the crash tests: running this test binary again as a child process on one ignored
//! test, reading its stdout lines while it works, and killing it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a child may take to print the lines a test waits for.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the ignored test `child_test` of this binary with `env` set, collects the stdout lines
/// `parse` accepts, and kills the child with SIGKILL as soon as `kill_now` says so of one of them.
/// Lines already in the pipe when the kill lands are kept: the child printed them before it.
pub fn run_child_and_kill<T: Send + 'static>(
    child_test: &str,
    env: &[(&str, String)],
    parse: fn(&str) -> Option<T>,
    mut kill_now: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .args([
            "--ignored",
            "--exact",
            child_test,
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(item) = parse(&line) {
                if tx.send(item).is_err() {
                    break;
                }
            }
        }
    });
    let mut items = Vec::new();
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(item) = rx.recv_timeout(left) else {
            panic!(
                "child printed only {} lines before the deadline",
                items.len()
            );
        };
        let kill = kill_now(&item);
        items.push(item);
        if kill {
            break;
        }
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("stdout reader");
    items.extend(rx.try_iter());
    items
}

/// The seed of a randomized test: from `env_name` to replay one, else the clock. Printed.
pub fn seed(env_name: &str) -> u64 {
    let seed = std::env::var(env_name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(broker::store::now_ms);
    println!("seed {seed} (replay with {env_name}={seed})");
    seed
}

/// Holds a store directory path for the child, as its environment variable value.
pub fn dir_value(dir: &Path) -> String {
    dir.to_str().expect("temp dir paths are UTF-8").to_owned()
}
