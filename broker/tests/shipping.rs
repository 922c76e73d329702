//! Log shipping between two real stores over a real gRPC stream on 127.0.0.1, in one process:
//! the master's `ShipService` and the slave's replica task, with no controller (the in-sync set
//! is set directly).
//!
//! Invariant checked throughout: up to the confirm offset, the slave's log is a byte-identical
//! prefix of the master's, with the same epoch history.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::store::{
    ConfirmMode, FlushDiskType, GetRequest, NewMessage, Store, StoreConfig, TagFilter,
};
use bytes::Bytes;
use proto::replication as pb;
use proto::replication::log_shipping_client::LogShippingClient;
use proto::replication::log_shipping_server::LogShippingServer;
use replication::ship::{
    replica, AcceptedSet, InSync, InSyncConfig, MasterLocation, ReplicaConfig, ReplicaStatus,
    ReplicaWait, ShipConfig, ShipService, ShippedLog,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SECRET: &str = "shipping-test-secret";
const DEADLINE: Duration = Duration::from_secs(30);

fn config(dir: &Path, flush: FlushDiskType) -> StoreConfig {
    StoreConfig {
        store_path: dir.to_path_buf(),
        segment_bytes: 64 << 10,
        max_message_bytes: 4 << 10,
        max_properties_bytes: 1 << 10,
        batch_bytes_max: 32 << 10,
        flush_disk_type: flush,
        disk_max_used_ratio: 1.0,
        retention_check_interval_ms: 3_600_000,
        ..StoreConfig::default()
    }
}

fn in_sync_config(sync_master: bool) -> InSyncConfig {
    InSyncConfig {
        master_id: 0,
        sync_master,
        require_flushed: false,
        min_in_sync_replicas: 2,
        slave_timeout: Duration::from_millis(500),
        lag_max: Duration::from_secs(15),
        gone_max: Duration::from_millis(500),
    }
}

struct Master {
    store: Arc<Store>,
    in_sync: Arc<InSync<Store>>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

async fn start_master(dir: &Path, sync_master: bool) -> Master {
    start_master_with(dir, in_sync_config(sync_master)).await
}

async fn start_master_with(dir: &Path, in_sync: InSyncConfig) -> Master {
    let store = Arc::new(Store::open(config(dir, FlushDiskType::AsyncFlush)).unwrap());
    store.begin_epoch(1).await.unwrap();
    store.set_confirm_mode(ConfirmMode::External);
    let in_sync = Arc::new(InSync::new(
        in_sync,
        store.clone(),
        1,
        BTreeSet::from([0]),
        1,
    ));
    // The sender may go: a receiver keeps the last value, as a master that never changes role.
    let (_, current) = tokio::sync::watch::channel(Some(in_sync.clone()));
    let service = ShipService::new(
        store.clone(),
        current,
        ShipConfig {
            group: "broker-a".into(),
            broker_id: 0,
            chunk_bytes: 16 << 10,
            inflight_bytes_max: 64 << 10,
            keepalive: Duration::from_millis(100),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(auth::MemberGuardLayer::new(Some(key(SECRET))))
            .add_service(LogShippingServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Master {
        store,
        in_sync,
        addr,
        server,
    }
}

struct Slave {
    store: Arc<Store>,
    task: JoinHandle<()>,
    status: Arc<ReplicaStatus>,
    /// Where the replica task learns its master; held so that the task keeps waiting on it.
    _location: watch::Sender<Option<MasterLocation>>,
}

fn start_slave(dir: &Path, master: &Master, broker_id: u64) -> Slave {
    start_slave_with(
        dir,
        master,
        broker_id,
        FlushDiskType::AsyncFlush,
        Duration::from_millis(100),
    )
}

fn start_slave_with(
    dir: &Path,
    master: &Master,
    broker_id: u64,
    flush: FlushDiskType,
    keepalive: Duration,
) -> Slave {
    let store =
        Arc::new(Store::open_with_confirm_mode(config(dir, flush), ConfirmMode::External).unwrap());
    store.set_replica_only(true);
    let location = watch::Sender::new(Some(MasterLocation {
        addr: master.addr.to_string(),
        master_id: 0,
        master_epoch: 1,
    }));
    let status = Arc::new(ReplicaStatus::default());
    let task = tokio::spawn(replica::run(
        store.clone(),
        ReplicaConfig {
            group: "broker-a".into(),
            broker_id,
            addr: format!("127.0.0.1:{}", 20000 + broker_id),
            cluster_key: Some(key(SECRET)),
            keepalive,
            connect_timeout: Duration::from_secs(1),
        },
        location.subscribe(),
        status.clone(),
    ));
    Slave {
        store,
        task,
        status,
        _location: location,
    }
}

async fn append(store: &Store, count: usize) -> u64 {
    let mut end = 0;
    for i in 0..count {
        let body = Bytes::from(format!("message {i} {}", "x".repeat(i % 300)));
        end = store
            .append(NewMessage::new("orders", (i % 4) as u32, body))
            .await
            .unwrap()
            .end_offset;
    }
    end
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn raw(store: &Store, from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let chunk = store.read_raw(at, 1 << 20).unwrap();
        assert!(!chunk.is_empty());
        at += chunk.len() as u64;
        out.extend_from_slice(&chunk);
    }
    out.truncate((to - from) as usize);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_copies_the_master_byte_for_byte_and_follows_its_confirm_offset() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = start_master(dirs.0.path(), false).await;
    // Written before the slave exists: it catches up across several segments.
    append(&master.store, 2_000).await;
    let slave = start_slave(dirs.1.path(), &master, 1);
    let end = append(&master.store, 500).await;
    wait_until("the slave holds the master's log", || {
        slave.store.write_offset() == end
    })
    .await;
    assert_eq!(raw(&slave.store, 0, end), raw(&master.store, 0, end));
    assert_eq!(
        ShippedLog::epoch_history(slave.store.as_ref()),
        ShippedLog::epoch_history(master.store.as_ref())
    );
    // The slave is not in the set yet: the master's confirm offset is its own.
    wait_until("the confirm offset reaches the slave", || {
        slave.store.confirm_offset() == end
    })
    .await;

    // Once in the set, the master confirms only what the slave acknowledged.
    master.in_sync.apply_view(&AcceptedSet {
        master_epoch: 1,
        set: BTreeSet::from([0, 1]),
        set_epoch: 2,
    });
    let end = append(&master.store, 100).await;
    wait_until("the master confirms what the slave holds", || {
        master.store.confirm_offset() == end && slave.store.confirm_offset() == end
    })
    .await;
    assert_eq!(raw(&slave.store, 0, end), raw(&master.store, 0, end));
    slave.task.abort();
    master.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_master_waits_for_the_set_and_times_out_without_it() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = start_master(dirs.0.path(), true).await;
    // The set is the master alone: below min_in_sync_replicas.
    let end = append(&master.store, 1).await;
    assert_eq!(
        master.in_sync.wait_replicated(end).await,
        ReplicaWait::NotEnoughReplicas
    );
    master.in_sync.apply_view(&AcceptedSet {
        master_epoch: 1,
        set: BTreeSet::from([0, 1]),
        set_epoch: 2,
    });
    let slave = start_slave(dirs.1.path(), &master, 1);
    let end = append(&master.store, 10).await;
    assert_eq!(
        master.in_sync.wait_replicated(end).await,
        ReplicaWait::Replicated
    );
    assert!(slave.store.write_offset() >= end);

    // The slave goes: the next append times out (it stays in the set until the controller
    // accepts its removal, which nobody proposes here).
    slave.task.abort();
    let _ = slave.task.await;
    drop(slave.store);
    let end = append(&master.store, 1).await;
    let started = Instant::now();
    assert_eq!(
        master.in_sync.wait_replicated(end).await,
        ReplicaWait::Timeout
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(
        master.store.confirm_offset() < end,
        "nothing the set lacks is visible"
    );
    master.server.abort();
}

/// Invariant: a `SYNC_FLUSH` slave under a steady stream acknowledges each flush as it lands,
/// although its written offset is always ahead of its flushed one then: a `SYNC_MASTER` +
/// `SYNC_FLUSH` wait takes about a flush, never the keep-alive (10 s here; `slave_timeout` is
/// 0.5 s, so a held acknowledgement fails the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_flush_slave_under_a_steady_stream_acknowledges_each_flush() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = start_master_with(
        dirs.0.path(),
        InSyncConfig {
            require_flushed: true,
            ..in_sync_config(true)
        },
    )
    .await;
    master.in_sync.apply_view(&AcceptedSet {
        master_epoch: 1,
        set: BTreeSet::from([0, 1]),
        set_epoch: 2,
    });
    let _slave = start_slave_with(
        dirs.1.path(),
        &master,
        1,
        FlushDiskType::SyncFlush,
        Duration::from_secs(10),
    );
    let end = append(&master.store, 1).await;
    assert_eq!(
        master.in_sync.wait_replicated(end).await,
        ReplicaWait::Replicated
    );
    // A steady stream of appends nobody waits for, and a waited one among them now and then.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = tokio::spawn({
        let (store, stop) = (master.store.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append(&store, 8).await;
            }
        }
    });
    for i in 0..30 {
        let end = append(&master.store, 1).await;
        assert_eq!(
            master.in_sync.wait_replicated(end).await,
            ReplicaWait::Replicated,
            "wait {i} under a steady stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stream.await.unwrap();
    master.server.abort();
}

/// Invariant: a slave that says it is stopping is out of the master's planned set at once and
/// stays out while its stream lasts; a slave whose stream is gone is out once it has been gone
/// for `gone_max` (0.5 s here, not `lag_max`, 15 s), so a master waits for neither any longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_slave_and_a_gone_one_are_planned_out_of_the_set() {
    let dirs = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let master = start_master(dirs.0.path(), true).await;
    master.in_sync.apply_view(&AcceptedSet {
        master_epoch: 1,
        set: BTreeSet::from([0, 1, 2]),
        set_epoch: 2,
    });
    let leaving = start_slave(dirs.1.path(), &master, 1);
    let gone = start_slave(dirs.2.path(), &master, 2);
    let end = append(&master.store, 10).await;
    assert_eq!(
        master.in_sync.wait_replicated(end).await,
        ReplicaWait::Replicated
    );
    assert_eq!(master.in_sync.plan_change(), None, "both keep up");

    leaving.status.leave();
    let mut planned = None;
    wait_until("the leaving slave is planned out", || {
        planned = master.in_sync.plan_change();
        planned.is_some()
    })
    .await;
    let planned = planned.unwrap();
    assert_eq!(planned.set, BTreeSet::from([0, 2]));
    master.in_sync.apply_view(&AcceptedSet {
        master_epoch: 1,
        set: planned.set,
        set_epoch: 3,
    });
    // Still connected, caught up and acknowledging: it does not join again.
    let end = append(&master.store, 5).await;
    wait_until("the leaving slave holds the appends", || {
        leaving.store.write_offset() >= end
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(master.in_sync.plan_change(), None, "it stays out");

    gone.task.abort();
    let _ = gone.task.await;
    let dropped_at = Instant::now();
    let mut planned = None;
    wait_until("the gone slave is planned out", || {
        planned = master.in_sync.plan_change();
        planned.is_some()
    })
    .await;
    assert_eq!(planned.unwrap().set, BTreeSet::from([0]));
    let after = dropped_at.elapsed();
    assert!(
        after >= Duration::from_millis(450),
        "not before gone_max: {after:?}"
    );
    assert!(
        after < Duration::from_secs(7),
        "bounded by gone_max (0.5 s), not lag_max (15 s): {after:?}"
    );
    master.server.abort();
}

/// Every message of queues 0-3 of "orders" a reader can get, from each queue's first offset:
/// (queue id, queue offset, body).
fn messages(store: &Store) -> Vec<(u32, u64, Bytes)> {
    let mut out = Vec::new();
    for queue_id in 0..4 {
        let Some((min, _)) = store.queue_offsets("orders", queue_id) else {
            continue;
        };
        let mut at = min;
        loop {
            let got = store
                .get_messages(&GetRequest {
                    topic: "orders",
                    queue_id,
                    queue_offset: at,
                    max_count: 64,
                    max_bytes: 1 << 20,
                    filter: &TagFilter::All,
                })
                .unwrap();
            if got.messages.is_empty() {
                break;
            }
            for message in &got.messages {
                out.push((queue_id, message.queue_offset(), message.body()));
            }
            at = got.next_queue_offset;
        }
    }
    out
}

/// A slave whose store is new (a replaced disk) joins a master whose retention deleted offset
/// 0: it begins at the master's first offset, with the master's epoch there, and its queues
/// begin at the queue offsets the master's do. Restarted, it opens the same and replicates on
/// through the ordinary divergence check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slave_begins_at_the_masters_first_offset_once_retention_deleted_offset_0() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = start_master(dirs.0.path(), false).await;
    append(&master.store, 2_000).await;
    // Every segment but the one being written is older than any retention, once flushed,
    // dispatched and confirmed.
    master.store.flush().await.unwrap();
    wait_until("retention deleted the oldest segments", || {
        master
            .store
            .run_retention(broker::store::now_ms() + 100 * 3_600_000)
            .unwrap();
        master.store.min_offset() > 0
    })
    .await;
    let first = master.store.min_offset();
    let end = append(&master.store, 300).await;

    let slave = start_slave(dirs.1.path(), &master, 1);
    let deadline = Instant::now() + DEADLINE;
    while slave.store.write_offset() != end || slave.store.readable_offset() != end {
        assert!(
            Instant::now() < deadline,
            "the new slave does not hold the master's log ({end}): it holds {}..{}, readable \
             {}; {:?}",
            slave.store.min_offset(),
            slave.store.write_offset(),
            slave.store.readable_offset(),
            slave.status.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slave.store.min_offset(), first);
    assert_eq!(
        raw(&slave.store, first, end),
        raw(&master.store, first, end)
    );
    // The master's epoch 1 began at 0, below the slave's first offset: the slave's history
    // says the same, so that the two agree on it at the next session's divergence check.
    assert_eq!(
        ShippedLog::epoch_history(slave.store.as_ref()),
        ShippedLog::epoch_history(master.store.as_ref())
    );
    assert!(master.store.wait_readable(end, DEADLINE).await);
    let held = messages(&master.store);
    assert!(held.iter().all(|(_, queue_offset, _)| *queue_offset > 0));
    let copied = messages(&slave.store);
    assert!(
        copied == held,
        "the slave serves {} messages, the master {}",
        copied.len(),
        held.len()
    );
    for queue_id in 0..4 {
        assert_eq!(
            slave.store.queue_offsets("orders", queue_id),
            master.store.queue_offsets("orders", queue_id)
        );
    }

    // Restarted, the slave opens as it was, and replicates on from where it is.
    slave.task.abort();
    let _ = slave.task.await;
    let store = slave.store;
    tokio::task::spawn_blocking(move || store.shutdown().unwrap())
        .await
        .unwrap();
    let slave = start_slave(dirs.1.path(), &master, 1);
    assert_eq!(slave.store.min_offset(), first);
    assert_eq!(messages(&slave.store).len(), held.len());
    let end = append(&master.store, 200).await;
    wait_until("the restarted slave follows the master", || {
        slave.store.write_offset() == end && slave.store.readable_offset() == end
    })
    .await;
    assert!(master.store.wait_readable(end, DEADLINE).await);
    assert_eq!(
        raw(&slave.store, first, end),
        raw(&master.store, first, end)
    );
    let (copied, held) = (messages(&slave.store), messages(&master.store));
    assert!(
        copied == held,
        "the slave serves {} messages, the master {}",
        copied.len(),
        held.len()
    );
    slave.task.abort();
    master.server.abort();
}

fn key(secret: &str) -> auth::ClusterKey {
    auth::ClusterKey::new(secret).unwrap()
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A client of the master's log stream that signs as a member holding `secret`.
async fn raw_client(addr: SocketAddr, secret: &str) -> LogShippingClient<auth::SignedChannel> {
    LogShippingClient::new(auth::SignedChannel::new(channel(addr).await, key(secret)))
}

fn hello(max_offset: u64) -> pb::ReplicaMessage {
    pb::ReplicaMessage {
        body: Some(pb::replica_message::Body::Hello(pb::Hello {
            group: "broker-a".into(),
            broker_id: 7,
            addr: "127.0.0.1:1".into(),
            epochs: vec![],
            max_offset,
            min_offset: 0,
        })),
    }
}

fn code(status: &tonic::Status) -> i32 {
    status
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_and_an_acknowledgement_beyond_the_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path(), false).await;
    let end = append(&master.store, 10).await;

    // Attacker: a process that does not hold the cluster secret opens a log stream, unsigned or
    // signed with another key. Refused before the service, so no replica is ever counted.
    let mut unsigned = LogShippingClient::new(channel(master.addr).await);
    let refused = unsigned
        .replicate(tokio_stream::iter(vec![hello(0)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        code(&refused),
        proto::common::ErrorCode::Unauthorized as i32
    );
    let mut other_cluster = raw_client(master.addr, "another-cluster-secret").await;
    let refused = other_cluster
        .replicate(tokio_stream::iter(vec![hello(0)]))
        .await
        .unwrap_err();
    assert_eq!(
        code(&refused),
        proto::common::ErrorCode::Unauthorized as i32
    );
    assert!(master.in_sync.view().replicas.is_empty());

    // A replica that claims to hold more than the master wrote.
    let mut client = raw_client(master.addr, SECRET).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(0)).await.unwrap();
    let mut inbound = client
        .replicate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::master_message::Body::Welcome(welcome)) =
        inbound.message().await.unwrap().unwrap().body
    else {
        panic!("expected a Welcome");
    };
    tx.send(pb::ReplicaMessage {
        body: Some(pb::replica_message::Body::Ack(pb::Ack {
            master_epoch: welcome.master_epoch,
            written_offset: end + 1_000_000,
            flushed_offset: 0,
            store_fault: false,
            leaving: false,
        })),
    })
    .await
    .unwrap();
    let refusal = loop {
        match inbound.message().await {
            Ok(Some(_chunk)) => continue,
            Ok(None) => panic!("the stream ended without a refusal"),
            Err(status) => break status,
        }
    };
    assert_eq!(code(&refusal), proto::common::ErrorCode::BadRequest as i32);
    assert!(refusal.message().contains("beyond"), "{refusal:?}");
    assert!(
        master
            .in_sync
            .view()
            .replicas
            .iter()
            .all(|r| r.written_offset <= end),
        "the refused acknowledgement counted"
    );
    master.server.abort();
}
