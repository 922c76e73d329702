//! What the broker does when its store fails to write: it gives its place up at once and comes
//! back with a reopened store.
//!
//! A failed write or fsync (a full file system, EIO) poisons the store: it takes no more writes,
//! because after a failed fsync the kernel may have dropped dirty pages and a retry could
//! acknowledge data that is not on disk (`store::health`). A master with such a store can never
//! acknowledge again, and a slave can no longer replicate; only reopening the store (recovery
//! cuts what was not made durable) brings it back. So the broker **restarts itself in place**:
//! it executes its own binary again with the same arguments (same pid, so supervisors and
//! `cluster.sh` keep tracking it), which
//!
//! - ends every acknowledgement of the old process at once (it no longer exists), and makes the
//!   controller elect an in-sync slave: the new process registers with a new incarnation
//!   (elected again at once, no lease wait), or, while it waits for space, the old lease runs out;
//!   every message the old master answered `SEND_OK` is on the in-sync slaves, so it stays
//!   readable and consumable on the new master;
//! - before it opens the store, waits until the disk is below the high-water mark again
//!   ([`wait_for_disk_space`]), saying so every [`WAITING_LOG_INTERVAL`]: the broker stays out,
//!   loudly, until space returns, then rejoins as a slave and catches up;
//! - backs off when the store fails again soon after a restart (a broken disk, not a full one):
//!   each restart within [`QUICK_FAILURE`] of the previous one waits twice as long, up to
//!   [`BACKOFF_MAX`], so that a dead disk does not make it spin.
//!
//! Why not reopen the store inside the running process: the store is shared by every service,
//! task and thread of the broker; a restart in place is the one way to be sure nothing keeps a
//! handle on the failed one, and it takes the same, well-tested path as any restart.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::store::health::disk_full;
use crate::store::Store;

/// How often a broker waiting for disk space says so.
pub const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often it looks at the disk meanwhile.
const DISK_POLL: Duration = Duration::from_secs(1);
/// A store failing again this soon after a restart is failing for another reason than space.
pub const QUICK_FAILURE: Duration = Duration::from_secs(60);
/// The first back-off, doubled per quick failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
/// The longest back-off before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Environment variable carrying the restart history to the restarted process:
/// `<unix ms of the restart>:<quick failures so far>`.
const RESTART_ENV: &str = "BROKER_STORE_RESTART";

/// Waits until the disk holding `store_path` is below the high-water mark (`ratio` of its size
/// used, and `headroom_bytes` free). Returns at once when the disk cannot be measured.
pub async fn wait_for_disk_space(store_path: &Path, ratio: f64, headroom_bytes: u64) {
    let dir = existing_ancestor(store_path);
    let mut next_log = tokio::time::Instant::now();
    while disk_full(&dir, ratio, headroom_bytes) == Some(true) {
        if tokio::time::Instant::now() >= next_log {
            tracing::warn!(
                store = %store_path.display(),
                disk_high_water_ratio = ratio,
                headroom_bytes,
                "the disk is above the high-water mark: this broker stays out of its group until \
                 space returns (free space, or raise disk_high_water_ratio)"
            );
            next_log += WAITING_LOG_INTERVAL;
        }
        tokio::time::sleep(DISK_POLL).await;
    }
}

/// The store path, or its nearest existing parent (a store not created yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut dir = path.to_path_buf();
    while !dir.exists() {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => dir = parent.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
    dir
}

/// Restarts the broker in place once its store reports a failed write (see the module
/// documentation). Runs for the life of the process.
pub fn watch_store(store: Arc<Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut health = store.health();
        let reason = loop {
            if let Some(reason) = health.borrow_and_update().write_failed.clone() {
                break reason;
            }
            if health.changed().await.is_err() {
                return;
            }
        };
        let backoff = restart_backoff(std::env::var(RESTART_ENV).ok().as_deref(), unix_now_ms());
        tracing::error!(
            reason = %reason,
            backoff_ms = backoff.delay.as_millis() as u64,
            "the store failed to write: this broker gives its place up and restarts with its \
             store reopened (an in-sync slave takes over as master)"
        );
        // The acknowledgements end with this process: nothing may answer SEND_OK while waiting.
        restart(&backoff)
    })
}

/// When to restart, from the history the last restart left.
#[derive(Debug, PartialEq, Eq)]
struct Backoff {
    delay: Duration,
    quick_failures: u32,
}

fn restart_backoff(history: Option<&str>, now_ms: u64) -> Backoff {
    let previous = history.and_then(|text| {
        let (at, count) = text.split_once(':')?;
        Some((at.parse::<u64>().ok()?, count.parse::<u32>().ok()?))
    });
    match previous {
        Some((at, count)) if now_ms.saturating_sub(at) < QUICK_FAILURE.as_millis() as u64 => {
            let quick_failures = count.saturating_add(1);
            let delay = BACKOFF_FIRST
                .saturating_mul(1 << quick_failures.saturating_sub(1).min(16))
                .min(BACKOFF_MAX);
            Backoff {
                delay,
                quick_failures,
            }
        }
        _ => Backoff {
            delay: Duration::ZERO,
            quick_failures: 0,
        },
    }
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Executes this binary again with the same arguments. Blocks the calling thread through the
/// back-off on purpose: nothing of this process may go on.
fn restart(backoff: &Backoff) -> ! {
    std::thread::sleep(backoff.delay);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // /proc/self/exe is the running image even if its file was replaced since it started.
    let error = std::process::Command::new("/proc/self/exe")
        .args(args)
        .env(
            RESTART_ENV,
            format!("{}:{}", unix_now_ms(), backoff.quick_failures),
        )
        .exec();
    // Only reached if exec failed: the process must still end, or it would keep its place.
    tracing::error!(error = %error, "could not restart this broker; exiting");
    std::process::exit(75)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_only_when_they_come_quickly() {
        let now = 1_000_000;
        assert_eq!(restart_backoff(None, now).delay, Duration::ZERO);
        assert_eq!(restart_backoff(Some("garbage"), now).delay, Duration::ZERO);
        let long_ago = format!("{}:5", now - 120_000);
        assert_eq!(restart_backoff(Some(&long_ago), now).delay, Duration::ZERO);
        let recent = format!("{}:0", now - 1_000);
        assert_eq!(
            restart_backoff(Some(&recent), now),
            Backoff {
                delay: BACKOFF_FIRST,
                quick_failures: 1
            }
        );
        let many = format!("{}:30", now - 1_000);
        assert_eq!(restart_backoff(Some(&many), now).delay, BACKOFF_MAX);
    }

    #[test]
    fn a_store_not_created_yet_is_measured_at_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("a/b/store");
        assert_eq!(existing_ancestor(&store), dir.path());
    }
}
