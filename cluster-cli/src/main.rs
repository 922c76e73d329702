//! `cluster-cli`: administration, send drills and (later) role inspection and benchmarks.
//!
//! Until the controller exists (step 3), commands talk to one broker: `--broker ADDR` or
//! `BROKER_ADDR`. Every command prints a table or line for people by default and one JSON object
//! with `--json`; the exit code is 0 on success, 1 when the command ran but something failed
//! (a send not `SEND_OK`, fewer messages consumed than asked), 2 on bad usage or when the broker
//! could not be reached.

mod bench;
mod consume;
mod send;

use std::process::ExitCode;

use anyhow::Result;
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
    /// One JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Topic administration.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Send N messages with unique keys and summarize their statuses.
    Send(send::SendArgs),
    /// Consume as a member of a consumer group until N messages or a silence.
    Consume(consume::ConsumeArgs),
    /// Benchmarks against the broker.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic (idempotent for the same queue count).
    Create {
        topic: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
    },
    /// List topics with each queue's min and max queue offsets.
    List,
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
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Topic { command } => topic(&cli.broker, cli.json, command).await,
        Command::Send(args) => send::run(&cli.broker, cli.json, args).await,
        Command::Consume(args) => consume::run(&cli.broker, cli.json, args).await,
        Command::Bench { command } => bench::run(&cli.broker, cli.json, command).await,
    }
}

async fn topic(broker: &str, json: bool, command: TopicCommand) -> Result<ExitCode> {
    let admin = client::Admin::connect(broker).await?;
    match command {
        TopicCommand::Create { topic, queues } => {
            let created = admin.create_topic(&topic, queues).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "topic": topic, "queues": queues, "created": created })
                );
            } else {
                println!(
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
                println!("{}", serde_json::json!({ "topics": list }));
            } else {
                println!("{:<32} {:>6} {:>14}", "TOPIC", "QUEUES", "MESSAGES");
                for t in &topics {
                    let messages: u64 = t
                        .queues
                        .iter()
                        .map(|q| q.max_queue_offset - q.min_queue_offset)
                        .sum();
                    println!("{:<32} {:>6} {:>14}", t.topic, t.queue_count, messages);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
