//! The `Controller` gRPC service: what brokers, clients and cluster-cli call.
//!
//! Any controller answers any request:
//! - writes (registration, topics, settings, membership) and liveness (heartbeats, cluster list)
//!   are forwarded to the leader, once: a forwarded request that reaches a non-leader (views
//!   differ during an election) is answered `CONTROLLER_NOT_AVAILABLE`, never forwarded again;
//! - reads of metadata (routes, topics) are forwarded too, for the leader's liveness view; when
//!   no leader is known they are answered from this controller's applied state, with every
//!   broker presumed alive (nothing better is known), so that routes outlive a lost quorum;
//! - the route watch stream is served by the leader only; a follower redirects with the leader's
//!   address in `x-controller-leader`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::{ClusterKey, SignedChannel};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
// Every error status of this service comes from the status codec.
use proto::error_status as error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::admission;
use super::election::{best_switchover_target, is_candidate_alive, ElectionContext};
use super::lease::{GrantDecision, SwitchoverEnd, SwitchoverPlan};
use super::liveness::{Heartbeat, Liveness, Seen, StoreReport};
use super::membership::{self, Admission, Members, MembershipError};
use super::state::{
    BrokerGroup, BrokerInfo, ClusterState, Command, CommandError, ConfiguredRole, GroupSettings,
    MessageModel, ReplicationMode, IN_SYNC_SET_MAX, PERM_READ, PERM_WRITE,
};
use super::store::SharedState;
use super::{NodeId, Raft};

/// Metadata key marking a request one controller forwarded to another.
const FORWARDED_METADATA_KEY: &str = "x-forwarded";
/// How long `Status` waits for each member's own answer.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a forwarded request may wait for the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a topic creation waits for the groups' masters to apply it (below the client's
/// per-attempt timeout, 5 s).
const SYNC_WAIT_MAX: Duration = Duration::from_secs(3);
/// How often that wait looks again.
const SYNC_POLL: Duration = Duration::from_millis(10);
/// Longest a planned switchover (`ElectMaster`) waits for its election before answering: below
/// the forwarding timeout, so that a call forwarded by a follower gets this answer and not a
/// transport timeout. With the default lease (1 s + 0.2 s margin) a switchover whose master does
/// not confirm ends in about 1.3 s.
const SWITCHOVER_WAIT_MAX: Duration = Duration::from_secs(8);

fn command_error(err: CommandError) -> Status {
    let code = match &err {
        CommandError::Invalid(_) => ErrorCode::BadRequest,
        CommandError::GroupNotFound(_) => ErrorCode::BrokerGroupNotFound,
        CommandError::TopicNotFound(_) => ErrorCode::TopicNotFound,
        CommandError::Conflict(_) => ErrorCode::Conflict,
    };
    error(code, err.to_string())
}

fn unavailable(message: impl Into<String>) -> Status {
    error(ErrorCode::ControllerNotAvailable, message)
}

/// Where a request is answered.
enum Target {
    Here,
    Leader(ControllerClient<SignedChannel>),
}

/// The service of one controller.
pub struct ControllerService {
    id: NodeId,
    raft: Raft,
    state: SharedState,
    liveness: Arc<Liveness>,
    election: ElectionContext,
    peers: Mutex<HashMap<String, ControllerClient<SignedChannel>>>,
    /// Membership changes one at a time (openraft refuses overlapping ones).
    membership_lock: tokio::sync::Mutex<()>,
    /// Signs what this controller forwards to the leader: brokers' internal calls among them.
    key: ClusterKey,
}

impl ControllerService {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: SharedState,
        liveness: Arc<Liveness>,
        election: ElectionContext,
        key: ClusterKey,
    ) -> Self {
        ControllerService {
            id,
            raft,
            state,
            liveness,
            election,
            peers: Mutex::new(HashMap::new()),
            membership_lock: tokio::sync::Mutex::new(()),
            key,
        }
    }

    /// The leader's id and address, as this node knows them.
    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
            .unwrap_or_default();
        Some((leader, addr))
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn peer(&self, addr: &str) -> Result<ControllerClient<SignedChannel>, Status> {
        let mut peers = self.peers.lock().expect("peer table lock poisoned");
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|err| unavailable(format!("bad controller address {addr:?}: {err}")))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(FORWARD_TIMEOUT)
            .tcp_nodelay(true);
        let client = ControllerClient::new(SignedChannel::new(
            endpoint.connect_lazy(),
            self.key.clone(),
        ));
        peers.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Where a write (or a question only the leader can answer) goes.
    fn target_for_write<T>(&self, request: &Request<T>) -> Result<Target, Status> {
        if self.is_leader() {
            return Ok(Target::Here);
        }
        if request.metadata().contains_key(FORWARDED_METADATA_KEY) {
            return Err(unavailable(format!(
                "controller {} received a forwarded request but is not the leader (election in \
                 progress); retry",
                self.id
            )));
        }
        match self.leader() {
            Some((leader, addr)) if leader != self.id && !addr.is_empty() => {
                Ok(Target::Leader(self.peer(&addr)?))
            }
            _ => Err(unavailable(format!(
                "controller {} knows no leader: no quorum, or an election is in progress",
                self.id
            ))),
        }
    }

    /// Where a read goes: the leader if there is one, else here.
    fn target_for_read<T>(&self, request: &Request<T>) -> Target {
        if self.is_leader() || request.metadata().contains_key(FORWARDED_METADATA_KEY) {
            return Target::Here;
        }
        match self.leader() {
            Some((leader, addr)) if leader != self.id && !addr.is_empty() => {
                match self.peer(&addr) {
                    Ok(client) => Target::Leader(client),
                    Err(_) => Target::Here,
                }
            }
            _ => Target::Here,
        }
    }

    /// Appends a command through Raft and waits until it is applied.
    async fn write(&self, command: Command) -> Result<bool, Status> {
        match self.raft.client_write(command).await {
            Ok(response) => response.data.into_result().map_err(command_error),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(unavailable("leadership moved while writing; retry"))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(err))) => {
                Err(error(ErrorCode::Conflict, err.to_string()))
            }
            Err(RaftError::Fatal(err)) => Err(unavailable(format!("controller stopping: {err}"))),
        }
    }

    /// Whether a broker counts as alive in answers given here.
    fn alive(&self, group: &str, broker_id: u64) -> bool {
        if self.is_leader() {
            self.liveness.is_alive(group, broker_id)
        } else {
            // Answering without a leader: nothing better is known.
            true
        }
    }
}

fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// Maps a failure to reach the leader to CONTROLLER_NOT_AVAILABLE; the leader's own errors pass.
fn from_leader<T>(result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    result.map_err(|status| {
        if proto::status::carries_error_code(&status) {
            status
        } else {
            unavailable(format!("leader unreachable: {}", status.message()))
        }
    })
}

/// Forwards a write to the leader, or falls through to answer it here.
macro_rules! write_at_leader {
    ($self:ident, $request:ident, $method:ident) => {
        if let Target::Leader(mut leader) = $self.target_for_write(&$request)? {
            return from_leader(leader.$method(forwarded($request.into_inner())).await);
        }
    };
}

/// Forwards a read to the leader if one is known; answers here otherwise or if it is unreachable.
macro_rules! read_at_leader {
    ($self:ident, $request:ident, $method:ident) => {
        if let Target::Leader(mut leader) = $self.target_for_read(&$request) {
            match leader.$method(forwarded($request.get_ref().clone())).await {
                Ok(response) => return Ok(response),
                Err(status) if proto::status::carries_error_code(&status) => {
                    return Err(status)
                }
                Err(status) => {
                    tracing::debug!(error = %status, "leader unreachable; answering locally");
                }
            }
        }
    };
}

fn role_to_wire(role: ConfiguredRole) -> pb::BrokerRole {
    match role {
        ConfiguredRole::Master => pb::BrokerRole::Master,
        ConfiguredRole::Slave => pb::BrokerRole::Slave,
        ConfiguredRole::Controlled => pb::BrokerRole::Controlled,
    }
}

fn group_view(state: &ClusterState, name: &str) -> Option<pb::GroupView> {
    let group = state.groups.get(name)?;
    Some(pb::GroupView {
        name: name.to_owned(),
        master_id: group.master_id,
        master_epoch: group.master_epoch,
        in_sync_set: group.in_sync_set.iter().copied().collect(),
        in_sync_set_epoch: group.in_sync_set_epoch,
        master_addr: group
            .master_id
            .and_then(|id| group.brokers.get(&id))
            .map(|master| master.addr.clone())
            .unwrap_or_default(),
        drained: group.drained,
    })
}

/// The group's replication mode: its master's, else the first any broker registered (the
/// brokers of a group are configured alike).
fn group_replication(group: &BrokerGroup) -> pb::ReplicationMode {
    let master = group.master_id.and_then(|id| group.brokers.get(&id));
    let known = master
        .map(|m| m.replication)
        .filter(|mode| *mode != ReplicationMode::Unknown)
        .or_else(|| {
            group
                .brokers
                .values()
                .map(|b| b.replication)
                .find(|mode| *mode != ReplicationMode::Unknown)
        });
    match known {
        Some(ReplicationMode::Async) => pb::ReplicationMode::AsyncMaster,
        Some(ReplicationMode::Sync) => pb::ReplicationMode::SyncMaster,
        _ => pb::ReplicationMode::Unspecified,
    }
}

/// How far a slave is behind its master, as cluster list shows it.
#[derive(Debug, Default, PartialEq)]
struct ReplicaLag {
    lag_bytes: u64,
    /// Known only from the master's report.
    lag_ms: Option<u64>,
    /// The master reports the slave's log stream open.
    connected: bool,
}

/// The lag of `broker_id`: from the master's own report on it when there is one (the master
/// measures against its write offset and knows the stream), else from the two brokers' reported
/// commit-log ends, which is all the controller has. The master itself is never behind, and
/// without the master's heartbeat nothing is known.
fn replica_lag(
    group: &BrokerGroup,
    broker_id: u64,
    seen: Option<&Seen>,
    master_seen: Option<&Seen>,
) -> ReplicaLag {
    if group.master_id.is_none_or(|master| master == broker_id) {
        return ReplicaLag::default();
    }
    let Some(master_seen) = master_seen else {
        return ReplicaLag::default();
    };
    match master_seen.replica(broker_id) {
        Some(progress) => ReplicaLag {
            lag_bytes: progress.lag_bytes,
            lag_ms: Some(progress.lag_ms),
            connected: progress.connected,
        },
        None => ReplicaLag {
            lag_bytes: master_seen
                .max_offset
                .saturating_sub(seen.map(|s| s.max_offset).unwrap_or(0)),
            lag_ms: None,
            connected: false,
        },
    }
}

