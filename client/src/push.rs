//! The push consumer: a member of a consumer group in clustering mode. Each queue of the topic
//! (and of the group's retry topic) is consumed by exactly one live member; the listener is
//! called for each message, and a message is counted as consumed only when the listener returned
//! `ConsumeSuccess`.
//!
//! - Where: one broker ([`PushConsumer::start`]), or, routed through the controller
//!   ([`PushConsumer::start_controller`], [`PushConsumer::start_with_routes`]), every broker
//!   group that holds a queue of the topic, each read from its group's master. A queue is named
//!   by its broker group and queue id, never by the broker it is read from: a new master
//!   (failover or switchover) is told to the queue's running worker, which goes on from the
//!   queue offset it holds in memory. The new master learns that position from the worker's
//!   first commit there. The group's committed offset on the new master may be older (the
//!   last commit before the kill had no answer, or went to a slave that was not elected), so
//!   restarting from it would hand the listener those messages again.
//! - Resuming on a new master is safe: consumers are shown only what the in-sync set
//!   confirmed, and only its members can be elected, so the new master holds everything the
//!   worker handled. The worker still checks, before its first pull there, that the new master
//!   holds the last message it handled (same message id at the same queue and commit-log
//!   offsets; `resume.rs`): after an unclean election it does not, and the worker starts from
//!   that master's committed offset instead, never skipping what the new master wrote in the
//!   place of messages it lacks.
//! - Membership: a heartbeat every `heartbeat_interval` to each of those brokers returns the
//!   sorted list of live members (the union over the brokers that answered); every member deals
//!   the topic's queues, sorted by (broker group, queue id), the same way (position modulo member
//!   count), so they agree without a coordinator. A member that stops heartbeating is dropped by
//!   the brokers, and its queues move a few heartbeats later (`deal.rs`: a broker that just
//!   started answering for its group, a new master or a slave standing in, has not heard from
//!   every member yet, so a member stays in the deal for three heartbeat intervals, and at least
//!   3 s, after the last answer that listed it; otherwise each failover would move queues back and forth).
//!   The queues of a group whose master cannot be reached, or that has no master named yet,
//!   stay in the deal (so that nothing else moves), and so do retry queues its brokers could
//!   not list this round; retry queues are read from the group's master too.
//! - Reads from slaves: when a group's master cannot be reached (a transport failure or a
//!   timeout; a paused master costs the pull's poll timeout plus 3 s), the heartbeat goes to its
//!   slaves instead, and each queue's worker reads from the next broker of the group the route
//!   names, trying the master again every 5 s. The worker keeps its queue offset in memory
//!   across the switch and commits where it reads, so an offset committed on a slave is not lost
//!   when the master returns: the worker's next commit carries it to the master, over the
//!   master's older value. A slave refuses hand-backs (`NOT_MASTER`): a failed message is then
//!   retried in place. A slave serves only what its master confirmed.
//! - Offsets: kept on the queue's broker (committed after each handled batch, and when a queue
//!   is given up, once more if the last commit failed), so a restarted or replacing member
//!   resumes where the group left off. At least once: a batch handled but not yet committed
//!   when a member dies is delivered again.
//! - Failure: `ReconsumeLater`, an `Err`, or a panic in the listener hands the message back to
//!   the broker (retry topic after a delay level, dead-letter topic after too many tries). The
//!   offset moves past a message only once it was handled or handed back; if the hand-back
//!   fails, the queue waits and tries again, and never skips the message.
//! - Orderly mode handles a queue's messages strictly in order: a failed message is tried again
//!   in place, and the queue waits for it. Broadcasting mode gives every member every queue,
//!   keeps offsets in the member, and retries failures in place too (nothing is handed back).
//!
//! Why one file of about 1,040 lines: a queue's pull loop, its offset commits, the send-back of
//! failed messages and the move to another broker of the group (a slave, or a new master) share
//! one per-queue state (the offset, the last message handled, where it was committed, which
//! broker serves); rebalancing drives those loops. The decisions that need none of it are
//! apart and unit-tested: `resume.rs` (does a position carry over to a new master) and
//! `deal.rs` (what the deal keeps between rounds). A split is planned with the
//! controller-client crate (step 8), which takes the route following.

use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use proto::client::{
    CommitOffsetRequest, HeartbeatRequest, PullStatus, QueryOffsetRequest, SendBackRequest,
};
use tokio::sync::watch;

