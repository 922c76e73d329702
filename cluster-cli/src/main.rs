//! `cluster-cli`: administration, role inspection, send and consume drills, benchmarks.
//!
//! Cluster-wide commands (`controller`, `cluster`, `ha`, `topic` with a controller) talk to the
//! controller quorum: `--controller ADDR[,ADDR...]` or `CONTROLLER_ADDR`; any reachable member
//! answers (`ha` then asks the group's master, which the controller names). Data commands
//! (`send`, `consume`, `bench`) route through the controller when one is given (every broker
//! group of the topic), and otherwise talk to one broker, as `topic` without a controller does:
//! `--broker ADDR` or `BROKER_ADDR`. Every command prints a table or line for people by default
//! and one JSON object with `--json`; the exit code is 0 on success, 1 when the command ran but
//! something failed (a send not `SEND_OK`, fewer messages consumed than asked, a broker or
//! controller not alive, a broker group unknown or its master not answering), 2 on bad usage or
//! when nothing could be reached.
//!
//! Every call to a broker is signed as the user of `--credentials FILE` (`CLUSTER_CREDENTIALS`)
//! or `CLUSTER_ACCESS_KEY` / `CLUSTER_SECRET_KEY` (`identity`), as brokers with `acl_enabled`
//! require.
//! TLS: `--tls-ca FILE` (or `CLUSTER_TLS_CA`) dials every node over TLS, trusting that CA;
//! `tls generate` writes a development CA and node certificates.

/// `println!` for the command's output: when stdout is a closed pipe (`cluster-cli cluster list
/// | head`) the process ends quietly with 0, as other command-line tools do, instead of
/// panicking. SIGPIPE cannot end it instead: it stays ignored, because a write to the socket of
/// a broker that just died would end the process with it (the failover drill kills brokers).
macro_rules! out {
    () => {
        $crate::write_stdout(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

mod admin;
mod bench;
mod bench_consume;
mod bench_floor;
mod bench_rpc;
mod bench_v5;
mod bench_v5_consume;
mod consume;
mod drill;
mod elect;
mod group_settings;
mod ha;
mod identity;
mod progress;
mod send;
mod tls;
mod users;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Administration and drills for the broker cluster.
#[derive(Parser, Debug)]
#[command(name = "cluster-cli", version, about)]
struct Cli {
    /// Broker address, host:port.
    #[arg(
        long,
        env = "BROKER_ADDR",
        default_value = "127.0.0.1:10911",
        global = true
    )]
    broker: String,
    /// Controller addresses, host:port[,host:port...]; any one that is up answers.
    #[arg(long, env = "CONTROLLER_ADDR", global = true)]
    controller: Option<String>,
    /// One JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// A credentials file (`access_key=...` and `secret_key=...` lines) whose user signs every
    /// call; without it, CLUSTER_ACCESS_KEY and CLUSTER_SECRET_KEY, else anonymous.
    #[arg(long, env = "CLUSTER_CREDENTIALS", global = true)]
    credentials: Option<std::path::PathBuf>,
    /// PEM file of the cluster CA: dial every node over TLS and trust it (the nodes'
    /// `tls_ca`). Default: the environment's CLUSTER_TLS_CA; unset or empty: plaintext.
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The controller quorum.
    Controller {
        #[command(subcommand)]
        command: admin::ControllerCommand,
    },
    /// Broker groups and brokers, as the controller sees them.
    Cluster {
        #[command(subcommand)]
        command: admin::ClusterCommand,
    },
    /// Broker groups' maintenance: drain and undrain (controller needed).
    Broker {
        #[command(subcommand)]
        command: admin::BrokerCommand,
    },
    /// Replication of one broker group, from its master (controller needed to find it).
    Ha {
        #[command(subcommand)]
        command: ha::HaCommand,
    },
    /// Topic administration.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Send N messages with unique keys and summarize their statuses.
    Send(send::SendArgs),
    /// Consume as a member of a consumer group until N messages or a silence.
    Consume(consume::ConsumeArgs),
    /// A failover drill: kill masters in turn while producing and consuming, then check that
    /// nothing acknowledged was lost (controller needed).
    Drill(drill::DrillArgs),
    /// Benchmarks against the broker.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Users (access keys) on the controller quorum.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Users' policies (the ACL) on the controller quorum.
    Acl {
        #[command(subcommand)]
        command: users::AclCommand,
    },
    /// TLS material: `tls generate` writes a development CA and node certificates.
    Tls {
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic (idempotent for the same queues). With a controller: `--queues` on each
    /// broker group of `--groups` (default: every group).
    Create {
        topic: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
        /// Broker groups, comma-separated (controller only).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Where a topic's queues are: groups, masters, liveness (controller only).
    Route { topic: String },
    /// Each queue's min and max offsets and message count, from each group's master.
    Status { topic: String },
    /// List topics: with a controller, their routes; with a broker, each queue's offsets.
    List,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Per queue: the broker's max offset, the group's committed offset, and the difference
    /// (the group's retry topic included), from each broker group's master.
    Progress {
        /// The consumer group.
        group: String,
        #[arg(long)]
        topic: String,
    },
    /// A consumer group's settings on the controller: shown, or changed (`--max-retries`,
    /// `--fifo`) and shown.
    Settings(group_settings::SettingsArgs),
}

/// The masters a per-queue command asks: the topic's groups' through the controller, else the
/// one broker.
async fn masters(
    cli_controller: &Option<String>,
    broker: &str,
    topic: &str,
) -> Result<Vec<progress::Master>> {
    match cli_controller {
        Some(_) => progress::masters_of(&controller(cli_controller)?, topic).await,
        None => Ok(vec![progress::Master {
            group: broker.to_owned(),
            addr: Some(broker.to_owned()),
        }]),
    }
}

/// Writes one line of output; see [`out!`].
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => panic!("failed printing to stdout: {err}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cluster-cli: cannot start: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cluster-cli: {err:#}");
            if !proto::dial::tls_enabled() && format!("{err:#}").contains("transport error") {
                // What a plaintext client sees from a TLS node: the connection closes at once.
                eprintln!(
                    "cluster-cli: if the cluster runs TLS, pass its CA: --tls-ca FILE or CLUSTER_TLS_CA"
                );
            }
            ExitCode::from(2)
        }
    }
}

