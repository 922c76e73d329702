//! Configuration of the store: flush policy, segment size, limits, retention.
//!
//! One struct feeds both the TOML file (`[store]` table, `serde(default)`, unknown keys refused)
//! and the broker's command-line flags. Every key is listed in `docs/CONFIG.md`.
//! [`StoreConfig::validate`] checks the rules that span fields before anything touches disk.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
pub use super::record::{MESSAGE_BYTES_LIMIT_MAX, PROPERTIES_BYTES_LIMIT_MAX};
use super::record::{RECORD_HEADER_BYTES, TOPIC_BYTES_LIMIT};

/// When an append is acknowledged relative to the fsync that makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlushDiskType {
    /// Acknowledge after the fsync that covers the record (group-committed).
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
    /// Acknowledge from the page cache; fsync every `flush_interval_ms` and at shutdown.
    #[serde(rename = "ASYNC_FLUSH")]
    AsyncFlush,
}

/// Settings of one store. Defaults follow RocketMQ where it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding the commit log, consume queues and metadata files.
    pub store_path: PathBuf,
    /// `SYNC_FLUSH` or `ASYNC_FLUSH`.
    pub flush_disk_type: FlushDiskType,
    /// Longest wait for the fsync covering a `SYNC_FLUSH` append before `FLUSH_DISK_TIMEOUT`.
    pub sync_flush_timeout_ms: u64,
    /// Interval of background fsyncs under `ASYNC_FLUSH`.
    pub flush_interval_ms: u64,
    /// Capacity of one commit-log segment in bytes (new segments; existing ones keep theirs).
    pub segment_bytes: u64,
    /// Largest message body accepted.
    pub max_message_bytes: u32,
    /// Largest encoded property block accepted (names, values and their length prefixes).
    pub max_properties_bytes: u32,
    /// Entries per consume-queue file (20 bytes each).
    pub consume_queue_entries_per_file: u32,
    /// Interval at which consume queues are fsynced and the checkpoint is saved.
    pub checkpoint_interval_ms: u64,
    /// Segments whose last write is older than this are deleted.
    pub file_retention_hours: u64,
    /// Above this used fraction of the disk, the oldest segments are deleted early.
    pub disk_max_used_ratio: f64,
    /// Interval between retention checks.
    pub retention_check_interval_ms: u64,
    /// The high-water mark: above this used fraction of the disk, or with less than two
    /// segments' worth of space free, client sends are refused (a clear, retriable status)
    /// before the file system fails; they are taken again once space returns. Checked every
    /// second.
    pub disk_high_water_ratio: f64,
    /// Appends waiting for the writer before senders are made to wait (backpressure).
    pub write_queue_capacity: usize,
    /// Most bytes one group commit gathers into one write.
    pub batch_bytes_max: usize,
    /// Flushed commit-log bytes kept in the page cache behind the flushed offset; older pages
    /// are handed back to the kernel, so that new writes reuse them (see `page_cache.rs`).
    pub page_cache_keep_bytes: u64,
    /// Rate at which the scrubber re-reads and CRC-checks the whole log in the background (see
    /// `scrub.rs`); 0 turns it off.
    pub scrub_bytes_per_second: u64,
    /// Shortest time between the starts of two scrubber passes: a log smaller than this much of
    /// the rate is re-read once per interval instead of continuously.
    pub scrub_pass_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_path: PathBuf::from("store"),
            flush_disk_type: FlushDiskType::SyncFlush,
            sync_flush_timeout_ms: 5_000,
            flush_interval_ms: 500,
            segment_bytes: 1 << 30,
            max_message_bytes: 4 << 20,
            max_properties_bytes: 32 << 10,
            consume_queue_entries_per_file: 300_000,
            checkpoint_interval_ms: 1_000,
            file_retention_hours: 72,
            disk_max_used_ratio: 0.75,
            retention_check_interval_ms: 10_000,
            disk_high_water_ratio: 0.90,
            write_queue_capacity: 4_096,
            batch_bytes_max: 8 << 20,
            page_cache_keep_bytes: 1 << 30,
            scrub_bytes_per_second: SCRUB_BYTES_PER_SECOND_DEFAULT,
            scrub_pass_interval_ms: 60_000,
        }
    }
}

