//! The slave's side of log shipping: one stream to the group's master at a time.
//!
//! A session: connect; send Hello (epoch history, log end, secret); receive Welcome; cut the log
//! to the point it names (crash-safely, in the store); then append every chunk at exactly its
//! offset, beginning each new epoch in the local history first so that the two histories stay
//! the same, and follow the master's confirm offset (capped by what this slave holds durably
//! under its own flush policy). A separate task acknowledges the written and flushed offsets
//! each time they move, and at least every keep-alive interval.
//!
//! A chunk or Welcome from an epoch older than the newest this log holds comes from a deposed
//! master: it is refused and the session ends. Any failure ends the session; the next one starts
//! after a pause that grows to [`RETRY_MAX`], from whatever the master location says then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::replication as pb;
use proto::replication::log_shipping_client::LogShippingClient;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use super::log::{LogError, ShippedLog};
use super::{to_wire_history, STREAM_MESSAGE_BYTES_MAX};

/// First pause after a failed session; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long the master has to answer the Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the group's master is, as the controller (or the configuration) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterLocation {
    pub addr: String,
    pub master_id: u64,
    pub master_epoch: u64,
}

/// Settings of the slave's side.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub group: String,
    pub broker_id: u64,
    /// Where clients reach this slave (shown in the master's ha status).
    pub addr: String,
    /// Signs the stream's opening, which the master's guard checks; `None` (a broker with no
    /// `cluster_secret`) cannot replicate.
    pub cluster_key: Option<auth::ClusterKey>,
    /// Acknowledgements go at least this often; a master silent for three of these is gone.
    pub keepalive: Duration,
    pub connect_timeout: Duration,
}

/// What the slave knows of its replication now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    /// A session with the master is open.
    pub connected: bool,
    pub master_addr: String,
    /// The master's write offset in its last chunk.
    pub master_write_offset: u64,
    /// Why the last session ended, if one did.
    pub last_error: Option<String>,
}

/// Shared with the broker for status and reads, and for saying it is stopping.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    inner: Mutex<ReplicaSnapshot>,
    /// The master this slave found gone (see [`ReplicaStatus::master_gone`]).
    gone: Mutex<Option<MasterLocation>>,
    /// Told when this slave finds its master gone, so that the broker says so at once.
    on_master_gone: std::sync::OnceLock<Arc<Notify>>,
    /// The broker is stopping: acknowledgements say so, and the master takes this slave out of
    /// the in-sync set.
    leaving: AtomicBool,
    /// Sends an acknowledgement at once when the broker starts leaving.
    leaving_said: Notify,
}

impl ReplicaStatus {
    /// The broker is stopping (a planned stop): from now on every acknowledgement says so, the
    /// first at once, and the master takes this slave out of the in-sync set at its next review.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.leaving_said.notify_one();
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The master this slave last found gone: its log stream ended, and its host then refused a
    /// connection to its address (nothing listens there: the process is gone; a paused master
    /// still accepts connections, a cut-off one does not answer). Holds until a session with a
    /// master opens again or the master location changes. The controller elects a successor
    /// without waiting out the old master's lease once every in-sync slave says this.
    pub fn master_gone(&self) -> Option<MasterLocation> {
        self.gone
            .lock()
            .expect("replica status lock poisoned")
            .clone()
    }

    /// `wake` is notified each time this slave finds its master gone.
    pub fn notify_on_master_gone(&self, wake: Arc<Notify>) {
        let _ = self.on_master_gone.set(wake);
    }

    fn set_master_gone(&self, gone: Option<&MasterLocation>) {
        let mut current = self.gone.lock().expect("replica status lock poisoned");
        if current.as_ref() == gone {
            return;
        }
        *current = gone.cloned();
        drop(current);
        if let Some(location) = gone {
            tracing::warn!(
                master = %location.addr,
                master_id = location.master_id,
                master_epoch = location.master_epoch,
                "the master's host refuses connections: the master process is gone"
            );
            if let Some(wake) = self.on_master_gone.get() {
                wake.notify_one();
            }
        }
    }

    pub fn snapshot(&self) -> ReplicaSnapshot {
        self.inner
            .lock()
            .expect("replica status lock poisoned")
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ReplicaSnapshot)) {
        f(&mut self.inner.lock().expect("replica status lock poisoned"));
    }
}

