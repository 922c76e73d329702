//! Log shipping from a master to its slaves: a slave's log must equal its master's,
//! byte for byte, up to the confirm offset.
//!
//! Map:
//! - [`log`]: the [`ShippedLog`] trait, what shipping needs from a commit log (`broker`'s store
//!   implements it), and epoch helpers.
//! - [`divergence`]: where a returning replica's log stops agreeing with its master's (the last
//!   common epoch), from the two epoch histories: the handshake of every log stream, and the
//!   rejoin of a deposed master.
//! - [`master`]: the `LogShipping` gRPC service: the handshake, then raw chunks to each slave
//!   under a bound on unacknowledged bytes, and ha status.
//! - [`replica`]: the slave's side: connect, truncate to the agreed point, append each chunk at
//!   exactly its offset, acknowledge written and flushed offsets, follow the confirm offset.
//! - [`authority`]: what a master proposes to the controller about its in-sync set, and what it
//!   is answered (the trait `InSyncAuthority`, which the broker implements over its controller link).
//! - [`insync`]: the master's tracker of what each slave acknowledged: caught-up times, the
//!   in-sync set (changed only through the controller), the confirm offset, the `SYNC_MASTER`
//!   wait.
//!
//! This module knows commit-log offsets and epochs, never message types.

pub mod authority;
pub mod divergence;
pub mod insync;
pub mod log;
pub mod master;
pub mod replica;

pub use authority::{AcceptedSet, InSyncAuthority, ProposalError, ProposedSet};
pub use divergence::{last_common_offset, Divergence, EpochEntry, HistoryError};
pub use insync::{InSync, InSyncConfig, ReplicaWait};
pub use log::{LogError, LogErrorKind, LogProgress, ShippedLog};
pub use master::{ShipConfig, ShipService};
pub use replica::{MasterLocation, ReplicaConfig, ReplicaStatus};

use proto::replication as pb;

/// Largest message on a replication stream: a chunk holds at least one whole record, and a
/// record may be as large as the store's largest batch.
pub const STREAM_MESSAGE_BYTES_MAX: usize = 64 << 20;

pub(crate) fn from_wire_history(entries: &[pb::EpochEntry]) -> Vec<EpochEntry> {
    entries
        .iter()
        .map(|e| EpochEntry {
            epoch: e.epoch,
            start_offset: e.start_offset,
        })
        .collect()
}

pub(crate) fn to_wire_history(entries: &[EpochEntry]) -> Vec<pb::EpochEntry> {
    entries
        .iter()
        .map(|e| pb::EpochEntry {
            epoch: e.epoch,
            start_offset: e.start_offset,
        })
        .collect()
}
