//! Which Raft messages reach openraft, and whether this controller's Raft is healthy.
//!
//! Safety argument. openraft trusts its peers: a message whose vote names a term it has not
//! seen makes it adopt that term and persist it, and a term of 2^64-1 then overflows inside
//! openraft's own election code (a panic in the Raft core) and can never be left, because no
//! vote can be higher. One such packet from a non-member poisoned the whole quorum for good. Two
//! independent walls keep that out:
//!
//! 1. Only members can send Raft messages at all: the `auth` crate's guard refuses every Raft
//!    call without a valid signature made with the cluster secret.
//! 2. Even a signed message reaches openraft only if it could be valid ([`admit`]):
//!    - its sender (the vote's node) is in this controller's membership, voters and learners,
//!      whenever this controller knows one (an uninitialised controller knows none: it is
//!      waiting to be added and must accept the leader's first message);
//!    - its term is at most [`TERM_JUMP_MAX`] above this controller's: terms grow by one per
//!      election, and a controller that campaigns alone every election timeout (150 ms at the
//!      least) needs about 20 years to climb 2^32; a larger jump is a forged or corrupted vote;
//!    - no entry in it, nor its previous log id, carries a term above its vote's: a leader
//!      never sends entries from a term later than its own.
//!
//!    Refusing a message openraft would have accepted is always safe for Raft: it is what a lost
//!    message looks like, and Raft is safe under message loss. The membership rule can only
//!    delay a controller that has not yet learned of a membership change, until the leader's
//!    next message carries it in.
//!
//! [`health`] tells when the walls were passed anyway (or openraft failed on its own): the Raft
//! core has stopped (a panic), or the persisted vote names a node outside the membership or a
//! term no election reaches. Such a controller cannot make progress, and says so in `controller
//! status`, `cluster ready` and the `controller_raft_healthy` metric; docs/OPERATIONS.md says how
//! to recover a quorum poisoned anyway.

use openraft::{LogId, RaftMetrics, Vote};

use super::{NodeId, TypeConfig};

/// Largest rise in term a message may bring (see the module documentation).
pub const TERM_JUMP_MAX: u64 = 1 << 32;

/// Highest term a healthy controller holds: a term past it can only come from a forged vote or
/// a corrupted disk.
pub const TERM_SANE_MAX: u64 = 1 << 48;

/// What this controller knows when it judges a message.
pub struct LocalView<'a> {
    pub current_term: u64,
    pub membership: &'a openraft::Membership<NodeId, openraft::BasicNode>,
}

impl<'a> LocalView<'a> {
    pub fn of(metrics: &'a RaftMetrics<NodeId, openraft::BasicNode>) -> LocalView<'a> {
        LocalView {
            current_term: metrics.current_term,
            membership: metrics.membership_config.membership(),
        }
    }

    fn knows_members(&self) -> bool {
        self.membership.nodes().next().is_some()
    }
}

/// Why a Raft message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("node {0} is not a member of this controller quorum")]
    NotMember(NodeId),
    #[error("term {term} jumps more than {TERM_JUMP_MAX} past this controller's {current}")]
    TermJump { term: u64, current: u64 },
    #[error("log id in term {log_term} is newer than the sender's vote in term {vote_term}")]
    LogAfterVote { log_term: u64, vote_term: u64 },
}

/// Whether a message with this vote and these log ids may reach openraft.
pub fn admit<'a>(
    vote: &Vote<NodeId>,
    log_ids: impl IntoIterator<Item = &'a LogId<NodeId>>,
    local: &LocalView<'_>,
) -> Result<(), Refused> {
    let sender = vote.leader_id.node_id;
    if local.knows_members() && local.membership.get_node(&sender).is_none() {
        return Err(Refused::NotMember(sender));
    }
    let term = vote.leader_id.term;
    if term > local.current_term.saturating_add(TERM_JUMP_MAX) {
        return Err(Refused::TermJump {
            term,
            current: local.current_term,
        });
    }
    for log_id in log_ids {
        if log_id.leader_id.term > term {
            return Err(Refused::LogAfterVote {
                log_term: log_id.leader_id.term,
                vote_term: term,
            });
        }
    }
    Ok(())
}