use crate::consumer::{Admin, PullConsumer};
use crate::deal::DealMemory;
use crate::error::ClientError;
use crate::message::{new_message_id, ReceivedMessage};
use crate::pool::BrokerChannels;
use crate::resume::{self, Handled, Verdict};
use crate::routes::{self, Routes};

/// What a listener says of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Handled: the group may move past it.
    ConsumeSuccess,
    /// Not handled: deliver it again later (RocketMQ's RECONSUME_LATER).
    ReconsumeLater,
}

/// The error type a listener may return; any error counts as `ReconsumeLater`.
pub type ListenerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles messages. Called on a blocking thread, one message at a time per queue.
pub trait Listener: Send + Sync + 'static {
    fn consume(&self, message: &ReceivedMessage) -> Result<ConsumeResult, ListenerError>;
}

impl<F> Listener for F
where
    F: Fn(&ReceivedMessage) -> Result<ConsumeResult, ListenerError> + Send + Sync + 'static,
{
    fn consume(&self, message: &ReceivedMessage) -> Result<ConsumeResult, ListenerError> {
        self(message)
    }
}

/// Where a group with no committed offset starts on a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// The oldest message still kept.
    First,
    /// Only messages arriving from now on (RocketMQ's default, CONSUME_FROM_LAST_OFFSET).
    Last,
}

/// How a group shares a topic (RocketMQ's MessageModel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageModel {
    /// Each queue is consumed by one member; offsets on the broker; failures handed back for
    /// retry through the retry topic.
    Clustering,
    /// Every member consumes every queue; offsets kept by the member (in memory: a restarted
    /// member starts from `consume_from`); a failed message is retried in place.
    Broadcasting,
}

/// How messages of one queue are handled (RocketMQ's concurrently / orderly listeners).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeMode {
    /// A failed message is handed back and the queue goes on.
    Concurrently,
    /// Messages of a queue are handled strictly in order: a failed message is retried in place
    /// after a pause, and nothing after it is handled before it succeeds.
    Orderly,
}

/// Push consumer settings.
#[derive(Clone, Debug)]
pub struct PushConsumerConfig {
    pub group: String,
    pub topic: String,
    pub message_model: MessageModel,
    pub consume_mode: ConsumeMode,
    /// "*" or "a || b".
    pub tag_expression: String,
    pub consume_from: ConsumeFrom,
    pub heartbeat_interval: Duration,
    /// Messages per pull (RocketMQ's pullBatchSize, 32).
    pub pull_batch: u32,
    /// Long-polling wait of each pull.
    pub poll_timeout: Duration,
    /// The user every call to brokers (and the controller) is signed as; None: anonymous,
    /// which a broker with `acl_enabled` refuses. It needs consume on the topic and the group.
    pub credentials: Option<auth::Credentials>,
}

impl PushConsumerConfig {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        PushConsumerConfig {
            group: group.into(),
            topic: topic.into(),
            message_model: MessageModel::Clustering,
            consume_mode: ConsumeMode::Concurrently,
            tag_expression: "*".into(),
            consume_from: ConsumeFrom::Last,
            heartbeat_interval: Duration::from_secs(1),
            pull_batch: 32,
            poll_timeout: Duration::from_secs(1),
            credentials: None,
        }
    }
}

/// A running push consumer; stop it with [`PushConsumer::shutdown`].
pub struct PushConsumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    client_id: String,
    assigned: watch::Receiver<Vec<AssignedQueue>>,
}

/// A queue a member consumes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssignedQueue {
    /// The broker group holding it; empty for a consumer on one broker.
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    /// The broker it is read from (the group's master).
    pub broker_addr: String,
}

/// Where a consumer finds its queues.
enum Source {
    /// One broker, no controller.
    Broker { addr: String },
    /// The topic's route from the controller.
    Cluster { routes: Arc<Routes> },
}

struct Shared {
    config: PushConsumerConfig,
    client_id: String,
    source: Source,
    brokers: BrokerChannels,
    listener: Arc<dyn Listener>,
    /// Offsets of a broadcasting member, which keeps its own: by (broker group, topic, queue).
    local_offsets: std::sync::Mutex<HashMap<(String, String, u32), u64>>,
}

/// Longest wait for one broker's heartbeat answer: a broker that does not answer in time is
/// left out of this round's membership, not waited for.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a new master that does not hold a queue's last handled message yet is asked
/// again (it is indexing or confirming its last records).
const UNDECIDED_PAUSE: Duration = Duration::from_millis(20);

