//! `group settings GROUP [--max-retries N] [--fifo true|false]`: a consumer group's settings on
//! the controller (RocketMQ's updateSubGroup): shown, or changed and shown. Every broker applies
//! them at its next heartbeat.

use std::process::ExitCode;

use anyhow::Result;
use client::controller::{wire, ControllerConnection};
use serde_json::json;

/// Most retries a group may be given: RocketMQ's bound.
const MAX_RETRIES_MAX: u32 = 32;

#[derive(clap::Args, Debug)]
pub struct SettingsArgs {
    /// The consumer group.
    group: String,
    /// Retries before a message goes to the group's dead-letter topic (0 to 32).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Whether the group consumes each message group in order (RocketMQ 5 consumers).
    #[arg(long)]
    fifo: Option<bool>,
}

pub async fn run(
    conn: &ControllerConnection,
    json_out: bool,
    args: SettingsArgs,
) -> Result<ExitCode> {
    if args.max_retries.is_some_and(|n| n > MAX_RETRIES_MAX) {
        eprintln!("cluster-cli: --max-retries is at most {MAX_RETRIES_MAX}");
        return Ok(ExitCode::from(2));
    }
    let mut settings = conn.group_settings(&args.group).await?;
    if args.max_retries.is_some() || args.fifo.is_some() {
        settings.group = args.group.clone();
        if let Some(max_retries) = args.max_retries {
            settings.max_retries = max_retries;
        }
        if let Some(fifo) = args.fifo {
            settings.fifo = fifo;
        }
        conn.set_group_settings(settings.clone()).await?;
    }
    let model =
        wire::MessageModel::try_from(settings.message_model).map_or("UNKNOWN", |m| m.as_str_name());
    if json_out {
        out!(
            "{}",
            json!({
                "group": args.group,
                "max_retries": settings.max_retries,
                "message_model": model,
                "fifo": settings.fifo,
            })
        );
    } else {
        out!(
            "group {}: max retries {}, message model {model}, fifo {}",
            args.group,
            settings.max_retries,
            settings.fifo
        );
    }
    Ok(ExitCode::SUCCESS)
}
