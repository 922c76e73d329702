//! Recovering a controller quorum whose persisted votes were poisoned (a vote no real election
//! produces: for a node outside the membership, or a term past [`TERM_SANE_MAX`]). The two
//! walls of [`admission`](super::admission) keep such votes out; this is the way back if one
//! got in anyway (an older version, a corrupted disk, a member gone wrong).
//!
//! Run on stopped controllers only (the store is locked while one runs):
//! 1. `controller vote --data-dir D` on every controller: its vote and the term of its last log
//!    entry ([`inspect`]).
//! 2. `controller repair-vote --data-dir D --id ID --term T --yes` on every controller, with
//!    the same T, one above the highest last log term of step 1 ([`repair`]).
//!
//! Safety argument. Raft needs that no two leaders ever commit in one term. Every term that ever
//! had a leader has an entry in some controller's log (a leader appends a blank entry first; a
//! later leader that overwrote it did so at a higher term, which is then in a log), so every such
//! term is at most the highest last log term over all controllers. The repair sets each vote to
//! "voted for itself" in term T above all of them: term T has no leader yet and can get none
//! (each controller voted for itself), so the first election after the repair happens at T + 1
//! or later, in a term no leader ever held. Logs, snapshots and the state machine are untouched,
//! so nothing committed is lost. Skipping a controller, or using a lower T, breaks this: the
//! command refuses a T not above its own store's last log term, and the procedure asks for the
//! highest over all.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::Vote;

use super::admission::{self, TERM_SANE_MAX};
use super::{store, NodeId};

/// What `controller vote` prints about one stopped controller's store.
#[derive(Debug, serde::Serialize)]
pub struct VoteReport {
    pub vote_term: u64,
    pub vote_node_id: NodeId,
    pub vote_committed: bool,
    /// Term of the last log entry (or of the last purged one, when the log behind a snapshot is
    /// all there is); 0 for an empty log.
    pub last_log_term: u64,
    pub last_log_index: Option<u64>,
    /// Voters and learners as the applied state knows them.
    pub members: Vec<NodeId>,
    /// Why the vote is poisoned, if it is.
    pub poisoned: Option<String>,
}

/// Why a repair was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("open the controller store in {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: store::OpenError,
    },
    #[error("read the controller store: {0}")]
    Storage(#[from] Box<openraft::StorageError<NodeId>>),
    #[error(
        "term {term} is not above this store's last log term {last_log_term}: use one above the \
         highest last log term of every controller (controller vote)"
    )]
    TermNotAbove { term: u64, last_log_term: u64 },
    #[error(
        "term {term} is past {TERM_SANE_MAX}: no election reaches it, it would poison the vote"
    )]
    TermTooHigh { term: u64 },
    #[error("controller {id} is not a member in this store's applied state ({members:?})")]
    NotMember { id: NodeId, members: Vec<NodeId> },
}

/// Reads one stopped controller's vote and log end.
pub async fn inspect(data_dir: &Path) -> Result<VoteReport, RepairError> {
    let (mut log, mut machine) = open(data_dir)?;
    report(&mut log, &mut machine).await
}

async fn report(
    log: &mut store::LogStore,
    machine: &mut store::StateMachine,
) -> Result<VoteReport, RepairError> {
    let vote = log.read_vote().await.map_err(Box::new)?.unwrap_or_default();
    let state = log.get_log_state().await.map_err(Box::new)?;
    let (_, membership) = machine.applied_state().await.map_err(Box::new)?;
    let members: Vec<NodeId> = membership.membership().nodes().map(|(id, _)| *id).collect();
    let poisoned = admission::poisoned_vote(
        &vote,
        admission::LocalView {
            current_term: vote.leader_id.term,
            membership: membership.membership(),
        },
    );
    Ok(VoteReport {
        vote_term: vote.leader_id.term,
        vote_node_id: vote.leader_id.node_id,
        vote_committed: vote.committed,
        last_log_term: state.last_log_id.map(|id| id.leader_id.term).unwrap_or(0),
        last_log_index: state.last_log_id.map(|id| id.index),
        members,
        poisoned,
    })
}

/// Sets a stopped controller's vote to "voted for itself in `term`" (see the module
/// documentation for why `term` must be above every controller's last log term).
/// The store is opened once: sled keeps its lock for a while after its handles are dropped.
pub async fn repair(data_dir: &Path, id: NodeId, term: u64) -> Result<VoteReport, RepairError> {
    let (mut log, mut machine) = open(data_dir)?;
    let report = report(&mut log, &mut machine).await?;
    if term <= report.last_log_term {
        return Err(RepairError::TermNotAbove {
            term,
            last_log_term: report.last_log_term,
        });
    }
    if term > TERM_SANE_MAX {
        return Err(RepairError::TermTooHigh { term });
    }
    if !report.members.is_empty() && !report.members.contains(&id) {
        return Err(RepairError::NotMember {
            id,
            members: report.members,
        });
    }
    log.save_vote(&Vote::new(term, id))
        .await
        .map_err(Box::new)?;
    self::report(&mut log, &mut machine).await
}

fn open(data_dir: &Path) -> Result<(store::LogStore, store::StateMachine), RepairError> {
    store::open(data_dir).map_err(|source| RepairError::Open {
        dir: data_dir.display().to_string(),
        source,
    })
}

/// Writes `vote` as it is, with no check: for tests that need a poisoned store to recover.
#[doc(hidden)]
pub async fn write_vote_unchecked(data_dir: &Path, vote: Vote<NodeId>) -> Result<(), RepairError> {
    let (mut log, _machine) = open(data_dir)?;
    log.save_vote(&vote).await.map_err(Box::new)?;
    Ok(())
}
