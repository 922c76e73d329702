//! The controller as the authority over a master's in-sync set: `replication`'s
//! [`InSyncAuthority`] over the broker's controller link.

use std::time::Duration;

use controller_client::broker_link::{InSyncSetProposer, ProposeError};
use proto::controller as pb;
use replication::ship::{AcceptedSet, InSyncAuthority, ProposalError, ProposedSet};

use crate::role::accepted;

/// How long a proposal to the controller may keep trying.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(3);

/// The controller as the authority over the in-sync set.
#[derive(Clone)]
pub struct ControllerAuthority {
    pub group: String,
    pub proposer: InSyncSetProposer,
}

impl InSyncAuthority for ControllerAuthority {
    async fn propose(&self, change: ProposedSet) -> Result<AcceptedSet, ProposalError> {
        let request = pb::AlterInSyncSetRequest {
            group: self.group.clone(),
            master_id: change.master_id,
            master_epoch: change.master_epoch,
            in_sync_set_epoch: change.set_epoch,
            in_sync_set: change.set.into_iter().collect(),
        };
        match self.proposer.propose(request, PROPOSE_PATIENCE).await {
            Ok(view) => Ok(accepted(&view)),
            Err(refused @ ProposeError::Refused(_)) => {
                Err(ProposalError::Refused(Box::new(refused)))
            }
            Err(unavailable @ ProposeError::Unavailable { .. }) => {
                Err(ProposalError::Unavailable(Box::new(unavailable)))
            }
        }
    }
}
