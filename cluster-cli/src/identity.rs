//! Who `cluster-cli` acts as: the user whose credentials sign every call it makes to brokers
//! (send, consume, bench, drill, ha, topic on a broker, the v5 benchmarks), read once at start
//! from `--credentials FILE` (`CLUSTER_CREDENTIALS`), else from `CLUSTER_ACCESS_KEY` and
//! `CLUSTER_SECRET_KEY` (`auth::Credentials`); none: anonymous, which a broker with
//! `acl_enabled` refuses. Bad input (a missing or malformed file, one variable without the
//! other, a key that is not a valid one) stops the command with the reason before it calls
//! anything.
//!
//! Kept process-wide because every command's connections are made deep inside its own module
//! (the drill's producer and consumer, each master's `HaStatus`), and the identity never changes
//! during a run.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use auth::{Credentials, SignedChannel};
use tonic::transport::Channel;

static CREDENTIALS: OnceLock<Option<Credentials>> = OnceLock::new();

/// Reads the credentials: from `file` when given, else from the environment.
pub fn init(file: Option<&Path>) -> Result<()> {
    let credentials = match file {
        Some(path) => Some(Credentials::from_file(path).context("--credentials")?),
        None => Credentials::from_env().context("credentials from the environment")?,
    };
    // Set once, at start; a second call (none today) keeps the first.
    let _ = CREDENTIALS.set(credentials);
    Ok(())
}

/// The credentials every call is signed with; None: anonymous.
pub fn credentials() -> Option<Credentials> {
    CREDENTIALS.get().cloned().flatten()
}

/// `channel`, every call signed as this run's user.
pub fn signed(channel: Channel) -> SignedChannel {
    auth::Signed::unsigned(channel).with_user(credentials())
}
