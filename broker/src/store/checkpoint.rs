//! The checkpoint: how far the commit log was durable, the consume queues were built and the log
//! was verified, saved together so that recovery knows where to start checking.
//!
//! `flushed_offset`: the commit log was fsynced up to here when the checkpoint was taken.
//! `dispatched_offset`: every record below it has its consume-queue entry fsynced. Recovery
//! re-dispatches from `min(flushed_offset, dispatched_offset)`, which is always a record boundary
//! and always durable. `confirm_offset`: what consumers could see; a store opened with an
//! externally set confirm offset (a replica) starts from it rather than from its whole recovered
//! log. `verified_offset` (format version 2): every record below it was CRC-checked (see
//! [`super::verified`]); recovery CRC-checks every record from the lower of it and the
//! re-dispatch start to the end. Saved with [`super::meta_file`]'s crash-safe protocol.
//!
//! Versions: 2 adds `verified_offset`. A version 1 file (written before the verified offset
//! existed) still loads, with `verified_offset` taken as its `flushed_offset`: the writer of that
//! version checked every record it wrote exactly as this one does, so what it flushed had been
//! checked in memory; the scrubber re-reads it from disk. A build that knows only version 1
//! refuses a version 2 file by name (`format version 2 is not supported`), never misreads it.

use std::path::Path;

use super::error::{Result, StoreError};
use super::meta_file;
use super::record::read_u64;

pub const CHECKPOINT_FILE_NAME: &str = "checkpoint";
const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"RMCK");
/// The version this build writes; it reads this one and every older one.
pub const CHECKPOINT_FORMAT_VERSION: u16 = 2;
/// Payload of version 1: flushed, dispatched, confirm offsets and the save time.
const PAYLOAD_V1_BYTES: usize = 32;
/// Payload of version 2: version 1's, then the verified offset.
const PAYLOAD_V2_BYTES: usize = 40;

/// The saved progress of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub flushed_offset: u64,
    pub dispatched_offset: u64,
    pub confirm_offset: u64,
    /// When it was taken, Unix milliseconds (for operators reading it).
    pub saved_at_ms: u64,
    /// Every record below it was CRC-checked, and none below it was known corrupt when saved.
    pub verified_offset: u64,
}

impl Checkpoint {
    /// Where recovery starts re-dispatching into the consume queues.
    pub fn recovery_start(&self) -> u64 {
        self.flushed_offset.min(self.dispatched_offset)
    }

    pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
        let Some((version, payload)) = meta_file::load(
            dir,
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            CHECKPOINT_FORMAT_VERSION,
        )?
        else {
            return Ok(None);
        };
        let expected_bytes = match version {
            1 => PAYLOAD_V1_BYTES,
            _ => PAYLOAD_V2_BYTES,
        };
        if payload.len() != expected_bytes {
            return Err(StoreError::Format {
                path: dir.join(CHECKPOINT_FILE_NAME),
                reason: format!("checkpoint version {version} payload has the wrong length"),
            });
        }
        let flushed_offset = read_u64(&payload, 0);
        Ok(Some(Checkpoint {
            flushed_offset,
            dispatched_offset: read_u64(&payload, 8),
            confirm_offset: read_u64(&payload, 16),
            saved_at_ms: read_u64(&payload, 24),
            verified_offset: match version {
                1 => flushed_offset,
                _ => read_u64(&payload, 32),
            },
        }))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        meta_file::save(
            dir,
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            CHECKPOINT_FORMAT_VERSION,
            &self.encode_payload(),
        )
    }

    /// The version 2 payload (the golden test pins it).
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(PAYLOAD_V2_BYTES);
        payload.extend_from_slice(&self.flushed_offset.to_le_bytes());
        payload.extend_from_slice(&self.dispatched_offset.to_le_bytes());
        payload.extend_from_slice(&self.confirm_offset.to_le_bytes());
        payload.extend_from_slice(&self.saved_at_ms.to_le_bytes());
        payload.extend_from_slice(&self.verified_offset.to_le_bytes());
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_checkpoint_loads_with_its_flushed_offset_as_verified() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = Vec::new();
        for value in [700u64, 600, 500, 42] {
            payload.extend_from_slice(&value.to_le_bytes());
        }
        meta_file::save(
            dir.path(),
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            1,
            &payload,
        )
        .unwrap();
        let loaded = Checkpoint::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            loaded,
            Checkpoint {
                flushed_offset: 700,
                dispatched_offset: 600,
                confirm_offset: 500,
                saved_at_ms: 42,
                verified_offset: 700,
            }
        );
    }

    #[test]
    fn a_checkpoint_round_trips_and_a_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint {
            flushed_offset: 9,
            dispatched_offset: 8,
            confirm_offset: 7,
            saved_at_ms: 6,
            verified_offset: 5,
        };
        checkpoint.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(checkpoint));
        // A version 2 frame with a version 1 payload.
        meta_file::save(
            dir.path(),
            CHECKPOINT_FILE_NAME,
            CHECKPOINT_MAGIC,
            2,
            &[0u8; PAYLOAD_V1_BYTES],
        )
        .unwrap();
        assert!(matches!(
            Checkpoint::load(dir.path()),
            Err(StoreError::Format { .. })
        ));
    }
}
