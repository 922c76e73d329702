//! Raft storage in sled: the log, the vote and the state machine, each durable before openraft
//! is told so.
//!
//! sled's own `flush` ends in `sync_file_range`, which does not survive a power loss, so every
//! write that openraft relies on is followed by [`Durable::sync`]: sled's flush, then
//! `fdatasync` of sled's data file. Projects that skipped this double-voted or lost committed
//! entries (`shared/STACK.md`).
//!
//! Layout of the sled database `<data_dir>/raft`:
//! - tree `log`: log index (u64 big-endian, so that keys sort by index) -> JSON entry;
//! - tree `meta`: `vote`, `committed`, `last_purged` -> JSON;
//! - tree `sm`: `machine` -> JSON [`MachineData`] (applied log id, membership, cluster state),
//!   `snapshot` -> JSON [`StoredSnapshot`].
//!
//! The state machine is written whole after each applied batch. Controller state is small (routes,
//! topics, groups) and changes rarely, and a whole write is one atomic sled insert; if it ever grows
//! large, split it into one key per topic and group.
//!
//! Snapshots: the current snapshot only ever moves forward. openraft builds one in a task of its
//! own while the state machine goes on applying and installing, so a build can finish after a
//! newer snapshot was installed; it is then not saved (see `save_built_snapshot`), as openraft
//! itself ignores it. An installed snapshot and the state machine it carries are saved in one
//! atomic sled batch.
//!
//! Conformance: `tests/raft_storage_suite.rs` runs openraft's own storage suite
//! (`openraft::testing::Suite`) against this store, plus what it does not reach (reopening,
//! a build racing an install).

// openraft's StorageError is large and its signatures return it; boxing it here would only add
// conversions at every trait method (shared/STACK.md).
#![allow(clippy::result_large_err)]

use std::fs::File;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{ClusterState, CommandResult};
use super::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// sled plus its data file, for the `fdatasync` sled does not do.
#[derive(Clone)]
struct Durable {
    db: sled::Db,
    data_file: Arc<File>,
}

impl Durable {
    /// Makes every write so far durable: sled's flush, then fdatasync of its data file. Runs on
    /// a blocking thread: it is disk I/O.
    async fn sync(&self) -> Result<(), std::io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.db.flush().map_err(std::io::Error::other)?;
            this.data_file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Why the controller's store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sled database {}: {source}", path.display())]
    Sled {
        path: std::path::PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the stored state machine cannot be read: {0}")]
    State(#[source] serde_json::Error),
}

/// Opens (or creates) the controller's sled database under `data_dir` and returns its log store
/// and state machine.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::Io {
        what: "create the data directory",
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join("raft");
    let sled_error = |source| OpenError::Sled {
        path: path.clone(),
        source,
    };
    let db = sled::Config::new()
        .path(&path)
        // sled flushes on its own every 500 ms by default; durability here comes from the
        // explicit syncs, so that background flush only adds writes.
        .flush_every_ms(None)
        .open()
        .map_err(sled_error)?;
    let data_path = path.join("db");
    let data_file = Arc::new(File::open(&data_path).map_err(|source| OpenError::Io {
        what: "open sled's data file",
        path: data_path.clone(),
        source,
    })?);
    let durable = Durable { db, data_file };
    let log = durable.db.open_tree("log").map_err(sled_error)?;
    let meta = durable.db.open_tree("meta").map_err(sled_error)?;
    let sm = durable.db.open_tree("sm").map_err(sled_error)?;
    let machine: MachineData = match sm.get(MACHINE_KEY).map_err(sled_error)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(OpenError::State)?,
        None => MachineData::default(),
    };
    let (changes, _) = watch::channel(machine.last_applied.map(|id| id.index).unwrap_or(0));
    Ok((
        LogStore {
            durable: durable.clone(),
            log,
            meta,
        },
        StateMachine {
            durable,
            sm,
            shared: Arc::new(RwLock::new(machine)),
            changes,
        },
    ))
}

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
const MACHINE_KEY: &str = "machine";
const SNAPSHOT_KEY: &str = "snapshot";

