//! Raft between controllers over tonic: the client side openraft calls ([`Network`]) and the
//! server side that hands requests to the local Raft ([`RaftService`]).
//!
//! Payloads are openraft's serde types as JSON inside a protobuf `bytes` field. The remote side
//! answers `Result<response, RaftError>` as JSON, so a refusal by the peer's Raft (a higher vote,
//! a snapshot mismatch) comes back as openraft's own error and not as a transport failure.
//!
//! A peer that cannot be reached (connection refused, reset, unknown host) is reported as
//! `Unreachable`, on which openraft backs off, instead of a network error, on which it retries
//! hot (`shared/STACK.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::{ClusterKey, SignedChannel};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use proto::controller::raft_client::RaftClient;
use proto::controller::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{admission, NodeId, Raft, TypeConfig};

/// Largest Raft message (a snapshot chunk or a batch of entries), both ways.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes one [`Network`] per peer for replication, which openraft keeps for as long as it
/// replicates to that peer, and one per leadership check (`ensure_linearizable`, before every
/// master lease the controller grants). Small messages (votes, and appends without entries:
/// heartbeats and leadership checks) share one connection per peer address, so that a lease does
/// not open a TCP connection to each peer; entries and snapshots go on the network's own, so that
/// a large transfer never holds up a heartbeat behind it.
#[derive(Clone)]
pub struct NetworkFactory {
    connections: SharedConnections,
    /// Every Raft message is signed with it (the `auth` crate): peers refuse unsigned ones.
    key: ClusterKey,
}

impl NetworkFactory {
    pub fn new(key: ClusterKey) -> NetworkFactory {
        NetworkFactory {
            connections: SharedConnections::default(),
            key,
        }
    }
}

type SharedConnections = Arc<Mutex<HashMap<String, RaftClient<SignedChannel>>>>;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            own: None,
            shared: self.connections.clone(),
            key: self.key.clone(),
        }
    }
}

/// The connections to one peer (its own, and the shared one for small messages), made lazily and
/// remade after a transport failure.
pub struct Network {
    target: NodeId,
    addr: String,
    own: Option<RaftClient<SignedChannel>>,
    shared: SharedConnections,
    key: ClusterKey,
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Network {
    fn connect(&self) -> Result<RaftClient<SignedChannel>, Unreachable> {
        let endpoint = proto::dial::endpoint(&self.addr, CONNECT_TIMEOUT)
            .map_err(|err| Unreachable::new(&err))?;
        // Connects on first use, so that making the client never blocks the Raft core.
        let channel = SignedChannel::new(endpoint.connect_lazy(), self.key.clone());
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
    }

    fn client(&mut self, small: bool) -> Result<RaftClient<SignedChannel>, Unreachable> {
        if !small {
            if let Some(client) = &self.own {
                return Ok(client.clone());
            }
            let client = self.connect()?;
            self.own = Some(client.clone());
            return Ok(client);
        }
        let mut shared = self
            .shared
            .lock()
            .expect("raft connection table lock poisoned");
        if let Some(client) = shared.get(&self.addr) {
            return Ok(client.clone());
        }
        let client = self.connect()?;
        shared.insert(self.addr.clone(), client.clone());
        Ok(client)
    }

    /// Drops the connection a call failed on: the next call reconnects.
    fn forget(&mut self, small: bool) {
        if small {
            self.shared
                .lock()
                .expect("raft connection table lock poisoned")
                .remove(&self.addr);
        } else {
            self.own = None;
        }
    }

    async fn call<Req, Resp, E>(
        &mut self,
        request: &Req,
        option: &RPCOption,
        method: Method,
        small: bool,
    ) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json = serde_json::to_vec(request)
            .map_err(|err| RPCError::Network(NetworkError::new(&err)))?;
        let mut client = self.client(small)?;
        let payload = RaftPayload { json: json.into() };
        let call = async {
            match method {
                Method::AppendEntries => client.append_entries(payload).await,
                Method::Vote => client.vote(payload).await,
                Method::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let answer = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "controller {} at {} did not answer in time",
                            self.target, self.addr
                        ),
                    ),
                )))
            }
            Ok(Err(status)) => {
                self.forget(small);
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Ok(answer)) => answer.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer.json)
            .map_err(|err| RPCError::Network(NetworkError::new(&err)))?;
        result.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let small = rpc.entries.is_empty();
        self.call(&rpc, &option, Method::AppendEntries, small).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(&rpc, &option, Method::InstallSnapshot, false)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        self.call(&rpc, &option, Method::Vote, true).await
    }
}

/// The server side: decodes a peer's request, refuses one that could never be valid
/// ([`admission`](super::admission)), hands the rest to the local Raft, encodes its answer.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }

    /// Refuses a message that must not reach openraft, with PERMISSION_DENIED and the reason.
    fn admit<'a>(
        &self,
        vote: &openraft::Vote<NodeId>,
        log_ids: impl IntoIterator<Item = &'a openraft::LogId<NodeId>>,
    ) -> Result<(), tonic::Status> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        admission::admit(vote, log_ids, &admission::LocalView::of(&metrics)).map_err(|refused| {
            metrics::counter!(super::metrics::RAFT_REFUSED).increment(1);
            tracing::warn!(error = %refused, "raft message refused before it reached raft");
            tonic::Status::permission_denied(format!("raft message refused: {refused}"))
        })
    }
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&payload.json).map_err(|err| {
        tonic::Status::invalid_argument(proto::bounded_message(format!(
            "undecodable raft payload: {err}"
        )))
    })
}

fn encode<T: Serialize>(answer: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    let json = serde_json::to_vec(answer).map_err(|err| {
        tonic::Status::internal(proto::bounded_message(format!(
            "unencodable raft answer: {err}"
        )))
    })?;
    Ok(tonic::Response::new(RaftPayload { json: json.into() }))
}

#[tonic::async_trait]
impl proto::controller::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        self.admit(&rpc.vote, admission::append_log_ids(&rpc))?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        self.admit(&rpc.vote, rpc.last_log_id.iter())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        self.admit(&rpc.vote, rpc.meta.last_log_id.iter())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn campaign(
        &self,
        request: tonic::Request<proto::controller::CampaignRequest>,
    ) -> Result<tonic::Response<proto::controller::CampaignResponse>, tonic::Status> {
        Ok(tonic::Response::new(super::handover::campaign_later(
            &self.raft,
            request.get_ref(),
        )))
    }
}
