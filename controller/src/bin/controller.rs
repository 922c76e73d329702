//! The `controller` process: one member of the controller quorum (Raft over openraft), the
//! cluster's name server. Runs until SIGTERM or SIGINT, then stops serving and stops Raft.
//!
//! Prints `controller listening on ADDR` on stdout once it serves (with port 0 in `listen`, ADDR
//! has the port the system chose). With `metrics_listen` set, it prints `metrics listening on
//! ADDR` just before: the controller line stays the last one, so a reader that stops there
//! (and closes the pipe) never makes a later print fail.
//!
//! ```text
//! controller --id 1 --listen 127.0.0.1:9876 --data-dir ./c1 \
//!     --peers 1=127.0.0.1:9876,2=127.0.0.1:9877,3=127.0.0.1:9878
//! ```
//!
//! Two commands work on a stopped controller's store instead (docs/OPERATIONS.md, "A poisoned
//! controller quorum"): `controller vote --data-dir D` prints its vote and last log term as
//! JSON; `controller repair-vote --data-dir D --id ID --term T --yes` sets its vote to "voted for
//! itself in term T".

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use controller::config::ControllerConfig;
use controller::node::ControllerNode;
use exporter::Exporter;
use tokio::signal::unix::{signal, SignalKind};

/// A controller of the cluster. Every configuration key is described in docs/CONFIG.md.
#[derive(Parser, Debug)]
#[command(
    name = "controller",
    version,
    about = "A member of the controller quorum: the cluster's name server and failover authority",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<StoreCommand>,
    /// TOML configuration file (flat keys).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// This controller's id (overrides `id`).
    #[arg(long)]
    id: Option<u64>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The quorum's first members, ID=HOST:PORT,... (overrides `peers`). Leave out on a
    /// controller that `cluster-cli controller add` will add.
    #[arg(long)]
    peers: Option<String>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Any configuration key, as KEY=VALUE in TOML value syntax; repeatable; applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Commands on a stopped controller's store (the running one holds its lock).
#[derive(clap::Subcommand, Debug)]
enum StoreCommand {
    /// Prints the store's Raft vote, last log term and members as JSON, and whether the vote is
    /// poisoned.
    Vote {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Sets the store's vote to "voted for itself in term TERM", to recover a poisoned quorum:
    /// TERM must be one above the highest last log term of every controller (`vote`), and the
    /// same on all of them.
    RepairVote {
        #[arg(long)]
        data_dir: PathBuf,
        /// This controller's id.
        #[arg(long)]
        id: u64,
        #[arg(long)]
        term: u64,
        /// Confirms that every controller is stopped and TERM is above all their last log terms.
        #[arg(long)]
        yes: bool,
    },
}

fn store_command(command: StoreCommand) -> Result<()> {
    use controller::repair;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = match command {
        StoreCommand::Vote { data_dir } => runtime.block_on(repair::inspect(&data_dir))?,
        StoreCommand::RepairVote {
            data_dir,
            id,
            term,
            yes,
        } => {
            if !yes {
                anyhow::bail!(
                    "repair-vote rewrites the Raft vote: stop every controller, run `controller \
                     vote` on each, pick TERM one above the highest last_log_term, then run this \
                     on each with --yes (docs/OPERATIONS.md, \"A poisoned controller quorum\")"
                );
            }
            runtime.block_on(repair::repair(&data_dir, id, term))?
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn load_config(cli: &Cli) -> Result<ControllerConfig> {
    let base = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            ControllerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ControllerConfig::default(),
    };
    let mut overrides = Vec::new();
    if let Some(id) = cli.id {
        overrides.push(format!("id={id}"));
    }
    if let Some(listen) = &cli.listen {
        overrides.push(format!("listen={listen:?}"));
    }
    if let Some(peers) = &cli.peers {
        overrides.push(format!("peers={peers:?}"));
    }
    if let Some(dir) = &cli.data_dir {
        overrides.push(format!("data_dir={:?}", dir.display().to_string()));
    }
    overrides.extend(cli.overrides.iter().cloned());
    let config = base.with_overrides(&overrides)?;
    config.validate()?;
    Ok(config)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return store_command(command);
    }
    let config = load_config(&cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?
        .block_on(run(config))
}

async fn run(config: ControllerConfig) -> Result<()> {
    let id = config.id;
    // Read once, before anything listens: the metrics endpoint and the node share it.
    let tls = controller::node::start_tls(&config)?;
    // The recorder goes in before the node starts, so that no election goes uncounted.
    let exporter = match config.metrics_listen()? {
        Some(addr) => {
            let mut exporter = Exporter::bind(addr, &[("controller_id", id.to_string())]).await?;
            if let Some(tls) = &tls {
                exporter = exporter.with_tls(tls.rustls_server_config()?);
            }
            if config.metrics_token_file.is_empty() {
                if config.acl_enabled {
                    tracing::warn!(
                        "acl_enabled without metrics_token_file: /metrics (topics, groups, \
                         elections) answers anyone who reaches its port"
                    );
                }
            } else {
                let path = std::path::Path::new(&config.metrics_token_file);
                exporter = exporter.with_token(exporter::MetricsToken::from_file(path)?);
            }
            controller::metrics::describe();
            Some(exporter)
        }
        None => None,
    };
    let node = ControllerNode::start_with_tls(config, tls).await?;
    tracing::info!(id, addr = %node.local_addr, "controller serving");
    let mut metrics_server = None;
    if let Some(exporter) = exporter {
        let addr = exporter.local_addr()?;
        tracing::info!(%addr, "metrics endpoint serving");
        println!("metrics listening on {addr}");
        metrics_server = Some(exporter.serve(Arc::new(node.metrics_sampler())));
    }
    println!("controller listening on {}", node.local_addr);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    if let Some(server) = metrics_server {
        server.abort();
    }
    node.shutdown().await?;
    Ok(())
}