/// The route of `topic`; a topic that does not exist has no groups.
pub fn topic_route(
    state: &ClusterState,
    topic: &str,
    alive: &dyn Fn(&str, u64) -> bool,
) -> pb::TopicRoute {
    let groups = state
        .topics
        .get(topic)
        .map(|t| {
            t.queues
                .iter()
                .map(|(group_name, count)| {
                    let group = state.groups.get(group_name);
                    let drained = group.is_some_and(|g| g.drained);
                    pb::QueueGroupRoute {
                        group: group_name.clone(),
                        queue_count: *count,
                        // A drained group's queues stay readable, not writable.
                        perm: if drained {
                            t.perm & !PERM_WRITE
                        } else {
                            t.perm
                        },
                        master_id: group.and_then(|g| g.master_id),
                        master_epoch: group.map(|g| g.master_epoch).unwrap_or(0),
                        brokers: group
                            .map(|g| {
                                g.brokers
                                    .values()
                                    .map(|b| pb::BrokerRoute {
                                        broker_id: b.id,
                                        addr: b.addr.clone(),
                                        role: if g.master_id == Some(b.id) {
                                            pb::BrokerRole::Master as i32
                                        } else {
                                            pb::BrokerRole::Slave as i32
                                        },
                                        alive: alive(group_name, b.id),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    pb::TopicRoute {
        topic: topic.to_owned(),
        groups,
    }
}

fn settings_to_wire(group: &str, settings: &GroupSettings) -> pb::GroupSettings {
    pb::GroupSettings {
        group: group.to_owned(),
        max_retries: settings.max_retries,
        message_model: match settings.message_model {
            MessageModel::Clustering => pb::MessageModel::Clustering as i32,
            MessageModel::Broadcasting => pb::MessageModel::Broadcasting as i32,
        },
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "LEADER",
        ServerState::Follower => "FOLLOWER",
        ServerState::Candidate => "CANDIDATE",
        ServerState::Learner => "LEARNER",
        ServerState::Shutdown => "SHUTDOWN",
    }
}

impl ControllerService {
    fn node_status(&self) -> pb::ControllerNodeStatus {
        let metrics = self.raft.metrics();
        // The core holds the sending side: a closed channel means it is gone.
        let core_running = metrics.has_changed().is_ok();
        let metrics = metrics.borrow();
        pb::ControllerNodeStatus {
            problem: admission::health(&metrics, core_running).unwrap_or_default(),
            id: self.id,
            state: state_name(metrics.state).to_owned(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
        }
    }

    /// Waits until the live master of each of `groups` reports having applied `revision` (at
    /// most [`SYNC_WAIT_MAX`] or one broker heartbeat timeout, the shorter); returns the groups
    /// that did not, and those with no live master (not waited for). So that a producer started
    /// once a topic's creation is acknowledged finds it on the brokers, not only in the route.
    async fn wait_for_sync(&self, groups: &[String], revision: u64) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + self.liveness.timeout().min(SYNC_WAIT_MAX);
        let synced = |group: &str, id: u64| {
            self.liveness
                .seen(group, id)
                .is_some_and(|seen| seen.synced_revision >= revision)
        };
        loop {
            let masters: Vec<(String, Option<u64>)> = self.state.read(|data| {
                groups
                    .iter()
                    .map(|g| {
                        let master = data.state.groups.get(g).and_then(|group| group.master_id);
                        (g.clone(), master.filter(|id| self.alive(g, *id)))
                    })
                    .collect()
            });
            let syncing = masters
                .iter()
                .any(|(group, master)| master.is_some_and(|id| !synced(group, id)));
            if !syncing || tokio::time::Instant::now() >= deadline {
                return masters
                    .into_iter()
                    .filter(|(group, master)| !master.is_some_and(|id| synced(group, id)))
                    .map(|(group, _)| group)
                    .collect();
            }
            tokio::time::sleep(SYNC_POLL).await;
        }
    }

    /// One group of cluster list. Only the leader has heard heartbeats: elsewhere the offsets
    /// and lags are 0 and absent.
    fn group_detail(&self, name: &str, group: &BrokerGroup, leader: bool) -> pb::GroupDetail {
        let seen = |id: u64| leader.then(|| self.liveness.seen(name, id)).flatten();
        let master_seen = group.master_id.and_then(seen);
        let brokers = group
            .brokers
            .values()
            .map(|b| {
                let seen = seen(b.id);
                let lag = replica_lag(group, b.id, seen.as_ref(), master_seen.as_ref());
                pb::BrokerView {
                    broker_id: b.id,
                    addr: b.addr.clone(),
                    role: if group.master_id == Some(b.id) {
                        pb::BrokerRole::Master as i32
                    } else {
                        pb::BrokerRole::Slave as i32
                    },
                    configured_role: role_to_wire(b.configured_role) as i32,
                    alive: self.alive(name, b.id),
                    last_heartbeat_ms_ago: seen.as_ref().map(|s| s.at.elapsed().as_millis() as u64),
                    max_offset: seen.as_ref().map(|s| s.max_offset).unwrap_or(0),
                    in_sync: group.in_sync_set.contains(&b.id),
                    confirm_offset: seen.as_ref().map(|s| s.confirm_offset).unwrap_or(0),
                    lag_bytes: lag.lag_bytes,
                    lag_ms: lag.lag_ms,
                    replica_connected: lag.connected,
                    log_epoch: seen.as_ref().map(|s| s.log_epoch).unwrap_or(0),
                    election_priority: b.election_priority,
                    incarnation: b.incarnation,
                    store: seen.as_ref().map(|s| s.store.to_wire()),
                }
            })
            .collect();
        pb::GroupDetail {
            name: name.to_owned(),
            cluster: group.cluster.clone(),
            master_id: group.master_id,
            master_epoch: group.master_epoch,
            in_sync_set: group.in_sync_set.iter().copied().collect(),
            in_sync_set_epoch: group.in_sync_set_epoch,
            brokers,
            replication: group_replication(group) as i32,
            drained: group.drained,
        }
    }

    /// The heartbeat answer: the group view, and the lease that goes with it. A lease is granted
    /// only to the master of a controlled group at the incarnation it was elected with (and which
    /// is its registered one), and only after a quorum confirmed this node still leads and its
    /// state is the latest: a deposed leader that has not noticed yet must not promise a lease
    /// its successor does not know of. The view answered is the one the lease was decided on.
    async fn lease_answer(
        &self,
        group: &str,
        broker_id: u64,
        incarnation: u64,
        received_at: Instant,
    ) -> pb::BrokerHeartbeatResponse {
        let leased_epoch = |state: &ClusterState| {
            let g = state.groups.get(group)?;
            let registered = g.brokers.get(&broker_id)?.incarnation;
            (g.is_controlled()
                && g.master_id == Some(broker_id)
                && g.master_incarnation == incarnation
                && registered == incarnation)
                .then_some(g.master_epoch)
        };
        let read = |state: &ClusterState| pb::BrokerHeartbeatResponse {
            metadata_revision: state.metadata_revision,
            group: group_view(state, group),
            ..Default::default()
        };
        if self.state.read(|data| leased_epoch(&data.state)).is_none() {
            return self.state.read(|data| read(&data.state));
        }
        if let Err(err) = self.raft.ensure_linearizable().await {
            tracing::debug!(group, broker_id, error = %err, "leadership not confirmed; no lease");
            return self.state.read(|data| read(&data.state));
        }
        let (mut answer, epoch) = self
            .state
            .read(|data| (read(&data.state), leased_epoch(&data.state)));
        if let Some(epoch) = epoch {
            match self.election.leases.grant(group, epoch, received_at) {
                GrantDecision::Granted => {
                    answer.lease_ms = self.election.timing.broker_lease.as_millis() as u64;
                }
                GrantDecision::Resign => answer.resign = true,
                GrantDecision::Fenced => {}
            }
        }
        answer
    }

    /// Checks a planned switchover request against the state and liveness; answers the plan.
    fn switchover_plan(&self, req: &pb::ElectMasterRequest) -> Result<SwitchoverPlan, Status> {
        let now = Instant::now();
        let timing = self.election.timing;
        let seen = self.liveness.seen_group(&req.group);
        self.state.read(|data| {
            let Some(group) = data.state.groups.get(&req.group) else {
                return Err(error(
                    ErrorCode::BrokerGroupNotFound,
                    format!("broker group {} is not registered", proto::Echo(&req.group)),
                ));
            };
            if !group.is_controlled() {
                return Err(error(
                    ErrorCode::Conflict,
                    format!(
                        "broker group {:?} has static roles (MASTER or SLAVE): its master is the \
                         broker configured so; only groups of CONTROLLED brokers have elections",
                        req.group
                    ),
                ));
            }
            let in_sync = |id: u64| group.never_had_master() || group.in_sync_set.contains(&id);
            let target = match req.broker_id {
                Some(id) => {
                    if !group.brokers.contains_key(&id) {
                        return Err(error(
                            ErrorCode::NotFound,
                            format!(
                                "broker {id} is not registered in broker group {:?}",
                                req.group
                            ),
                        ));
                    }
                    if group.master_id == Some(id) {
                        return Err(error(
                            ErrorCode::Conflict,
                            format!(
                                "broker {id} is already the master of broker group {:?} (master \
                                 epoch {})",
                                req.group, group.master_epoch
                            ),
                        ));
                    }
                    if !is_candidate_alive(group, &seen, id, now, &timing) {
                        let heard = seen
                            .get(&id)
                            .map(|s| {
                                format!(
                                    "last heard {} ms ago",
                                    now.duration_since(s.at).as_millis()
                                )
                            })
                            .unwrap_or_else(|| {
                                "not heard since this controller became leader".to_owned()
                            });
                        return Err(error(
                            ErrorCode::Conflict,
                            format!(
                                "broker {id} is not alive ({heard}; a master must have been heard \
                                 within {} ms)",
                                timing.lease_wait().as_millis()
                            ),
                        ));
                    }
                    if let Some(store) = seen.get(&id).map(|s| &s.store) {
                        if store.master_tier().is_none_or(|tier| tier >= 3) {
                            return Err(error(
                                ErrorCode::Conflict,
                                format!(
                                    "broker {id}'s store has a fault ({}): it cannot be master \
                                     until it is repaired",
                                    store.problem
                                ),
                            ));
                        }
                    }
                    if !req.unclean && !in_sync(id) {
                        return Err(error(
                            ErrorCode::Conflict,
                            format!(
                                "broker {id} is not in the in-sync set {:?} of broker group {:?}: \
                                 it may lack acknowledged messages; wait until it catches up, or \
                                 elect it with unclean (which may lose them)",
                                group.in_sync_set, req.group
                            ),
                        ));
                    }
                    id
                }
                None => best_switchover_target(group, &seen, now, &timing).ok_or_else(|| {
                    error(
                        ErrorCode::Conflict,
                        format!(
                            "broker group {:?} has no alive member of its in-sync set {:?} other \
                             than the master {:?} to move mastership to",
                            req.group, group.in_sync_set, group.master_id
                        ),
                    )
                })?,
            };
            Ok(SwitchoverPlan {
                target,
                unclean: req.unclean,
                started: now,
                master_epoch: group.master_epoch,
            })
        })
    }

    fn routes(&self, topics: &[String]) -> Vec<pb::TopicRoute> {
        let alive = |g: &str, id: u64| self.alive(g, id);
        self.state.read(|data| {
            topics
                .iter()
                .map(|topic| topic_route(&data.state, topic, &alive))
                .collect()
        })
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn register_broker(
        &self,
        request: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        let received_at = Instant::now();
        write_at_leader!(self, request, register_broker);
        let req = request.into_inner();
        let role = match pb::BrokerRole::try_from(req.role) {
            Ok(pb::BrokerRole::Master) => ConfiguredRole::Master,
            Ok(pb::BrokerRole::Slave) => ConfiguredRole::Slave,
            Ok(pb::BrokerRole::Controlled) => ConfiguredRole::Controlled,
            _ => {
                return Err(error(
                    ErrorCode::BadRequest,
                    "role must be MASTER, SLAVE or CONTROLLED",
                ))
            }
        };
        self.write(Command::RegisterBroker {
            cluster: req.cluster,
            group: req.group.clone(),
            broker: BrokerInfo {
                id: req.broker_id,
                addr: req.addr,
                configured_role: role,
                incarnation: req.incarnation,
                election_priority: req.election_priority,
                replication: match pb::ReplicationMode::try_from(req.replication) {
                    Ok(pb::ReplicationMode::AsyncMaster) => ReplicationMode::Async,
                    Ok(pb::ReplicationMode::SyncMaster) => ReplicationMode::Sync,
                    _ => ReplicationMode::Unknown,
                },
            },
        })
        .await?;
        // Counts as a heartbeat, so that the broker is an election candidate at once. Not synced
        // yet: the broker syncs right after registering and reports it.
        self.liveness.beat(
            &req.group,
            req.broker_id,
            Heartbeat {
                max_offset: req.max_offset,
                incarnation: req.incarnation,
                log_epoch: req.log_epoch,
                ..Heartbeat::default()
            },
            received_at,
        );
        self.election.wake.notify_one();
        let group = self.state.read(|data| group_view(&data.state, &req.group));
        Ok(Response::new(pb::RegisterBrokerResponse { group }))
    }

    async fn broker_heartbeat(
        &self,
        request: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        // Before anything else: the lease is recorded as granted at this instant, which must not
        // be earlier than the broker sent the heartbeat (it cannot be) and should be as early as
        // possible (later only delays a successor).
        let received_at = Instant::now();
        write_at_leader!(self, request, broker_heartbeat);
        let req = request.into_inner();
        let known = self.state.read(|data| {
            data.state
                .groups
                .get(&req.group)
                .is_some_and(|g| g.brokers.contains_key(&req.broker_id))
        });
        if !known {
            return Err(error(
                ErrorCode::NotFound,
                format!(
                    "broker {} of group {} is not registered; register first",
                    req.broker_id,
                    proto::Echo(&req.group)
                ),
            ));
        }
        if req.stopping {
            // Its last word: not alive from now on. No lease, and nothing else it says counts.
            tracing::info!(group = %req.group, broker_id = req.broker_id, incarnation = req.incarnation, "broker stopping");
            self.liveness
                .stopped(&req.group, req.broker_id, req.incarnation);
            let answer = self.state.read(|data| pb::BrokerHeartbeatResponse {
                metadata_revision: data.state.metadata_revision,
                group: group_view(&data.state, &req.group),
                ..Default::default()
            });
            return Ok(Response::new(answer));
        }
        self.liveness.beat(
            &req.group,
            req.broker_id,
            Heartbeat {
                max_offset: req.max_offset,
                synced_revision: req.synced_revision,
                confirm_offset: req.confirm_offset,
                replicas: req.replicas,
                incarnation: req.incarnation,
                log_epoch: req.log_epoch,
                master_epoch: req.master_epoch,
                resigned: req.resigned,
                store: StoreReport::from_wire(req.store.as_ref()),
            },
            received_at,
        );
        if req.resigned {
            // A planned switchover may elect now rather than at the next tick.
            self.election.wake.notify_one();
        }
        let answer = self
            .lease_answer(&req.group, req.broker_id, req.incarnation, received_at)
            .await;
        Ok(Response::new(answer))
    }

    async fn elect_master(
        &self,
        request: Request<pb::ElectMasterRequest>,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        write_at_leader!(self, request, elect_master);
        let req = request.into_inner();
        if req.group.is_empty() {
            return Err(error(ErrorCode::BadRequest, "group is required"));
        }
        if req.unclean && req.broker_id.is_none() {
            return Err(error(
                ErrorCode::BadRequest,
                "an unclean election needs broker_id: the controller never picks a broker that \
                 may lack acknowledged messages by itself",
            ));
        }
        // Judge the request against the latest state, confirmed by a quorum.
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|err| unavailable(format!("cannot confirm leadership: {err}")))?;
        let plan = self.switchover_plan(&req)?;
        let target = plan.target;
        let from_epoch = plan.master_epoch;
        let (id, outcome) = self
            .election
            .leases
            .start_switchover(&req.group, plan)
            .map_err(|running| {
                error(
                    ErrorCode::Conflict,
                    format!(
                        "a switchover of broker group {:?} to broker {} is already running \
                         (started {} ms ago); wait for it to end",
                        req.group,
                        running.target,
                        running.started.elapsed().as_millis()
                    ),
                )
            })?;
        tracing::info!(group = %req.group, target, unclean = req.unclean, master_epoch = from_epoch, "planned switchover started; asking the master to resign");
        self.election.wake.notify_one();
        let end = match tokio::time::timeout(SWITCHOVER_WAIT_MAX, outcome).await {
            Ok(Ok(end)) => end,
            Ok(Err(_)) => SwitchoverEnd::Abandoned {
                reason: "the controller stopped leading before the election".to_owned(),
            },
            Err(_) => {
                let reason = format!(
                    "broker {target} was not elected within {} s",
                    SWITCHOVER_WAIT_MAX.as_secs()
                );
                self.election.leases.end_switchover(
                    &req.group,
                    id,
                    SwitchoverEnd::Abandoned {
                        reason: reason.clone(),
                    },
                );
                SwitchoverEnd::Abandoned { reason }
            }
        };
        let (view, master_now) = self.state.read(|data| {
            let group = data.state.groups.get(&req.group);
            (
                group_view(&data.state, &req.group),
                group.map(|g| (g.master_id, g.master_epoch)),
            )
        });
        match end {
            SwitchoverEnd::Elected {
                possibly_lost_bytes,
                ..
            } => Ok(Response::new(pb::ElectMasterResponse {
                group: view,
                possibly_lost_bytes,
            })),
            // The loop gave up or we stopped waiting; but the target may have been elected just
            // then: the state says.
            SwitchoverEnd::Abandoned { .. }
                if master_now.is_some_and(|(m, e)| m == Some(target) && e > from_epoch) =>
            {
                Ok(Response::new(pb::ElectMasterResponse {
                    group: view,
                    possibly_lost_bytes: 0,
                }))
            }
            SwitchoverEnd::Abandoned { reason } => {
                let (master, epoch) = master_now.unwrap_or((None, 0));
                let now = match master {
                    Some(id) => format!("broker {id} is master at master epoch {epoch}"),
                    None => format!("the group has no master (master epoch {epoch})"),
                };
                Err(error(
                    ErrorCode::RequestTimeout,
                    format!(
                        "switchover of broker group {:?} to broker {target} did not happen: \
                         {reason}; {now}",
                        req.group
                    ),
                ))
            }
        }
    }

    async fn group_topics(
        &self,
        request: Request<pb::GroupTopicsRequest>,
    ) -> Result<Response<pb::GroupTopicsResponse>, Status> {
        read_at_leader!(self, request, group_topics);
        let group = request.into_inner().group;
        Ok(Response::new(self.state.read(|data| {
            pb::GroupTopicsResponse {
                metadata_revision: data.state.metadata_revision,
                topics: data
                    .state
                    .topics_of_group(&group)
                    .into_iter()
                    .map(|(topic, queue_count, perm)| pb::GroupTopic {
                        topic,
                        queue_count,
                        perm,
                    })
                    .collect(),
                consumer_groups: data
                    .state
                    .consumer_groups
                    .iter()
                    .map(|(name, settings)| settings_to_wire(name, settings))
                    .collect(),
            }
        })))
    }

    async fn alter_in_sync_set(
        &self,
        request: Request<pb::AlterInSyncSetRequest>,
    ) -> Result<Response<pb::AlterInSyncSetResponse>, Status> {
        write_at_leader!(self, request, alter_in_sync_set);
        let req = request.into_inner();
        if req.group.is_empty() {
            return Err(error(ErrorCode::BadRequest, "group is required"));
        }
        if req.in_sync_set.is_empty() {
            return Err(error(
                ErrorCode::BadRequest,
                "the in-sync set must name at least the master",
            ));
        }
        if req.in_sync_set.len() > IN_SYNC_SET_MAX {
            return Err(error(
                ErrorCode::BadRequest,
                format!(
                    "an in-sync set names at most {IN_SYNC_SET_MAX} brokers, not {}",
                    req.in_sync_set.len()
                ),
            ));
        }
        let in_sync_set: BTreeSet<u64> = req.in_sync_set.iter().copied().collect();
        // For the log line only: the set this proposal replaces, if the state read here is the
        // one the command will be checked against (the epoch says so).
        let replaced = self.state.read(|data| {
            data.state
                .groups
                .get(&req.group)
                .filter(|g| g.in_sync_set_epoch == req.in_sync_set_epoch)
                .map(|g| g.in_sync_set.clone())
        });
        let changed = self
            .write(Command::AlterInSyncSet {
                group: req.group.clone(),
                master_id: req.master_id,
                master_epoch: req.master_epoch,
                in_sync_set_epoch: req.in_sync_set_epoch,
                in_sync_set: in_sync_set.clone(),
            })
            .await?;
        let group = self.state.read(|data| group_view(&data.state, &req.group));
        if changed {
            tracing::info!(
                group = %req.group,
                master_id = req.master_id,
                master_epoch = req.master_epoch,
                old_in_sync_set = ?replaced,
                in_sync_set = ?in_sync_set,
                in_sync_set_epoch = req.in_sync_set_epoch + 1,
                "in-sync set changed"
            );
        }
        Ok(Response::new(pb::AlterInSyncSetResponse { group }))
    }

    async fn get_route(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::TopicRoute>, Status> {
        read_at_leader!(self, request, get_route);
        let topic = request.into_inner().topic;
        let route = self.routes(std::slice::from_ref(&topic)).remove(0);
        if route.groups.is_empty() {
            return Err(error(
                ErrorCode::TopicNotFound,
                format!("topic {} does not exist", proto::Echo(&topic)),
            ));
        }
        Ok(Response::new(route))
    }

    type WatchRoutesStream = ReceiverStream<Result<pb::RouteUpdate, Status>>;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        if !self.is_leader() {
            return Err(proto::ErrorStatus::new(
                ErrorCode::ControllerNotAvailable,
                format!(
                    "controller {} is not the leader; watch routes on the leader",
                    self.id
                ),
            )
            .with_leader_addr(self.leader().map(|(_, addr)| addr))
            .into_status());
        }
        let topics = request.into_inner().topics;
        let (tx, rx) = mpsc::channel(4);
        let mut state_changes = self.state.changes();
        let mut liveness_changes = self.liveness.changes();
        let mut metrics = self.raft.metrics();
        let state = self.state.clone();
        let liveness = self.liveness.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if metrics.borrow_and_update().state != ServerState::Leader {
                    let _ = tx
                        .send(Err(unavailable("this controller is no longer the leader")))
                        .await;
                    return;
                }
                let alive = |g: &str, id: u64| liveness.is_alive(g, id);
                let routes: Vec<_> = state.read(|data| {
                    topics
                        .iter()
                        .map(|t| topic_route(&data.state, t, &alive))
                        .collect()
                });
                if last.as_ref() != Some(&routes) {
                    let update = pb::RouteUpdate {
                        routes: routes.clone(),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the watcher went away
                    }
                    last = Some(routes);
                }
                tokio::select! {
                    changed = state_changes.changed() => if changed.is_err() { return },
                    changed = liveness_changes.changed() => if changed.is_err() { return },
                    changed = metrics.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        write_at_leader!(self, request, create_topic);
        let req = request.into_inner();
        let groups: BTreeSet<String> = if req.groups.is_empty() {
            self.state
                .read(|data| data.state.groups.keys().cloned().collect())
        } else {
            req.groups.iter().cloned().collect()
        };
        if groups.is_empty() {
            return Err(error(
                ErrorCode::BrokerGroupNotFound,
                "no broker group is registered yet",
            ));
        }
        let queues: BTreeMap<String, u32> = groups
            .into_iter()
            .map(|g| (g, req.queues_per_group))
            .collect();
        let perm = if req.perm == 0 {
            PERM_READ | PERM_WRITE
        } else {
            req.perm
        };
        let groups: Vec<String> = queues.keys().cloned().collect();
        let created = self
            .write(Command::CreateTopic {
                name: req.topic.clone(),
                queues,
                perm,
            })
            .await?;
        let revision = self.state.read(|data| data.state.metadata_revision);
        let unsynced_groups = self.wait_for_sync(&groups, revision).await;
        let route = self.routes(std::slice::from_ref(&req.topic)).remove(0);
        Ok(Response::new(pb::CreateTopicResponse {
            created,
            route: Some(route),
            unsynced_groups,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        write_at_leader!(self, request, delete_topic);
        self.write(Command::DeleteTopic {
            name: request.into_inner().topic,
        })
        .await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        read_at_leader!(self, request, list_topics);
        let names: Vec<String> = self
            .state
            .read(|data| data.state.topics.keys().cloned().collect());
        Ok(Response::new(pb::ListTopicsResponse {
            topics: self.routes(&names),
        }))
    }

    async fn set_group_settings(
        &self,
        request: Request<pb::SetGroupSettingsRequest>,
    ) -> Result<Response<pb::SetGroupSettingsResponse>, Status> {
        write_at_leader!(self, request, set_group_settings);
        let Some(settings) = request.into_inner().settings else {
            return Err(error(ErrorCode::BadRequest, "settings are required"));
        };
        let model = match pb::MessageModel::try_from(settings.message_model) {
            Ok(pb::MessageModel::Clustering) | Ok(pb::MessageModel::Unspecified) => {
                MessageModel::Clustering
            }
            Ok(pb::MessageModel::Broadcasting) => MessageModel::Broadcasting,
            Err(_) => return Err(error(ErrorCode::BadRequest, "unknown message model")),
        };
        self.write(Command::SetGroupSettings {
            group: settings.group,
            settings: GroupSettings {
                max_retries: settings.max_retries,
                message_model: model,
            },
        })
        .await?;
        Ok(Response::new(pb::SetGroupSettingsResponse {}))
    }

    async fn set_group_drained(
        &self,
        request: Request<pb::SetGroupDrainedRequest>,
    ) -> Result<Response<pb::SetGroupDrainedResponse>, Status> {
        write_at_leader!(self, request, set_group_drained);
        let req = request.into_inner();
        let changed = self
            .write(Command::SetGroupDrained {
                group: req.group.clone(),
                drained: req.drained,
            })
            .await?;
        if changed {
            tracing::warn!(group = %req.group, drained = req.drained, "broker group drain changed");
        }
        // The master applies the group view of a heartbeat answer before it reports that
        // answer's revision as synced (`link`): once it has, it refuses or takes sends as told.
        let revision = self.state.read(|data| data.state.metadata_revision);
        let master_informed = self
            .wait_for_sync(std::slice::from_ref(&req.group), revision)
            .await
            .is_empty();
        Ok(Response::new(pb::SetGroupDrainedResponse {
            changed,
            master_informed,
        }))
    }

    async fn get_group_settings(
        &self,
        request: Request<pb::GetGroupSettingsRequest>,
    ) -> Result<Response<pb::GroupSettings>, Status> {
        read_at_leader!(self, request, get_group_settings);
        let group = request.into_inner().group;
        let settings = self.state.read(|data| {
            data.state
                .consumer_groups
                .get(&group)
                .copied()
                .unwrap_or_default()
        });
        Ok(Response::new(settings_to_wire(&group, &settings)))
    }

    async fn cluster_list(
        &self,
        request: Request<pb::ClusterListRequest>,
    ) -> Result<Response<pb::ClusterListResponse>, Status> {
        read_at_leader!(self, request, cluster_list);
        let leader = self.is_leader();
        let groups = self.state.read(|data| {
            data.state
                .groups
                .iter()
                .map(|(name, group)| self.group_detail(name, group, leader))
                .collect()
        });
        Ok(Response::new(pb::ClusterListResponse { groups }))
    }

    async fn status(
        &self,
        request: Request<pb::ControllerStatusRequest>,
    ) -> Result<Response<pb::ControllerStatusResponse>, Status> {
        read_at_leader!(self, request, status);
        let (leader_id, term, nodes, voters, replication) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let nodes: Vec<(NodeId, String)> = membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            (
                metrics.current_leader,
                metrics.current_term,
                nodes,
                voters,
                metrics.replication.clone(),
            )
        };
        let leader_addr = leader_id
            .and_then(|id| nodes.iter().find(|(n, _)| *n == id))
            .map(|(_, addr)| addr.clone())
            .unwrap_or_default();
        let mut members = Vec::new();
        for (id, addr) in nodes {
            let status = if id == self.id {
                Some(self.node_status())
            } else {
                match self.peer(&addr) {
                    Ok(mut client) => tokio::time::timeout(
                        NODE_STATUS_TIMEOUT,
                        client.node_status(pb::NodeStatusRequest {}),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|r| r.into_inner()),
                    Err(_) => None,
                }
            };
            members.push(pb::ControllerMember {
                id,
                addr,
                voter: voters.contains(&id),
                reachable: status.is_some(),
                status,
                matched_index: replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|log_id| log_id.index),
            });
        }
        Ok(Response::new(pb::ControllerStatusResponse {
            leader_id,
            leader_addr,
            term,
            members,
        }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::ControllerNodeStatus>, Status> {
        Ok(Response::new(self.node_status()))
    }

    async fn add_controller(
        &self,
        request: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerResponse>, Status> {
        write_at_leader!(self, request, add_controller);
        let req = request.into_inner();
        let _serial = self.membership_lock.lock().await;
        let admission =
            membership::admit(&self.members(), req.id, &req.addr).map_err(membership_error)?;
        if admission == Admission::AlreadyVoter {
            return Ok(Response::new(pb::AddControllerResponse {}));
        }
        // Before anything changes: a controller that is not running would be a learner the
        // leader replicates to in vain, and the request would wait out the whole catch-up.
        membership::probe(req.id, &req.addr)
            .await
            .map_err(membership_error)?;
        if admission == Admission::New {
            // A learner first: it receives the log (or a snapshot) without counting in the quorum.
            let added = self
                .raft
                .add_learner(req.id, BasicNode::new(req.addr.clone()), false);
            match tokio::time::timeout(membership::CHANGE_COMMIT_TIMEOUT, added).await {
                Err(_) => return Err(unavailable("adding the learner timed out")),
                Ok(Err(err)) => {
                    return Err(unavailable(format!("adding the learner failed: {err}")))
                }
                Ok(Ok(_)) => {}
            }
        }
        // Promote only once it holds the log up to now: a voter that is far behind would count
        // toward the quorum without being able to serve it.
        if let Err(reason) = self.wait_caught_up(req.id).await {
            // Nothing changed, as for every other refusal: the learner goes again (also one an
            // earlier request left), so that the leader stops replicating to it.
            let removed =
                self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([req.id])));
            if let Err(err) = removed.await {
                tracing::warn!(id = req.id, addr = %req.addr, error = %err, "could not remove a learner that did not catch up");
            }
            return Err(membership_error(MembershipError::CatchUpFailed {
                id: req.id,
                addr: req.addr,
                reason,
            }));
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])))
            .await
            .map_err(|err| unavailable(format!("promoting to voter failed: {err}")))?;
        Ok(Response::new(pb::AddControllerResponse {}))
    }

    async fn remove_controller(
        &self,
        request: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerResponse>, Status> {
        write_at_leader!(self, request, remove_controller);
        let id = request.into_inner().id;
        let _serial = self.membership_lock.lock().await;
        let members = self.members();
        membership::check_removal(&members, id).map_err(membership_error)?;
        let change = if members.voters.contains(&id) {
            // retain = false below: the node leaves entirely, it does not stay a learner.
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.change_membership(change).await {
            Ok(()) => Ok(Response::new(pb::RemoveControllerResponse {})),
            Err(err) => Err(unavailable(format!(
                "removing controller {id} failed: {err}"
            ))),
        }
    }
}

impl ControllerService {
    /// The membership as this controller sees it now.
    fn members(&self) -> Members {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        Members {
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
        }
    }

    /// One membership change (never keeping removed voters as learners), committed within
    /// [`membership::CHANGE_COMMIT_TIMEOUT`].
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), String> {
        match tokio::time::timeout(
            membership::CHANGE_COMMIT_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => Err(format!(
                "not committed within {} ms",
                membership::CHANGE_COMMIT_TIMEOUT.as_millis()
            )),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Waits until learner `id` holds the log up to the leader's last index now; gives up (with
    /// the reason) once its replicated index has not moved for
    /// [`membership::CATCH_UP_STALL_MAX`] or [`membership::CATCH_UP_TIMEOUT`] has passed.
    async fn wait_caught_up(&self, id: NodeId) -> Result<(), String> {
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let started = tokio::time::Instant::now();
        let deadline = started + membership::CATCH_UP_TIMEOUT;
        let mut metrics = self.raft.metrics();
        let mut last_matched = None;
        let mut moved_at = started;
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|m| m >= target) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if matched != last_matched {
                (last_matched, moved_at) = (matched, now);
            }
            let stalled_at = moved_at + membership::CATCH_UP_STALL_MAX;
            if now >= stalled_at {
                return Err(format!(
                    "it held index {} of {target}, unchanged for {} ms",
                    matched.map_or_else(|| "none".to_owned(), |m| m.to_string()),
                    membership::CATCH_UP_STALL_MAX.as_millis()
                ));
            }
            if now >= deadline {
                return Err(format!(
                    "it held index {} of {target} after {} ms",
                    matched.map_or_else(|| "none".to_owned(), |m| m.to_string()),
                    membership::CATCH_UP_TIMEOUT.as_millis()
                ));
            }
            // Woken by any change of the metrics (replication progress among them), or at the
            // next bound.
            if let Ok(Err(_)) =
                tokio::time::timeout_at(stalled_at.min(deadline), metrics.changed()).await
            {
                return Err("this controller is stopping".to_owned());
            }
        }
    }
}

fn membership_error(err: MembershipError) -> Status {
    error(err.code(), err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> BrokerGroup {
        let broker = |id: u64, role| {
            (
                id,
                BrokerInfo {
                    id,
                    addr: format!("127.0.0.1:{}", 10911 + id),
                    configured_role: role,
                    incarnation: 1,
                    election_priority: 0,
                    replication: ReplicationMode::Unknown,
                },
            )
        };
        BrokerGroup {
            cluster: "c".into(),
            brokers: BTreeMap::from([
                broker(0, ConfiguredRole::Master),
                broker(1, ConfiguredRole::Slave),
                broker(2, ConfiguredRole::Slave),
            ]),
            master_id: Some(0),
            master_epoch: 1,
            in_sync_set: BTreeSet::from([0]),
            in_sync_set_epoch: 1,
            master_incarnation: 1,
            drained: false,
        }
    }

    fn seen(max_offset: u64, replicas: Vec<pb::ReplicaProgress>) -> Seen {
        Seen {
            at: Instant::now(),
            max_offset,
            synced_revision: 0,
            confirm_offset: 0,
            replicas,
            incarnation: 1,
            log_epoch: 0,
            master_epoch: 0,
            resigned: false,
            store: StoreReport::default(),
        }
    }

    #[test]
    fn a_slave_lag_comes_from_its_master_report_else_from_the_commit_log_ends() {
        let group = group();
        let master = seen(
            600,
            vec![pb::ReplicaProgress {
                broker_id: 1,
                acked_offset: 500,
                lag_bytes: 100,
                lag_ms: 25,
                connected: true,
            }],
        );
        let reported = replica_lag(&group, 1, Some(&seen(450, vec![])), Some(&master));
        assert_eq!(
            reported,
            ReplicaLag {
                lag_bytes: 100,
                lag_ms: Some(25),
                connected: true
            }
        );
        let unreported = replica_lag(&group, 2, Some(&seen(450, vec![])), Some(&master));
        assert_eq!(
            unreported,
            ReplicaLag {
                lag_bytes: 150,
                lag_ms: None,
                connected: false
            }
        );
        // A slave ahead of the master's last report is not behind at all.
        let ahead = replica_lag(&group, 2, Some(&seen(700, vec![])), Some(&master));
        assert_eq!(ahead.lag_bytes, 0);
        // Not heard from yet: its whole log is missing, as far as the controller knows.
        assert_eq!(replica_lag(&group, 2, None, Some(&master)).lag_bytes, 600);
    }

    #[test]
    fn the_master_and_a_masterless_group_show_no_lag() {
        let mut group = group();
        let master = seen(600, vec![]);
        assert_eq!(
            replica_lag(&group, 0, Some(&master), Some(&master)),
            ReplicaLag::default()
        );
        assert_eq!(
            replica_lag(&group, 1, Some(&seen(0, vec![])), None),
            ReplicaLag::default(),
            "the master's report is unknown"
        );
        group.master_id = None;
        assert_eq!(
            replica_lag(&group, 1, Some(&seen(0, vec![])), Some(&master)),
            ReplicaLag::default()
        );
    }
}