/// Where data commands send and consume: through the controller's routes when a controller is
/// given, else one broker.
#[derive(Clone, Debug)]
pub enum Reach {
    Broker(String),
    Controller(String),
}

impl Reach {
    fn of(cli: &Cli) -> Reach {
        match &cli.controller {
            Some(addrs) => Reach::Controller(addrs.clone()),
            None => Reach::Broker(cli.broker.clone()),
        }
    }

    pub async fn producer(&self, config: client::ProducerConfig) -> Result<client::Producer> {
        let config = client::ProducerConfig {
            credentials: identity::credentials(),
            ..config
        };
        Ok(match self {
            Reach::Broker(addr) => client::Producer::connect(addr, config).await?,
            Reach::Controller(addrs) => client::Producer::connect_controller(addrs, config).await?,
        })
    }

    pub async fn push_consumer(
        &self,
        config: client::PushConsumerConfig,
        listener: impl client::Listener,
    ) -> Result<client::PushConsumer> {
        let config = client::PushConsumerConfig {
            credentials: identity::credentials(),
            ..config
        };
        Ok(match self {
            Reach::Broker(addr) => client::PushConsumer::start(addr, config, listener).await?,
            Reach::Controller(addrs) => {
                client::PushConsumer::start_controller(addrs, config, listener).await?
            }
        })
    }
}

