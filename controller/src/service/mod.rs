//! The `Controller` gRPC service: what brokers, clients and cluster-cli call.
//!
//! Map, one file per family of RPCs (this file keeps the forwarding to the leader and the
//! dispatch of each RPC to its family):
//! - `brokers`: registration, heartbeats and leases, a broker's topics, in-sync set changes;
//! - `failover`: planned switchovers (`ElectMaster`);
//! - `routes`: `GetRoute`, `WatchRoutes`;
//! - `topics`: topics and consumer-group settings, drain;
//! - `quorum`: cluster list, controller status, membership changes;
//! - `users`: users and their policies (the ACL), and the ACL feed to brokers (`WatchAcl`);
//! - `convert`: wire <-> domain conversions of the answers;
//! - `dispatch`: the gRPC trait, where each RPC's permission is checked (the gate) and the
//!   audited ones are recorded before it reaches its family.
//!
//! Who may call what (`dispatch`): member-only RPCs (brokers' registration, heartbeats, topics,
//! in-sync sets, the group and ACL watches) are the `auth` crate's `MemberGuard`'s and never
//! reach the gate; every other RPC is checked by the gate first, on whichever controller
//! receives it, and again on the leader when forwarded (the leader's own ACL is the one that
//! counts; the follower's check only saves a forward that would be refused). A forwarded
//! request carries the caller's signature headers (`authorization`, `x-mq-date-time`), so the
//! leader's `UserGuard` establishes the same caller.
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
use tonic::{Request, Response, Status};

use super::acl::AclCommandError;
use super::admission;
use super::audit::AuditLog;
use super::election::ElectionContext;
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
/// Longest the TCP connect to the leader may take before a forward counts as failed.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
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
        CommandError::Acl(acl) => match acl {
            AclCommandError::Invalid(_)
            | AclCommandError::TooManyUsers
            | AclCommandError::TooManyPolicies { .. } => ErrorCode::BadRequest,
            AclCommandError::UserNotFound(_) | AclCommandError::PolicyNotFound { .. } => {
                ErrorCode::NotFound
            }
            AclCommandError::UserExists(_)
            | AclCommandError::PolicyExists { .. }
            | AclCommandError::BuiltInAdmin(_) => ErrorCode::Conflict,
        },
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

/// How the service decides and records users' requests.
pub struct UserAccess {
    /// The controller's gate: its `Directory` kept at the applied ACL, enforced or not.
    pub gate: auth::Gate,
    pub audit: Arc<AuditLog>,
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
    /// Also seals users' secret keys before they are proposed.
    key: ClusterKey,
    /// Decides users' requests against the ACL (`dispatch`).
    gate: auth::Gate,
    audit: Arc<AuditLog>,
}

impl ControllerService {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: SharedState,
        liveness: Arc<Liveness>,
        election: ElectionContext,
        key: ClusterKey,
        access: UserAccess,
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
            gate: access.gate,
            audit: access.audit,
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

    /// Streams what `current` reads (nothing for a `None`), now and again whenever it differs
    /// after a change of the replicated state, or of `also` (liveness, for routes), while this
    /// node leads. Ends with UNAVAILABLE once it stops leading (the watcher then watches on the
    /// new leader), or when the watcher goes away.
    fn watch_while_leader<T>(
        &self,
        mut also: Option<tokio::sync::watch::Receiver<u64>>,
        current: impl Fn() -> Option<T> + Send + 'static,
    ) -> ReceiverStream<Result<T, Status>>
    where
        T: Clone + PartialEq + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let mut state_changes = self.state.changes();
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                if metrics.borrow_and_update().state != ServerState::Leader {
                    let _ = tx
                        .send(Err(unavailable("this controller is no longer the leader")))
                        .await;
                    return;
                }
                if let Some(now) = current().filter(|now| last.as_ref() != Some(now)) {
                    if tx.send(Ok(now.clone())).await.is_err() {
                        return; // the watcher went away
                    }
                    last = Some(now);
                }
                let also_changed = async {
                    match also.as_mut() {
                        Some(also) => also.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = state_changes.changed() => if changed.is_err() { return },
                    changed = also_changed => if changed.is_err() { return },
                    changed = metrics.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// The refusal of a call only the leader serves (the watches): CONTROLLER_NOT_AVAILABLE with
    /// the leader's address, so that the caller goes there. `what` names the call.
    fn not_leader(&self, what: &str) -> Status {
        proto::ErrorStatus::new(
            ErrorCode::ControllerNotAvailable,
            format!(
                "controller {} is not the leader; {what} on the leader",
                self.id
            ),
        )
        .with_leader_addr(self.leader().map(|(_, addr)| addr))
        .into_status()
    }

    fn peer(&self, addr: &str) -> Result<ControllerClient<SignedChannel>, Status> {
        let mut peers = self.peers.lock().expect("peer table lock poisoned");
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = proto::dial::endpoint(addr, FORWARD_CONNECT_TIMEOUT)
            .map_err(|err| unavailable(format!("bad controller address: {err}")))?
            .timeout(FORWARD_TIMEOUT);
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

/// The caller's signature headers, copied into what this controller sends on its behalf (a
/// forward to the leader, a status question to a peer), so that the receiver's `UserGuard`
/// establishes the same caller: the signature covers the date only, so it verifies there too.
#[derive(Clone, Debug, Default)]
struct Identity(
    Vec<(
        &'static str,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
);

impl Identity {
    fn of<T>(request: &Request<T>) -> Identity {
        let keys = [
            auth::user_sign::AUTHORIZATION_METADATA_KEY,
            auth::user_sign::DATE_TIME_METADATA_KEY,
        ];
        Identity(
            keys.into_iter()
                .filter_map(|key| Some((key, request.metadata().get(key)?.clone())))
                .collect(),
        )
    }

    fn apply<T>(&self, request: &mut Request<T>) {
        for (key, value) in &self.0 {
            request.metadata_mut().insert(*key, value.clone());
        }
    }
}

fn forwarded<T>(identity: &Identity, message: T) -> Request<T> {
    let mut request = Request::new(message);
    identity.apply(&mut request);
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
            let identity = Identity::of(&$request);
            return from_leader(
                leader
                    .$method(forwarded(&identity, $request.into_inner()))
                    .await,
            );
        }
    };
}

/// Forwards a read to the leader if one is known; answers here otherwise or if it is unreachable.
macro_rules! read_at_leader {
    ($self:ident, $request:ident, $method:ident) => {
        if let Target::Leader(mut leader) = $self.target_for_read(&$request) {
            let identity = Identity::of(&$request);
            match leader
                .$method(forwarded(&identity, $request.get_ref().clone()))
                .await
            {
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

mod brokers;
mod convert;
mod dispatch;
mod failover;
mod quorum;
mod routes;
mod topics;
mod users;

pub use convert::topic_route;
use convert::*;