/// Longest wait for the connection that tells whether a master whose stream ended is gone: a
/// refusal comes back in one round trip; a master that does not answer within this is not
/// known gone.
const GONE_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Connections tried before an accepting master counts as alive, and the pause between them.
const GONE_PROBES: u32 = 20;
const GONE_PROBE_PAUSE: Duration = Duration::from_millis(10);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot reach the master: {0}")]
    Transport(String),
    #[error("the master refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Protocol(String),
    #[error("the log: {0}")]
    Log(#[from] LogError),
}

impl From<tonic::Status> for SessionEnd {
    /// Read through the status codec: a status with an error code is the master's answer (a
    /// refusal, even when its gRPC code is UNAVAILABLE, as for NOT_MASTER); one without came from
    /// the transport.
    fn from(status: tonic::Status) -> Self {
        match proto::ErrorStatus::from_status(&status) {
            Some(refusal) => SessionEnd::Refused(refusal.message),
            None => SessionEnd::Transport(status.message().to_owned()),
        }
    }
}

/// Replicates from whatever master `master` names, until the task is aborted or the log fails.
pub async fn run<L: ShippedLog>(
    log: Arc<L>,
    config: ReplicaConfig,
    mut master: watch::Receiver<Option<MasterLocation>>,
    status: Arc<ReplicaStatus>,
) {
    let mut pause = RETRY_MIN;
    let mut failures = 0u64;
    loop {
        let location = match master.wait_for(Option::is_some).await {
            Ok(location) => location.clone().expect("waited for Some"),
            Err(_) => return,
        };
        if status.master_gone().is_some_and(|gone| gone != location) {
            status.set_master_gone(None);
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = session(&log, &config, &location, &status) => outcome,
            () = moved_from(master.clone(), location.clone()) => Err(SessionEnd::Protocol(format!("the master moved away from {}", location.addr))),
        };
        status.update(|s| s.connected = false);
        let Err(end) = outcome else { continue };
        if let SessionEnd::Log(err) = &end {
            if err.stops_replication() {
                tracing::error!(error = %err, kind = ?err.kind, "the local log failed: replication stops");
                status.update(|s| s.last_error = Some(err.to_string()));
                return;
            }
        }
        // A session that ran a while and then ended starts the backoff afresh.
        if started.elapsed() > RETRY_MAX * 5 {
            pause = RETRY_MIN;
            failures = 0;
        }
        failures += 1;
        if failures <= 3 || failures % 20 == 0 {
            tracing::warn!(master = %location.addr, failures, error = %end, "replication session ended; retrying");
        }
        status.update(|s| s.last_error = Some(end.to_string()));
        if matches!(end, SessionEnd::Transport(_)) && master.borrow().as_ref() == Some(&location) {
            let gone = host_refuses(&location.addr).await;
            status.set_master_gone(gone.then_some(&location));
        }
        // A new master (after a failover) is tried at once: the pause is for retrying the same
        // one.
        tokio::select! {
            () = tokio::time::sleep(pause) => pause = (pause * 2).min(RETRY_MAX),
            () = moved_from(master.clone(), location) => {
                pause = RETRY_MIN;
                failures = 0;
            }
        }
    }
}

/// Whether the host of `addr` refuses a TCP connection to it now: nothing listens on the port,
/// so the process that served it is gone (or closed it). A timeout, an unreachable network, or
/// an accepted connection (closed at once) is not a refusal: a paused process's socket still
/// accepts, and a cut link does not answer. An accepted connection is tried again a few times
/// [`GONE_PROBE_PAUSE`] apart: a killed process's kernel may close the stream before the
/// listening socket, which then still accepts for a while (seen here: over 40 ms, as the
/// process's memory is torn down first).
async fn host_refuses(addr: &str) -> bool {
    for attempt in 0..GONE_PROBES {
        if attempt > 0 {
            tokio::time::sleep(GONE_PROBE_PAUSE).await;
        }
        match tokio::time::timeout(GONE_PROBE_TIMEOUT, connect_from_source(addr)).await {
            Ok(Err(err)) => return err.kind() == std::io::ErrorKind::ConnectionRefused,
            // No answer: cut off or overloaded, not gone.
            Err(_) => return false,
            Ok(Ok(_accepted)) => {}
        }
    }
    false
}