/// Default scrub rate, 32 MiB/s: a 1 TiB log is re-read in about 9 hours, so every byte is
/// re-checked several times within the default 72-hour retention, for about 3 % of a SATA SSD's
/// read bandwidth (550 MB/s) and a fraction of a percent of a core for the CRCs (hardware CRC32C
/// runs at several GB/s). A spinning disk (about 150 MB/s) gives it a fifth: lower it there.
pub const SCRUB_BYTES_PER_SECOND_DEFAULT: u64 = 32 << 20;

/// Smallest segment accepted: small segments are for tests, but a segment must hold at least a
/// few records or every append would roll.
pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
/// Largest segment accepted; offsets within a segment must fit the 32-bit record size field.
pub const SEGMENT_BYTES_MAX: u64 = 4 << 30;
/// Most entries per consume-queue file (80 MB files): recovery reads the last file of every queue.
pub const CONSUME_QUEUE_ENTRIES_PER_FILE_MAX: u32 = 4_000_000;

impl StoreConfig {
    /// Largest record this configuration can produce: header, longest topic, properties, body.
    pub fn max_record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64
            + TOPIC_BYTES_LIMIT as u64
            + u64::from(self.max_properties_bytes)
            + u64::from(self.max_message_bytes)
    }

    /// Checks rules between fields; returns the first broken one.
    pub fn validate(&self) -> Result<()> {
        let fail = |field, reason| Err(StoreError::Config { field, reason });
        if self.store_path.as_os_str().is_empty() {
            return fail("store_path", "must not be empty");
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return fail("segment_bytes", "must be between 4 KiB and 4 GiB");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MESSAGE_BYTES_LIMIT_MAX {
            return fail("max_message_bytes", "must be between 1 byte and 256 MiB");
        }
        if self.max_properties_bytes > PROPERTIES_BYTES_LIMIT_MAX {
            return fail("max_properties_bytes", "must be at most 1 MiB");
        }
        if self.max_record_bytes() > self.segment_bytes {
            return fail(
                "segment_bytes",
                "must hold the largest record (max_message_bytes + max_properties_bytes + header)",
            );
        }
        if (self.batch_bytes_max as u64) < self.max_record_bytes() {
            return fail("batch_bytes_max", "must hold the largest record");
        }
        if self.sync_flush_timeout_ms == 0 {
            return fail("sync_flush_timeout_ms", "must be above 0");
        }
        if self.flush_interval_ms == 0 {
            return fail("flush_interval_ms", "must be above 0");
        }
        if self.checkpoint_interval_ms == 0 {
            return fail("checkpoint_interval_ms", "must be above 0");
        }
        if self.retention_check_interval_ms == 0 {
            return fail("retention_check_interval_ms", "must be above 0");
        }
        if !(2..=CONSUME_QUEUE_ENTRIES_PER_FILE_MAX).contains(&self.consume_queue_entries_per_file)
        {
            return fail(
                "consume_queue_entries_per_file",
                "must be between 2 and 4000000",
            );
        }
        if !(self.disk_max_used_ratio > 0.0 && self.disk_max_used_ratio <= 1.0) {
            return fail("disk_max_used_ratio", "must be in (0, 1]");
        }
        if self.scrub_pass_interval_ms == 0 {
            return fail("scrub_pass_interval_ms", "must be above 0");
        }
        if !(self.disk_high_water_ratio > 0.0 && self.disk_high_water_ratio <= 1.0) {
            return fail("disk_high_water_ratio", "must be in (0, 1]");
        }
        if self.write_queue_capacity == 0 {
            return fail("write_queue_capacity", "must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn segment_smaller_than_largest_record_is_refused() {
        let config = StoreConfig {
            segment_bytes: 64 << 10,
            ..StoreConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(StoreError::Config {
                field: "segment_bytes",
                ..
            })
        ));
    }

    #[test]
    fn unknown_toml_key_is_refused() {
        let err = toml::from_str::<StoreConfig>("segment_bytez = 4096").unwrap_err();
        assert!(err.to_string().contains("segment_bytez"), "{err}");
    }

    #[test]
    fn toml_uses_rocketmq_flush_names() {
        let config: StoreConfig = toml::from_str("flush_disk_type = \"ASYNC_FLUSH\"").unwrap();
        assert_eq!(config.flush_disk_type, FlushDiskType::AsyncFlush);
        assert_eq!(config.sync_flush_timeout_ms, 5_000);
    }
}
