//! Driving the official RocketMQ 5 clients from the tests: the Python client's scripts
//! (`tests/python/`, installed by `scripts/v5-python-env.sh`) and the Rust client's program
//! (`tests/rust-client/`, built by `scripts/v5-rust-client.sh`); start them, read what they
//! wrote. Both write the same JSON lines and summaries.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::run_script;

/// The `--set` that makes a broker serve the v5 API on a free port.
pub const V5_LISTEN: [&str; 2] = ["--set", "v5_listen=\"127.0.0.1:0\""];

/// The python of the client's virtual environment, made on first use.
pub fn python() -> String {
    let (code, stdout, stderr) = run_script("v5-python-env.sh", &[]);
    assert_eq!(code, 0, "v5-python-env.sh failed: {stderr}");
    stdout.trim().to_owned()
}

/// Starts `tests/python/SCRIPT` with `args`.
pub fn start_script(script: &str, args: &[&str]) -> Child {
    start_script_as(script, args, None)
}

/// Starts `tests/python/SCRIPT` with `args`, its client signing as `credentials` (access key,
/// secret key: `V5_ACCESS_KEY`, `V5_SECRET_KEY`, read by `v5_auth.py`), or with none.
pub fn start_script_as(script: &str, args: &[&str], credentials: Option<(&str, &str)>) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut command = Command::new(python());
    command
        .env_remove("V5_ACCESS_KEY")
        .env_remove("V5_SECRET_KEY");
    if let Some((access_key, secret_key)) = credentials {
        command
            .env("V5_ACCESS_KEY", access_key)
            .env("V5_SECRET_KEY", secret_key);
    }
    command
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a python client script")
}

/// Starts the official Rust client's program (`tests/rust-client`) with `args`: `produce ...` or
/// `consume ...` (see its usage).
pub fn start_rust_client(args: &[&str]) -> Child {
    let (code, stdout, stderr) = run_script("v5-rust-client.sh", &[]);
    assert_eq!(code, 0, "v5-rust-client.sh failed: {stderr}");
    Command::new(stdout.trim())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the rust client program")
}

/// The producer, sending `count` messages to `topic` through `endpoint` (`v5_produce.py`).
pub fn start_producer(endpoint: &str, topic: &str, count: u32, out: &Path) -> Child {
    start_script(
        "v5_produce.py",
        &[endpoint, topic, &count.to_string(), path(out)],
    )
}

/// A SimpleConsumer of `group` until `expected` messages are acknowledged, holding the first
/// `hold` back (`v5_consume.py`).
pub fn start_simple_consumer(
    endpoint: &str,
    topic: &str,
    group: &str,
    expected: usize,
    hold: usize,
    out: &Path,
) -> Child {
    start_script(
        "v5_consume.py",
        &[
            endpoint,
            topic,
            group,
            &expected.to_string(),
            path(out),
            &hold.to_string(),
        ],
    )
}

/// A PushConsumer of `group` until `expected` messages are consumed, failing the first
/// delivery of the first `fail` (`v5_push.py`).
pub fn start_push_consumer(
    endpoint: &str,
    topic: &str,
    group: &str,
    expected: usize,
    fail: usize,
    out: &Path,
) -> Child {
    start_script(
        "v5_push.py",
        &[
            endpoint,
            topic,
            group,
            &expected.to_string(),
            path(out),
            &fail.to_string(),
        ],
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// Waits for a client's script or program and returns its summary line (its last line of
/// stdout).
pub fn finish(script: Child) -> serde_json::Value {
    let output = script.wait_with_output().expect("wait for the client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    eprintln!("client: {summary}");
    serde_json::from_str(summary).expect("the client's summary line")
}

/// The JSON lines a script wrote so far.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// One message the producer holds a receipt for.
pub struct Receipt {
    pub id: String,
    pub seq: u64,
    pub group: Option<String>,
}

/// The producer's receipts so far.
pub fn receipts(out: &Path) -> Vec<Receipt> {
    lines(out)
        .into_iter()
        .map(|line| Receipt {
            id: line["id"].as_str().expect("an id").to_owned(),
            seq: line["seq"].as_u64().expect("a seq"),
            group: line["group"].as_str().map(str::to_owned),
        })
        .collect()
}

/// The seq numbers of receipts whose message `consumed` does not hold with `result ==
/// "success"` (a push consumer's lines) or `acked == true` (a simple consumer's).
pub fn missing(receipts: &[Receipt], consumed: &[serde_json::Value]) -> Vec<u64> {
    let done: std::collections::HashSet<&str> = consumed
        .iter()
        .filter(|m| m["result"] == "success" || m["acked"] == true)
        .filter_map(|m| m["id"].as_str())
        .collect();
    receipts
        .iter()
        .filter(|r| !done.contains(r.id.as_str()))
        .map(|r| r.seq)
        .collect()
}

/// The seq numbers of receipts whose message a simple consumer's lines `received` never show:
/// never handed to the application. A message whose acknowledgement got no answer (its
/// member was killed meanwhile) counts as received: the application had it, and the server
/// either applied the acknowledgement or hands the message out again.
pub fn undelivered(receipts: &[Receipt], received: &[serde_json::Value]) -> Vec<u64> {
    let seen: std::collections::HashSet<&str> =
        received.iter().filter_map(|m| m["id"].as_str()).collect();
    receipts
        .iter()
        .filter(|r| !seen.contains(r.id.as_str()))
        .map(|r| r.seq)
        .collect()
}

/// A message group whose messages `consumed` (in the order the consumer wrote them) does not
/// hold in send order, counting each message's first successful consumption only; None when
/// every message group is in order.
pub fn order_violation(consumed: &[serde_json::Value]) -> Option<String> {
    let mut last: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for message in consumed
        .iter()
        .filter(|m| m["result"] == "success" || m["acked"] == true)
    {
        let (Some(id), Some(group), Some(seq)) = (
            message["id"].as_str(),
            message["group"].as_str(),
            message["seq"].as_u64(),
        ) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        if let Some(previous) = last.insert(group, seq) {
            if previous > seq {
                return Some(format!(
                    "message group {group}: seq {seq} consumed after {previous}"
                ));
            }
        }
    }
    None
}