/// The controller connection, or a usage error when no address was given.
fn controller(cli_controller: &Option<String>) -> Result<client::controller::ControllerConnection> {
    let Some(addrs) = cli_controller else {
        anyhow::bail!("this command needs the controller: pass --controller ADDR[,ADDR...] or set CONTROLLER_ADDR");
    };
    // Signed as this run's user (`--credentials`, else CLUSTER_ACCESS_KEY / CLUSTER_SECRET_KEY).
    Ok(client::controller::ControllerConnection::new(addrs)?.with_user(identity::credentials()))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // Before --tls-ca is read: generating the CA must work while CLUSTER_TLS_CA names a file
    // that does not exist yet.
    if let Command::Tls { command } = cli.command {
        return tls::run(command, cli.json);
    }
    // Read here rather than by clap's `env`, which refuses an empty value: an empty
    // CLUSTER_TLS_CA means plaintext, as unset does.
    let tls_ca = cli.tls_ca.clone().or_else(|| {
        std::env::var_os("CLUSTER_TLS_CA")
            .filter(|value| !value.is_empty())
            .map(std::path::PathBuf::from)
    });
    if let Some(ca) = &tls_ca {
        client::tls::trust_ca(ca).context("--tls-ca (or CLUSTER_TLS_CA)")?;
    }
    identity::init(cli.credentials.as_deref())?;
    let reach = Reach::of(&cli);
    match cli.command {
        Command::Tls { .. } => unreachable!("handled above"),
        Command::Controller { command } => {
            admin::controller(&controller(&cli.controller)?, cli.json, command).await
        }
        Command::Cluster { command } => {
            admin::cluster(&controller(&cli.controller)?, cli.json, command).await
        }
        Command::Broker { command } => {
            admin::broker(&controller(&cli.controller)?, cli.json, command).await
        }
        Command::Ha { command } => ha::run(&controller(&cli.controller)?, cli.json, command).await,
        Command::Topic { command } if cli.controller.is_some() => {
            let conn = controller(&cli.controller)?;
            match command {
                TopicCommand::Create {
                    topic,
                    queues,
                    groups,
                } => admin::topic_create(&conn, cli.json, &topic, queues, &groups).await,
                TopicCommand::Route { topic } => admin::topic_route(&conn, cli.json, &topic).await,
                TopicCommand::Status { topic } => {
                    let masters = progress::masters_of(&conn, &topic).await?;
                    progress::topic_status(&masters, cli.json, &topic).await
                }
                TopicCommand::List => admin::topic_list(&conn, cli.json).await,
            }
        }
        Command::Topic { command } => topic(&cli.broker, cli.json, command).await,
        Command::Group {
            command: GroupCommand::Progress { group, topic },
        } => {
            let masters = masters(&cli.controller, &cli.broker, &topic).await?;
            progress::group_progress(&masters, cli.json, &group, &topic).await
        }
        Command::Group {
            command: GroupCommand::Settings(args),
        } => group_settings::run(&controller(&cli.controller)?, cli.json, args).await,
        Command::Send(args) => send::run(&reach, cli.json, args).await,
        Command::Consume(args) => consume::run(&reach, cli.json, args).await,
        Command::Bench { command } => bench::run(&reach, cli.json, command).await,
        Command::User { command } => {
            users::user(&controller(&cli.controller)?, cli.json, command).await
        }
        Command::Acl { command } => {
            users::acl(&controller(&cli.controller)?, cli.json, command).await
        }
        Command::Drill(args) => {
            let conn = controller(&cli.controller)?;
            let addrs = cli.controller.clone().unwrap_or_default();
            drill::run(&conn, &addrs, args).await
        }
    }
}

async fn topic(broker: &str, json: bool, command: TopicCommand) -> Result<ExitCode> {
    let admin = client::Admin::connect_as(broker, identity::credentials().as_ref()).await?;
    match command {
        TopicCommand::Status { topic } => {
            let masters = masters(&None, broker, &topic).await?;
            return progress::topic_status(&masters, json, &topic).await;
        }
        TopicCommand::Route { .. } => {
            anyhow::bail!(
                "topic route needs the controller: pass --controller or set CONTROLLER_ADDR"
            )
        }
        TopicCommand::Create { groups, .. } if !groups.is_empty() => {
            anyhow::bail!("--groups needs the controller: pass --controller or set CONTROLLER_ADDR")
        }
        TopicCommand::Create { topic, queues, .. } => {
            let created = admin.create_topic(&topic, queues).await?;
            if json {
                out!(
                    "{}",
                    serde_json::json!({ "topic": topic, "queues": queues, "created": created })
                );
            } else {
                out!(
                    "topic {topic}: {} ({queues} queues)",
                    if created { "created" } else { "already there" }
                );
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            if json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "topic": t.topic,
                            "queues": t.queues.iter().map(|q| serde_json::json!({
                                "queue_id": q.queue_id,
                                "min_queue_offset": q.min_queue_offset,
                                "max_queue_offset": q.max_queue_offset,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                out!("{}", serde_json::json!({ "topics": list }));
            } else {
                out!("{:<32} {:>6} {:>14}", "TOPIC", "QUEUES", "MESSAGES");
                for t in &topics {
                    let messages: u64 = t
                        .queues
                        .iter()
                        .map(|q| q.max_queue_offset - q.min_queue_offset)
                        .sum();
                    out!("{:<32} {:>6} {:>14}", t.topic, t.queue_count, messages);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
