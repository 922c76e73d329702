//! The `broker` process: opens the store and the topic registry, takes its role (a master ships
//! its log to its slaves; a slave replicates its master's), serves the client-facing gRPC
//! services and the replication stream, and on SIGTERM or SIGINT stops accepting, finishes the requests in flight, flushes,
//! and closes the store cleanly (the abort marker goes, so the next start needs no recovery).
//!
//! Prints `broker listening on ADDR` on stdout once it serves (with `listen` port 0, ADDR has
//! the port the system chose: tests and scripts read it there). With `metrics_listen` set, it
//! prints `metrics listening on ADDR` just before: the broker line stays the last one, so a
//! reader that stops there (and closes the pipe) never makes a later print fail.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use std::time::Duration;

use broker::authority::ControllerAuthority;
use broker::config::{BrokerConfig, BrokerRoleKind};
use broker::groups::{ConsumerGroupService, ConsumerGroupState};
use broker::metrics::{BrokerSampler, StoreMetrics};
use broker::retry::{parse_delay_levels, RetryState};
use broker::role::{InitialRole, RoleCell, RoleContext};
use broker::service::BrokerService;
use broker::store::{ConfirmMode, FlushDiskType, Store};
use broker::topics::TopicRegistry;
use clap::Parser;
use controller_client::broker_link::{
    BrokerIdentity, BrokerMetadata, ControllerLink, LeaseAnswer, MetadataSyncError,
    ReplicationReport,
};
use exporter::Exporter;
use proto::client::broker_server::BrokerServer;
use proto::client::consumer_groups_server::ConsumerGroupsServer;
use proto::controller::{BrokerRole, GroupSettings, GroupTopic, GroupView, ReplicationMode};
use proto::replication::log_shipping_server::LogShippingServer;
use replication::ship::{
    InSyncConfig, ReplicaConfig, ShipConfig, ShipService, STREAM_MESSAGE_BYTES_MAX,
};
use std::collections::{BTreeMap, HashMap};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// How long a slave waits for its master's TCP connection.
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for request framing and fields beyond message bytes.
const REQUEST_OVERHEAD_BYTES: usize = 1 << 20;
/// On SIGTERM, how long requests in flight (sends waiting for their fsync and their in-sync
/// set) may finish before a master ends its slaves' log streams, which never end on their own.
const STOP_REQUESTS_GRACE: Duration = Duration::from_secs(1);
/// Then how long what is still open (long polls, streams closing) may take before it is cut:
/// nothing acknowledged depends on it, a cut client retries.
const STOP_STREAMS_GRACE: Duration = Duration::from_secs(3);

