//! The `broker` process: opens the store and the topic registry, serves the client-facing gRPC
//! service, and on SIGTERM or SIGINT stops accepting, finishes the requests in flight, flushes,
//! and closes the store cleanly (the abort marker goes, so the next start needs no recovery).
//!
//! Prints `broker listening on ADDR` on stdout once it serves (with `listen` port 0, ADDR has
//! the port the system chose: tests and scripts read it there).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use std::time::Duration;

use broker::config::BrokerConfig;
use broker::groups::{ConsumerGroupService, ConsumerGroupState};
use broker::retry::{parse_delay_levels, RetryState};
use broker::service::BrokerService;
use broker::store::Store;
use broker::topics::TopicRegistry;
use clap::Parser;
use proto::client::broker_server::BrokerServer;
use proto::client::consumer_groups_server::ConsumerGroupsServer;
use proto::controller::{BrokerRole, GroupSettings, GroupTopic};
use replication::controller::link::{BrokerIdentity, BrokerMetadata, ControllerLink};
use std::collections::{BTreeMap, HashMap};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// Room for request framing and fields beyond message bytes.
const REQUEST_OVERHEAD_BYTES: usize = 1 << 20;

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
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
    let store_path = config.store.store_path.clone();
    let store = tokio::task::spawn_blocking({
        let store_config = config.store.clone();
        move || Store::open(store_config)
    })
    .await
    .context("open the store")??;
    let store = Arc::new(store);
    let topics = Arc::new(TopicRegistry::open(&store_path)?);
    let listener = TcpListener::bind(config.broker.listen)
        .await
        .with_context(|| format!("listen on {}", config.broker.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        broker_name = %config.broker.broker_name,
        broker_id = config.broker.broker_id,
        flush_disk_type = ?config.store.flush_disk_type,
        "broker serving"
    );
    println!("broker listening on {local}");
    let groups = Arc::new(
        ConsumerGroupState::load(
            store.clone(),
            topics.clone(),
            Duration::from_millis(config.broker.consumer_heartbeat_timeout_ms),
        )
        .await?,
    );
    let snapshots = tokio::spawn(snapshot_offsets(
        groups.clone(),
        Duration::from_millis(config.broker.offset_snapshot_interval_ms),
    ));
    let levels = parse_delay_levels(&config.broker.message_delay_level)
        .map_err(|reason| anyhow::anyhow!("message_delay_level: {reason}"))?;
    let retry = RetryState::new(
        store.clone(),
        topics.clone(),
        groups.clone(),
        levels,
        config.broker.max_reconsume_times,
    )?;
    let schedulers = retry.start_scheduler();
    let link = match config.broker.controller_addr.as_str() {
        "" => None,
        addrs => Some(tokio::spawn(run_controller_link(
            addrs.to_owned(),
            &config,
            local,
            store.clone(),
            topics.clone(),
            retry.clone(),
        )?)),
    };
    let service = BrokerService::new(store.clone(), topics, config.broker.clone());
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
    tonic::transport::Server::builder()
        .add_service(
            BrokerServer::new(service)
                .max_decoding_message_size(request_bytes_max)
                .max_encoding_message_size(
                    broker::service::PULL_BYTES_MAX as usize + REQUEST_OVERHEAD_BYTES,
                ),
        )
        .add_service(ConsumerGroupsServer::new(ConsumerGroupService::new(
            groups, retry,
        )))
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("stopping: no new requests; finishing those in flight");
        })
        .await
        .context("serve")?;
    snapshots.abort();
    if let Some(link) = link {
        link.abort();
    }
    for scheduler in schedulers {
        scheduler.abort();
    }
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
}

impl BrokerMetadata for LinkedBroker {
    fn sync_topics(&self, topics: &[GroupTopic]) -> Result<(), String> {
        let wanted: BTreeMap<String, u32> = topics
            .iter()
            .map(|t| (t.topic.clone(), t.queue_count))
            .collect();
        self.topics.sync(&wanted).map_err(|err| err.to_string())
    }

    fn sync_group_settings(&self, settings: &[GroupSettings]) -> Result<(), String> {
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
}

/// Registers with the controller (waiting for it if it is not up yet), then heartbeats. The
/// broker serves meanwhile with the topics it last synced. A permanent refusal (a second master
/// for the group, a bad name) stops the process: it must not serve a group it does not belong to.
fn run_controller_link(
    addrs: String,
    config: &BrokerConfig,
    local: std::net::SocketAddr,
    store: Arc<Store>,
    topics: Arc<TopicRegistry>,
    retry: Arc<RetryState>,
) -> Result<impl std::future::Future<Output = ()>> {
    let identity = BrokerIdentity {
        cluster: config.broker.broker_cluster_name.clone(),
        group: config.broker.broker_name.clone(),
        broker_id: config.broker.broker_id,
        addr: if config.broker.advertised_addr.is_empty() {
            local.to_string()
        } else {
            config.broker.advertised_addr.clone()
        },
        role: if config.broker.broker_role == "SLAVE" {
            BrokerRole::Slave
        } else {
            BrokerRole::Master
        },
    };
    let interval = Duration::from_millis(config.broker.controller_heartbeat_interval_ms);
    let metadata = Arc::new(LinkedBroker {
        store,
        topics,
        retry,
    });
    let mut link = ControllerLink::new(&addrs, identity, metadata)?;
    Ok(async move {
        if let Err(err) = link.register(interval).await {
            tracing::error!(error = %err, "stopping");
            eprintln!("broker: {err}");
            std::process::exit(2);
        }
        link.run(interval).await;
    })
}

/// Writes every committed offset again on an interval (see `broker::groups`).
async fn snapshot_offsets(groups: Arc<ConsumerGroupState>, interval: Duration) {
    // The first tick is immediate: after a long downtime the loaded offsets may sit in segments
    // retention is about to delete, so they are written again at once.
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match groups.snapshot().await {
            Ok(count) => tracing::debug!(count, "consumer offsets written again"),
            Err(err) => tracing::warn!(error = %err, "could not write the consumer offsets again"),
        }
    }
}
