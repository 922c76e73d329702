//! `cluster-cli drill`: a failover drill against a running cluster of `CONTROLLED` broker
//! groups, checked on its whole history.
//!
//! Producers send synchronously, each message with a unique key, and a consumer group consumes
//! the whole time. Each round kills the master of one broker group (in turn) with the operator's
//! `--kill-cmd`, waits for the controller to elect a successor and for the first `SEND_OK` from
//! the group on it, restarts the old master with `--start-cmd`, and waits until every broker is
//! back in its group's in-sync set. Then the producers stop, the consumer drains, and the drill
//! counts: `acked` (answered `SEND_OK`), `lost` (acknowledged, never consumed), `duplicates`
//! (deliveries beyond the first of a message), `redeliveries` (the part of those that handed
//! the same stored message again, as opposed to a producer's retry stored twice; also per round),
//! `order_violations` (a producer's acknowledged messages of one queue consumed out of send
//! order), and the phases of each round's failover, from the start of the kill: the controller's
//! decision (its route push reaching the drill), the new master serving (it answers `HaStatus`
//! as master of the new epoch; `drill/phases.rs`), and the first `SEND_OK` the group's new master
//! gave to a send started after the kill (`failover_ms`).
//! The kill command must return only once the process is gone (`scripts/cluster.sh kill` does):
//! sends started before it returns may still reach the old master, so they do not count, and
//! the time is measured from the command's start.
//!
//! The commands are templates run with `sh -c`: `{node}` becomes `GROUP-ID` (the node names of
//! `scripts/cluster.sh`), `{group}` and `{id}` the broker group and id. `scripts/failover-drill.sh`
//! passes `scripts/cluster.sh kill {node} --signal KILL` and `scripts/cluster.sh start {node}`;
//! on machines of your own, anything that kills and starts a broker (ssh, systemctl) will do.
//! Their output goes to stderr, so that stdout carries only the result.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use client::controller::ControllerConnection;
use client::{
    ConsumeFrom, ConsumeResult, Message, Producer, ProducerConfig, PushConsumerConfig,
    ReceivedMessage, SendStatus,
};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// Kills a broker: a `sh -c` template with {node}, {group} and {id}.
    #[arg(long)]
    kill_cmd: String,
    /// Starts the killed broker again: a `sh -c` template with {node}, {group} and {id}.
    #[arg(long)]
    start_cmd: String,
    /// Masters to kill, one per round.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Broker groups whose masters are killed, in turn (default: every group).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// The topic (created on every group if missing).
    #[arg(long, default_value = "drill")]
    topic: String,
    /// Queues of the topic on each group, when the drill creates it.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// The consumer group (default: one named after this run, reading from the first message).
    #[arg(long)]
    consumer_group: Option<String>,
    /// Producers, each sending one message at a time.
    #[arg(long, default_value_t = 2)]
    producers: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Traffic before the first round and after each rejoin, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Longest wait for each step (an election, a first SEND_OK, a rejoin, the final drain).
    #[arg(long, default_value_t = 60)]
    step_timeout_s: u64,
    /// Acknowledged messages lost are reported but do not fail the drill (ASYNC_MASTER
    /// groups, which may lose up to the replication lag).
    #[arg(long)]
    allow_loss: bool,
}

/// One send, as its producer saw it.
struct Sent {
    producer: u32,
    seq: u64,
    started: Instant,
    finished: Instant,
    /// SEND_OK's broker group and queue, or the status or error.
    outcome: std::result::Result<(String, u32), String>,
}

/// One message handed to the consumer's listener.
struct Delivery {
    key: String,
    /// Names the stored message: a redelivery repeats it, a producer's retry does not.
    commit_log_offset: u64,
    at: Instant,
}

/// What one round measured. Times count from the start of the kill command.
#[derive(serde::Serialize)]
struct Round {
    group: String,
    killed: u64,
    old_epoch: u64,
    elected: Option<u64>,
    new_epoch: Option<u64>,
    /// How long the kill command took (it returns once the process is gone).
    kill_cmd_ms: Option<u64>,
    /// The controller's decision, as its route push reached the drill (clients learn of a
    /// failover the same way).
    decision_ms: Option<u64>,
    /// The new master answers as master of the new epoch.
    serving_ms: Option<u64>,
    /// The drill's poll of the cluster list saw the election (every 20 ms, so later than
    /// `decision_ms`).
    elected_ms: Option<u64>,
    /// The first `SEND_OK` the new master gave to a send started after the kill.
    failover_ms: Option<u64>,
    rejoined_ms: Option<u64>,
    /// Messages handed to the consumer again (the same stored message) from this round's kill
    /// to the next round's.
    redelivered: u64,
    error: Option<String>,
    #[serde(skip)]
    killed_at: Option<Instant>,
}

