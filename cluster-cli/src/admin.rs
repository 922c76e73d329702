//! Commands answered by the controller quorum: `controller status|add|remove`, `cluster list`,
//! `cluster ready`, `cluster elect` (in `elect.rs`), `broker drain|undrain`,
//! `topic create|route|list` when `--controller` is given.
//!
//! Why one file of about 680 lines: one function per administration command (topics, cluster
//! list and ready, controller status and membership, drain), each mostly its two output forms
//! (text and JSON); they share the formatting helpers at the end. A split by command family is
//! planned with the controller-client crate (step 8).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use client::controller::{wire, ControllerConnection};
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum ControllerCommand {
    /// The quorum: leader, term, members, each member's applied index and reachability.
    Status,
    /// Add a controller (started without itself in --peers): learner first, voter once caught up.
    Add {
        id: u64,
        /// Its address, host:port.
        addr: String,
    },
    /// Remove a controller from the quorum.
    Remove { id: u64 },
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Broker groups and their brokers: role, address, alive, in sync, offsets, replication lag.
    List,
    /// Whether every group has an alive master and every broker is alive and in its group's
    /// in-sync set (exit 0), or what is missing (exit 1); with --wait-s, until it is.
    Ready(ReadyArgs),
    /// Move mastership of a group of CONTROLLED brokers (planned switchover): the master resigns
    /// and the target (default: the best alive in-sync member) is elected.
    Elect(crate::elect::ElectArgs),
}

#[derive(clap::Subcommand, Debug)]
pub enum BrokerCommand {
    /// Stop writes to a broker group for maintenance: its queues turn read-only in every route
    /// (producers move to the other groups) and its master refuses sends with FORBIDDEN.
    /// Consumers, offsets and replication go on.
    Drain {
        /// The broker group (RocketMQ's brokerName).
        group: String,
    },
    /// Resume writes to a drained broker group.
    Undrain { group: String },
}