fn read_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&err)).into()
}

fn write_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&err)).into()
}

fn get_json<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &str,
) -> Result<Option<T>, StorageError<NodeId>> {
    match tree.get(key).map_err(read_err)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(read_err)?)),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    tree.insert(key, bytes).map_err(write_err)?;
    Ok(())
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    async fn sync(&self) -> StorageResult<()> {
        self.durable.sync().await.map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                StorageError::from(StorageIOError::read_logs(AnyError::error(
                    "log key is not 8 bytes",
                )))
            })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(serde_json::from_slice(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = get_json(&self.meta, LAST_PURGED_KEY)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        put_json(&self.meta, VOTE_KEY, vote)?;
        self.durable
            .sync()
            .await
            .map_err(|err| StorageIOError::write_vote(AnyError::new(&err)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_json(&self.meta, VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced: a committed index found lower after a crash only delays re-applying.
        put_json(&self.meta, COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(get_json::<Option<LogId<NodeId>>>(&self.meta, COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        // Readable now; durable once the sync returns, and only then is openraft told.
        let result = self.durable.sync().await;
        let failed = result
            .as_ref()
            .err()
            .map(|err| write_err(std::io::Error::other(err.to_string())));
        callback.log_io_completed(result);
        match failed {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(log_id.index.to_be_bytes()..) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The purge point is durable before any entry goes, so that a crash in between never
        // leaves a log that claims entries it no longer has.
        put_json(&self.meta, LAST_PURGED_KEY, &log_id)?;
        self.sync().await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=log_id.index.to_be_bytes()) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.sync().await
    }
}

/// What the state machine holds, persisted whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub state: ClusterState,
}

/// A snapshot as kept in sled.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The metadata of a [`StoredSnapshot`] alone, read without copying its data out.
#[derive(Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

fn write_state_machine_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&err)).into()
}

fn write_snapshot_err(
    meta: &SnapshotMeta<NodeId, BasicNode>,
    err: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&err)).into()
}

/// Saves a snapshot just built as the current one, unless the current one is as new (its last
/// log id is the same or later): then returns false and saves nothing. Why: openraft builds in a
/// task of its own, concurrently with `install_snapshot`, and a build that started before a
/// newer snapshot was installed would otherwise replace it. The node would then serve that
/// older snapshot (to a follower it brings up to date, or to itself after a restart) although it
/// already purged the log between the two, and openraft, which ignores a built snapshot that is
/// not newer than its own (`update_snapshot`), would hold a different current snapshot than its
/// storage. The check and the write are one compare-and-swap, so an install between them makes
/// the swap fail and the check run again.
fn save_built_snapshot(tree: &sled::Tree, stored: &StoredSnapshot) -> StorageResult<bool> {
    let bytes = serde_json::to_vec(stored).map_err(|err| write_snapshot_err(&stored.meta, err))?;
    loop {
        let current = tree
            .get(SNAPSHOT_KEY)
            .map_err(|err| write_snapshot_err(&stored.meta, err))?;
        if let Some(current) = &current {
            let current: StoredSnapshotMeta = serde_json::from_slice(current)
                .map_err(|err| write_snapshot_err(&stored.meta, err))?;
            if current.meta.last_log_id >= stored.meta.last_log_id {
                return Ok(false);
            }
        }
        let swapped = tree
            .compare_and_swap(SNAPSHOT_KEY, current, Some(bytes.as_slice()))
            .map_err(|err| write_snapshot_err(&stored.meta, err))?;
        if swapped.is_ok() {
            return Ok(true);
        }
        // The current snapshot changed between the read and the swap: compare again.
    }
}

/// The state machine: applies committed commands, builds and installs snapshots. Shares its
/// data with the controller's services through [`StateMachine::shared`].
pub struct StateMachine {
    durable: Durable,
    sm: sled::Tree,
    shared: Arc<RwLock<MachineData>>,
    /// The last applied index, sent after every change, for route watches.
    changes: watch::Sender<u64>,
}

