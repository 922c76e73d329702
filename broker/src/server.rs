//! One broker, wired: [`Broker::start`] opens the store and the topic registry, takes its role
//! (a master ships its log to its slaves; a slave replicates its master's), links to the
//! controller, and serves the client-facing gRPC services and the replication stream;
//! [`Broker::run_until`] serves until told to stop, then stops accepting, finishes the requests
//! in flight, flushes, and closes the store cleanly (the abort marker goes, so the next start
//! needs no recovery). The `broker` binary and the tests share this wiring.
//!
//! TLS: with `tls_cert`, `tls_key` and `tls_ca` set, every listener (client API with the log
//! stream, v5 API, metrics) is TLS, and the log stream and the controller's internal calls need a
//! client certificate from the cluster CA besides the member signature; every connection the
//! broker dials presents its certificate. Without them it warns once that its ports are
//! plaintext.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use controller_client::broker_link::LinkError;
use exporter::ExporterError;
use proto::client::broker_server::BrokerServer;
use proto::client::consumer_groups_server::ConsumerGroupsServer;
use proto::replication::log_shipping_server::LogShippingServer;
use replication::ship::{
    InSyncConfig, ReplicaConfig, ShipConfig, ShipService, STREAM_MESSAGE_BYTES_MAX,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::group_service::ConsumerGroupService;
use crate::groups::ConsumerGroupState;
use crate::link::{start_controller_link, LinkStartError, LinkTask};
use crate::listen::{
    bind_exporter, bind_v5, dial_from_source_ip, member_guard, nodelay_incoming, receipt_key,
    serve_v5, start_tls,
};
use crate::metrics::{BrokerSampler, StoreMetrics};
use crate::planned_stop;
use crate::retry::{parse_delay_levels, RetryState};
use crate::role::{InitialRole, RoleCell, RoleContext};
use crate::service::BrokerService;
use crate::store::{ConfirmMode, FlushDiskType, Store, StoreError};
use crate::topics::TopicRegistry;
use crate::v5::route::RouteSourceError;
use crate::v5::{V5Parts, V5Service};

/// How long a slave waits for its master's TCP connection.
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for request framing and fields beyond message bytes.
const REQUEST_OVERHEAD_BYTES: usize = 1 << 20;
/// On stop, how long requests in flight (sends waiting for their fsync and their in-sync set)
/// may finish before a master ends its slaves' log streams, which never end on their own.
const STOP_REQUESTS_GRACE: Duration = Duration::from_secs(1);
/// Then how long what is still open (long polls, streams closing) may take before it is cut:
/// nothing acknowledged depends on it, a cut client retries.
const STOP_STREAMS_GRACE: Duration = Duration::from_secs(3);

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] ExporterError),
    #[error("metrics endpoint: its address: {0}")]
    MetricsAddr(#[source] std::io::Error),
    #[error("open the store: {0}")]
    Store(#[from] StoreError),
    #[error("open the store: the opening task failed: {0}")]
    StoreTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("message_delay_level: {0}")]
    DelayLevels(#[from] crate::retry::DelayLevelsError),
    #[error("cluster_secret: {0}")]
    Key(#[from] auth::KeyError),
    #[error("controller link: {0}")]
    Link(#[from] LinkStartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("v5 API: {0}")]
    V5(#[from] RouteSourceError),
    #[error("the ACL's feed from the controller: {0}")]
    AclFeed(#[source] controller_client::ControllerError),
    #[error("TLS: {0}")]
    Tls(#[from] proto::tls::TlsError),
}

/// Why a running broker stopped other than when told to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The controller refused this broker for good; it stopped cleanly.
    #[error(transparent)]
    Refused(LinkError),
    #[error("serve: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    #[error("the server stopped accepting connections before it was told to stop")]
    ServerEnded,
    #[error("stop the store: {0}")]
    StopStore(#[from] StoreError),
    #[error("stop the store: the closing task failed: {0}")]
    StopStoreTask(#[source] tokio::task::JoinError),
}

/// A started broker: serving, until [`Broker::run_until`] stops it.
pub struct Broker {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    v5_addr: Option<SocketAddr>,
    /// The v5 API's server, on its own port; it stops with the native one.
    v5_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    store: Arc<Store>,
    role: Arc<RoleCell>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stopping: watch::Sender<bool>,
    link: Option<LinkTask>,
    refused: Option<oneshot::Receiver<LinkError>>,
    /// `planned_stop`: hand over or leave the in-sync set before stopping.
    planned_stop: bool,
    /// The users and permissions requests are checked against (`acl_directory`).
    acl: auth::Directory,
    /// Tasks that only end when aborted (the metrics endpoint, the group-view applier, the
    /// store's health watch).
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Starts a broker with `config` (validated by the caller: `BrokerConfig::validate`). A
    /// broker restarted after its disk filled waits here until space returns
    /// (`crate::fault`).
    pub async fn start(config: BrokerConfig) -> Result<Broker, StartError> {
        let settings = &config.broker;
        dial_from_source_ip(settings);
        let tls = start_tls(settings)?;
        // The recorder goes in before the store opens, so that the flusher's first fsyncs count.
        let exporter = bind_exporter(settings, tls.as_ref()).await?;
        let metrics_addr = match &exporter {
            Some(exporter) => Some(exporter.local_addr().map_err(StartError::MetricsAddr)?),
            None => None,
        };
        let store_path = config.store.store_path.clone();
        crate::fault::wait_for_disk_space(
            &store_path,
            config.store.disk_high_water_ratio,
            config.store.segment_bytes.saturating_mul(2),
        )
        .await;
        let store = tokio::task::spawn_blocking({
            let store_config = config.store.clone();
            // Every replicating broker shows consumers what its in-sync set (or its master)
            // confirmed, never its whole recovered log; a broker without a controller confirms
            // by itself.
            let mode = if settings.controller_addr.is_empty() {
                ConfirmMode::Local
            } else {
                ConfirmMode::External
            };
            move || Store::open_with(store_config, mode, Arc::new(StoreMetrics))
        })
        .await
        .map_err(StartError::StoreTask)??;
        let store = Arc::new(store);
        // A failed write gives this broker's place up at once: it restarts with its store
        // reopened.
        let mut tasks = vec![crate::fault::watch_store(store.clone())];
        let topics = Arc::new(TopicRegistry::open(&store_path)?);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: settings.listen,
            source,
        })?;
        let advertised = if settings.advertised_addr.is_empty() {
            local_addr.to_string()
        } else {
            settings.advertised_addr.clone()
        };
        let (v5_listener, v5_addr, v5_advertised) = bind_v5(settings).await?;
        tracing::info!(
            addr = %local_addr,
            broker_name = %settings.broker_name,
            broker_id = settings.broker_id,
            broker_role = %settings.role(),
            flush_disk_type = ?config.store.flush_disk_type,
            "broker serving"
        );
        if let Some(addr) = metrics_addr {
            tracing::info!(%addr, "metrics endpoint serving");
        }
        let cluster_key = settings.cluster_key()?;
        let (acl, gate) = acl_gate(settings, &cluster_key);
        let groups = Arc::new(
            ConsumerGroupState::load(
                store.clone(),
                topics.clone(),
                Duration::from_millis(settings.consumer_heartbeat_timeout_ms),
            )
            .await?,
        );
        let levels = parse_delay_levels(&settings.message_delay_level)?;
        let retry = RetryState::new(
            store.clone(),
            topics.clone(),
            groups.clone(),
            levels,
            settings.max_reconsume_times,
        )?;
        let role = RoleCell::new(
            role_context(
                &config,
                &store,
                &groups,
                &retry,
                advertised.clone(),
                cluster_key.clone(),
            ),
            if settings.is_slave() || settings.is_controlled() {
                InitialRole::Slave
            } else {
                InitialRole::StaticMaster
            },
        );
        if let Some(exporter) = exporter {
            tasks.push(exporter.serve(Arc::new(BrokerSampler::new(
                store.clone(),
                role.clone(),
                groups.clone(),
            ))));
        }
        let (link, refused, views) = if settings.controller_addr.is_empty() {
            role.start(None, None).await;
            (None, None, None)
        } else {
            let started = start_controller_link(
                &config,
                advertised,
                v5_advertised.clone(),
                store.clone(),
                topics.clone(),
                retry.clone(),
                role.clone(),
            )
            .await?;
            tasks.push(started.views);
            if let Some(key) = cluster_key.clone() {
                tasks.push(follow_acl(&settings.controller_addr, key, &acl)?);
            }
            (
                Some(started.link),
                Some(started.refused),
                Some(started.group_views),
            )
        };
        let ship = ShipService::new(
            store.clone(),
            role.in_sync_watch(),
            ShipConfig {
                group: settings.broker_name.clone(),
                broker_id: settings.broker_id,
                chunk_bytes: settings.replication_chunk_bytes as usize,
                inflight_bytes_max: settings.replication_inflight_bytes_max,
                keepalive: Duration::from_millis(settings.replication_keepalive_ms),
            },
        )
        .with_gate(gate.clone());
        let service = Arc::new(BrokerService::new(
            store.clone(),
            topics.clone(),
            settings.clone(),
            role.clone(),
            gate.clone(),
        ));
        let (stopping, stop_requested) = watch::channel(false);
        let v5_server = match v5_listener {
            Some(listener) => {
                let parts = V5Parts {
                    native: service.clone(),
                    store: store.clone(),
                    topics,
                    groups: groups.clone(),
                    retry: retry.clone(),
                    role: role.clone(),
                    key: receipt_key(cluster_key.clone())?,
                    gate: gate.clone(),
                    views,
                    v5_addr: v5_advertised,
                };
                Some(spawn_v5(
                    listener,
                    parts,
                    &config,
                    tls.as_ref(),
                    stop_requested.clone(),
                )?)
            }
            None => None,
        };
        // Room for the largest batch the store takes, so that an oversized message reaches the
        // service's checks and gets its own error code instead of a transport error.
        let request_bytes_max = config.store.batch_bytes_max + REQUEST_OVERHEAD_BYTES;
        let incoming = nodelay_incoming(listener);
        let mut stop_requested = stop_requested;
        let server = proto::tls::server_builder(tls.as_ref())?
            // The log stream only to members (the auth crate); client calls pass untouched.
            .layer(member_guard(tls.as_ref(), cluster_key))
            // Who each client call comes from (a bad signature refused here); the services
            // check what the caller may do.
            .layer(auth::UserGuardLayer::new(gate.clone()))
            .add_service(
                BrokerServer::from_arc(service)
                    .max_decoding_message_size(request_bytes_max)
                    .max_encoding_message_size(
                        crate::service::PULL_BYTES_MAX as usize + REQUEST_OVERHEAD_BYTES,
                    ),
            )
            .add_service(ConsumerGroupsServer::new(ConsumerGroupService::new(
                groups,
                retry,
                role.clone(),
                gate,
            )))
            .add_service(
                LogShippingServer::new(ship)
                    .max_decoding_message_size(STREAM_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(STREAM_MESSAGE_BYTES_MAX),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_requested.wait_for(|stop| *stop).await;
            });
        Ok(Broker {
            local_addr,
            metrics_addr,
            v5_addr,
            v5_server,
            store,
            role,
            server: tokio::spawn(server),
            stopping,
            link,
            refused,
            planned_stop: settings.planned_stop,
            acl,
            tasks,
        })
    }

    /// The address it serves on (with `listen` port 0, the port the system chose).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where its RocketMQ 5 API serves, when `v5_listen` is set.
    pub fn v5_addr(&self) -> Option<SocketAddr> {
        self.v5_addr
    }

    /// The ACL this broker checks requests against: what the controller's feed keeps
    /// current, and what a test fills by hand (`Directory::replace`).
    pub fn acl_directory(&self) -> &auth::Directory {
        &self.acl
    }

    /// Where its `/metrics` endpoint serves, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until `stop` completes (or the controller refuses this broker, or the server
    /// fails), then stops cleanly: a controlled master hands mastership to an in-sync slave
    /// first and a slave of the in-sync set leaves it, then no new requests, those in flight finished (a master's log
    /// streams and long polls cut after a grace), the controller told, the store closed.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), RunError> {
        let refused = async {
            match self.refused.as_mut() {
                Some(refused) => refused.await.ok(),
                None => std::future::pending().await,
            }
        };
        let mut refusal = None;
        tokio::select! {
            served = &mut self.server => return Err(served_error(served)),
            () = stop => {}
            Some(err) = refused => refusal = Some(err),
        }
        if refusal.is_none() && self.planned_stop {
            if let Some(link) = &self.link {
                // A planned stop is felt by nobody: a master hands mastership to an in-sync
                // slave first, and a slave of the in-sync set leaves it (both keep serving
                // meanwhile).
                planned_stop::before_stop(&self.role, link.handover()).await;
            }
        }
        tracing::info!("stopping: no new requests; finishing those in flight");
        let _ = self.stopping.send(true);
        // The server returns once every request has ended; a master's log streams to its
        // slaves end only when its role does, and long polls when their wait runs out.
        match tokio::time::timeout(STOP_REQUESTS_GRACE, &mut self.server).await {
            Ok(served) => served.map_err(RunError::ServerTask)??,
            Err(_) => {
                tracing::info!(
                    "requests still open (log streams to slaves, long polls): ending the role"
                );
                self.role.shutdown().await;
                match tokio::time::timeout(STOP_STREAMS_GRACE, &mut self.server).await {
                    Ok(served) => served.map_err(RunError::ServerTask)??,
                    Err(_) => {
                        self.server.abort();
                        tracing::info!(
                            "connections still open after {STOP_STREAMS_GRACE:?}: closing them"
                        );
                    }
                }
            }
        }
        if let Some(v5_server) = self.v5_server.take() {
            // Its sends went through the native server, which has ended: what is left are
            // telemetry streams, which a client reopens elsewhere.
            if tokio::time::timeout(STOP_STREAMS_GRACE, v5_server)
                .await
                .is_err()
            {
                tracing::info!("v5 connections still open: closing them");
            }
        }
        // Every request has ended: the controller may show this broker not alive now.
        if let Some(link) = self.link.take() {
            link.stop().await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.role.shutdown().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(RunError::StopStoreTask)??;
        tracing::info!("broker stopped cleanly");
        match refusal {
            Some(err) => Err(RunError::Refused(err)),
            None => Ok(()),
        }
    }
}

/// What a server that ended on its own ended with: it only ends on a failure before it was
/// told to stop.
fn served_error(
    served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> RunError {
    match served {
        Ok(Err(err)) => RunError::Serve(err),
        Err(err) => RunError::ServerTask(err),
        Ok(Ok(())) => RunError::ServerEnded,
    }
}

/// Keeps `acl` at the controller's users and policies, over a member's connection of its own
/// (the watch is member-only); a broker keeps the last ACL it had while the controller is out
/// of reach. The task is aborted with the broker's others at stop, so its stop signal never
/// fires: the sender lives in the task only so that the channel stays open. (A broker with a
/// controller has a cluster key: the configuration requires it.)
fn follow_acl(
    controller_addr: &str,
    key: auth::ClusterKey,
    acl: &auth::Directory,
) -> Result<JoinHandle<()>, StartError> {
    let connection = controller_client::ControllerConnection::member(controller_addr, key)
        .map_err(StartError::AclFeed)?;
    let followed = acl.clone();
    Ok(tokio::spawn(async move {
        let (_open, stop) = watch::channel(false);
        controller_client::acl::follow_acl(connection, followed, stop).await;
    }))
}

/// The ACL this broker checks requests against (`auth::Directory`, users and policies as the
/// controller's ACL says) and the gate the services ask (`crate::access`), enforced when
/// `acl_enabled`.
fn acl_gate(
    settings: &crate::config::BrokerSettings,
    cluster_key: &Option<auth::ClusterKey>,
) -> (auth::Directory, auth::Gate) {
    let acl = auth::Directory::new(cluster_key.clone());
    let gate = auth::Gate::new(acl.clone(), settings.acl_enabled);
    if !settings.acl_enabled {
        tracing::warn!(
            "acl_enabled is false: anyone who reaches this broker may send, consume and administer"
        );
    }
    (acl, gate)
}

/// Serves the v5 API over `parts` on `listener`, in a task, until `stop` says so.
fn spawn_v5(
    listener: TcpListener,
    parts: V5Parts,
    config: &BrokerConfig,
    tls: Option<&proto::tls::NodeTls>,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), tonic::transport::Error>>, StartError> {
    let users = auth::UserGuardLayer::new(parts.gate.clone());
    let v5 = V5Service::new(parts, &config.broker, &config.store)?;
    let request_bytes_max = config.store.batch_bytes_max + REQUEST_OVERHEAD_BYTES;
    let builder = proto::tls::server_builder(tls)?;
    Ok(tokio::spawn(serve_v5(
        builder,
        v5,
        listener,
        request_bytes_max,
        users,
        stop,
    )))
}

/// What the role needs: the store, the consumer groups and retries, and the replication
/// settings of both roles.
fn role_context(
    config: &BrokerConfig,
    store: &Arc<Store>,
    groups: &Arc<ConsumerGroupState>,
    retry: &Arc<RetryState>,
    advertised: String,
    cluster_key: Option<auth::ClusterKey>,
) -> RoleContext {
    let settings = &config.broker;
    RoleContext {
        store: store.clone(),
        groups: groups.clone(),
        retry: retry.clone(),
        broker_id: settings.broker_id,
        controlled: settings.is_controlled(),
        in_sync: InSyncConfig {
            master_id: settings.broker_id,
            sync_master: settings.sync_master(),
            require_flushed: config.store.flush_disk_type == FlushDiskType::SyncFlush,
            min_in_sync_replicas: settings.min_in_sync_replicas() as usize,
            slave_timeout: Duration::from_millis(settings.slave_timeout_ms),
            lag_max: Duration::from_millis(settings.in_sync_lag_max_ms),
            gone_max: Duration::from_millis(settings.in_sync_gone_max_ms),
        },
        replica: ReplicaConfig {
            group: settings.broker_name.clone(),
            broker_id: settings.broker_id,
            addr: advertised,
            cluster_key,
            keepalive: Duration::from_millis(settings.replication_keepalive_ms),
            connect_timeout: REPLICA_CONNECT_TIMEOUT,
        },
        offset_snapshot_interval: Duration::from_millis(settings.offset_snapshot_interval_ms),
    }
}
