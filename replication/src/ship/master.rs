//! The master's side of log shipping: the `LogShipping` gRPC service. One task per slave stream
//! ships the commit log's raw bytes from the point the handshake agreed on, never more than
//! `inflight_bytes_max` beyond what the slave acknowledged, and feeds the slave's
//! acknowledgements to the [`InSync`] tracker.
//!
//! Only members reach it: the broker's server runs `auth::MemberGuard`, which refuses a
//! `Replicate` stream without a signature made with the cluster key (the secret itself never
//! travels, unlike the `cluster_secret` Hello carried before).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::common::ErrorCode;
use proto::error_status;
use proto::replication as pb;
use proto::replication::log_shipping_server::LogShipping;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::divergence::{last_common_offset, Divergence, EpochEntry};
use super::from_wire_history;
use super::insync::InSync;
use super::log::{epoch_span, with_implicit_epoch, ShippedLog};

/// How long a slave has to say Hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one slave: HTTP/2 flow control does the rest.
const OUTBOUND_QUEUE: usize = 4;
/// Largest read the shipper makes on its own task when the log holds the bytes in memory
/// ([`ShippedLog::in_memory`]): a copy of at most this much takes tens of microseconds, less
/// than the two thread wake-ups a blocking-pool read costs (hand-off and answer). Larger reads,
/// and reads of what may be on disk only (a slave catching up), go to the blocking pool.
const INLINE_READ_BYTES_MAX: u64 = 256 << 10;
/// How long a new confirm offset waits for a chunk to carry it before it goes alone. The
/// confirm offset moves once per acknowledged append, just after the slave's acknowledgement;
/// sent at once, it was one more message each way per append at light load (a keep-alive
/// chunk, the slave's wake-up to read it). Under any steady traffic the next chunk leaves
/// within this delay and carries it; readers on the slave see a message at most this much
/// later. It bounds nothing durable: the confirm offset only limits what readers see.
const CONFIRM_DELAY: Duration = Duration::from_millis(5);

/// Settings of the master's side.
#[derive(Clone, Debug)]
pub struct ShipConfig {
    /// The broker group.
    pub group: String,
    /// This broker's id.
    pub broker_id: u64,
    /// Bytes read and sent per chunk (a record larger than this goes alone).
    pub chunk_bytes: usize,
    /// Bytes sent beyond the slave's acknowledged written offset before waiting for it.
    pub inflight_bytes_max: u64,
    /// With nothing to ship, a keep-alive chunk (carrying the confirm offset) goes this often.
    pub keepalive: Duration,
}

/// The `LogShipping` service of one broker. While the broker is not its group's master, it
/// refuses every stream with `NOT_MASTER`.
pub struct ShipService<L> {
    log: Arc<L>,
    in_sync: watch::Receiver<Option<Arc<InSync<L>>>>,
    config: Arc<ShipConfig>,
    /// Users' permissions: `HaStatus` (operators' view of the group) needs admin on the
    /// cluster. The log stream itself is members' only, guarded by the cluster secret.
    gate: auth::Gate,
}

impl<L: ShippedLog> ShipService<L> {
    /// `in_sync`: the tracker while this broker is its group's master, `None` while it is not.
    /// A stream lives as long as the tracker it began with: a deposed tracker ends it.
    pub fn new(
        log: Arc<L>,
        in_sync: watch::Receiver<Option<Arc<InSync<L>>>>,
        config: ShipConfig,
    ) -> Self {
        ShipService {
            log,
            in_sync,
            config: Arc::new(config),
            gate: auth::Gate::open(),
        }
    }

    /// Checks `HaStatus` callers with `gate` (open by default: every caller may).
    pub fn with_gate(mut self, gate: auth::Gate) -> Self {
        self.gate = gate;
        self
    }

    fn master(&self) -> Result<Arc<InSync<L>>, Status> {
        let current = self.in_sync.borrow().clone();
        current.filter(|t| !t.is_deposed()).ok_or_else(|| {
            error_status(
                ErrorCode::NotMaster,
                format!(
                    "broker {} of group {} is not its master",
                    self.config.broker_id, self.config.group
                ),
            )
        })
    }
}

