//! openraft's own storage conformance suite (`openraft::testing::Suite`, openraft 0.9 with
//! `storage-v2`) against the controller's sled-backed Raft log and state machine
//! (`controller::store`): the contract openraft's algorithm relies on (log state after purge and
//! truncate, vote persistence, membership read back from log and state machine, initial state,
//! snapshot build and install), checked by the library that depends on it rather than by our
//! reading of its documentation.
//!
//! Every case gets a fresh store in a new temporary directory (sled holds an exclusive lock per
//! path); the `TempDir` is the suite's guard and outlives the store it holds. The suite runs its
//! cases one after the other, each on its own tokio runtime, so this is a plain `#[test]`.
//! Several cases wait one second after a purge (the suite allows a purge to finish in the
//! background): the whole suite takes about ten seconds.

use std::collections::BTreeSet;

use controller::store::{self, LogStore, StateMachine};
use controller::{NodeId, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, RaftSnapshotBuilder, StorageError, StorageIOError, Vote};
use tempfile::TempDir;

/// Opens a store in a new temporary directory for each case.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let open_failed =
            |err: AnyError| StorageError::from(StorageIOError::<NodeId>::read_logs(err));
        let dir = tempfile::tempdir().map_err(|err| open_failed(AnyError::new(&err)))?;
        let (log_store, state_machine) = store::open(dir.path())
            .map_err(|err| open_failed(AnyError::error(format!("{err:#}"))))?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn sled_store_passes_openraft_storage_suite() {
    Suite::test_all(SledStoreBuilder).expect("openraft's storage suite");
}

// Beyond the suite: what it does not reach. Its cases each run on one store that is never
// reopened, and its snapshot case never races a build against an install.

/// A store opened in a new temporary directory (kept alive by the returned guard).
fn open_temp() -> (TempDir, LogStore, StateMachine) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (log_store, state_machine) = store::open(dir.path()).expect("open the store");
    (dir, log_store, state_machine)
}

/// A blank entry at `index` of `term`, written by node 0.
fn blank(term: u64, index: u64) -> openraft::Entry<TypeConfig> {
    openraft::testing::blank_ent::<TypeConfig>(term, 0, index)
}

/// openraft builds snapshots in a task of its own while the state machine goes on applying and
/// installing, and it ignores a built snapshot that is not newer than the one it has
/// (`update_snapshot`). The store must do the same: a build that started before a newer snapshot
/// was installed must not replace it as the current snapshot, or the node would serve (to a
/// follower it brings up to date, and after a restart) a snapshot older than the log it purged.
#[tokio::test]
async fn a_snapshot_built_before_a_newer_install_does_not_replace_it() {
    let (_dir, _log_store, mut follower) = open_temp();
    follower
        .apply([blank(1, 1), blank(1, 2)])
        .await
        .expect("apply");
    let mut stale_build = follower.get_snapshot_builder().await;

    let (_leader_dir, _leader_log, mut leader) = open_temp();
    leader
        .apply((1..=5).map(|index| blank(1, index)))
        .await
        .expect("apply");
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build the leader's snapshot");
    let mut receiving = follower
        .begin_receiving_snapshot()
        .await
        .expect("begin receiving");
    *receiving = *newer.snapshot;
    follower
        .install_snapshot(&newer.meta, receiving)
        .await
        .expect("install");

    let stale = stale_build
        .build_snapshot()
        .await
        .expect("the stale build still succeeds");
    assert!(stale.meta.last_log_id < newer.meta.last_log_id);
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a current snapshot");
    assert_eq!(
        current.meta, newer.meta,
        "the installed snapshot stays current"
    );
    assert_eq!(
        follower.applied_state().await.expect("applied state").0,
        newer.meta.last_log_id
    );
}

/// What openraft relies on across a restart: the vote (a node must never vote twice in a term),
/// the committed log id, the purge point, the applied state and the current snapshot are all
/// read back from disk after the store is closed and opened again.
#[tokio::test]
async fn vote_purge_point_applied_state_and_snapshot_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let vote = Vote::new(7, 2);
    let purged = openraft::testing::log_id(3, 0, 4);
    let snapshot_meta = {
        let (mut log_store, mut state_machine) = store::open(dir.path()).expect("open");
        log_store.save_vote(&vote).await.expect("save the vote");
        log_store
            .save_committed(Some(purged))
            .await
            .expect("save committed");
        log_store.purge(purged).await.expect("purge");
        state_machine
            .apply([
                blank(3, 3),
                openraft::testing::membership_ent::<TypeConfig>(
                    3,
                    0,
                    4,
                    vec![BTreeSet::from([0, 1, 2])],
                ),
            ])
            .await
            .expect("apply");
        state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build a snapshot")
            .meta
    };

    let (mut log_store, mut state_machine) = store::open(dir.path()).expect("reopen");
    assert_eq!(log_store.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        log_store.read_committed().await.expect("read committed"),
        Some(purged)
    );
    let log_state = log_store.get_log_state().await.expect("log state");
    assert_eq!(log_state.last_purged_log_id, Some(purged));
    assert_eq!(log_state.last_log_id, Some(purged));
    let (applied, membership) = state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(purged));
    assert_eq!(membership.log_id(), &Some(purged));
    let current = state_machine
        .get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a current snapshot");
    assert_eq!(current.meta, snapshot_meta);
}
