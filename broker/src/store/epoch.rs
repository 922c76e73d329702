//! The epoch history of this replica: (epoch, start commit-log offset) entries, Kafka's leader
//! epoch cache and RocketMQ 5's epoch file. Replication uses it to find the last offset a
//! returning replica shares with its master.
//!
//! Invariants, asserted on every change and checked on load: epochs strictly increase; start
//! offsets never decrease. An epoch that begins where the previous one began replaces it (the
//! previous one holds no records). Truncating the log to `offset` drops every entry that starts at
//! or after it, as Kafka does, since such an epoch no longer holds records.
//!
//! Saved with the protocol of [`super::meta_file`] (temp file, fsync, rename, fsync directory) on
//! every change, so a crash leaves the old history or the new one. Payload: entry count (u32),
//! then per entry epoch (u64) and start offset (u64), little-endian.

use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::meta_file;
use super::record::{read_u32, read_u64};

/// File name of the epoch history inside the store directory.
pub const EPOCH_FILE_NAME: &str = "epoch";
const EPOCH_MAGIC: u32 = u32::from_le_bytes(*b"RMEP");
const EPOCH_FORMAT_VERSION: u16 = 1;
/// Bound on history length: one entry per master change; a cluster electing a million masters
/// has a bigger problem than this file.
pub const EPOCH_ENTRIES_MAX: usize = 1 << 20;

/// One epoch and the commit-log offset of its first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: u64,
    pub start_offset: u64,
}

/// The persisted epoch history.
#[derive(Debug)]
pub struct EpochHistory {
    dir: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochHistory {
    /// Loads the history from `dir`, or starts an empty one.
    pub fn load(dir: &Path) -> Result<Self> {
        let entries =
            match meta_file::load(dir, EPOCH_FILE_NAME, EPOCH_MAGIC, EPOCH_FORMAT_VERSION)? {
                None => Vec::new(),
                Some((_, payload)) => decode(&payload).map_err(|reason| StoreError::Format {
                    path: dir.join(EPOCH_FILE_NAME),
                    reason: reason.to_owned(),
                })?,
            };
        Ok(EpochHistory {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest entry.
    pub fn last(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` begins at `start_offset`, durably.
    pub fn begin(&mut self, epoch: u64, start_offset: u64) -> Result<()> {
        if let Some(last) = self.last() {
            if epoch <= last.epoch {
                return Err(StoreError::OffsetInvalid {
                    commit_log_offset: start_offset,
                    reason: "epoch must be above the newest epoch in the history",
                });
            }
            if start_offset < last.start_offset {
                return Err(StoreError::OffsetInvalid {
                    commit_log_offset: start_offset,
                    reason: "an epoch cannot start before the newest epoch's start",
                });
            }
        }
        if self.entries.len() >= EPOCH_ENTRIES_MAX {
            return Err(StoreError::OffsetInvalid {
                commit_log_offset: start_offset,
                reason: "epoch history is full",
            });
        }
        let mut next = self.entries.clone();
        if next
            .last()
            .is_some_and(|last| last.start_offset == start_offset)
        {
            next.pop();
        }
        next.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.replace(next)
    }

    /// Drops every entry that starts at or after `offset` (the log was cut there), durably.
    pub fn truncate_from(&mut self, offset: u64) -> Result<()> {
        if self.entries.iter().all(|e| e.start_offset < offset) {
            return Ok(());
        }
        let next = self
            .entries
            .iter()
            .copied()
            .filter(|e| e.start_offset < offset)
            .collect();
        self.replace(next)
    }

    /// Makes `entry` the whole history (none: empty), durably. Only for a log that holds no
    /// record (see `Store::start_at`).
    pub fn reset(&mut self, entry: Option<EpochEntry>) -> Result<()> {
        if self.entries.as_slice() == entry.as_slice() {
            return Ok(());
        }
        self.replace(entry.into_iter().collect())
    }

    /// The epoch that wrote the record at `offset`, if the history covers it.
    pub fn epoch_at(&self, offset: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map(|e| e.epoch)
    }

    fn replace(&mut self, next: Vec<EpochEntry>) -> Result<()> {
        assert!(is_ordered(&next), "epoch history must stay ordered");
        meta_file::save(
            &self.dir,
            EPOCH_FILE_NAME,
            EPOCH_MAGIC,
            EPOCH_FORMAT_VERSION,
            &encode(&next),
        )?;
        self.entries = next;
        Ok(())
    }
}

fn is_ordered(entries: &[EpochEntry]) -> bool {
    entries
        .windows(2)
        .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset)
}

fn encode(entries: &[EpochEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 16);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.epoch.to_le_bytes());
        out.extend_from_slice(&entry.start_offset.to_le_bytes());
    }
    out
}

fn decode(payload: &[u8]) -> Result<Vec<EpochEntry>, &'static str> {
    if payload.len() < 4 {
        return Err("epoch payload shorter than its count");
    }
    let count = read_u32(payload, 0) as usize;
    if count > EPOCH_ENTRIES_MAX || payload.len() != 4 + count * 16 {
        return Err("epoch payload length does not match its count");
    }
    let entries: Vec<EpochEntry> = (0..count)
        .map(|i| EpochEntry {
            epoch: read_u64(payload, 4 + i * 16),
            start_offset: read_u64(payload, 12 + i * 16),
        })
        .collect();
    if !is_ordered(&entries) {
        return Err("epoch entries are out of order");
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_survives_reload_and_keeps_its_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = EpochHistory::load(dir.path()).unwrap();
        history.begin(1, 0).unwrap();
        history.begin(2, 500).unwrap();
        assert!(history.begin(2, 600).is_err(), "epoch must increase");
        assert!(history.begin(3, 400).is_err(), "start must not go back");
        history.begin(3, 500).unwrap(); // epoch 2 held nothing: replaced
        let reloaded = EpochHistory::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 3,
                    start_offset: 500
                }
            ]
        );
        assert_eq!(reloaded.epoch_at(499), Some(1));
        assert_eq!(reloaded.epoch_at(500), Some(3));
    }

    #[test]
    fn truncation_drops_epochs_that_start_at_or_after_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = EpochHistory::load(dir.path()).unwrap();
        history.begin(1, 0).unwrap();
        history.begin(2, 100).unwrap();
        history.begin(4, 200).unwrap();
        history.truncate_from(100).unwrap();
        assert_eq!(
            history.entries(),
            &[EpochEntry {
                epoch: 1,
                start_offset: 0
            }]
        );
        assert_eq!(EpochHistory::load(dir.path()).unwrap().entries().len(), 1);
    }
}