/// A TCP connection to `addr` from the broker's source address, as the log stream came, so
/// that both take one path.
async fn connect_from_source(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = match target {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = proto::dial::source_ip() {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    socket.connect(target).await
}

/// Completes once the master location is no longer `location`.
async fn moved_from(mut master: watch::Receiver<Option<MasterLocation>>, location: MasterLocation) {
    loop {
        if master.borrow_and_update().as_ref() != Some(&location) {
            return;
        }
        if master.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One session, until it fails.
async fn session<L: ShippedLog>(
    log: &Arc<L>,
    config: &ReplicaConfig,
    location: &MasterLocation,
    status: &ReplicaStatus,
) -> Result<(), SessionEnd> {
    let endpoint = proto::dial::endpoint(&location.addr, config.connect_timeout)
        .map_err(|err| SessionEnd::Protocol(format!("bad master address: {err}")))?;
    let key = config.cluster_key.clone().ok_or_else(|| {
        SessionEnd::Protocol("this broker has no cluster_secret: it cannot replicate".into())
    })?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| SessionEnd::Transport(err.to_string()))?;
    let channel = auth::SignedChannel::new(channel, key);
    let mut client = LogShippingClient::new(channel)
        .max_decoding_message_size(STREAM_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(STREAM_MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::Hello {
        group: config.group.clone(),
        broker_id: config.broker_id,
        addr: config.addr.clone(),
        epochs: to_wire_history(&log.epoch_history()),
        max_offset: log.write_offset(),
        min_offset: log.min_offset(),
    };
    tx.send(pb::ReplicaMessage {
        body: Some(pb::replica_message::Body::Hello(hello)),
    })
    .await
    .expect("the receiver is still here");
    let mut inbound = client
        .replicate(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Err(_) => return Err(SessionEnd::Transport("no Welcome within 10 s".into())),
        Ok(Err(status)) => return Err(status.into()),
        Ok(Ok(Some(pb::MasterMessage {
            body: Some(pb::master_message::Body::Welcome(welcome)),
        }))) => welcome,
        Ok(Ok(_)) => {
            return Err(SessionEnd::Protocol(
                "the master's first message was not a Welcome".into(),
            ))
        }
    };
    let newest_epoch = newest_epoch(log.as_ref());
    if welcome.master_epoch < newest_epoch {
        return Err(SessionEnd::Refused(format!(
            "master epoch {} is older than this log's newest epoch {newest_epoch}: a deposed master",
            welcome.master_epoch
        )));
    }
    let end = log.write_offset();
    if welcome.seed {
        // This log holds no record: it begins where the master's does, with the master's epoch
        // there. Refused by the log if it holds any record after all (the Hello said otherwise).
        let seed_epoch = welcome.seed_epoch.map(|e| super::EpochEntry {
            epoch: e.epoch,
            start_offset: e.start_offset,
        });
        if welcome.truncate_to != end || log.epoch_history().last().copied() != seed_epoch {
            tracing::info!(
                from = welcome.truncate_to,
                epoch = ?seed_epoch,
                "empty log: beginning at the master's first offset"
            );
            log.start_at(welcome.truncate_to, seed_epoch).await?;
        }
    } else if welcome.truncate_to > end {
        return Err(SessionEnd::Protocol(format!(
            "the master asked to truncate to {} beyond this log's end {end}",
            welcome.truncate_to
        )));
    } else if welcome.truncate_to < end {
        tracing::warn!(
            from = end,
            to = welcome.truncate_to,
            bytes = end - welcome.truncate_to,
            "cutting the log's tail the master does not hold"
        );
        log.truncate_to(welcome.truncate_to).await?;
    }
    tracing::info!(
        master = %location.addr,
        master_epoch = welcome.master_epoch,
        from = welcome.truncate_to,
        master_write_offset = welcome.master_write_offset,
        "replicating"
    );
    status.set_master_gone(None);
    status.update(|s| {
        s.connected = true;
        s.master_addr = location.addr.clone();
        s.master_write_offset = welcome.master_write_offset;
    });
    tokio::select! {
        outcome = apply_chunks(log, config, &welcome, &mut inbound, status) => outcome,
        () = acknowledge(log.as_ref(), welcome.master_epoch, config.keepalive, tx, status) => {
            Err(SessionEnd::Transport("the stream to the master closed".into()))
        }
    }
}

fn newest_epoch<L: ShippedLog>(log: &L) -> u64 {
    log.epoch_history().last().map_or(0, |e| e.epoch)
}

/// Appends every chunk the master sends, until the stream fails.
async fn apply_chunks<L: ShippedLog>(
    log: &Arc<L>,
    config: &ReplicaConfig,
    welcome: &pb::Welcome,
    inbound: &mut tonic::Streaming<pb::MasterMessage>,
    status: &ReplicaStatus,
) -> Result<(), SessionEnd> {
    let silence_max = config.keepalive * 3 + Duration::from_secs(1);
    loop {
        let message = match tokio::time::timeout(silence_max, inbound.message()).await {
            Err(_) => {
                return Err(SessionEnd::Transport(format!(
                    "the master was silent for {} ms",
                    silence_max.as_millis()
                )))
            }
            Ok(Err(status)) => return Err(status.into()),
            Ok(Ok(None)) => {
                return Err(SessionEnd::Transport("the master ended the stream".into()))
            }
            Ok(Ok(Some(message))) => message,
        };
        let Some(pb::master_message::Body::Chunk(chunk)) = message.body else {
            return Err(SessionEnd::Protocol("a second Welcome".into()));
        };
        if chunk.epoch > welcome.master_epoch {
            return Err(SessionEnd::Protocol(format!(
                "chunk of epoch {} from a master of epoch {}",
                chunk.epoch, welcome.master_epoch
            )));
        }
        let newest = newest_epoch(log.as_ref());
        if chunk.epoch < newest && !chunk.data.is_empty() {
            return Err(SessionEnd::Refused(format!(
                "chunk of stale epoch {} refused: this log is at epoch {newest}",
                chunk.epoch
            )));
        }
        if !chunk.data.is_empty() {
            let end = log.write_offset();
            if chunk.offset != end {
                return Err(SessionEnd::Protocol(format!(
                    "chunk at offset {} but this log ends at {end}",
                    chunk.offset
                )));
            }
            if chunk.epoch > newest {
                log.begin_epoch(chunk.epoch).await?;
            }
            log.append_raw(chunk.offset, chunk.data).await?;
        }
        log.allow_confirm_offset(chunk.confirm_offset);
        status.update(|s| s.master_write_offset = chunk.master_write_offset);
    }
}

/// Sends an acknowledgement each time the written or flushed offset moves, when the broker
/// starts leaving, and at least every `keepalive`; returns when the stream is gone.
async fn acknowledge<L: ShippedLog>(
    log: &L,
    master_epoch: u64,
    keepalive: Duration,
    tx: mpsc::Sender<pb::ReplicaMessage>,
    status: &ReplicaStatus,
) {
    let mut progress = log.progress();
    // A log that fsyncs every write (SYNC_FLUSH) moves its flushed offset within one fsync of
    // its written offset: a write alone is not acknowledged, only the flush that follows, which
    // says both at once (a SYNC_FLUSH master cannot count a written-only acknowledgement, and it
    // cost a message each way per append at light load). Every flush that moves the flushed
    // offset is acknowledged at once, even while newer writes wait for the next one: under a
    // steady stream the written offset is always ahead, and waiting for the two to meet would
    // hold acknowledgements back until the keep-alive. Never longer than a keep-alive either: a
    // flush that hangs still leaves the master hearing of the written offset.
    let hold_for_flush = log.flushes_every_write();
    let mut last_sent = tokio::time::Instant::now();
    let mut first = true;
    let mut said_leaving = false;
    let mut said_flushed = 0;
    loop {
        let now = *progress.borrow_and_update();
        let leaving = status.is_leaving();
        let hold = hold_for_flush
            && !first
            && now.flushed_offset < now.write_offset
            && now.flushed_offset <= said_flushed
            && leaving == said_leaving
            && !log.has_fault()
            && last_sent.elapsed() < keepalive;
        if !hold {
            first = false;
            said_leaving = leaving;
            said_flushed = now.flushed_offset;
            let ack = pb::ReplicaMessage {
                body: Some(pb::replica_message::Body::Ack(pb::Ack {
                    master_epoch,
                    written_offset: now.write_offset,
                    flushed_offset: now.flushed_offset.min(now.write_offset),
                    store_fault: log.has_fault(),
                    leaving,
                })),
            };
            if tx.send(ack).await.is_err() {
                return;
            }
            last_sent = tokio::time::Instant::now();
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(last_sent + keepalive) => {}
            () = status.leaving_said.notified() => {}
            () = tx.closed() => return,
        }
    }
}