impl Round {
    /// A round of `group` before anything happened.
    fn new(group: &str) -> Round {
        Round {
            group: group.to_owned(),
            killed: 0,
            old_epoch: 0,
            elected: None,
            new_epoch: None,
            kill_cmd_ms: None,
            decision_ms: None,
            serving_ms: None,
            elected_ms: None,
            failover_ms: None,
            rejoined_ms: None,
            redelivered: 0,
            error: None,
            killed_at: None,
        }
    }
}

mod cluster;
mod phases;
mod verdict;
use cluster::{create_topic, group_detail, run_command, wait_ready};
use phases::{RouteLog, ServingProbe};
use verdict::{count_redeliveries, percentile, Report};

/// How often the drill looks at the cluster and the history.
const POLL: Duration = Duration::from_millis(20);

pub async fn run(
    conn: &ControllerConnection,
    controllers: &str,
    args: DrillArgs,
) -> Result<ExitCode> {
    if args.producers == 0 || args.size == 0 || args.queues == 0 {
        bail!("--producers, --size and --queues must be at least 1");
    }
    let step = Duration::from_secs(args.step_timeout_s);
    let list = wait_ready(conn, step)
        .await
        .context("the cluster is not ready")?;
    let groups: Vec<String> = if args.groups.is_empty() {
        list.groups.iter().map(|g| g.name.clone()).collect()
    } else {
        args.groups.clone()
    };
    for g in &groups {
        if !list.groups.iter().any(|d| &d.name == g) {
            bail!("broker group {g} is not registered");
        }
    }
    if groups.is_empty() {
        bail!("no broker group is registered");
    }
    create_topic(conn, &args.topic, args.queues, step).await?;

    let run_id = client::message::new_message_id();
    let consumer_group = args
        .consumer_group
        .clone()
        .unwrap_or_else(|| format!("drill-{run_id}"));
    let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let mut config = PushConsumerConfig::new(consumer_group.clone(), args.topic.clone());
    config.consume_from = ConsumeFrom::First;
    config.credentials = crate::identity::credentials();
    let consumer = client::PushConsumer::start_controller(controllers, config, {
        let deliveries = deliveries.clone();
        move |message: &ReceivedMessage| -> std::result::Result<ConsumeResult, client::ListenerError> {
            if let Some(key) = message.keys.first() {
                deliveries.lock().expect("lock").push(Delivery {
                    key: key.clone(),
                    commit_log_offset: message.commit_log_offset,
                    at: Instant::now(),
                });
            }
            Ok(ConsumeResult::ConsumeSuccess)
        }
    })
    .await?;

    let history: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let body = Bytes::from(vec![b'd'; args.size]);
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let config = ProducerConfig {
            credentials: crate::identity::credentials(),
            ..ProducerConfig::default()
        };
        let producer = Producer::connect_controller(controllers, config).await?;
        let (history, stop, body) = (history.clone(), stop.clone(), body.clone());
        let (topic, run_id) = (args.topic.clone(), run_id.clone());
        producers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Acquire) {
                let sent = send_one(&producer, &topic, &run_id, p, seq, &body).await;
                history.lock().expect("lock").push(sent);
                seq += 1;
            }
            producer.close().await;
        }));
    }
    eprintln!(
        "drill: {} producers sending to {} (consumer group {consumer_group}), {} rounds over {}",
        args.producers,
        args.topic,
        args.rounds,
        groups.join(", ")
    );

    let route_log = RouteLog::start(controllers, &args.topic).await?;
    let settle = Duration::from_millis(args.settle_ms);
    tokio::time::sleep(settle).await;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let group = &groups[r as usize % groups.len()];
        let round = run_round(conn, &args, group, &history, &route_log, step).await;
        eprintln!(
            "drill: round {}/{}: {}",
            r + 1,
            args.rounds,
            describe(&round)
        );
        let failed = round.error.is_some();
        rounds.push(round);
        if failed {
            break;
        }
        tokio::time::sleep(settle).await;
    }

    stop.store(true, Ordering::Release);
    for producer in producers {
        producer.await.context("producer task")?;
    }
    let history = std::mem::take(&mut *history.lock().expect("lock"));
    let acked: HashMap<String, &Sent> = history
        .iter()
        .filter(|s| s.outcome.is_ok())
        .map(|s| (key(&run_id, s.producer, s.seq), s))
        .collect();
    eprintln!(
        "drill: {} sends, {} SEND_OK; draining the consumer group",
        history.len(),
        acked.len()
    );
    drain(&deliveries, &acked, step).await;
    consumer.shutdown().await;
    let deliveries = std::mem::take(&mut *deliveries.lock().expect("lock"));
    count_redeliveries(&mut rounds, &deliveries);

    let report = Report::of(&history, &acked, &deliveries, &run_id);
    let redelivered: Vec<u64> = rounds.iter().map(|r| r.redelivered).collect();
    let phase = |pick: fn(&Round) -> Option<u64>| {
        let values: Vec<u64> = rounds.iter().filter_map(pick).collect();
        json!({
            "p50": percentile(&values, 50),
            "p99": percentile(&values, 99),
            "max": values.iter().max(),
        })
    };
    let failover: Vec<u64> = rounds.iter().filter_map(|r| r.failover_ms).collect();
    let all_rounds_done =
        rounds.len() == args.rounds as usize && rounds.iter().all(|r| r.error.is_none());
    let passed = all_rounds_done
        && report.order_violations == 0
        && (report.lost.is_empty() || args.allow_loss);
    for key in report.lost.iter().take(20) {
        eprintln!("drill: lost {key}");
    }
    eprintln!(
        "drill: {} acked, {} lost, {} duplicates ({} redeliveries), {} order violations, \
         failover p50 {} ms, max {} ms: {}",
        acked.len(),
        report.lost.len(),
        report.duplicates,
        report.redeliveries,
        report.order_violations,
        percentile(&failover, 50).map_or("-".into(), |v| v.to_string()),
        failover.iter().max().map_or("-".into(), |v| v.to_string()),
        if passed { "PASSED" } else { "FAILED" }
    );
    out!(
        "{}",
        json!({
            "passed": passed,
            "rounds": rounds.len(),
            "sent": history.len(),
            "acked": acked.len(),
            "send_failures": report.failures,
            "lost": report.lost.len(),
            "duplicates": report.duplicates,
            "redeliveries": report.redeliveries,
            "redelivered_per_round_max": redelivered.iter().max(),
            "order_violations": report.order_violations,
            "decision_ms": phase(|r| r.decision_ms),
            "serving_ms": phase(|r| r.serving_ms),
            "failover_ms": {
                "p50": percentile(&failover, 50),
                "p99": percentile(&failover, 99),
                "max": failover.iter().max(),
            },
            "round_details": rounds,
        })
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn key(run_id: &str, producer: u32, seq: u64) -> String {
    format!("{run_id}-p{producer}-{seq}")
}

async fn send_one(
    producer: &Producer,
    topic: &str,
    run_id: &str,
    p: u32,
    seq: u64,
    body: &Bytes,
) -> Sent {
    let started = Instant::now();
    let message = Message::new(topic, body.clone()).with_key(key(run_id, p, seq));
    let outcome = match producer.send(message).await {
        Ok(r) if r.status == SendStatus::SendOk => Ok((r.broker_group, r.queue_id)),
        Ok(r) => Err(r.status.name().to_owned()),
        Err(err) => Err(err.to_string()),
    };
    Sent {
        producer: p,
        seq,
        started,
        finished: Instant::now(),
        outcome,
    }
}

/// Kills `group`'s master, measures the failover, restarts the old master and waits for it to
/// rejoin the in-sync set.
async fn run_round(
    conn: &ControllerConnection,
    args: &DrillArgs,
    group: &str,
    history: &Mutex<Vec<Sent>>,
    route_log: &RouteLog,
    step: Duration,
) -> Round {
    let mut round = Round::new(group);
    if let Err(err) = round_steps(conn, args, &mut round, history, route_log, step).await {
        round.error = Some(format!("{err:#}"));
    }
    round
}

async fn round_steps(
    conn: &ControllerConnection,
    args: &DrillArgs,
    round: &mut Round,
    history: &Mutex<Vec<Sent>>,
    route_log: &RouteLog,
    step: Duration,
) -> Result<()> {
    let list = wait_ready(conn, step).await?;
    let detail = group_detail(&list, &round.group)?;
    let master = detail.master_id.context("the group has no master")?;
    round.killed = master;
    round.old_epoch = detail.master_epoch;
    let old_addr = detail
        .brokers
        .iter()
        .find(|b| b.broker_id == master)
        .map(|b| b.addr.clone())
        .context("the master is not among the group's brokers")?;
    let others: Vec<String> = detail
        .brokers
        .iter()
        .filter(|b| b.broker_id != master)
        .map(|b| b.addr.clone())
        .collect();

    // The master is alive when the command starts and gone when it returns (a kill command
    // must wait for the process to exit): only sends started after that can be the new
    // master's, and the time is counted from the start, so it is never shorter than the truth.
    let killed_at = Instant::now();
    round.killed_at = Some(killed_at);
    // Each other broker of the group is asked from the kill on whether it serves as master of a
    // newer epoch: the first to answer so is the new master serving.
    let deadline = Instant::now() + step;
    let serving = ServingProbe::start(others, round.old_epoch + 1, deadline);
    run_command(&args.kill_cmd, &round.group, master).await?;
    let dead_at = Instant::now();
    round.kill_cmd_ms = Some(dead_at.duration_since(killed_at).as_millis() as u64);
    let since_kill = |at: Instant| Some(at.duration_since(killed_at).as_millis() as u64);
    loop {
        if let Ok(list) = conn.cluster_list().await {
            let detail = group_detail(&list, &round.group)?;
            if let Some(new) = detail.master_id.filter(|id| *id != master) {
                if detail.master_epoch > round.old_epoch {
                    round.elected = Some(new);
                    round.new_epoch = Some(detail.master_epoch);
                    round.elected_ms = Some(killed_at.elapsed().as_millis() as u64);
                    break;
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("no successor elected within {} s", step.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
    loop {
        let first_ok = history
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.started >= dead_at)
            .find(|s| matches!(&s.outcome, Ok((g, _)) if *g == round.group))
            .map(|s| s.finished);
        if let Some(at) = first_ok {
            round.failover_ms = since_kill(at);
            break;
        }
        if Instant::now() >= deadline {
            bail!("no SEND_OK from the new master within {} s", step.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
    round.decision_ms = route_log
        .moved_at(&round.group, &old_addr, killed_at)
        .and_then(since_kill);
    round.serving_ms = serving.first(POLL).await.and_then(since_kill);
    let restarted_at = Instant::now();
    run_command(&args.start_cmd, &round.group, master).await?;
    wait_ready(conn, step)
        .await
        .context("the old master did not rejoin")?;
    round.rejoined_ms = Some(restarted_at.elapsed().as_millis() as u64);
    Ok(())
}

/// Waits until every acknowledged message was delivered, or nothing new came for a while.
async fn drain(
    deliveries: &Mutex<Vec<Delivery>>,
    acked: &HashMap<String, &Sent>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let quiet = Duration::from_secs(10);
    let mut seen = HashSet::new();
    let mut read = 0;
    let mut last_progress = Instant::now();
    loop {
        {
            let deliveries = deliveries.lock().expect("lock");
            for delivery in &deliveries[read..] {
                if acked.contains_key(&delivery.key) {
                    seen.insert(delivery.key.clone());
                }
            }
            if deliveries.len() > read {
                last_progress = Instant::now();
            }
            read = deliveries.len();
        }
        if seen.len() == acked.len()
            || Instant::now() >= deadline
            || last_progress.elapsed() >= quiet
        {
            return;
        }
        tokio::time::sleep(POLL * 5).await;
    }
}

fn describe(round: &Round) -> String {
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    let mut text = format!(
        "{} master {} (epoch {}) killed; elected {} (epoch {}): decision after {}, serving after \
         {}, first SEND_OK after {}; rejoined {} after restart",
        round.group,
        round.killed,
        round.old_epoch,
        round.elected.map_or("-".into(), |v| v.to_string()),
        round.new_epoch.map_or("-".into(), |v| v.to_string()),
        ms(round.decision_ms),
        ms(round.serving_ms),
        ms(round.failover_ms),
        ms(round.rejoined_ms),
    );
    if let Some(err) = &round.error {
        text.push_str(&format!("; FAILED: {err}"));
    }
    text
}