/// Where a slave's stream begins.
#[derive(Debug, PartialEq, Eq)]
struct StreamStart {
    /// The slave cuts its log to this offset, or begins anew there when `seed`.
    offset: u64,
    /// The slave's log holds no record: it begins at `offset` (this master's first offset) with
    /// `seed_epoch` as its history.
    seed: bool,
    seed_epoch: Option<EpochEntry>,
}

/// Checks the slave's Hello and computes where its log and the master's stop agreeing.
fn handshake<L: ShippedLog>(
    log: &L,
    config: &ShipConfig,
    hello: &pb::Hello,
) -> Result<StreamStart, Status> {
    // Membership was proven before the stream reached this service: the server's
    // `auth::MemberGuard` admits `Replicate` only with a member's signature.
    if hello.group != config.group {
        return Err(error_status(
            ErrorCode::BadRequest,
            format!(
                "this master serves group {:?}, not {:?}",
                config.group, hello.group
            ),
        ));
    }
    if hello.broker_id == config.broker_id {
        return Err(error_status(
            ErrorCode::BadRequest,
            format!("broker id {} is this master's own", hello.broker_id),
        ));
    }
    if hello.min_offset == hello.max_offset {
        // The slave holds no record (a new store, a replaced disk): nothing to agree on. It
        // begins at this master's first offset, which retention may have moved above 0, with
        // the epoch entry in force there, so that its history and this master's agree from the
        // first record on (the divergence check compares epochs by their start offsets).
        let offset = log.min_offset();
        let seed_epoch = log
            .epoch_history()
            .into_iter()
            .rev()
            .find(|e| e.start_offset <= offset);
        return Ok(StreamStart {
            offset,
            seed: true,
            seed_epoch,
        });
    }
    let replica = with_implicit_epoch(&from_wire_history(&hello.epochs));
    let master = with_implicit_epoch(&log.epoch_history());
    let master_end = log.write_offset();
    let divergence =
        last_common_offset(&master, master_end, &replica, hello.max_offset).map_err(|err| {
            error_status(
                ErrorCode::BadRequest,
                format!("replica's epoch history: {err}"),
            )
        })?;
    let start = match divergence {
        Divergence::TruncateTo(offset) => offset,
        Divergence::NothingInCommon if hello.max_offset == 0 => 0,
        Divergence::NothingInCommon => {
            return Err(error_status(
                ErrorCode::Conflict,
                format!(
                    "the replica's log (end {}) shares no epoch with this master's: it was \
                     written for another group or cluster; empty its store before it replicates",
                    hello.max_offset
                ),
            ))
        }
    };
    let min_offset = log.min_offset();
    if start < min_offset {
        return Err(error_status(
            ErrorCode::Conflict,
            format!(
                "the replica needs the log from offset {start}, but this master holds it from \
                 {min_offset} on (retention deleted the rest); a slave whose log holds no \
                 record begins at {min_offset}: empty its store to have it copied anew"
            ),
        ));
    }
    Ok(StreamStart {
        offset: start,
        seed: false,
        seed_epoch: None,
    })
}

type Outbound = mpsc::Sender<Result<pb::MasterMessage, Status>>;

/// One slave's stream, after the handshake.
struct Session<L> {
    log: Arc<L>,
    in_sync: Arc<InSync<L>>,
    config: Arc<ShipConfig>,
    broker_id: u64,
    session: u64,
    master_epoch: u64,
    tx: Outbound,
}

