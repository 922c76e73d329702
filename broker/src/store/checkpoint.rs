//! The checkpoint: how far the commit log was durable and the consume queues were built, saved
//! together so that recovery knows where to start checking.
//!
//! `flushed_offset`: the commit log was fsynced up to here when the checkpoint was taken.
//! `dispatched_offset`: every record below it has its consume-queue entry fsynced. Recovery
//! CRC-checks and re-dispatches from `min(flushed_offset, dispatched_offset)`, which is always a
//! record boundary and always durable. `confirm_offset`: what consumers could see; a store
//! opened with an externally set confirm offset (a replica) starts from it rather than from its
//! whole recovered log. Saved with [`super::meta_file`]'s crash-safe protocol.

use std::path::Path;

use super::error::{Result, StoreError};
use super::meta_file;
use super::record::read_u64;

pub const CHECKPOINT_FILE_NAME: &str = "checkpoint";
const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"RMCK");
const CHECKPOINT_FORMAT_VERSION: u16 = 1;

/// The saved progress of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub flushed_offset: u64,
    pub dispatched_offset: u64,
    pub confirm_offset: u64,
    /// When it was taken, Unix milliseconds (for operators reading it).
    pub saved_at_ms: u64,
}

impl Checkpoint {
    /// Where recovery starts checking.
    pub fn recovery_start(&self) -> u64 {
        self.flushed_offset.min(self.dispatched_offset)
    }

    pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
        let Some((_, payload)) = meta_file::load(
            dir,
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            CHECKPOINT_FORMAT_VERSION,
        )?
        else {
            return Ok(None);
        };
        if payload.len() != 32 {
            return Err(StoreError::Format {
                path: dir.join(CHECKPOINT_FILE_NAME),
                reason: "checkpoint payload has the wrong length".into(),
            });
        }
        Ok(Some(Checkpoint {
            flushed_offset: read_u64(&payload, 0),
            dispatched_offset: read_u64(&payload, 8),
            confirm_offset: read_u64(&payload, 16),
            saved_at_ms: read_u64(&payload, 24),
        }))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut payload = Vec::with_capacity(32);
        payload.extend_from_slice(&self.flushed_offset.to_le_bytes());
        payload.extend_from_slice(&self.dispatched_offset.to_le_bytes());
        payload.extend_from_slice(&self.confirm_offset.to_le_bytes());
        payload.extend_from_slice(&self.saved_at_ms.to_le_bytes());
        meta_file::save(
            dir,
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            CHECKPOINT_FORMAT_VERSION,
            &payload,
        )
    }
}
