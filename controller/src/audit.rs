//! The audit log: who did, or tried to do, an administrative action that can lose data or change
//! who may do what (an unclean election, a topic deleted, a user or a policy created, changed or
//! deleted), and how it ended.
//!
//! Each record goes two ways: a `tracing` event with target `audit` at info (so it reaches the
//! controller's log, and can be routed apart with `RUST_LOG=audit=info`), and one JSON object per
//! line appended to the audit file (`audit_log`, default `<data_dir>/audit.log`). A line is
//! written with one `write` on a file opened for appending and flushed before the call returns,
//! so records of concurrent calls never interleave. It is not fsynced: the actions audited are
//! rare, but the log is a record for people, not a recovery log; the Raft log holds what was
//! done.
//!
//! Every attempt is recorded once, by the controller that decided it: a refusal by the gate on
//! the controller that refused it, an attempt that passed it on the leader that carried it out
//! (a follower forwards without recording). Secrets never reach a record: the arguments name a
//! secret key as set or not, never its value.
//!
//! I/O errors are logged at warn (at most once a minute) and never stop the action or panic: an
//! unwritable audit file must not take the cluster's administration down with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The `tracing` target of audit records.
pub const TARGET: &str = "audit";
/// How often a failing audit file is complained about.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// How an audited attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or found already done).
    Done,
    /// Refused: by the gate (40100, 40300) or by the action's own checks.
    Refused { code: i32, message: String },
}

impl Outcome {
    /// From a service's answer.
    pub fn of<T>(result: &Result<T, tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Done,
            Err(status) => Outcome::Refused {
                code: proto::status::error_code(status)
                    .map(|code| code as i32)
                    .unwrap_or(0),
                message: status.message().to_owned(),
            },
        }
    }
}

/// One audited attempt.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// The caller's user name, or `anonymous`.
    pub user: &'a str,
    /// Where the request came from, when known.
    pub remote: Option<std::net::SocketAddr>,
    /// What was attempted: `topic.delete`, `cluster.elect_unclean`, `user.create`, ...
    pub action: &'a str,
    /// Its arguments (never a secret).
    pub arguments: Value,
    pub outcome: Outcome,
}

/// The controller's audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    controller_id: u64,
    file: Mutex<FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    file: Option<std::fs::File>,
    last_warn: Option<Instant>,
}

impl AuditLog {
    /// An audit log appended to `path` (created, with its directory, at the first record).
    pub fn new(path: PathBuf, controller_id: u64) -> AuditLog {
        AuditLog {
            path,
            controller_id,
            file: Mutex::new(FileState::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one attempt: the `audit` event and the file's line.
    pub fn record(&self, record: Record<'_>) {
        let (outcome, code, message) = match &record.outcome {
            Outcome::Done => ("done", None, None),
            Outcome::Refused { code, message } => ("refused", Some(*code), Some(message.as_str())),
        };
        let remote = record.remote.map(|addr| addr.to_string());
        tracing::info!(
            target: TARGET,
            user = record.user,
            remote = remote.as_deref(),
            action = record.action,
            arguments = %record.arguments,
            outcome,
            code,
            message,
            "audit"
        );
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        let line = json!({
            "time_ms": time_ms,
            "controller_id": self.controller_id,
            "user": record.user,
            "remote": remote,
            "action": record.action,
            "arguments": record.arguments,
            "outcome": outcome,
            "code": code,
            "message": message,
        });
        self.append(&line);
    }

    fn append(&self, line: &Value) {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut state = match self.file.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let written = match open(&mut state.file, &self.path) {
            Ok(file) => file.write_all(&bytes).and_then(|()| file.flush()),
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            // Reopened at the next record: the directory may come back, or the disk free up.
            state.file = None;
            let due = state
                .last_warn
                .is_none_or(|last| last.elapsed() >= WARN_INTERVAL);
            if due {
                state.last_warn = Some(Instant::now());
                tracing::warn!(path = %self.path.display(), error = %err, "cannot write the audit log; the record is in this log only");
            }
        }
    }
}

fn open<'a>(
    file: &'a mut Option<std::fs::File>,
    path: &Path,
) -> std::io::Result<&'a mut std::fs::File> {
    if file.is_none() {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *file = Some(opened);
    }
    file.as_mut()
        .ok_or_else(|| std::io::Error::other("audit file not open"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_as_json_lines_and_io_errors_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("audit.log");
        let log = AuditLog::new(path.clone(), 7);
        log.record(Record {
            user: "admin",
            remote: None,
            action: "user.create",
            arguments: json!({ "name": "app", "secret_key": "set" }),
            outcome: Outcome::Done,
        });
        log.record(Record {
            user: "app",
            remote: Some("127.0.0.1:5".parse().unwrap()),
            action: "topic.delete",
            arguments: json!({ "topic": "t" }),
            outcome: Outcome::Refused {
                code: 40300,
                message: "no".into(),
            },
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "user.create");
        assert_eq!(lines[0]["outcome"], "done");
        assert_eq!(lines[0]["controller_id"], 7);
        assert_eq!(lines[1]["code"], 40300);
        assert_eq!(lines[1]["remote"], "127.0.0.1:5");

        // A path under a file cannot be created: logged, not fatal.
        let bad = AuditLog::new(path.join("x"), 7);
        bad.record(Record {
            user: "admin",
            remote: None,
            action: "topic.delete",
            arguments: json!({}),
            outcome: Outcome::Done,
        });
    }
}