impl PushConsumer {
    /// Joins the group on the broker at `addr` (no controller) and starts consuming.
    pub async fn start(
        addr: &str,
        config: PushConsumerConfig,
        listener: impl Listener,
    ) -> Result<PushConsumer, ClientError> {
        let brokers = BrokerChannels::new(config.credentials.clone());
        brokers.connect(addr).await?;
        let source = Source::Broker {
            addr: addr.to_owned(),
        };
        Ok(PushConsumer::begin(source, brokers, config, listener))
    }

    /// Joins the group through the controller quorum at `controllers` (`host:port`,
    /// comma-separated) and consumes the topic's queues on every broker group.
    pub async fn start_controller(
        controllers: &str,
        config: PushConsumerConfig,
        listener: impl Listener,
    ) -> Result<PushConsumer, ClientError> {
        let connection = crate::routes::controller_connection(controllers, &config.credentials)?;
        let routes = Routes::start_as(Arc::new(connection), config.credentials.clone());
        PushConsumer::start_with_routes(routes, config, listener).await
    }

    /// Like [`PushConsumer::start_controller`], with an existing route cache. Fails when the
    /// controller does not know the topic.
    pub async fn start_with_routes(
        routes: Arc<Routes>,
        config: PushConsumerConfig,
        listener: impl Listener,
    ) -> Result<PushConsumer, ClientError> {
        routes.get(&config.topic).await?;
        let source = Source::Cluster { routes };
        let brokers = BrokerChannels::new(config.credentials.clone());
        Ok(PushConsumer::begin(source, brokers, config, listener))
    }

