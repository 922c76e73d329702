//! `cluster elect GROUP [--broker-id N] [--unclean --yes]`: a planned switchover of a group of
//! CONTROLLED brokers (RocketMQ's `mqadmin electMaster`).
//!
//! The controller asks the master to resign (it stops acknowledging and lets its slaves catch
//! up), elects the target once the master confirms or its lease has run out, and answers once
//! the target is master. Without `--broker-id` it picks the best alive in-sync member. An unclean
//! election (`--unclean`, outside the in-sync set) may lose acknowledged messages: it needs an
//! explicit `--broker-id` and `--yes`, and the estimate of what may be lost is printed before and
//! after.
//!
//! The call is made here and not through `ControllerConnection::call`: the controller may take
//! up to its switchover wait (8 s) to answer, and an attempt that got no answer in time must not
//! be repeated (a second attempt would only meet the switchover the first one started), so only
//! a controller that could not be reached or had no leader is followed by the next.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use client::controller::{wire, ControllerConnection};
use client::{ClientError, ErrorCode};
use proto::controller::controller_client::ControllerClient;
use serde_json::json;

/// Longest wait for the controller's answer: its own switchover wait (8 s) plus forwarding and
/// an election.
const ELECT_CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// How long to wait for a controller's TCP connection before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before another round over the controllers when none could take the request.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Rounds over the controllers (a controller election takes about a second).
const ROUNDS_MAX: u32 = 10;

#[derive(clap::Args, Debug)]
pub struct ElectArgs {
    /// The broker group (RocketMQ's brokerName).
    pub group: String,
    /// The broker to make master; default: the best alive member of the in-sync set.
    #[arg(long)]
    pub broker_id: Option<u64>,
    /// Elect the broker even if it is not in the in-sync set: acknowledged messages it lacks
    /// are lost. Needs --broker-id and --yes.
    #[arg(long, requires = "broker_id")]
    pub unclean: bool,
    /// Confirms an unclean election.
    #[arg(long)]
    pub yes: bool,
}

/// What the controller last heard of the master and the target, for the unclean warning.
fn unclean_estimate(detail: Option<&wire::GroupDetail>, target: u64) -> String {
    let Some(detail) = detail else {
        return "the group is unknown to the controller".to_owned();
    };
    let log_end = |id: u64| {
        detail
            .brokers
            .iter()
            .find(|b| b.broker_id == id)
            .map(|b| b.max_offset)
    };
    let in_sync = detail.in_sync_set.contains(&target);
    match (detail.master_id.and_then(log_end), log_end(target)) {
        (Some(master_end), Some(target_end)) => format!(
            "broker {target} is {}in the in-sync set {:?}; the master's last reported log end is \
             {master_end}, broker {target}'s {target_end}: up to {} bytes of acknowledged \
             messages may be lost",
            if in_sync { "" } else { "NOT " },
            detail.in_sync_set,
            master_end.saturating_sub(target_end)
        ),
        _ => format!(
            "broker {target} is {}in the in-sync set {:?}; whatever it lacks of the master's log \
             is lost",
            if in_sync { "" } else { "NOT " },
            detail.in_sync_set
        ),
    }
}