/// The log ids an AppendEntries carries: its previous one and each entry's.
pub fn append_log_ids(
    rpc: &openraft::raft::AppendEntriesRequest<TypeConfig>,
) -> impl Iterator<Item = &LogId<NodeId>> {
    rpc.prev_log_id
        .iter()
        .chain(rpc.entries.iter().map(|entry| &entry.log_id))
}

/// `None` when this controller's Raft can make progress; else why not, for status and logs.
pub fn health(
    metrics: &RaftMetrics<NodeId, openraft::BasicNode>,
    core_running: bool,
) -> Option<String> {
    if !core_running {
        return Some(
            "the Raft core has stopped (a panic or a fatal storage error): restart this controller"
                .into(),
        );
    }
    if let Err(fatal) = &metrics.running_state {
        return Some(format!("the Raft core failed: {fatal}"));
    }
    poisoned_vote(&metrics.vote, LocalView::of(metrics))
}

/// Why `vote` is poisoned, if it is (see [`health`]).
pub fn poisoned_vote(vote: &Vote<NodeId>, local: LocalView<'_>) -> Option<String> {
    if vote.leader_id.term > TERM_SANE_MAX {
        return Some(format!(
            "poisoned vote: term {} is past any real election (docs/OPERATIONS.md, \
             \"A poisoned controller quorum\")",
            vote.leader_id.term
        ));
    }
    let voted_for = vote.leader_id.node_id;
    if vote.leader_id.term > 0
        && local.knows_members()
        && local.membership.get_node(&voted_for).is_none()
    {
        return Some(format!(
            "poisoned vote: it names node {voted_for}, which is not a member (docs/OPERATIONS.md, \
             \"A poisoned controller quorum\")"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{BasicNode, CommittedLeaderId, Membership};

    use super::*;

    fn members(ids: &[NodeId]) -> Membership<NodeId, BasicNode> {
        let voters: BTreeSet<NodeId> = ids.iter().copied().collect();
        let nodes: BTreeMap<NodeId, BasicNode> = ids
            .iter()
            .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{id}"))))
            .collect();
        Membership::new(vec![voters], nodes)
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_poisoned_vote_packet_is_refused() {
        let membership = members(&[1, 2, 3]);
        let local = LocalView {
            current_term: 5,
            membership: &membership,
        };
        let mut poison = Vote::new(u64::MAX, 99);
        poison.commit();
        assert_eq!(admit(&poison, [], &local), Err(Refused::NotMember(99)));
        let from_member = Vote::new_committed(u64::MAX, 2);
        assert_eq!(
            admit(&from_member, [], &local),
            Err(Refused::TermJump {
                term: u64::MAX,
                current: 5
            })
        );
    }

    #[test]
    fn a_member_at_a_plausible_term_is_admitted() {
        let membership = members(&[1, 2, 3]);
        let local = LocalView {
            current_term: 5,
            membership: &membership,
        };
        assert_eq!(admit(&Vote::new(6, 2), [&log_id(5, 9)], &local), Ok(()));
        assert_eq!(admit(&Vote::new(5 + TERM_JUMP_MAX, 3), [], &local), Ok(()));
        assert_eq!(
            admit(&Vote::new(6, 2), [&log_id(7, 9)], &local),
            Err(Refused::LogAfterVote {
                log_term: 7,
                vote_term: 6
            })
        );
    }

    #[test]
    fn an_uninitialised_controller_admits_any_sender_but_not_any_term() {
        let membership = Membership::<NodeId, BasicNode>::default();
        let local = LocalView {
            current_term: 0,
            membership: &membership,
        };
        assert_eq!(admit(&Vote::new_committed(3, 7), [], &local), Ok(()));
        assert!(admit(&Vote::new_committed(u64::MAX, 7), [], &local).is_err());
    }

    #[test]
    fn a_vote_outside_the_membership_or_past_any_election_is_poisoned() {
        let membership = members(&[1, 2, 3]);
        let view = || LocalView {
            current_term: 5,
            membership: &membership,
        };
        assert_eq!(poisoned_vote(&Vote::new_committed(5, 2), view()), None);
        assert!(poisoned_vote(&Vote::new_committed(5, 99), view())
            .unwrap()
            .contains("node 99"));
        assert!(poisoned_vote(&Vote::new_committed(u64::MAX, 2), view())
            .unwrap()
            .contains("past any real election"));
        assert_eq!(poisoned_vote(&Vote::default(), view()), None);
    }
}
