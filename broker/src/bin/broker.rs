//! The `broker` process: reads its configuration, starts the broker (`broker::server::Broker`:
//! the store, the role, the controller link, the gRPC services), and on SIGTERM or SIGINT stops
//! it cleanly: no new requests, those in flight finished, the store flushed and closed (the
//! abort marker goes, so the next start needs no recovery).
//!
//! Prints `broker listening on ADDR` on stdout once it serves (with `listen` port 0, ADDR has
//! the port the system chose: tests and scripts read it there). With `metrics_listen` set, it
//! prints `metrics listening on ADDR` just before: the broker line stays the last one, so a
//! reader that stops there (and closes the pipe) never makes a later print fail.

use std::path::PathBuf;

use anyhow::{Context, Result};
use broker::config::BrokerConfig;
use broker::server::{Broker, RunError};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

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
        broker::store::failpoint::arm(point)?;
    }
    let config = load_config(&cli)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.broker.runtime_worker_threads > 0 {
        runtime.worker_threads(config.broker.runtime_worker_threads);
    }
    runtime
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

/// Starts the broker, announces it, and serves until SIGTERM or SIGINT. A refusal by the
/// controller ends the process with status 2: it must not serve a group it does not belong to.
async fn serve(config: BrokerConfig) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let broker = Broker::start(config).await?;
    if let Some(addr) = broker.metrics_addr() {
        announce(&format!("metrics listening on {addr}"));
    }
    if let Some(addr) = broker.v5_addr() {
        announce(&format!("v5 listening on {addr}"));
    }
    announce(&format!("broker listening on {}", broker.local_addr()));
    let stop = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    match broker.run_until(stop).await {
        Err(RunError::Refused(err)) => {
            eprintln!("broker: {err}");
            std::process::exit(2);
        }
        ran => Ok(ran?),
    }
}

/// Prints a ready line on stdout, ignoring a closed pipe: the reader may have stopped at the
/// line of an earlier start, and a broker that restarted in place (`broker::fault`) prints again.
fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
