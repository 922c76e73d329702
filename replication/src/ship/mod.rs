//! Log shipping from a master to its slaves (step 4): a slave's log must equal its master's,
//! byte for byte, up to the confirm offset.
//!
//! Map:
//! - [`divergence`]: where a returning replica's log stops agreeing with its master's (the last
//!   common epoch), from the two epoch histories: the handshake of every log stream, and the
//!   rejoin of a deposed master (step 5).
//!
//! This module knows commit-log offsets and epochs, never message types.

pub mod divergence;

pub use divergence::{last_common_offset, Divergence, EpochEntry, HistoryError};
