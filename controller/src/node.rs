//! One running controller: storage, Raft, the gRPC servers, first initialisation, and the
//! background tasks that keep the leader's liveness view current and elect masters.
//!
//! TLS: with `tls_cert`, `tls_key` and `tls_ca` set, the one port (Raft and the Controller
//! service) is TLS, Raft and the brokers' internal calls need a client certificate from the
//! cluster CA besides the member signature, and every connection the controller dials (Raft to
//! its peers, forwarding to the leader, membership probes) presents its certificate. Without
//! them it warns once that its port is plaintext.

use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState, SnapshotPolicy};
use proto::controller::controller_server::ControllerServer;
use proto::controller::raft_server::RaftServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::access;
use super::audit::AuditLog;
use super::config::{ConfigError, ControllerConfig};
use super::election::{ElectionContext, ElectionLoop, Timing};
use super::lease::Leases;
use super::liveness::Liveness;
use super::metrics::ControllerSampler;
use super::network::{NetworkFactory, RaftService, RAFT_MESSAGE_BYTES_MAX};
use super::service::{ControllerService, UserAccess};
use super::store::{self, SharedState};
use super::{NodeId, Raft};

/// How often the leader re-evaluates which brokers are alive.
const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// A started controller.
pub struct ControllerNode {
    pub raft: Raft,
    pub state: SharedState,
    pub local_addr: std::net::SocketAddr,
    liveness: Arc<Liveness>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: Vec<JoinHandle<()>>,
    /// For the hand-over at a planned stop ([`crate::handover`]).
    id: NodeId,
    key: auth::ClusterKey,
    vote_lease: Duration,
}