    fn begin(
        source: Source,
        brokers: BrokerChannels,
        config: PushConsumerConfig,
        listener: impl Listener,
    ) -> PushConsumer {
        let client_id = format!("{}-{}", config.group, new_message_id());
        let shared = Arc::new(Shared {
            config,
            client_id: client_id.clone(),
            source,
            brokers,
            listener: Arc::new(listener),
            local_offsets: std::sync::Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let (assigned_tx, assigned) = watch::channel(Vec::new());
        let task = tokio::spawn(run(shared, stopped, assigned_tx));
        PushConsumer {
            stop,
            task,
            client_id,
            assigned,
        }
    }

    /// The queues this member consumes now.
    pub fn assigned_queues(&self) -> Vec<AssignedQueue> {
        self.assigned.borrow().clone()
    }

    /// This member's id in its group.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Stops pulling, lets the batches in hand finish, commits, and leaves.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The membership loop: heartbeat, assign, start and stop queue workers.
async fn run(
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    assigned_tx: watch::Sender<Vec<AssignedQueue>>,
) {
    let retry_topic = format!("%RETRY%{}", shared.config.group);
    // Keyed by the queue alone, not by the broker it is read from: a new master of its group is
    // told to the running worker, which keeps its position (module documentation).
    let mut workers: HashMap<QueueKey, Worker> = HashMap::new();
    let mut memory = DealMemory::default();
    loop {
        match assignment(&shared, &retry_topic, &mut memory).await {
            Ok(assigned) => {
                let keys: BTreeSet<QueueKey> = assigned.iter().map(offset_key).collect();
                let gone: Vec<_> = workers
                    .keys()
                    .filter(|key| !keys.contains(*key))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(worker) = workers.remove(&key) {
                        let _ = worker.stop.send(true);
                        let _ = worker.task.await;
                    }
                }
                assigned_tx.send_replace(assigned.clone());
                for queue in assigned {
                    match workers.get(&offset_key(&queue)) {
                        Some(worker) => {
                            worker.master.send_if_modified(|master| {
                                let changed = *master != queue.broker_addr;
                                master.clone_from(&queue.broker_addr);
                                changed
                            });
                        }
                        None => {
                            let (stop, stopped) = watch::channel(false);
                            let (master, master_rx) = watch::channel(queue.broker_addr.clone());
                            let key = offset_key(&queue);
                            let task = tokio::spawn(consume_queue(
                                shared.clone(),
                                queue,
                                master_rx,
                                stopped,
                            ));
                            workers.insert(key, Worker { stop, master, task });
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "heartbeat failed; keeping the current queues")
            }
        }
        if tokio::time::timeout(shared.config.heartbeat_interval, stopped.changed())
            .await
            .is_ok()
        {
            break;
        }
    }
    for (_, worker) in workers {
        let _ = worker.stop.send(true);
        let _ = worker.task.await;
    }
}

/// A queue named without the broker it is read from: (broker group, topic, queue id).
type QueueKey = (String, String, u32);

/// A running queue worker.
struct Worker {
    stop: watch::Sender<bool>,
    /// The address of its group's master, as the latest deal names it.
    master: watch::Sender<String>,
    task: tokio::task::JoinHandle<()>,
}

/// This member's queues: for the topic and for the retry topic separately, the sorted queues
/// dealt out by position modulo the number of live members. Separately, so that a retry topic
/// appearing (at the first hand-back) moves none of the topic's queues.
async fn assignment(
    shared: &Shared,
    retry_topic: &str,
    memory: &mut DealMemory,
) -> Result<Vec<AssignedQueue>, ClientError> {
    let topic = &shared.config.topic;
    // The topic's queues (from the route; on one broker, from its topic list below) and the
    // brokers holding them, by group.
    // The brokers to heartbeat, per group, best first: the master, then its slaves (which
    // answer while the master cannot be reached, so that consumers keep reading from them).
    let (mut topic_queues, brokers): (Vec<AssignedQueue>, Vec<(String, Vec<String>)>) =
        match &shared.source {
            Source::Broker { addr } => (Vec::new(), vec![(String::new(), vec![addr.clone()])]),
            Source::Cluster { routes } => {
                let route = routes.get(topic).await?;
                // A group with no master named (between a master's loss and the election) keeps
                // its queues in the deal, read from its best broker meanwhile.
                let queues: Vec<AssignedQueue> = routes::readable_queues(&route)
                    .into_iter()
                    .filter_map(|q| {
                        let broker_addr = if q.master_addr.is_empty() {
                            routes::read_candidates(&route, &q.group)
                                .into_iter()
                                .next()?
                        } else {
                            q.master_addr
                        };
                        Some(AssignedQueue {
                            group: q.group,
                            topic: topic.clone(),
                            queue_id: q.queue_id,
                            broker_addr,
                        })
                    })
                    .collect();
                let groups: BTreeSet<String> = queues.iter().map(|q| q.group.clone()).collect();
                let brokers = groups
                    .into_iter()
                    .map(|group| {
                        let candidates = routes::read_candidates(&route, &group);
                        (group, candidates)
                    })
                    .collect();
                (queues, brokers)
            }
        };

    // Heartbeat every group at once; the members are those any of them knows.
    let mut heartbeats = tokio::task::JoinSet::new();
    for (group, candidates) in &brokers {
        let request = HeartbeatRequest {
            group: shared.config.group.clone(),
            client_id: shared.client_id.clone(),
        };
        let clients: Vec<(String, Result<_, ClientError>)> = candidates
            .iter()
            .map(|addr| (addr.clone(), shared.brokers.consumer_groups(addr)))
            .collect();
        let group = group.clone();
        heartbeats.spawn(async move {
            let mut last = Err(ClientError::NoRoute {
                topic: String::new(),
                reason: "the group has no broker",
            });
            for (addr, client) in clients {
                let request = request.clone();
                let answer = async move { Ok::<_, ClientError>(client?.heartbeat(request).await?) };
                let answer = tokio::time::timeout(HEARTBEAT_TIMEOUT, answer)
                    .await
                    .unwrap_or(Err(ClientError::Timeout {
                        timeout_ms: HEARTBEAT_TIMEOUT.as_millis() as u64,
                    }));
                match answer {
                    Ok(answer) => return (group, addr, Ok(answer.into_inner().members)),
                    Err(err) => last = Err(err),
                }
            }
            (group, String::new(), last)
        });
    }
    let mut members = BTreeSet::new();
    let mut answered = Vec::new();
    let mut last_error = None;
    while let Some(joined) = heartbeats.join_next().await {
        let Ok((group, addr, answer)) = joined else {
            continue;
        };
        match answer {
            Ok(list) => {
                members.extend(list);
                answered.push((group, addr));
            }
            Err(err) => {
                tracing::debug!(group, addr, error = %err, "heartbeat failed");
                last_error = Some(err);
            }
        }
    }
    if answered.is_empty() {
        return Err(last_error.unwrap_or(ClientError::NoRoute {
            topic: topic.clone(),
            reason: "no broker group holding the topic has a master",
        }));
    }
    let mut members = memory.members(
        members,
        std::time::Instant::now(),
        shared.config.heartbeat_interval,
    );
    members.insert(shared.client_id.clone());
    let (me, count) = match shared.config.message_model {
        MessageModel::Clustering => (
            members
                .iter()
                .position(|m| *m == shared.client_id)
                .expect("inserted above"),
            members.len(),
        ),
        // Every member takes every queue (and no retry topic: nothing is handed back).
        MessageModel::Broadcasting => (0, 1),
    };

    // The retry topic lives on each broker group separately (and, on one broker, the topic
    // too). Its queues are read from the group's master, like the topic's, whichever broker
    // listed them; a group whose brokers cannot list them keeps last round's.
    let mut retry_queues = Vec::new();
    answered.sort();
    for (group, addr) in answered {
        let topics = match shared.brokers.broker(&addr) {
            Ok(client) => Admin::with_client(client).list_topics().await,
            Err(err) => Err(err),
        };
        let topics = match topics {
            Ok(topics) => topics,
            Err(err) => {
                tracing::debug!(group, addr, error = %err, "cannot list the broker's topics");
                continue;
            }
        };
        let master = brokers
            .iter()
            .find(|(g, _)| *g == group)
            .and_then(|(_, candidates)| candidates.first())
            .unwrap_or(&addr)
            .clone();
        let mut group_retry_queues = Vec::new();
        for listed in topics {
            let into = if listed.topic == shared.config.topic
                && matches!(shared.source, Source::Broker { .. })
            {
                &mut topic_queues
            } else if listed.topic == retry_topic
                && shared.config.message_model == MessageModel::Clustering
            {
                &mut group_retry_queues
            } else {
                continue;
            };
            into.extend((0..listed.queue_count).map(|queue_id| AssignedQueue {
                group: group.clone(),
                topic: listed.topic.clone(),
                queue_id,
                broker_addr: master.clone(),
            }));
        }
        memory.retry_queues.insert(group, group_retry_queues);
    }
    for (group, candidates) in &brokers {
        let remembered = memory.retry_queues.get(group).into_iter().flatten();
        retry_queues.extend(remembered.map(|queue| AssignedQueue {
            broker_addr: candidates.first().unwrap_or(&queue.broker_addr).clone(),
            ..queue.clone()
        }));
    }
    let mut mine = Vec::new();
    for mut queues in [topic_queues, retry_queues] {
        queues.sort();
        mine.extend(
            queues
                .into_iter()
                .enumerate()
                .filter(|(index, _)| index % count == me)
                .map(|(_, queue)| queue),
        );
    }
    mine.sort();
    Ok(mine)
}

/// Consumes one queue until told to stop.
async fn consume_queue(
    shared: Arc<Shared>,
    queue: AssignedQueue,
    mut master: watch::Receiver<String>,
    mut stopped: watch::Receiver<bool>,
) {
    let (topic, queue_id) = (queue.topic.as_str(), queue.queue_id);
    let is_retry = topic.starts_with("%RETRY%");
    let filter = if is_retry {
        "*".to_owned()
    } else {
        shared.config.tag_expression.clone()
    };
    let mut offset = None;
    // The broker pulls go to: the master, or a slave of the group while the master cannot be
    // reached. The queue offset stays in memory across a switch (never queried again from the
    // other broker, whose committed offset may be older), and commits go where the pulls go.
    let mut serving = Serving::new(queue.broker_addr.clone());
    // Where the last commit of `offset` went.
    let mut committed_at: Option<String> = None;
    // The last message handled, and whether a new master has yet to show that it holds it
    // before the position in memory counts there (resume.rs).
    let mut last: Option<Handled> = None;
    let mut unverified = false;
    while !*stopped.borrow() {
        if master.has_changed().unwrap_or(false) {
            let new_master = master.borrow_and_update().clone();
            unverified |= serving.follow_master(new_master) && offset.is_some();
        }
        serving.maybe_return_to_master();
        let addr = serving.addr.clone();
        if unverified {
            match carries_over(&shared, &queue, &addr, last.as_ref()).await {
                Ok(Verdict::Keep) => unverified = false,
                Ok(Verdict::Drop) => {
                    tracing::warn!(group = %queue.group, topic, queue_id, addr, "the new master lacks what this queue handled; starting from its committed offset");
                    (offset, last, unverified) = (None, None, false);
                }
                // Not there yet (the probe waited a poll for it, or its queue ends before it):
                // ask again shortly.
                Ok(Verdict::Undecided) => {
                    tokio::select! {
                        () = tokio::time::sleep(UNDECIDED_PAUSE) => {}
                        _ = stopped.changed() => {}
                    }
                    continue;
                }
                Err(err) => {
                    tracing::debug!(topic, queue_id, error = %err, "cannot check the new master; retrying");
                    serving.failed(&shared, &queue, &err).await;
                    pause(&mut stopped).await;
                    continue;
                }
            }
        }
        let current = match offset {
            Some(current) => current,
            None => match start_offset(&shared, &queue, &addr).await {
                Ok(start) => {
                    offset = Some(start);
                    // The broker knows it: it answered it, or took its commit.
                    committed_at = Some(addr.clone());
                    start
                }
                Err(err) => {
                    tracing::warn!(topic, queue_id, error = %err, "cannot find where to start; retrying");
                    serving.failed(&shared, &queue, &err).await;
                    pause(&mut stopped).await;
                    continue;
                }
            },
        };
        // Reading from another broker than the last commit went to (a slave, or the master
        // back): tell it where the group is first, so that its older offset never counts.
        if committed_at.as_deref() != Some(addr.as_str()) && offset.is_some() {
            match commit(&shared, &queue, &addr, current).await {
                Ok(()) => committed_at = Some(addr.clone()),
                Err(err) => {
                    tracing::debug!(topic, queue_id, error = %err, "offset commit failed; retrying");
                    serving.failed(&shared, &queue, &err).await;
                    pause(&mut stopped).await;
                    continue;
                }
            }
        }
        let pulled = match puller(&shared, &addr) {
            Ok(puller) => {
                puller
                    .pull(
                        topic,
                        queue_id,
                        current,
                        shared.config.pull_batch,
                        &filter,
                        shared.config.poll_timeout,
                    )
                    .await
            }
            Err(err) => Err(err),
        };
        let result = match pulled {
            Ok(result) => result,
            Err(err) => {
                tracing::debug!(topic, queue_id, error = %err, "pull failed; retrying");
                serving.failed(&shared, &queue, &err).await;
                pause(&mut stopped).await;
                continue;
            }
        };
        if result.messages.is_empty() {
            if matches!(
                result.status,
                PullStatus::OffsetTooSmall
                    | PullStatus::OffsetOverflow
                    | PullStatus::NoMatchedMessage
            ) {
                offset = Some(result.next_queue_offset);
            }
            continue;
        }
        let in_place = shared.config.consume_mode == ConsumeMode::Orderly
            || shared.config.message_model == MessageModel::Broadcasting;
        let finished = if in_place {
            handle_in_place(&shared, &result.messages, &mut stopped).await
        } else {
            handle_and_hand_back(&shared, &addr, &result.messages, &mut stopped).await
        };
        if let Err(first_unfinished) = finished {
            // Stopped in the middle: commit up to the first message not dealt with, so that the
            // next owner starts there (it is delivered again: at least once).
            let _ = commit(&shared, &queue, &addr, first_unfinished).await;
            return;
        }
        offset = Some(result.next_queue_offset);
        last = result.messages.last().map(Handled::of);
        committed_at = None;
        match commit(&shared, &queue, &addr, result.next_queue_offset).await {
            Ok(()) => committed_at = Some(addr),
            Err(err) => {
                tracing::debug!(topic, queue_id, error = %err, "offset commit failed; the next one covers it")
            }
        }
    }
    // Given up (the queue moved to another member, or the consumer stops): the next owner
    // starts from the committed offset, so a commit that failed is made once more. Not to a
    // new master that has not yet shown it holds the position.
    if let (Some(current), false) = (offset, unverified) {
        if committed_at.as_deref() != Some(serving.addr.as_str()) {
            let _ = commit(&shared, &queue, &serving.addr, current).await;
        }
    }
}

/// After a change of master: whether the worker's position carries over to the broker at
/// `addr` (resume.rs). With nothing handled yet there is nothing to lose by starting from that
/// broker's committed offset, so the position is dropped.
async fn carries_over(
    shared: &Shared,
    queue: &AssignedQueue,
    addr: &str,
    last: Option<&Handled>,
) -> Result<Verdict, ClientError> {
    let Some(last) = last else {
        return Ok(Verdict::Drop);
    };
    let probe = puller(shared, addr)?
        .pull(
            &queue.topic,
            queue.queue_id,
            last.queue_offset,
            1,
            "*",
            shared.config.poll_timeout,
        )
        .await?;
    Ok(resume::judge(last, &probe))
}

/// Concurrently: handles the batch; hands back every failed message. Never moves past a message
/// neither handled nor handed back: on a stop in the middle, returns the queue offset of the
/// first such message.
async fn handle_and_hand_back(
    shared: &Shared,
    addr: &str,
    messages: &[ReceivedMessage],
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), u64> {
    let outcomes = handle(shared, messages.to_vec()).await;
    for (message, outcome) in messages.iter().zip(outcomes) {
        if outcome == ConsumeResult::ReconsumeLater {
            while let Err(err) = send_back(shared, addr, message).await {
                if !err.is_retriable() {
                    // The broker will never take this one back: retry it in place instead,
                    // still never moving past it unhandled.
                    tracing::warn!(message_id = message.message_id, error = %err, "hand-back refused; retrying in place");
                    handle_in_place(shared, std::slice::from_ref(message), stopped).await?;
                    break;
                }
                tracing::warn!(message_id = message.message_id, error = %err, "hand-back failed; retrying");
                if *stopped.borrow() {
                    return Err(message.queue_offset);
                }
                pause(stopped).await;
            }
        }
    }
    Ok(())
}

/// Orderly (and broadcasting): one message at a time; a failed one is tried again in place after
/// a pause that grows to 30 s, and nothing after it runs first. On a stop, returns the queue
/// offset of the message not yet handled.
async fn handle_in_place(
    shared: &Shared,
    messages: &[ReceivedMessage],
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), u64> {
    for message in messages {
        let mut attempt = 0u32;
        loop {
            if *stopped.borrow() {
                return Err(message.queue_offset);
            }
            let outcome = handle(shared, vec![message.clone()]).await[0];
            if outcome == ConsumeResult::ConsumeSuccess {
                break;
            }
            attempt += 1;
            let suspend =
                Duration::from_millis(100 * 2u64.pow(attempt.min(9))).min(Duration::from_secs(30));
            tracing::debug!(
                message_id = message.message_id,
                attempt,
                "suspending the queue before trying again"
            );
            let _ = tokio::time::timeout(suspend, stopped.changed()).await;
        }
    }
    Ok(())
}

async fn pause(stopped: &mut watch::Receiver<bool>) {
    let _ = tokio::time::timeout(Duration::from_millis(500), stopped.changed()).await;
}

/// Pulls from the broker at `addr`.
fn puller(shared: &Shared, addr: &str) -> Result<PullConsumer, ClientError> {
    Ok(PullConsumer::with_client(shared.brokers.broker(addr)?))
}

/// How long a consumer reading from a slave waits before trying its master again.
const MASTER_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Which broker of the queue's group a queue worker reads from.
struct Serving {
    master: String,
    addr: String,
    since: std::time::Instant,
}

impl Serving {
    fn new(master: String) -> Serving {
        Serving {
            addr: master.clone(),
            master,
            since: std::time::Instant::now(),
        }
    }

    /// The deal names another master for the group (a failover or a switchover): read from it
    /// from now on. Returns whether it changed.
    fn follow_master(&mut self, master: String) -> bool {
        if master == self.master {
            return false;
        }
        tracing::info!(from = %self.master, to = %master, "the group has a new master");
        self.addr = master.clone();
        self.master = master;
        self.since = std::time::Instant::now();
        true
    }

    /// Reading from a slave for a while: try the master again.
    fn maybe_return_to_master(&mut self) {
        if self.addr != self.master && self.since.elapsed() >= MASTER_RETRY_AFTER {
            tracing::info!(master = %self.master, "trying the master again");
            self.addr = self.master.clone();
            self.since = std::time::Instant::now();
        }
    }

    /// A call to the serving broker failed: on a transport failure or a timeout, move to the next
    /// broker of the group the route names (a slave while the master is down). Only with routes
    /// from the controller: a consumer of one broker has nowhere else to go.
    async fn failed(&mut self, shared: &Shared, queue: &AssignedQueue, err: &ClientError) {
        // A broker that cannot serve the range (unreachable, or its copy is corrupt and under
        // repair): another broker of the group serves it meanwhile.
        if !matches!(
            err,
            ClientError::Transport { .. }
                | ClientError::Timeout { .. }
                | ClientError::Broker {
                    code: proto::common::ErrorCode::MessageCorrupted,
                    ..
                }
        ) {
            return;
        }
        let Source::Cluster { routes } = &shared.source else {
            return;
        };
        let Ok(route) = routes.get(&shared.config.topic).await else {
            return;
        };
        let candidates = routes::read_candidates(&route, &queue.group);
        let Some(next) = candidates
            .iter()
            .position(|a| *a == self.addr)
            .map_or(candidates.first(), |i| {
                candidates.get((i + 1) % candidates.len())
            })
        else {
            return;
        };
        if *next != self.addr {
            tracing::info!(group = %queue.group, topic = %queue.topic, queue_id = queue.queue_id, from = %self.addr, to = %next, "reading from another broker of the group");
            self.addr = next.clone();
            self.since = std::time::Instant::now();
        }
    }
}

async fn start_offset(
    shared: &Shared,
    queue: &AssignedQueue,
    addr: &str,
) -> Result<u64, ClientError> {
    let (topic, queue_id) = (queue.topic.as_str(), queue.queue_id);
    if shared.config.message_model == MessageModel::Broadcasting {
        let local = shared
            .local_offsets
            .lock()
            .expect("offsets lock")
            .get(&offset_key(queue))
            .copied();
        if let Some(offset) = local {
            return Ok(offset);
        }
        let probe = puller(shared, addr)?
            .pull(topic, queue_id, 0, 1, "*", Duration::ZERO)
            .await?;
        return Ok(match shared.config.consume_from {
            ConsumeFrom::First => probe.min_queue_offset,
            ConsumeFrom::Last => probe.max_queue_offset,
        });
    }
    let mut groups = shared.brokers.consumer_groups(addr)?;
    let committed = within_call_timeout(groups.query_offset(QueryOffsetRequest {
        group: shared.config.group.clone(),
        topic: topic.to_owned(),
        queue_id,
    }))
    .await?
    .into_inner();
    if committed.found {
        return Ok(committed.queue_offset);
    }
    // A retry topic is always read from its start: everything in it is for this group.
    let from = if topic.starts_with("%RETRY%") {
        ConsumeFrom::First
    } else {
        shared.config.consume_from
    };
    let probe = puller(shared, addr)?
        .pull(topic, queue_id, 0, 1, "*", Duration::ZERO)
        .await?;
    let start = match from {
        ConsumeFrom::First => probe.min_queue_offset,
        ConsumeFrom::Last => probe.max_queue_offset,
    };
    // Committed at once: a member that dies during its first batch must not leave the next owner
    // to start from "last" again, past the messages that arrived in between.
    commit(shared, queue, addr, start).await?;
    Ok(start)
}

fn offset_key(queue: &AssignedQueue) -> QueueKey {
    (queue.group.clone(), queue.topic.clone(), queue.queue_id)
}

/// Runs the listener over a batch on a blocking thread; an `Err` or a panic counts as
/// `ReconsumeLater`.
async fn handle(shared: &Shared, messages: Vec<ReceivedMessage>) -> Vec<ConsumeResult> {
    let listener = shared.listener.clone();
    let count = messages.len();
    tokio::task::spawn_blocking(move || {
        messages
            .iter()
            .map(|message| match catch_unwind(AssertUnwindSafe(|| listener.consume(message))) {
                Ok(Ok(result)) => result,
                Ok(Err(err)) => {
                    tracing::debug!(message_id = message.message_id, error = %err, "listener failed");
                    ConsumeResult::ReconsumeLater
                }
                Err(_) => {
                    tracing::warn!(message_id = message.message_id, "listener panicked");
                    ConsumeResult::ReconsumeLater
                }
            })
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![ConsumeResult::ReconsumeLater; count])
}

/// Hands a failed message back to the broker it came from (a slave refuses it with
/// `NOT_MASTER`: the message is then retried in place).
async fn send_back(
    shared: &Shared,
    addr: &str,
    message: &ReceivedMessage,
) -> Result<(), ClientError> {
    let mut groups = shared.brokers.consumer_groups(addr)?;
    within_call_timeout(groups.send_back(SendBackRequest {
        group: shared.config.group.clone(),
        commit_log_offset: message.commit_log_offset,
        topic: message.topic.clone(),
        queue_offset: message.queue_offset,
    }))
    .await?;
    Ok(())
}

async fn commit(
    shared: &Shared,
    queue: &AssignedQueue,
    addr: &str,
    queue_offset: u64,
) -> Result<(), ClientError> {
    if shared.config.message_model == MessageModel::Broadcasting {
        shared
            .local_offsets
            .lock()
            .expect("offsets lock")
            .insert(offset_key(queue), queue_offset);
        return Ok(());
    }
    let mut groups = shared.brokers.consumer_groups(addr)?;
    within_call_timeout(groups.commit_offset(CommitOffsetRequest {
        group: shared.config.group.clone(),
        topic: queue.topic.clone(),
        queue_id: queue.queue_id,
        queue_offset,
    }))
    .await?;
    Ok(())
}

/// Longest wait for a broker's answer to an offset or hand-back call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs a call to a broker with [`CALL_TIMEOUT`]: a paused broker costs a timeout, then the
/// queue's worker moves on (to a slave, for reads).
async fn within_call_timeout<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| ClientError::Timeout {
            timeout_ms: CALL_TIMEOUT.as_millis() as u64,
        })?
        .map_err(ClientError::from)
}
