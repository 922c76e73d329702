//! The drill's steps against the cluster: waiting until it is ready, creating the topic,
//! reading one group from the cluster list, and running the operator's kill and start commands.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::controller::{wire, ControllerConnection};

use super::POLL;
use crate::admin::{readiness, ReadyArgs, HEARTBEAT_AGE_MAX_MS};

/// Waits until every master is alive and every broker in sync; the list then.
pub(super) async fn wait_ready(
    conn: &ControllerConnection,
    within: Duration,
) -> Result<wire::ClusterListResponse> {
    let deadline = Instant::now() + within;
    let ready = ReadyArgs {
        groups: 1,
        brokers: 0,
        wait_s: 0,
        heartbeat_age_max_ms: HEARTBEAT_AGE_MAX_MS,
    };
    loop {
        let last = match readiness(conn, &ready).await {
            Ok((list, problems)) => {
                if problems.is_empty() {
                    return Ok(list);
                }
                problems.join("; ")
            }
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{last}");
        }
        tokio::time::sleep(POLL * 10).await;
    }
}

/// Creates the topic on every group; a quorum that just elected its leader may refuse for a
/// moment, and creating it again with the same queues is a no-op.
pub(super) async fn create_topic(
    conn: &ControllerConnection,
    topic: &str,
    queues: u32,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match conn.create_topic(topic, queues, &[]).await {
            Ok(answer) if answer.unsynced_groups.is_empty() => return Ok(()),
            Ok(answer) if Instant::now() >= deadline => {
                bail!(
                    "topic {topic} not on the masters of {:?}",
                    answer.unsynced_groups
                )
            }
            Err(err) if Instant::now() >= deadline => return Err(err.into()),
            _ => tokio::time::sleep(POLL * 10).await,
        }
    }
}

pub(super) fn group_detail<'a>(
    list: &'a wire::ClusterListResponse,
    group: &str,
) -> Result<&'a wire::GroupDetail> {
    list.groups
        .iter()
        .find(|g| g.name == group)
        .with_context(|| format!("broker group {group} is not registered"))
}

/// Runs a kill or start template for broker `id` of `group`, its output on stderr.
pub(super) async fn run_command(template: &str, group: &str, id: u64) -> Result<()> {
    let command = template
        .replace("{node}", &format!("{group}-{id}"))
        .replace("{group}", group)
        .replace("{id}", &id.to_string());
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicate stderr")?;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .status()
        .await
        .with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
