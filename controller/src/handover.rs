//! A controller leader that is stopping hands leadership over instead of leaving the quorum to
//! find out: openraft 0.9 has no leadership transfer, and its followers refuse every vote for
//! `election_timeout_max` after the last heartbeat they heard (the vote lease), then wait for
//! their randomized election timer. Measured on a SIGTERM of the leader: 711 ms to a new leader,
//! while brokers' leases (600 ms, renewed every 100 ms) ran out and masters stopped
//! acknowledging for 200-330 ms.
//!
//! So, on a planned stop, the leader stops its Raft (no heartbeat follows) and asks the
//! follower whose log is the most complete to campaign once the vote lease has run out
//! ([`hand_over`]); that follower calls `trigger().elect()` then ([`campaign_later`]), instead of
//! waiting for a random timer. It is a hint about *when*, never about *who may win*: the
//! candidate still needs a majority of votes under Raft's rules, so a wrong time or a stale
//! request costs at most a refused campaign, after which the normal election timer goes on.
//! A request is followed only from the leader this follower knows, in the term it knows, and
//! only while no leader of a later term has appeared.

use std::time::Duration;

use auth::{ClusterKey, SignedChannel};
use openraft::ServerState;
use proto::controller::raft_client::RaftClient;
use proto::controller::{CampaignRequest, CampaignResponse};

use super::{NodeId, Raft};

/// After the vote lease, how much longer the successor waits: the other followers heard the
/// last heartbeat up to a network delay after the successor heard the request.
const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// The longest wait a request may ask for: well above any sane `election_timeout_max`.
const AFTER_MS_MAX: u32 = 10_000;
/// How long the stopping leader waits for the successor's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// What the stopping leader knew before it stopped its Raft: its term and whom to ask.
pub struct Successor {
    term: u64,
    id: NodeId,
    addr: String,
}

/// The follower to hand over to, if this controller leads: the voter (not itself) whose
/// replicated log reaches furthest, since only a candidate with the most complete log can win.
pub fn successor(raft: &Raft, me: NodeId) -> Option<Successor> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    if metrics.state != ServerState::Leader {
        return None;
    }
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().filter(|id| *id != me).collect();
    let replication = metrics.replication.as_ref()?;
    let id = voters
        .iter()
        .copied()
        .max_by_key(|id| replication.get(id).cloned().flatten())?;
    let addr = membership.get_node(&id)?.addr.clone();
    Some(Successor {
        term: metrics.current_term,
        id,
        addr,
    })
}

/// Asks `successor` to campaign once the vote lease (`election_timeout_max` from now: this
/// controller's Raft has stopped, so no heartbeat follows) has run out. Best effort: a failure
/// is logged and the quorum elects by its timers, as it would have anyway.
pub async fn hand_over(successor: Successor, me: NodeId, key: ClusterKey, lease: Duration) {
    let after_ms = u32::try_from((lease + LEASE_MARGIN).as_millis()).unwrap_or(AFTER_MS_MAX);
    let request = CampaignRequest {
        leader_id: me,
        term: successor.term,
        after_ms: after_ms.min(AFTER_MS_MAX),
    };
    let asked = async {
        let channel = proto::dial::endpoint(&successor.addr, REQUEST_TIMEOUT)
            .map_err(|err| err.to_string())?
            .connect()
            .await
            .map_err(|err| err.to_string())?;
        RaftClient::new(SignedChannel::new(channel, key))
            .campaign(request)
            .await
            .map(|answer| answer.into_inner().accepted)
            .map_err(|status| status.message().to_owned())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
        Ok(Ok(true)) => tracing::info!(
            successor = successor.id,
            after_ms,
            "leadership handed over: the successor campaigns when the vote lease ends"
        ),
        Ok(Ok(false)) => {
            tracing::info!(
                successor = successor.id,
                "the successor declined to campaign"
            )
        }
        Ok(Err(err)) => {
            tracing::warn!(successor = successor.id, error = %err, "could not hand leadership over")
        }
        Err(_) => tracing::warn!(
            successor = successor.id,
            "could not hand leadership over: no answer in time"
        ),
    }
}

/// The successor's side: accepts a request from the leader it knows, in its term, and campaigns
/// after `after_ms` unless a leader of a later term appeared meanwhile.
pub fn campaign_later(raft: &Raft, request: &CampaignRequest) -> CampaignResponse {
    let accepted = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Follower
            && metrics.current_leader == Some(request.leader_id)
            && metrics.current_term == request.term
            && request.after_ms <= AFTER_MS_MAX
    };
    if accepted {
        let raft = raft.clone();
        let (term, after) = (
            request.term,
            Duration::from_millis(u64::from(request.after_ms)),
        );
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let still_waiting = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                metrics.current_term == term && metrics.state == ServerState::Follower
            };
            if still_waiting {
                tracing::info!(term, "campaigning at the stopping leader's request");
                if let Err(err) = raft.trigger().elect().await {
                    tracing::warn!(error = %err, "could not campaign");
                }
            }
        });
    }
    CampaignResponse { accepted }
}
