//! A controlled master's own calls to the controller quorum, beside its link's heartbeats: its
//! in-sync set proposals ([`InSyncSetProposer`]) and the handover of mastership before it stops
//! ([`Handover`]). Both share the link's connection ([`crate::broker_link::ControllerLink`]
//! hands them out), so they start with the controller that answered last.

use std::time::Duration;

use proto::controller as pb;

use crate::broker_link::FINAL_REFUSALS;
use crate::error::ControllerError;
use crate::quorum::{ControllerConnection, Retry};

/// Why an in-sync set proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The controller refused it for good: a stale master or master epoch, an in-sync set
    /// changed meanwhile, a set without the master or with unknown brokers. Retrying the same
    /// proposal cannot succeed; the next group view tells what the controller holds.
    #[error("the controller refused the in-sync set change: {0}")]
    Refused(#[source] ControllerError),
    /// No controller answered within the patience given (no quorum, all unreachable). The
    /// change may or may not have been applied; the next group view tells.
    #[error("no controller answered the in-sync set change within {patience_ms} ms: {last}")]
    Unavailable {
        patience_ms: u64,
        #[source]
        last: ControllerError,
    },
}

/// A master's handle for in-sync set proposals: the link's connection, shared. Cheap to clone.
#[derive(Clone)]
pub struct InSyncSetProposer {
    pub(crate) conn: ControllerConnection,
}

impl InSyncSetProposer {
    /// Asks the controller to make `request.in_sync_set` the group's in-sync set, and answers the
    /// group's view once it is accepted (its new in-sync set and epoch). Tries the controllers in
    /// turn, each for at most 3 s, backing off between rounds, until `patience` runs out
    /// ([`ProposeError::Unavailable`]); a refusal (CONFLICT, BAD_REQUEST,
    /// BROKER_GROUP_NOT_FOUND) ends it at once ([`ProposeError::Refused`]).
    ///
    /// An attempt that timed out may still have been applied; its retry then carries an old
    /// in-sync set epoch and is refused as changed meanwhile. Either way the caller learns the
    /// truth from the next group view, and must not apply the set before an accepted answer.
    pub async fn propose(
        &self,
        request: pb::AlterInSyncSetRequest,
        patience: Duration,
    ) -> Result<pb::GroupView, ProposeError> {
        let answer = self
            .conn
            .call_with(
                patience,
                Retry::UnlessRefused(FINAL_REFUSALS),
                |mut client| {
                    let request = request.clone();
                    async move { client.alter_in_sync_set(request).await }
                },
            )
            .await;
        match answer {
            // Every controller fills the view for an accepted change; one that does not is
            // broken: report it as unavailable, and the next group view tells the truth.
            Ok(answer) => answer.group.ok_or(ProposeError::Unavailable {
                patience_ms: patience.as_millis() as u64,
                last: ControllerError::Transport {
                    message: "accepted, but the answer carried no group view".to_owned(),
                    source: None,
                },
            }),
            Err(err)
                if err
                    .code()
                    .is_some_and(|code| FINAL_REFUSALS.contains(&code)) =>
            {
                Err(ProposeError::Refused(err))
            }
            Err(last) => Err(ProposeError::Unavailable {
                patience_ms: patience.as_millis() as u64,
                last,
            }),
        }
    }
}

/// A master's handle for a planned switchover before it stops: the link's connection, shared.
#[derive(Clone)]
pub struct Handover {
    pub(crate) conn: ControllerConnection,
    pub(crate) group: String,
}

impl Handover {
    /// Asks the controller to move mastership of this broker's group to its best alive in-sync
    /// member (as `cluster elect GROUP` does: the controller asks this master to resign, which
    /// it confirms in a heartbeat once its set holds its whole log, then elects), and answers
    /// the group's view once another broker is master. Within `patience`, a controller that
    /// could not be reached or had no leader is followed by the next; an attempt that got no
    /// answer in time is not repeated when `patience` is below that attempt's timeout (12 s):
    /// it would only meet the switchover the first started.
    /// A group with no other alive in-sync member is refused: the caller stops as master.
    pub async fn hand_over(&self, patience: Duration) -> Result<pb::GroupView, ControllerError> {
        let request = pb::ElectMasterRequest {
            group: self.group.clone(),
            broker_id: None,
            unclean: false,
        };
        let answer = self
            .conn
            .call_with(patience, Retry::WhenUnavailable, |mut client| {
                let request = request.clone();
                // Members only: a broker needs no user to stop cleanly when the ACL is on.
                async move { client.hand_over(request).await }
            })
            .await?;
        answer.group.ok_or_else(|| ControllerError::Transport {
            message: "the handover was answered without the group's view".to_owned(),
            source: None,
        })
    }
}