impl<L: ShippedLog> Session<L> {
    /// Reads the slave's acknowledgements until the stream ends or one is refused.
    async fn read_acks(&self, mut inbound: Streaming<pb::ReplicaMessage>) {
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(broker_id = self.broker_id, error = %err, "replica stream ended");
                    break;
                }
            };
            let refusal = match message.body {
                Some(pb::replica_message::Body::Ack(ack)) if ack.master_epoch != self.master_epoch => {
                    Some(error_status(
                        ErrorCode::Conflict,
                        format!(
                            "acknowledgement of master epoch {} refused: this stream is epoch {}",
                            ack.master_epoch, self.master_epoch
                        ),
                    ))
                }
                Some(pb::replica_message::Body::Ack(ack)) => self
                    .in_sync
                    .ack(
                        self.broker_id,
                        self.session,
                        ack.written_offset,
                        ack.flushed_offset,
                        ack.store_fault,
                        ack.leaving,
                    )
                    .err()
                    .map(|err| {
                        tracing::error!(broker_id = self.broker_id, error = %err, "replica acknowledgement refused; closing its stream");
                        error_status(ErrorCode::BadRequest, err.to_string())
                    }),
                _ => Some(error_status(
                    ErrorCode::BadRequest,
                    "only acknowledgements may follow the Hello",
                )),
            };
            if let Some(refusal) = refusal {
                let _ = self.tx.send(Err(refusal)).await;
                break;
            }
        }
    }

    /// Ships from `start` until the slave goes, the stream is replaced, or the log fails.
    async fn ship(&self, start: u64) {
        let mut progress = self.log.progress();
        let mut changes = self.in_sync.subscribe();
        let mut next = start;
        let mut sent_confirm = u64::MAX;
        // When the last message left: the keep-alive is due `keepalive` after it. Counted from
        // here, not from each wake-up: in-sync set and progress notifications can come more often
        // than the keep-alive interval (a controlled master's views arrive with every controller
        // heartbeat), and a timer restarted on each of them never fired, so an idle master's
        // slaves heard nothing and dropped their streams as silent.
        let mut last_sent = tokio::time::Instant::now();
        // Since when a confirm offset newer than the last one sent waits for a chunk.
        let mut confirm_waits_since: Option<tokio::time::Instant> = None;
        loop {
            progress.borrow_and_update();
            changes.borrow_and_update();
            if self.tx.is_closed() || !self.in_sync.is_current(self.broker_id, self.session) {
                return;
            }
            if self.in_sync.is_deposed() {
                let _ = self
                    .tx
                    .send(Err(error_status(
                        ErrorCode::NotMaster,
                        format!(
                            "broker {} is no longer the master of epoch {}",
                            self.config.broker_id, self.master_epoch
                        ),
                    )))
                    .await;
                return;
            }
            let write_offset = self.log.write_offset();
            let inflight = next.saturating_sub(self.in_sync.written(self.broker_id));
            if next < write_offset && inflight < self.config.inflight_bytes_max {
                let history = self.log.epoch_history();
                let (epoch, epoch_end) = epoch_span(&history, next);
                let want = (self.config.chunk_bytes as u64).min(epoch_end - next) as usize;
                let read = if (write_offset - next).min(want as u64) <= INLINE_READ_BYTES_MAX
                    && self.log.in_memory(next)
                {
                    Ok(self.log.read_raw(next, want))
                } else {
                    let log = self.log.clone();
                    tokio::task::spawn_blocking(move || log.read_raw(next, want)).await
                };
                let data = match read {
                    Ok(Ok(data)) => data,
                    Ok(Err(err)) => {
                        tracing::error!(offset = next, error = %err, "cannot read the log to ship it");
                        let _ = self
                            .tx
                            .send(Err(error_status(ErrorCode::InternalError, err.to_string())))
                            .await;
                        return;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "log read task failed");
                        return;
                    }
                };
                let offset = next;
                next += data.len() as u64;
                if next >= write_offset {
                    self.in_sync
                        .note_sent_to_end(self.broker_id, self.session, next);
                }
                let confirm_offset = self.log.confirm_offset();
                sent_confirm = confirm_offset;
                confirm_waits_since = None;
                let chunk = pb::Chunk {
                    offset,
                    epoch,
                    data,
                    confirm_offset,
                    master_write_offset: write_offset,
                };
                if !self.send(chunk).await {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            let confirm_offset = self.log.confirm_offset();
            let mut due = last_sent + self.config.keepalive;
            if confirm_offset != sent_confirm {
                let since = *confirm_waits_since.get_or_insert_with(tokio::time::Instant::now);
                due = due.min(since + CONFIRM_DELAY);
            } else {
                confirm_waits_since = None;
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(due) => {
                    let confirm_offset = self.log.confirm_offset();
                    if !self.send(self.keepalive(next, confirm_offset)).await {
                        return;
                    }
                    sent_confirm = confirm_offset;
                    confirm_waits_since = None;
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }

    fn keepalive(&self, next: u64, confirm_offset: u64) -> pb::Chunk {
        let (epoch, _) = epoch_span(&self.log.epoch_history(), next.saturating_sub(1));
        pb::Chunk {
            offset: next,
            epoch,
            data: Default::default(),
            confirm_offset,
            master_write_offset: self.log.write_offset(),
        }
    }

    async fn send(&self, chunk: pb::Chunk) -> bool {
        self.tx
            .send(Ok(pb::MasterMessage {
                body: Some(pb::master_message::Body::Chunk(chunk)),
            }))
            .await
            .is_ok()
    }
}

type MasterStream = Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl<L: ShippedLog> LogShipping for ShipService<L> {
    type ReplicateStream = MasterStream;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<MasterStream>, Status> {
        let in_sync = self.master()?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| error_status(ErrorCode::RequestTimeout, "no Hello within 10 s"))??;
        let Some(pb::ReplicaMessage {
            body: Some(pb::replica_message::Body::Hello(hello)),
        }) = first
        else {
            return Err(error_status(
                ErrorCode::BadRequest,
                "a replication stream begins with a Hello",
            ));
        };
        let StreamStart {
            offset: start,
            seed,
            seed_epoch,
        } = handshake(self.log.as_ref(), &self.config, &hello)?;
        let master_epoch = in_sync.master_epoch();
        let session = in_sync.connect(hello.broker_id, &hello.addr, start);
        tracing::info!(
            broker_id = hello.broker_id,
            addr = %hello.addr,
            replica_end = hello.max_offset,
            start,
            seed,
            master_epoch,
            "replica connected"
        );
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = pb::MasterMessage {
            body: Some(pb::master_message::Body::Welcome(pb::Welcome {
                master_epoch,
                master_id: self.config.broker_id,
                truncate_to: start,
                master_write_offset: self.log.write_offset(),
                seed,
                seed_epoch: seed_epoch.map(|e| pb::EpochEntry {
                    epoch: e.epoch,
                    start_offset: e.start_offset,
                }),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .expect("the receiver is still here");
        let session = Arc::new(Session {
            log: self.log.clone(),
            in_sync,
            config: self.config.clone(),
            broker_id: hello.broker_id,
            session,
            master_epoch,
            tx,
        });
        tokio::spawn({
            let session = session.clone();
            async move {
                tokio::select! {
                    _ = session.read_acks(inbound) => {}
                    _ = session.ship(start) => {}
                }
                session
                    .in_sync
                    .disconnect(session.broker_id, session.session);
                tracing::info!(broker_id = session.broker_id, "replica disconnected");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ha_status(
        &self,
        request: Request<pb::HaStatusRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        self.gate.check(
            request.extensions(),
            auth::Action::Admin,
            auth::Resource::Cluster,
        )?;
        let in_sync = self.master()?;
        let view = in_sync.view();
        let progress = *self.log.progress().borrow();
        Ok(Response::new(pb::HaStatusResponse {
            group: self.config.group.clone(),
            master_id: self.config.broker_id,
            master_epoch: view.master_epoch,
            replication: if in_sync.config().sync_master {
                "SYNC_MASTER"
            } else {
                "ASYNC_MASTER"
            }
            .to_owned(),
            write_offset: self.log.write_offset(),
            flushed_offset: progress.flushed_offset,
            confirm_offset: self.log.confirm_offset(),
            in_sync_set: view.set.into_iter().collect(),
            in_sync_set_epoch: view.set_epoch,
            pending_in_sync_set: view.pending.unwrap_or_default().into_iter().collect(),
            min_in_sync_replicas: in_sync.config().min_in_sync_replicas as u32,
            replicas: view
                .replicas
                .into_iter()
                .map(|r| pb::ReplicaStatus {
                    broker_id: r.broker_id,
                    addr: r.addr,
                    connected: r.connected,
                    written_offset: r.written_offset,
                    flushed_offset: r.flushed_offset,
                    lag_bytes: r.lag_bytes,
                    lag_ms: r.lag.as_millis() as u64,
                    in_sync: r.in_sync,
                })
                .collect(),
        }))
    }
}
