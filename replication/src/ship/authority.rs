//! The seam between a master and whoever accepts its in-sync set changes (the controller
//! quorum): what a master proposes, what the authority holds, and why a proposal failed. The
//! master only proposes; a change takes effect once accepted (`insync`).

use std::collections::BTreeSet;
use std::future::Future;

/// A change of the set, as proposed to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedSet {
    pub master_id: u64,
    pub master_epoch: u64,
    /// The epoch of the set being replaced.
    pub set_epoch: u64,
    pub set: BTreeSet<u64>,
}

/// The set as the controller holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedSet {
    pub master_epoch: u64,
    pub set: BTreeSet<u64>,
    pub set_epoch: u64,
}

/// Who accepts in-sync set changes: the controller quorum.
pub trait InSyncAuthority: Send + Sync + 'static {
    /// Proposes `change`; answers the set now in force, or why not.
    fn propose(
        &self,
        change: ProposedSet,
    ) -> impl Future<Output = Result<AcceptedSet, ProposalError>> + Send;
}

/// The authority's own error, kept as the source: this crate does not know how the authority
/// is reached.
pub type AuthorityError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the authority did not accept a change; either way the set stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ProposalError {
    /// Refused for good: the master epoch or the set moved meanwhile (the next view says what
    /// holds now).
    #[error("refused: {0}")]
    Refused(#[source] AuthorityError),
    /// Nobody answered within the patience given.
    #[error("no authority answered: {0}")]
    Unavailable(#[source] AuthorityError),
}
