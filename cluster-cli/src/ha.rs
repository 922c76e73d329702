//! `ha status GROUP`: one broker group's replication state, as RocketMQ's `mqadmin haStatus` and
//! `getSyncStateSet` show it.
//!
//! Two sources, asked in order: the controller's `ClusterList` names the group's master and its
//! address (and holds the group's in-sync set and epochs); the master's `HaStatus` (service
//! `LogShipping`, on the broker's own port) then says what it knows of each slave right now. The
//! master's answer is the one printed, because only the master sees the replication streams.
//! When the master cannot be asked (no master, or it does not answer), the controller's part is
//! printed instead and the exit code is 1, so an operator still sees the accepted in-sync set
//! during a failover.
//!
//! Nothing here changes state: both calls are reads.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use client::controller::{wire, ControllerConnection};
use client::ClientError;
use proto::replication::log_shipping_client::LogShippingClient;
use proto::replication::{HaStatusRequest, HaStatusResponse};
use serde_json::{json, Value};

/// How long to wait for the master's TCP connection: a master that is down should be reported
/// in about a second or two, not after the OS's connect timeout.
const MASTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the master may take to answer once connected; HaStatus reads in-memory state only,
/// so a slower answer means a stopped or overloaded process.
const MASTER_CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Subcommand, Debug)]
pub enum HaCommand {
    /// One broker group's replication: master, epochs, offsets, in-sync set, and per slave its
    /// connection, acknowledged offsets and lag (like mqadmin haStatus and getSyncStateSet).
    Status {
        /// The broker group (RocketMQ's brokerName).
        group: String,
    },
}