/// Why a controller could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("open the controller data: {0}")]
    Store(#[from] store::OpenError),
    #[error("raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    #[error("TLS: {0}")]
    Tls(#[from] proto::tls::TlsError),
}

/// Reads the TLS files of `config` when set and makes this process dial with them; warns when
/// there are none, since the controller's ports are then plaintext.
pub fn start_tls(
    config: &ControllerConfig,
) -> Result<Option<proto::tls::NodeTls>, proto::tls::TlsError> {
    let tls = proto::tls::start_node(config.tls_paths()?.as_ref())?;
    if tls.is_none() {
        tracing::warn!(
            "no tls_cert, tls_key, tls_ca: every port of this controller is plaintext (development only)"
        );
    }
    Ok(tls)
}

impl ControllerNode {
    /// Opens the storage, starts Raft and the servers, and initialises the quorum if this is the
    /// first start of a listed peer.
    pub async fn start(config: ControllerConfig) -> Result<ControllerNode, NodeError> {
        let tls = start_tls(&config)?;
        Self::start_with_tls(config, tls).await
    }

    /// As [`ControllerNode::start`], with the TLS [`start_tls`] read already (the binary reads
    /// it once for the node and its metrics endpoint).
    pub async fn start_with_tls(
        config: ControllerConfig,
        tls: Option<proto::tls::NodeTls>,
    ) -> Result<ControllerNode, NodeError> {
        config.validate()?;
        let peers = config.peer_map()?;
        let key = config.cluster_key().map_err(ConfigError::Key)?;
        let (log_store, state_machine) = store::open(&config.data_dir)?;
        let state = state_machine.shared();
        let raft_config = openraft::Config {
            cluster_name: "controller".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            // The default (200 ms) is too short for a real snapshot (shared/STACK.md).
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            NetworkFactory::new(key.clone()),
            log_store,
            state_machine,
        )
        .await?;

        let listen_error = |source| NodeError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let liveness = Arc::new(Liveness::new(Duration::from_millis(
            config.broker_heartbeat_timeout_ms,
        )));
        let election = ElectionContext::new(Timing::from_config(&config));
        let directory = auth::Directory::new(Some(key.clone()));
        let gate = auth::Gate::new(directory.clone(), config.acl_enabled);
        if !config.acl_enabled {
            tracing::warn!(
                "acl_enabled is false: anyone who reaches this controller may administer the cluster"
            );
        }
        let audit = Arc::new(AuditLog::new(config.audit_log_path(), config.id));
        let mut tasks = vec![
            tokio::spawn(access::follow_directory(state.clone(), directory)),
            tokio::spawn(follow_leadership(
                raft.clone(),
                liveness.clone(),
                election.leases.clone(),
            )),
            tokio::spawn(publish_liveness(state.clone(), liveness.clone())),
            tokio::spawn(
                ElectionLoop::new(
                    raft.clone(),
                    state.clone(),
                    liveness.clone(),
                    election.clone(),
                )
                .run(),
            ),
        ];
        if let Some((name, secret_key)) = config.built_in_admin()? {
            let admin = access::BuiltInAdmin {
                name: name.to_owned(),
                secret_key: secret_key.to_owned(),
            };
            tasks.push(tokio::spawn(access::keep_built_in_admin(
                raft.clone(),
                state.clone(),
                key.clone(),
                admin,
            )));
        }
        let service = ControllerService::new(
            config.id,
            raft.clone(),
            state.clone(),
            liveness.clone(),
            election,
            key.clone(),
            UserAccess {
                gate: gate.clone(),
                audit,
            },
        );
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let guard = if tls.is_some() {
            auth::MemberGuardLayer::requiring_client_certificate(Some(key.clone()))
        } else {
            auth::MemberGuardLayer::new(Some(key.clone()))
        };
        let server = tokio::spawn(
            proto::tls::server_builder(tls.as_ref())?
                // Raft and the brokers' internal calls only from members (the auth crate).
                .layer(guard)
                // Who a user's request comes from, for the services' gate; member-only paths
                // are left to the layer above.
                .layer(auth::UserGuardLayer::new(gate))
                .add_service(
                    RaftServer::new(RaftService::new(raft.clone()))
                        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
                )
                .add_service(ControllerServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = shutdown_rx.await;
                }),
        );

        if peers.contains_key(&config.id) && !raft.is_initialized().await? {
            let members: std::collections::BTreeMap<_, _> = peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                .collect();
            // Every listed peer may do this with the same members: openraft documents it as safe.
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(peers = ?peers, "controller quorum initialised"),
                Err(err) => tracing::info!(error = %err, "quorum already initialised"),
            }
        }
        Ok(ControllerNode {
            raft,
            state,
            local_addr,
            liveness,
            shutdown: Some(shutdown_tx),
            server,
            tasks,
            id: config.id,
            key,
            vote_lease: Duration::from_millis(config.election_timeout_max_ms),
        })
    }

    /// What the `/metrics` endpoint samples on this controller.
    pub fn metrics_sampler(&self) -> ControllerSampler {
        ControllerSampler::new(self.raft.clone(), self.state.clone(), self.liveness.clone())
    }

    /// Stops serving and stops Raft. Both: a stopped server with a running Raft would keep
    /// heartbeating as leader (shared/STACK.md). A leader then asks its successor to campaign
    /// as soon as the vote lease allows ([`crate::handover`]), after its Raft stopped, so that
    /// no heartbeat of its own follows the request.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let successor = crate::handover::successor(&self.raft, self.id);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.raft.shutdown().await;
        if let Some(successor) = successor {
            crate::handover::hand_over(successor, self.id, self.key.clone(), self.vote_lease).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), &mut self.server).await {
            Ok(joined) => joined.map_err(NodeError::ServerTask)??,
            Err(_) => {
                // Streams (route watches) can hold the server open; they end with the process.
                self.server.abort();
            }
        }
        Ok(())
    }
}

/// Resets the leader's memory (liveness, leases, switchovers) whenever this node gains or loses
/// leadership.
async fn follow_leadership(raft: Raft, liveness: Arc<Liveness>, leases: Arc<Leases>) {
    let mut metrics = raft.metrics();
    let mut was_leader = false;
    loop {
        let is_leader = metrics.borrow_and_update().state == ServerState::Leader;
        if is_leader != was_leader {
            tracing::info!(leader = is_leader, "controller leadership changed");
            leases.clear();
            liveness.set_leader(is_leader);
            was_leader = is_leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Brokers die by silence: re-evaluate alive flags on a tick so route watches learn of it.
async fn publish_liveness(state: SharedState, liveness: Arc<Liveness>) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let brokers: Vec<(String, u64)> = state.read(|data| {
            data.state
                .groups
                .iter()
                .flat_map(|(name, group)| group.brokers.keys().map(|id| (name.clone(), *id)))
                .collect()
        });
        liveness.publish(&brokers);
    }
}
