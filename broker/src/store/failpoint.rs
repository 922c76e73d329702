//! Pause points for fault tests: a broker started with `--failpoint NAME` stops making progress
//! on the thread that reaches point `NAME`, so a test can kill the process (with a real signal)
//! at exactly that step, something a timed kill cannot hit reliably. Unarmed, a point costs one
//! load of a `OnceLock`.
//!
//! The points are the store's, so they live in the store, which imports nothing from the rest of
//! the broker: the broker binary only arms one ([`arm`]) before it opens the store. Arming is per
//! process (a `OnceLock`), not per store: a test process that opens several stores arms none.
//!
//! The points (each named where it is placed):
//! - [`TRUNCATE_AFTER_INTENT`]: a running store's truncation has saved its intent and cut nothing;
//! - [`TRUNCATE_AFTER_LOG_CUT`]: the commit log is cut, the consume queues, epochs and checkpoint
//!   are not.

use std::sync::OnceLock;
use std::time::Duration;

/// See the module documentation.
pub const TRUNCATE_AFTER_INTENT: &str = "truncate-after-intent";
/// See the module documentation.
pub const TRUNCATE_AFTER_LOG_CUT: &str = "truncate-after-log-cut";

/// Every point, for checking `--failpoint`.
pub const ALL: &[&str] = &[TRUNCATE_AFTER_INTENT, TRUNCATE_AFTER_LOG_CUT];

static ARMED: OnceLock<&'static str> = OnceLock::new();

/// Arms point `name` for this process; once, before the store opens. An unknown name is an
/// error, so a misspelt test fails at once instead of never reaching its point.
pub fn arm(name: &str) -> Result<(), FailpointError> {
    let known =
        ALL.iter()
            .find(|point| **point == name)
            .ok_or_else(|| FailpointError::Unknown {
                name: name.to_owned(),
            })?;
    ARMED.set(known).map_err(|_| FailpointError::AlreadyArmed)
}

/// Why a failpoint could not be armed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    #[error("unknown failpoint {name:?}; known: {}", ALL.join(", "))]
    Unknown { name: String },
    #[error("a failpoint is already armed")]
    AlreadyArmed,
}

/// If point `name` is armed: says so in the log and blocks this thread for good (the test kills
/// the process). Otherwise returns at once.
pub fn reach(name: &str) {
    if ARMED.get().is_some_and(|armed| *armed == name) {
        tracing::warn!(
            failpoint = name,
            "failpoint reached: this thread waits here until the process is killed"
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_points_are_refused() {
        assert!(super::arm("no-such-point").is_err());
    }
}