/// Runs an `ha` command. Exit 0 when the master answered; 1 when the group is unknown, has no
/// master, or its master did not answer (the controller's view is printed then).
pub async fn run(
    conn: &ControllerConnection,
    json_out: bool,
    command: HaCommand,
) -> Result<ExitCode> {
    let HaCommand::Status { group } = command;
    let list = conn.cluster_list().await?;
    let Some(detail) = list.groups.iter().find(|g| g.name == group) else {
        let known: Vec<&str> = list.groups.iter().map(|g| g.name.as_str()).collect();
        eprintln!(
            "cluster-cli: broker group {group:?} is unknown to the controller (known groups: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return Ok(ExitCode::from(1));
    };
    let Some(master_id) = detail.master_id else {
        let problem = format!(
            "broker group {group:?} has no master (the controller elects one once a broker of the \
             group is alive and eligible)"
        );
        print_controller_view(json_out, detail, None, &problem);
        eprintln!("cluster-cli: {problem}");
        return Ok(ExitCode::from(1));
    };
    let Some(master) = detail.brokers.iter().find(|b| b.broker_id == master_id) else {
        let problem = format!(
            "the controller names broker {master_id} master of group {group:?} but lists no \
             address for it"
        );
        print_controller_view(json_out, detail, None, &problem);
        eprintln!("cluster-cli: {problem}");
        return Ok(ExitCode::from(1));
    };
    match ha_status(&master.addr).await {
        Ok(status) => {
            if status.group != group {
                // The address now belongs to another group's broker (restarted elsewhere): the
                // answer is not this group's, so it must not be printed as if it were.
                let problem = format!(
                    "the broker at {} answered for group {:?}, not {group:?}: the controller's \
                     view is stale",
                    master.addr, status.group
                );
                print_controller_view(json_out, detail, Some(master), &problem);
                eprintln!("cluster-cli: {problem}");
                return Ok(ExitCode::from(1));
            }
            print_status(json_out, &status, &master.addr);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let problem = format!(
                "master {master_id} of group {group:?} at {} did not answer HaStatus: {}",
                master.addr,
                describe(&err)
            );
            print_controller_view(json_out, detail, Some(master), &problem);
            eprintln!("cluster-cli: {problem}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Asks the broker at `addr` for its HaStatus, within the connect and call timeouts. A broker
/// that is not its group's master refuses with `NOT_MASTER`.
pub(crate) async fn ha_status(addr: &str) -> Result<HaStatusResponse, ClientError> {
    let endpoint =
        proto::dial::endpoint(addr, MASTER_CONNECT_TIMEOUT).map_err(|_| ClientError::Invalid {
            reason: "the master's address is not host:port",
        })?;
    // Each step under its own deadline: the connect timeout covers only the TCP handshake, and
    // a master stopped with SIGSTOP accepts connections (the kernel does) but never answers.
    let channel = tokio::time::timeout(MASTER_CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| ClientError::Timeout {
            timeout_ms: MASTER_CONNECT_TIMEOUT.as_millis() as u64,
        })??;
    let response = tokio::time::timeout(
        MASTER_CALL_TIMEOUT,
        LogShippingClient::new(crate::identity::signed(channel)).ha_status(HaStatusRequest {}),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        timeout_ms: MASTER_CALL_TIMEOUT.as_millis() as u64,
    })??;
    Ok(response.into_inner())
}

/// `err` and its causes, joined with `: `, each said once: the transport's layers repeat their
/// cause in their own message ("transport error: transport error: tcp connect error: ...").
fn describe(err: &ClientError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

/// The master's answer: a header block and one row per replica, or one JSON object.
fn print_status(json_out: bool, status: &HaStatusResponse, master_addr: &str) {
    if json_out {
        out!("{}", status_json(status, master_addr));
        return;
    }
    let field = |name: &str, value: String| out!("{name:<22} {value}");
    field("group:", status.group.clone());
    field("master:", format!("{} ({master_addr})", status.master_id));
    field("master epoch:", status.master_epoch.to_string());
    field("replication:", status.replication.clone());
    field("write offset:", status.write_offset.to_string());
    field("flushed offset:", status.flushed_offset.to_string());
    field("confirm offset:", status.confirm_offset.to_string());
    field(
        "in-sync set:",
        format!(
            "{} (epoch {})",
            id_list(&status.in_sync_set),
            status.in_sync_set_epoch
        ),
    );
    if !status.pending_in_sync_set.is_empty() {
        field(
            "pending in-sync set:",
            format!(
                "{} (proposed to the controller, not yet accepted)",
                id_list(&status.pending_in_sync_set)
            ),
        );
    }
    field(
        "min_in_sync_replicas:",
        status.min_in_sync_replicas.to_string(),
    );
    out!();
    if status.replicas.is_empty() {
        out!("no slave has connected to this master since it took the role");
        return;
    }
    out!(
        "{:>4} {:<22} {:<9} {:>14} {:>14} {:>12} {:>8} IN_SYNC",
        "ID",
        "ADDR",
        "CONNECTED",
        "WRITTEN",
        "FLUSHED",
        "LAG_BYTES",
        "LAG_MS"
    );
    for r in &status.replicas {
        out!(
            "{:>4} {:<22} {:<9} {:>14} {:>14} {:>12} {:>8} {}",
            r.broker_id,
            r.addr,
            if r.connected { "yes" } else { "NO" },
            r.written_offset,
            r.flushed_offset,
            r.lag_bytes,
            r.lag_ms,
            if r.in_sync { "yes" } else { "no" },
        );
    }
}

/// The master's answer as JSON: the proto's field names, plus where the master was reached.
fn status_json(status: &HaStatusResponse, master_addr: &str) -> Value {
    json!({
        "group": status.group,
        "master_id": status.master_id,
        "master_addr": master_addr,
        "master_reachable": true,
        "master_epoch": status.master_epoch,
        "replication": status.replication,
        "write_offset": status.write_offset,
        "flushed_offset": status.flushed_offset,
        "confirm_offset": status.confirm_offset,
        "in_sync_set": status.in_sync_set,
        "in_sync_set_epoch": status.in_sync_set_epoch,
        "pending_in_sync_set": status.pending_in_sync_set,
        "min_in_sync_replicas": status.min_in_sync_replicas,
        "replicas": status.replicas.iter().map(|r| json!({
            "broker_id": r.broker_id,
            "addr": r.addr,
            "connected": r.connected,
            "written_offset": r.written_offset,
            "flushed_offset": r.flushed_offset,
            "lag_bytes": r.lag_bytes,
            "lag_ms": r.lag_ms,
            "in_sync": r.in_sync,
        })).collect::<Vec<_>>(),
    })
}

/// What the controller knows of the group, printed when the master cannot be asked: its master
/// (if any), epochs and accepted in-sync set. `problem` says why the master's view is missing.
fn print_controller_view(
    json_out: bool,
    detail: &wire::GroupDetail,
    master: Option<&wire::BrokerView>,
    problem: &str,
) {
    if json_out {
        out!(
            "{}",
            json!({
                "group": detail.name,
                "master_id": detail.master_id,
                "master_addr": master.map(|m| m.addr.as_str()),
                "master_reachable": false,
                "master_alive": master.map(|m| m.alive),
                "master_epoch": detail.master_epoch,
                "in_sync_set": detail.in_sync_set,
                "in_sync_set_epoch": detail.in_sync_set_epoch,
                "error": problem,
            })
        );
        return;
    }
    let field = |name: &str, value: String| out!("{name:<22} {value}");
    field("group:", detail.name.clone());
    field(
        "master:",
        match (detail.master_id, master) {
            (Some(id), Some(m)) => format!(
                "{id} ({}) NOT ANSWERING; the controller sees it {}",
                m.addr,
                if m.alive { "alive" } else { "dead" }
            ),
            (Some(id), None) => format!("{id} (no address)"),
            (None, _) => "none".to_owned(),
        },
    );
    field("master epoch:", detail.master_epoch.to_string());
    field(
        "in-sync set:",
        format!(
            "{} (epoch {})",
            id_list(&detail.in_sync_set),
            detail.in_sync_set_epoch
        ),
    );
    out!("(the controller's view only: replica offsets and lag come from the master)");
}

/// Broker ids as `[0, 1, 2]`.
fn id_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("[{}]", ids.join(", "))
}