pub async fn broker(
    conn: &ControllerConnection,
    json_out: bool,
    command: BrokerCommand,
) -> Result<ExitCode> {
    let (group, drained) = match command {
        BrokerCommand::Drain { group } => (group, true),
        BrokerCommand::Undrain { group } => (group, false),
    };
    let answer = conn.set_group_drained(&group, drained).await?;
    let (changed, informed) = (answer.changed, answer.master_informed);
    let mut text = match (drained, changed) {
        (true, true) => format!(
            "{group} drained: read-only in every route, its master refuses sends (FORBIDDEN)"
        ),
        (true, false) => format!("{group} was already drained"),
        (false, true) => format!("{group} undrained: writable again"),
        (false, false) => format!("{group} was not drained"),
    };
    if !informed {
        text.push_str(
            "; its master has not applied it yet (no live master, or it did not answer in time):              it will at its next heartbeat",
        );
    }
    print_done(
        json_out,
        json!({
            "group": group,
            "drained": drained,
            "changed": changed,
            "master_informed": informed,
        }),
        &text,
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ReadyArgs {
    /// Also require at least this many broker groups.
    #[arg(long, default_value_t = 0)]
    pub groups: usize,
    /// Also require at least this many brokers in all.
    #[arg(long, default_value_t = 0)]
    pub brokers: usize,
    /// Ask again until ready or this many seconds have passed (0: ask once).
    #[arg(long, default_value_t = 0)]
    pub wait_s: u64,
    /// Count a broker only if the controller leader heard it (a heartbeat or its registration)
    /// within this many milliseconds.
    #[arg(long, default_value_t = HEARTBEAT_AGE_MAX_MS)]
    pub heartbeat_age_max_ms: u64,
}

/// How often `cluster ready --wait-s` asks again.
const READY_POLL: Duration = Duration::from_millis(200);

/// The default of `cluster ready --heartbeat-age-max-ms`: about two broker heartbeat intervals
/// (`controller_heartbeat_interval_ms`, 200 ms) and a little room. A broker not heard for longer
/// may be gone (killed, or restarted and not registered again yet), even though the controller
/// still shows it alive until its heartbeat timeout (3 s).
pub const HEARTBEAT_AGE_MAX_MS: u64 = 500;

/// What keeps the controller quorum from answering for the cluster: no leader, a leader that
/// does not answer as leader, or fewer than a majority of voters reachable from it (a leader
/// cut off from its quorum may not know it yet). Empty when none.
pub fn quorum_problems(status: &wire::ControllerStatusResponse) -> Vec<String> {
    // A member that cannot make progress is a problem whoever leads.
    let mut problems = raft_problems(status);
    let Some(leader) = status.leader_id else {
        problems.push("no controller leader (no quorum, or an election in progress)".to_owned());
        return problems;
    };
    let leading = status.members.iter().any(|m| {
        m.id == leader && m.reachable && m.status.as_ref().is_some_and(|s| s.state == "LEADER")
    });
    if !leading {
        problems.push(format!(
            "controller leader {leader} ({}) does not answer as leader",
            status.leader_addr
        ));
        return problems;
    }
    let voters = status.members.iter().filter(|m| m.voter).count();
    let reachable = status
        .members
        .iter()
        .filter(|m| m.voter && m.reachable)
        .count();
    if reachable * 2 <= voters {
        problems.push(format!(
            "controller leader {leader} reaches {reachable} of {voters} voters: no quorum"
        ));
    }
    problems
}

/// What keeps the cluster from being ready, one line each; empty when it is. The quorum's
/// problems first ([`quorum_problems`]): without a leader, the list is a controller's stale copy.
pub fn readiness_problems(
    status: &wire::ControllerStatusResponse,
    list: &wire::ClusterListResponse,
    args: &ReadyArgs,
) -> Vec<String> {
    let mut problems = quorum_problems(status);
    if list.groups.len() < args.groups {
        problems.push(format!(
            "{} broker groups registered, {} expected",
            list.groups.len(),
            args.groups
        ));
    }
    let brokers: usize = list.groups.iter().map(|g| g.brokers.len()).sum();
    if brokers < args.brokers {
        problems.push(format!(
            "{brokers} brokers registered, {} expected",
            args.brokers
        ));
    }
    let fresh = |b: &wire::BrokerView| {
        b.last_heartbeat_ms_ago
            .is_some_and(|age| age <= args.heartbeat_age_max_ms)
    };
    for g in &list.groups {
        match g.master_id {
            None => problems.push(format!("{}: no master", g.name)),
            Some(id) => {
                if !g.brokers.iter().any(|b| b.broker_id == id && b.alive) {
                    problems.push(format!("{}: master {id} not alive", g.name));
                }
            }
        }
        for b in &g.brokers {
            if !b.alive {
                problems.push(format!("{}: broker {} not alive", g.name, b.broker_id));
            } else if !fresh(b) {
                let heard = match b.last_heartbeat_ms_ago {
                    Some(age) => format!("last heard {age} ms ago"),
                    None => "not heard since the controller leader took over".to_owned(),
                };
                problems.push(format!(
                    "{}: broker {} {heard} (counted within {} ms)",
                    g.name, b.broker_id, args.heartbeat_age_max_ms
                ));
            } else if !g.in_sync_set.contains(&b.broker_id) {
                problems.push(format!(
                    "{}: broker {} not in the in-sync set {:?}",
                    g.name, b.broker_id, g.in_sync_set
                ));
            }
            if let Some(store) = b.store.as_ref().filter(|st| !st.problem.is_empty()) {
                problems.push(format!(
                    "{}: broker {} store: {}",
                    g.name, b.broker_id, store.problem
                ));
            }
        }
    }
    problems
}

/// What keeps the quorum from making progress although it may look healthy: a member whose
/// Raft reports a problem (a stopped core, a poisoned vote), or a leader that is not a member.
pub fn raft_problems(status: &wire::ControllerStatusResponse) -> Vec<String> {
    let mut problems: Vec<String> = status
        .members
        .iter()
        .filter_map(|m| {
            let problem = &m.status.as_ref()?.problem;
            (!problem.is_empty()).then(|| format!("controller {}: {problem}", m.id))
        })
        .collect();
    if let Some(leader) = status.leader_id {
        if !status.members.iter().any(|m| m.id == leader) {
            problems.push(format!(
                "the leader, node {leader}, is not a member of the quorum: the vote is poisoned \
                 (docs/OPERATIONS.md, \"A poisoned controller quorum\")"
            ));
        }
    }
    problems
}

/// Asks the quorum's status and the cluster list once; answers the list and what keeps the
/// cluster from being ready.
pub async fn readiness(
    conn: &ControllerConnection,
    args: &ReadyArgs,
) -> Result<(wire::ClusterListResponse, Vec<String>), client::ClientError> {
    let status = conn.status().await?;
    let list = conn.cluster_list().await?;
    let problems = readiness_problems(&status, &list, args);
    Ok((list, problems))
}

async fn cluster_ready(
    conn: &ControllerConnection,
    json_out: bool,
    args: &ReadyArgs,
) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let (list, problems) = loop {
        // While waiting, a quorum still electing its leader is one more thing to wait for.
        match readiness(conn, args).await {
            Ok((list, problems)) => {
                if problems.is_empty() || Instant::now() >= deadline {
                    break (list, problems);
                }
            }
            Err(err) if Instant::now() >= deadline => return Err(err.into()),
            Err(_) => {}
        }
        tokio::time::sleep(READY_POLL).await;
    };
    let brokers: usize = list.groups.iter().map(|g| g.brokers.len()).sum();
    if json_out {
        out!(
            "{}",
            json!({
                "ready": problems.is_empty(),
                "groups": list.groups.len(),
                "brokers": brokers,
                "problems": problems,
            })
        );
    } else if problems.is_empty() {
        out!(
            "ready: {} groups, {brokers} brokers, a controller leader with its quorum, every \
             master alive and every broker heard lately and in sync",
            list.groups.len()
        );
    } else {
        out!("not ready:");
        for problem in &problems {
            out!("  {problem}");
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ASYNC_MASTER`, `SYNC_MASTER`, or `None` when no broker of the group reported it.
fn replication_name(mode: i32) -> Option<&'static str> {
    match wire::ReplicationMode::try_from(mode) {
        Ok(wire::ReplicationMode::AsyncMaster) => Some("ASYNC_MASTER"),
        Ok(wire::ReplicationMode::SyncMaster) => Some("SYNC_MASTER"),
        _ => None,
    }
}

fn role_name(role: i32) -> &'static str {
    match wire::BrokerRole::try_from(role) {
        Ok(wire::BrokerRole::Master) => "MASTER",
        Ok(wire::BrokerRole::Slave) => "SLAVE",
        Ok(wire::BrokerRole::Controlled) => "CONTROLLED",
        _ => "UNKNOWN",
    }
}

pub async fn controller(
    conn: &ControllerConnection,
    json_out: bool,
    command: ControllerCommand,
) -> Result<ExitCode> {
    match command {
        ControllerCommand::Status => {
            let status = conn.status().await?;
            let all_reachable = status.members.iter().all(|m| m.reachable);
            let problems = raft_problems(&status);
            if json_out {
                let members: Vec<Value> = status
                    .members
                    .iter()
                    .map(|m| {
                        json!({
                            "id": m.id,
                            "addr": m.addr,
                            "voter": m.voter,
                            "reachable": m.reachable,
                            "state": m.status.as_ref().map(|s| s.state.clone()),
                            "term": m.status.as_ref().map(|s| s.term),
                            "last_log_index": m.status.as_ref().and_then(|s| s.last_log_index),
                            "applied_index": m.status.as_ref().and_then(|s| s.applied_index),
                            "snapshot_index": m.status.as_ref().and_then(|s| s.snapshot_index),
                            "matched_index": m.matched_index,
                            "problem": m.status.as_ref().map(|s| s.problem.clone()).unwrap_or_default(),
                        })
                    })
                    .collect();
                out!(
                    "{}",
                    json!({
                        "leader_id": status.leader_id,
                        "leader_addr": status.leader_addr,
                        "term": status.term,
                        "members": members,
                        "problems": problems,
                    })
                );
            } else {
                match status.leader_id {
                    Some(id) => out!(
                        "leader: {id} ({}), term {}",
                        status.leader_addr,
                        status.term
                    ),
                    None => out!("leader: none (no quorum?), term {}", status.term),
                }
                out!(
                    "{:>4} {:<22} {:<7} {:<9} {:<10} {:>8} {:>8} {:>8}",
                    "ID",
                    "ADDR",
                    "VOTER",
                    "REACHABLE",
                    "STATE",
                    "TERM",
                    "APPLIED",
                    "MATCHED"
                );
                for m in &status.members {
                    let s = m.status.as_ref();
                    out!(
                        "{:>4} {:<22} {:<7} {:<9} {:<10} {:>8} {:>8} {:>8}",
                        m.id,
                        m.addr,
                        if m.voter { "yes" } else { "learner" },
                        if m.reachable { "yes" } else { "NO" },
                        s.map(|s| s.state.as_str()).unwrap_or("-"),
                        s.map(|s| s.term.to_string()).unwrap_or("-".into()),
                        s.and_then(|s| s.applied_index)
                            .map(|i| i.to_string())
                            .unwrap_or("-".into()),
                        m.matched_index.map(|i| i.to_string()).unwrap_or("-".into()),
                    );
                }
                for problem in &problems {
                    out!("PROBLEM: {problem}");
                }
            }
            Ok(
                if status.leader_id.is_some() && all_reachable && problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            )
        }
        ControllerCommand::Add { id, addr } => {
            conn.add_controller(id, &addr).await?;
            print_done(
                json_out,
                json!({ "added": id, "addr": addr }),
                &format!("controller {id} ({addr}) added as a voter"),
            );
            Ok(ExitCode::SUCCESS)
        }
        ControllerCommand::Remove { id } => {
            conn.remove_controller(id).await?;
            print_done(
                json_out,
                json!({ "removed": id }),
                &format!("controller {id} removed"),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_done(json_out: bool, value: Value, text: &str) {
    if json_out {
        out!("{value}");
    } else {
        out!("{text}");
    }
}

pub async fn cluster(
    conn: &ControllerConnection,
    json_out: bool,
    command: ClusterCommand,
) -> Result<ExitCode> {
    match command {
        ClusterCommand::List => cluster_list(conn, json_out).await,
        ClusterCommand::Ready(args) => cluster_ready(conn, json_out, &args).await,
        ClusterCommand::Elect(args) => crate::elect::run(conn, json_out, args).await,
    }
}

async fn cluster_list(conn: &ControllerConnection, json_out: bool) -> Result<ExitCode> {
    let list = conn.cluster_list().await?;
    if json_out {
        let groups: Vec<Value> = list
            .groups
            .iter()
            .map(|g| {
                json!({
                    "name": g.name,
                    "cluster": g.cluster,
                    "replication": replication_name(g.replication),
                    "master_id": g.master_id,
                    "master_epoch": g.master_epoch,
                    "in_sync_set": g.in_sync_set,
                    "in_sync_set_epoch": g.in_sync_set_epoch,
                    "drained": g.drained,
                    "brokers": g.brokers.iter().map(|b| json!({
                        "id": b.broker_id,
                        "addr": b.addr,
                        "role": role_name(b.role),
                        "configured_role": role_name(b.configured_role),
                        "alive": b.alive,
                        "last_heartbeat_ms_ago": b.last_heartbeat_ms_ago,
                        "max_offset": b.max_offset,
                        "in_sync": b.in_sync,
                        "confirm_offset": b.confirm_offset,
                        "lag_bytes": b.lag_bytes,
                        "lag_ms": b.lag_ms,
                        "replica_connected": b.replica_connected,
                        "log_epoch": b.log_epoch,
                        "election_priority": b.election_priority,
                        "incarnation": b.incarnation,
                        "store": b.store.as_ref().map(|st| json!({
                            "write_failed": st.write_failed,
                            "corrupt_offset": st.corrupt_offset,
                            "disk_full": st.disk_full,
                            "verified": st.verified,
                            "problem": st.problem,
                        })),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out!("{}", json!({ "groups": groups }));
    } else {
        out!(
            "{:<16} {:<16} {:<6} {:>4} {:<22} {:<7} {:<10} {:>6} {:>9} {:<6} {:<8} {:>14} {:>14} {:>12} {:>8}",
            "CLUSTER",
            "GROUP",
            "REPL",
            "ID",
            "ADDR",
            "ROLE",
            "CONF_ROLE",
            "EPOCH",
            "LOG_EPOCH",
            "ALIVE",
            "IN_SYNC",
            "MAX_OFFSET",
            "CONFIRM",
            "LAG_BYTES",
            "LAG_MS"
        );
        for g in &list.groups {
            for b in &g.brokers {
                out!(
                    "{:<16} {:<16} {:<6} {:>4} {:<22} {:<7} {:<10} {:>6} {:>9} {:<6} {:<8} {:>14} {:>14} {:>12} {:>8}",
                    g.cluster,
                    g.name,
                    replication_name(g.replication)
                        .map_or("-", |mode| mode.trim_end_matches("_MASTER")),
                    b.broker_id,
                    b.addr,
                    role_name(b.role),
                    role_name(b.configured_role),
                    g.master_epoch,
                    b.log_epoch,
                    if b.alive { "yes" } else { "NO" },
                    if b.in_sync { "yes" } else { "no" },
                    b.max_offset,
                    b.confirm_offset,
                    b.lag_bytes,
                    // Known only from the master's report on a slave whose stream it has seen.
                    b.lag_ms.map(|ms| ms.to_string()).unwrap_or("-".into()),
                );
            }
        }
        for g in list.groups.iter().filter(|g| g.drained) {
            out!(
                "{}: drained (no writes; cluster-cli broker undrain {})",
                g.name,
                g.name
            );
        }
        for g in &list.groups {
            for b in &g.brokers {
                let Some(store) = b.store.as_ref().filter(|st| !st.problem.is_empty()) else {
                    continue;
                };
                out!(
                    "{} broker {}: STORE: {}",
                    g.name,
                    b.broker_id,
                    store.problem
                );
            }
        }
    }
    let all_alive = list
        .groups
        .iter()
        .all(|g| g.brokers.iter().all(|b| b.alive));
    Ok(if all_alive {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn route_json(route: &wire::TopicRoute) -> Value {
    json!({
        "topic": route.topic,
        "groups": route.groups.iter().map(|g| json!({
            "group": g.group,
            "queues": g.queue_count,
            "perm": g.perm,
            "master_id": g.master_id,
            "master_epoch": g.master_epoch,
            "brokers": g.brokers.iter().map(|b| json!({
                "id": b.broker_id,
                "addr": b.addr,
                "role": role_name(b.role),
                "alive": b.alive,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn print_route(route: &wire::TopicRoute) {
    out!(
        "{:<24} {:<16} {:>6} {:>5} {:>6} {:<30}",
        "TOPIC",
        "GROUP",
        "QUEUES",
        "PERM",
        "EPOCH",
        "MASTER"
    );
    for g in &route.groups {
        let master = g
            .brokers
            .iter()
            .find(|b| Some(b.broker_id) == g.master_id)
            .map(|b| format!("{} ({})", b.addr, if b.alive { "alive" } else { "DEAD" }))
            .unwrap_or_else(|| "none".into());
        out!(
            "{:<24} {:<16} {:>6} {:>5} {:>6} {:<30}",
            route.topic,
            g.group,
            g.queue_count,
            g.perm,
            g.master_epoch,
            master
        );
    }
}

pub async fn topic_create(
    conn: &ControllerConnection,
    json_out: bool,
    topic: &str,
    queues: u32,
    groups: &[String],
) -> Result<ExitCode> {
    let answer = conn.create_topic(topic, queues, groups).await?;
    let route = answer.route.unwrap_or_default();
    let unsynced = &answer.unsynced_groups;
    if json_out {
        out!(
            "{}",
            json!({
                "topic": topic,
                "created": answer.created,
                "unsynced_groups": unsynced,
                "route": route_json(&route),
            })
        );
    } else {
        out!(
            "topic {topic}: {}",
            if answer.created {
                "created"
            } else {
                "already there"
            }
        );
        print_route(&route);
        if !unsynced.is_empty() {
            out!(
                "warning: not yet on the master of {} (no live master, or not synced in time): \
                 sends there fail with TOPIC_NOT_FOUND until it syncs",
                unsynced.join(", ")
            );
        }
    }
    // Created in the controller either way; a group still syncing is worth a nonzero exit.
    Ok(if unsynced.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn topic_route(
    conn: &ControllerConnection,
    json_out: bool,
    topic: &str,
) -> Result<ExitCode> {
    let route = conn.route(topic).await?;
    if json_out {
        out!("{}", route_json(&route));
    } else {
        print_route(&route);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn topic_list(conn: &ControllerConnection, json_out: bool) -> Result<ExitCode> {
    let list = conn.list_topics().await?;
    if json_out {
        let topics: Vec<Value> = list.topics.iter().map(route_json).collect();
        out!("{}", json!({ "topics": topics }));
    } else {
        for route in &list.topics {
            print_route(route);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, voter: bool, state: Option<&str>) -> wire::ControllerMember {
        wire::ControllerMember {
            id,
            addr: format!("127.0.0.1:{id}"),
            voter,
            reachable: state.is_some(),
            status: state.map(|state| wire::ControllerNodeStatus {
                id,
                state: state.to_owned(),
                ..Default::default()
            }),
            matched_index: None,
        }
    }

    fn status(
        leader_id: Option<u64>,
        members: Vec<wire::ControllerMember>,
    ) -> wire::ControllerStatusResponse {
        wire::ControllerStatusResponse {
            leader_id,
            leader_addr: leader_id
                .map(|id| format!("127.0.0.1:{id}"))
                .unwrap_or_default(),
            term: 3,
            members,
        }
    }

    fn whole() -> wire::ControllerStatusResponse {
        status(
            Some(1),
            vec![
                member(1, true, Some("LEADER")),
                member(2, true, Some("FOLLOWER")),
                member(3, true, None),
            ],
        )
    }

    fn list(last_heartbeat_ms_ago: Option<u64>) -> wire::ClusterListResponse {
        wire::ClusterListResponse {
            groups: vec![wire::GroupDetail {
                name: "broker-a".into(),
                master_id: Some(0),
                in_sync_set: vec![0],
                brokers: vec![wire::BrokerView {
                    broker_id: 0,
                    alive: true,
                    last_heartbeat_ms_ago,
                    in_sync: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn args() -> ReadyArgs {
        ReadyArgs {
            groups: 1,
            brokers: 1,
            wait_s: 0,
            heartbeat_age_max_ms: HEARTBEAT_AGE_MAX_MS,
        }
    }

    #[test]
    fn ready_needs_a_leader_with_its_quorum() {
        assert!(quorum_problems(&whole()).is_empty());
        let cases = [
            status(None, vec![member(1, true, Some("FOLLOWER"))]),
            // A leader known to a follower, but gone.
            status(
                Some(1),
                vec![member(1, true, None), member(2, true, Some("FOLLOWER"))],
            ),
            // A leader cut off from the other voters.
            status(
                Some(1),
                vec![
                    member(1, true, Some("LEADER")),
                    member(2, true, None),
                    member(3, true, None),
                ],
            ),
        ];
        for status in cases {
            assert_eq!(quorum_problems(&status).len(), 1, "{status:?}");
            assert!(!readiness_problems(&status, &list(Some(100)), &args()).is_empty());
        }
    }

    #[test]
    fn ready_counts_only_brokers_heard_lately() {
        assert!(readiness_problems(&whole(), &list(Some(100)), &args()).is_empty());
        for stale in [None, Some(HEARTBEAT_AGE_MAX_MS + 1)] {
            let problems = readiness_problems(&whole(), &list(stale), &args());
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("broker 0"), "{problems:?}");
        }
    }
}