/// A read handle on the applied state, for the services.
#[derive(Clone)]
pub struct SharedState {
    data: Arc<RwLock<MachineData>>,
    changes: watch::Receiver<u64>,
}

impl SharedState {
    /// Runs `f` on the current applied state.
    pub fn read<T>(&self, f: impl FnOnce(&MachineData) -> T) -> T {
        f(&self.data.read().expect("state machine lock poisoned"))
    }

    /// A receiver that changes whenever a command or snapshot is applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

impl StateMachine {
    pub fn shared(&self) -> SharedState {
        SharedState {
            data: self.shared.clone(),
            changes: self.changes.subscribe(),
        }
    }

    fn snapshot_of(&self) -> MachineData {
        self.shared
            .read()
            .expect("state machine lock poisoned")
            .clone()
    }

    /// Saves `data` durably, and with it `snapshot` as the current snapshot when there is one (an
    /// install): both in one atomic sled batch, so that no crash leaves the snapshot of an
    /// install without the state it carries, or the reverse.
    async fn persist(
        &self,
        data: &MachineData,
        snapshot: Option<&StoredSnapshot>,
    ) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        batch.insert(
            MACHINE_KEY,
            serde_json::to_vec(data).map_err(write_state_machine_err)?,
        );
        if let Some(snapshot) = snapshot {
            batch.insert(
                SNAPSHOT_KEY,
                serde_json::to_vec(snapshot).map_err(write_state_machine_err)?,
            );
        }
        self.sm
            .apply_batch(batch)
            .map_err(write_state_machine_err)?;
        self.durable.sync().await.map_err(write_state_machine_err)
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was made, so that applying
/// more entries meanwhile cannot tear it.
pub struct SnapshotBuilder {
    copy: MachineData,
    durable: Durable,
    sm: sled::Tree,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = serde_json::to_vec(&self.copy.state).map_err(|err| {
            StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&err)))
        })?;
        let last = self.copy.last_applied;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unix_millis()),
            None => format!("empty-{}", unix_millis()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.copy.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        if save_built_snapshot(&self.sm, &stored)? {
            self.durable
                .sync()
                .await
                .map_err(|err| write_snapshot_err(&meta, err))?;
        } else {
            // Returned all the same: openraft ignores a snapshot not newer than its own.
            tracing::info!(
                snapshot = %meta.snapshot_id,
                "the current snapshot is as new as this build (installed meanwhile): not saved"
            );
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let data = self.snapshot_of();
        Ok((data.last_applied, data.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applied on a copy and published only once durable: readers never see a state that a
        // crash could take back from this node.
        let mut data = self.snapshot_of();
        let mut results = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(CommandResult::Done { changed: false }),
                EntryPayload::Normal(command) => results.push(data.state.apply(&command)),
                EntryPayload::Membership(membership) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(CommandResult::Done { changed: true });
                }
            }
        }
        self.persist(&data, None).await?;
        let index = data.last_applied.map(|id| id.index).unwrap_or(0);
        *self.shared.write().expect("state machine lock poisoned") = data;
        self.changes.send_replace(index);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            copy: self.snapshot_of(),
            durable: self.durable.clone(),
            sm: self.sm.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&bytes).map_err(|err| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&err),
            ))
        })?;
        let data = MachineData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        // Saved unconditionally: openraft installs only a snapshot past its committed log id,
        // so it is newer than anything this node built.
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        self.persist(&data, Some(&snapshot)).await?;
        let index = data.last_applied.map(|id| id.index).unwrap_or(0);
        *self.shared.write().expect("state machine lock poisoned") = data;
        self.changes.send_replace(index);
        tracing::info!(snapshot = %meta.snapshot_id, applied_index = index, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = get_json(&self.sm, SNAPSHOT_KEY)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