/// A broker of the cluster. Every configuration key is described in docs/CONFIG.md.
#[derive(Parser, Debug)]
#[command(name = "broker", version, about)]
struct Cli {
    /// TOML configuration file (flat keys, as in RocketMQ's broker.conf).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`), e.g. 127.0.0.1:10911; port 0 picks a free one.
    #[arg(long)]
    listen: Option<String>,
    /// Store directory (overrides `store_path`).
    #[arg(long)]
    store_path: Option<PathBuf>,
    /// SYNC_FLUSH or ASYNC_FLUSH (overrides `flush_disk_type`).
    #[arg(long)]
    flush_disk_type: Option<String>,
    /// Any configuration key, as KEY=VALUE in TOML value syntax; repeatable; applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Fault tests only: stop at this pause point (see `broker::store::failpoint`) until killed.
    #[arg(long, hide = true)]
    failpoint: Option<String>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(point) = &cli.failpoint {
        broker::store::failpoint::arm(point).map_err(anyhow::Error::msg)?;
    }
    let config = load_config(&cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?
        .block_on(serve(config))
}

fn load_config(cli: &Cli) -> Result<BrokerConfig> {
    let base = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            BrokerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    let mut overrides = Vec::new();
    if let Some(listen) = &cli.listen {
        overrides.push(format!("listen=\"{listen}\""));
    }
    if let Some(path) = &cli.store_path {
        overrides.push(format!("store_path={:?}", path.display().to_string()));
    }
    if let Some(kind) = &cli.flush_disk_type {
        overrides.push(format!("flush_disk_type=\"{kind}\""));
    }
    overrides.extend(cli.overrides.iter().cloned());
    let config = base.with_overrides(&overrides)?;
    config.validate()?;
    Ok(config)
}

async fn serve(config: BrokerConfig) -> Result<()> {
    let settings = &config.broker;
    // The recorder goes in before the store opens, so that the flusher's first fsyncs count.
    let exporter = match settings.metrics_listen()? {
        Some(addr) => {
            let labels = [
                ("broker_group", settings.broker_name.clone()),
                ("broker_id", settings.broker_id.to_string()),
            ];
            let exporter = Exporter::bind(addr, &labels).await?;
            broker::metrics::describe();
            Some(exporter)
        }
        None => None,
    };
    let store_path = config.store.store_path.clone();
    // A broker restarted after its disk filled stays out until space returns (broker::fault).
    broker::fault::wait_for_disk_space(
        &store_path,
        config.store.disk_high_water_ratio,
        config.store.segment_bytes.saturating_mul(2),
    )
    .await;
    let store = tokio::task::spawn_blocking({
        let store_config = config.store.clone();
        // Every replicating broker shows consumers what its in-sync set (or its master) confirmed,
        // never its whole recovered log; a broker without a controller confirms by itself.
        let mode = if settings.controller_addr.is_empty() {
            ConfirmMode::Local
        } else {
            ConfirmMode::External
        };
        move || Store::open_with(store_config, mode, Arc::new(StoreMetrics))
    })
    .await
    .context("open the store")??;
    let store = Arc::new(store);
    // A failed write gives this broker's place up at once: it restarts with its store reopened.
    let _store_watch = broker::fault::watch_store(store.clone());
    let topics = Arc::new(TopicRegistry::open(&store_path)?);
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let local = listener.local_addr()?;
    let advertised = if settings.advertised_addr.is_empty() {
        local.to_string()
    } else {
        settings.advertised_addr.clone()
    };
    tracing::info!(
        addr = %local,
        broker_name = %settings.broker_name,
        broker_id = settings.broker_id,
        broker_role = %settings.role(),
        flush_disk_type = ?config.store.flush_disk_type,
        "broker serving"
    );
    // Validated with the configuration: only an empty secret gives None.
    let cluster_key = settings.cluster_key()?;
    if let Some(exporter) = &exporter {
        let addr = exporter.local_addr()?;
        tracing::info!(%addr, "metrics endpoint serving");
        announce(&format!("metrics listening on {addr}"));
    }
    announce(&format!("broker listening on {local}"));
    let groups = Arc::new(
        ConsumerGroupState::load(
            store.clone(),
            topics.clone(),
            Duration::from_millis(settings.consumer_heartbeat_timeout_ms),
        )
        .await?,
    );
    let levels = parse_delay_levels(&settings.message_delay_level)
        .map_err(|reason| anyhow::anyhow!("message_delay_level: {reason}"))?;
    let retry = RetryState::new(
        store.clone(),
        topics.clone(),
        groups.clone(),
        levels,
        settings.max_reconsume_times,
    )?;
    let role = RoleCell::new(
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
            },
            replica: ReplicaConfig {
                group: settings.broker_name.clone(),
                broker_id: settings.broker_id,
                addr: advertised.clone(),
                cluster_key: cluster_key.clone(),
                keepalive: Duration::from_millis(settings.replication_keepalive_ms),
                connect_timeout: REPLICA_CONNECT_TIMEOUT,
            },
            offset_snapshot_interval: Duration::from_millis(settings.offset_snapshot_interval_ms),
        },
        if settings.is_slave() || settings.is_controlled() {
            InitialRole::Slave
        } else {
            InitialRole::StaticMaster
        },
    );
    let mut tasks = Vec::new();
    if let Some(exporter) = exporter {
        tasks.push(exporter.serve(Arc::new(BrokerSampler::new(
            store.clone(),
            role.clone(),
            groups.clone(),
        ))));
    }
    let mut link = None;
    if settings.controller_addr.is_empty() {
        role.start(None, None).await;
    } else {
        let started = start_controller_link(
            &config,
            advertised,
            store.clone(),
            topics.clone(),
            retry.clone(),
            role.clone(),
        )
        .await?;
        tasks.push(started.views);
        link = Some(started.link);
    }
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
    );
    let service = BrokerService::new(store.clone(), topics, settings.clone(), role.clone());
    // Room for the largest batch the store takes, so that an oversized message reaches the
    // service's checks and gets its own error code instead of a transport error.
    let request_bytes_max = config.store.batch_bytes_max + REQUEST_OVERHEAD_BYTES;
    // Small answers must leave at once: with Nagle's algorithm on, an answer waits for the
    // client's delayed ACK (40 ms here), which capped a connection at a few hundred sends a second.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            if let Err(err) = s.set_nodelay(true) {
                tracing::warn!(error = %err, "could not disable Nagle's algorithm on a connection");
            }
        })
    });
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (stopping, mut stop_requested) = watch::channel(false);
    let server = tonic::transport::Server::builder()
        // The log stream only to members (the auth crate); client calls pass untouched.
        .layer(auth::MemberGuardLayer::new(cluster_key))
        .add_service(
            BrokerServer::new(service)
                .max_decoding_message_size(request_bytes_max)
                .max_encoding_message_size(
                    broker::service::PULL_BYTES_MAX as usize + REQUEST_OVERHEAD_BYTES,
                ),
        )
        .add_service(ConsumerGroupsServer::new(ConsumerGroupService::new(
            groups,
            retry,
            role.clone(),
        )))
        .add_service(
            LogShippingServer::new(ship)
                .max_decoding_message_size(STREAM_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(STREAM_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_requested.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served.context("serve")?,
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping: no new requests; finishing those in flight");
    let _ = stopping.send(true);
    // The server returns once every request has ended; a master's log streams to its slaves
    // end only when its role does, and long polls when their wait runs out.
    match tokio::time::timeout(STOP_REQUESTS_GRACE, &mut server).await {
        Ok(served) => served.context("serve")?,
        Err(_) => {
            tracing::info!(
                "requests still open (log streams to slaves, long polls): ending the role"
            );
            role.shutdown().await;
            match tokio::time::timeout(STOP_STREAMS_GRACE, &mut server).await {
                Ok(served) => served.context("serve")?,
                Err(_) => tracing::info!(
                    "connections still open after {STOP_STREAMS_GRACE:?}: closing them"
                ),
            }
        }
    }
    // Every request has ended: the controller may show this broker not alive now.
    if let Some(link) = link {
        link.stop().await;
    }
    for task in tasks {
        task.abort();
    }
    role.shutdown().await;
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .context("stop the store")??;
    tracing::info!("broker stopped cleanly");
    Ok(())
}

/// What the controller link reads and writes on this broker.
struct LinkedBroker {
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    retry: Arc<RetryState>,
    role: Arc<RoleCell>,
    /// The controller's latest view of the group, applied by a task of its own (applying may
    /// write the epoch file, and the link's calls must not block).
    views: watch::Sender<Option<GroupView>>,
}

impl BrokerMetadata for LinkedBroker {
    fn sync_topics(&self, topics: &[GroupTopic]) -> Result<(), MetadataSyncError> {
        let wanted: BTreeMap<String, u32> = topics
            .iter()
            .map(|t| (t.topic.clone(), t.queue_count))
            .collect();
        self.topics.sync(&wanted).map_err(MetadataSyncError::new)
    }

    fn sync_group_settings(&self, settings: &[GroupSettings]) -> Result<(), MetadataSyncError> {
        // The message model needs nothing here: a broadcasting group's consumers keep their own
        // offsets and retry in place, never sending back, so only max retries changes what the
        // broker does.
        let table: HashMap<String, u32> = settings
            .iter()
            .map(|s| (s.group.clone(), s.max_retries))
            .collect();
        self.retry.sync_group_max_retries(table);
        Ok(())
    }

    fn max_offset(&self) -> u64 {
        self.store.write_offset()
    }

    fn replication_report(&self) -> ReplicationReport {
        ReplicationReport {
            confirm_offset: self.store.confirm_offset(),
            replicas: self.role.progress_report(),
        }
    }

    fn group_view_changed(&self, view: &GroupView) {
        self.role.set_drained(view.drained);
        self.views.send_if_modified(|current| {
            let changed = current.as_ref() != Some(view);
            if changed {
                *current = Some(view.clone());
            }
            changed
        });
    }

    fn log_epoch(&self) -> u64 {
        self.role.log_epoch()
    }

    fn master_epoch(&self) -> u64 {
        self.role.master_epoch()
    }

    fn resigned(&self) -> bool {
        self.role.resigned()
    }

    fn store_health(&self) -> proto::controller::StoreHealth {
        let health = self.store.health().borrow().clone();
        proto::controller::StoreHealth {
            write_failed: health.write_failed.is_some(),
            corrupt_offset: health.corrupt.as_ref().map(|c| c.commit_log_offset),
            disk_full: health.disk_full,
            verified: health.verified,
            problem: health.problem(),
        }
    }

    fn lease_answered(&self, answer: LeaseAnswer) {
        self.role.lease_answered(answer);
    }
}

/// The controller link's tasks: the one applying group views, and the link itself.
struct StartedLink {
    views: tokio::task::JoinHandle<()>,
    link: LinkTask,
}

/// The task that registers and heartbeats, and how to end it.
struct LinkTask {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl LinkTask {
    /// Ends the heartbeats with the stopping notice (`ControllerLink::say_stopping`), waiting at
    /// most a little longer than the notice may take.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        let grace =
            controller_client::broker_link::STOPPING_NOTICE_TIMEOUT + Duration::from_millis(500);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Registers with the controller (waiting for it if it is not up yet), then heartbeats; applies
/// each group view the controller answers with, in order (the role changes there); a master
/// proposes its in-sync set changes to the controller. The broker serves meanwhile with the
/// topics it last synced. A permanent refusal (a second master for the group, a bad name) stops
/// the process: it must not serve a group it does not belong to.
async fn start_controller_link(
    config: &BrokerConfig,
    advertised: String,
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    retry: Arc<RetryState>,
    role: Arc<RoleCell>,
) -> Result<StartedLink> {
    let settings = &config.broker;
    let identity = BrokerIdentity {
        cluster: settings.broker_cluster_name.clone(),
        group: settings.broker_name.clone(),
        broker_id: settings.broker_id,
        addr: advertised,
        role: match settings.role() {
            BrokerRoleKind::Controlled => BrokerRole::Controlled,
            BrokerRoleKind::Slave => BrokerRole::Slave,
            BrokerRoleKind::AsyncMaster | BrokerRoleKind::SyncMaster => BrokerRole::Master,
        },
        incarnation: new_incarnation(),
        election_priority: settings.election_priority,
        replication: if settings.is_slave() {
            ReplicationMode::Unspecified
        } else if settings.sync_master() {
            ReplicationMode::SyncMaster
        } else {
            ReplicationMode::AsyncMaster
        },
    };
    let interval = Duration::from_millis(settings.controller_heartbeat_interval_ms);
    let (views, mut view_rx) = watch::channel(None::<GroupView>);
    let metadata = Arc::new(LinkedBroker {
        store: store.clone(),
        topics,
        retry,
        role: role.clone(),
        views,
    });
    let key = settings
        .cluster_key()?
        .ok_or_else(|| anyhow::anyhow!("cluster_secret is required with controller_addr"))?;
    let mut link = ControllerLink::new(&settings.controller_addr, identity, metadata, key)?;
    role.start(
        Some(ControllerAuthority {
            group: settings.broker_name.clone(),
            proposer: link.in_sync_set_proposer(),
        }),
        Some(link.wake_handle()),
    )
    .await;
    let mut health = store.health();
    let views = tokio::spawn(async move {
        loop {
            // A change of the store's health is looked at against the current view too: a
            // corrupt slave repairs itself once the view shows it out of the in-sync set.
            tokio::select! {
                changed = view_rx.changed() => if changed.is_err() { break },
                changed = health.changed() => if changed.is_err() { break },
            }
            let view = view_rx.borrow_and_update().clone();
            if let Some(view) = view {
                role.apply_view(&view).await;
            }
        }
    });
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        // A broker stopped before it registered has nothing to tell.
        tokio::select! {
            registered = link.register(interval) => {
                if let Err(err) = registered {
                    tracing::error!(error = %err, "stopping");
                    eprintln!("broker: {err}");
                    std::process::exit(2);
                }
            }
            _ = stop_rx.wait_for(|stop| *stop) => return,
        }
        link.run(interval, async move {
            // The sender goes only with the process; either way the link ends.
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
        .await;
    });
    Ok(StartedLink {
        views,
        link: LinkTask { task, stop },
    })
}

/// A number no earlier run of this broker used (see `RegisterBrokerRequest.incarnation`):
/// std's randomly seeded hasher over the wall clock and the process id. Never 0.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Prints a ready line on stdout, ignoring a closed pipe: the reader may have stopped at the
/// line of an earlier start, and a broker that restarted in place (`broker::fault`) prints again.
fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