pub async fn run(conn: &ControllerConnection, json_out: bool, args: ElectArgs) -> Result<ExitCode> {
    if args.unclean {
        let target = args
            .broker_id
            .expect("clap requires --broker-id with --unclean");
        let list = conn.cluster_list().await?;
        let estimate = unclean_estimate(list.groups.iter().find(|g| g.name == args.group), target);
        eprintln!(
            "warning: unclean election of broker {target} in {}: {estimate}",
            args.group
        );
        if !args.yes {
            eprintln!("cluster-cli: not done; repeat with --yes to elect it anyway");
            return Ok(ExitCode::from(2));
        }
    }
    let request = wire::ElectMasterRequest {
        group: args.group.clone(),
        broker_id: args.broker_id,
        unclean: args.unclean,
    };
    let addrs: Vec<&str> = conn.addrs().collect();
    let answer = match elect(&addrs, request).await {
        Ok(answer) => answer,
        Err(ClientError::Broker {
            code: ErrorCode::RequestTimeout,
            message,
        }) => {
            // The request was taken but the election did not happen: the command ran and failed.
            eprintln!("cluster-cli: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(err) => return Err(err.into()),
    };
    let view = answer.group.unwrap_or_default();
    if json_out {
        out!(
            "{}",
            json!({
                "group": view.name,
                "master_id": view.master_id,
                "master_addr": view.master_addr,
                "master_epoch": view.master_epoch,
                "in_sync_set": view.in_sync_set,
                "in_sync_set_epoch": view.in_sync_set_epoch,
                "unclean": args.unclean,
                "possibly_lost_bytes": answer.possibly_lost_bytes,
            })
        );
    } else {
        out!(
            "broker group {}: broker {} ({}) is master at master epoch {}; in-sync set {:?}",
            view.name,
            view.master_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into()),
            view.master_addr,
            view.master_epoch,
            view.in_sync_set
        );
    }
    if args.unclean {
        eprintln!(
            "warning: unclean election done: up to {} bytes of acknowledged messages (the old \
             master's last reported log end minus the new master's) may be lost",
            answer.possibly_lost_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends the request to one controller after another until one takes it: the next one is tried
/// only when a controller cannot be reached or has no leader (nothing was started then).
async fn elect(
    addrs: &[&str],
    request: wire::ElectMasterRequest,
) -> Result<wire::ElectMasterResponse, ClientError> {
    let mut last_error = None;
    for round in 0..ROUNDS_MAX {
        if round > 0 {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        for addr in addrs {
            let endpoint = proto::dial::endpoint(addr, CONNECT_TIMEOUT)
                .map_err(|_| ClientError::Invalid {
                    reason: "controller address is not host:port",
                })?
                .timeout(ELECT_CALL_TIMEOUT);
            let mut client = match endpoint.connect().await {
                Ok(channel) => ControllerClient::new(crate::identity::signed(channel)),
                Err(err) => {
                    last_error = Some(ClientError::Transport {
                        message: format!("cannot reach controller {addr}"),
                        source: Some(std::sync::Arc::new(err)),
                    });
                    continue;
                }
            };
            match client.elect_master(request.clone()).await {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) => {
                    let err = ClientError::from(status);
                    let no_leader = matches!(
                        err,
                        ClientError::Broker {
                            code: ErrorCode::ControllerNotAvailable,
                            ..
                        }
                    );
                    if !no_leader {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
            }
        }
    }
    Err(last_error.unwrap_or(ClientError::Invalid {
        reason: "no controller address given",
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        elect: ElectArgs,
    }

    fn detail() -> wire::GroupDetail {
        let broker = |broker_id, max_offset| wire::BrokerView {
            broker_id,
            max_offset,
            ..Default::default()
        };
        wire::GroupDetail {
            name: "a".into(),
            master_id: Some(1),
            in_sync_set: vec![1, 2],
            brokers: vec![broker(1, 900), broker(2, 900), broker(3, 650)],
            ..Default::default()
        }
    }

    #[test]
    fn the_unclean_warning_says_how_much_may_be_lost() {
        let text = unclean_estimate(Some(&detail()), 3);
        assert!(
            text.contains("broker 3 is NOT in the in-sync set [1, 2]"),
            "{text}"
        );
        assert!(text.contains("up to 250 bytes"), "{text}");
        let text = unclean_estimate(Some(&detail()), 2);
        assert!(text.contains("broker 2 is in the in-sync set"), "{text}");
        assert!(text.contains("up to 0 bytes"), "{text}");
        let text = unclean_estimate(Some(&detail()), 9);
        assert!(text.contains("whatever it lacks"), "{text}");
        assert!(unclean_estimate(None, 3).contains("unknown"));
    }

    #[test]
    fn unclean_needs_a_broker_id() {
        assert!(Cli::try_parse_from(["elect", "a", "--unclean"]).is_err());
        let cli = Cli::try_parse_from(["elect", "a", "--unclean", "--broker-id", "3"]).unwrap();
        assert_eq!(cli.elect.broker_id, Some(3));
        assert!(cli.elect.unclean && !cli.elect.yes);
    }
}
