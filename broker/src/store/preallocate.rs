//! The preallocator: makes the next commit-log segment ahead of time, so that rolling is a
//! rename on the writer's path instead of a preallocation (fallocate and fsync of a 1 GiB file
//! took 0.9 s here, a stall every append would feel).
//!
//! It keeps exactly one spare: for the offset where the tail segment ends. It wakes when the
//! writer rolls (and once a second), removes spares for any other offset (left by a truncation or
//! a roll it lost the race to), and makes the missing one. Cost: one extra segment of disk.

use std::sync::Arc;
use std::time::Duration;

use super::error::{Result, StoreError};
use super::segment::{parse_segment_file_name, Segment};
use super::shared::Shared;

const CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn run(shared: Arc<Shared>) {
    loop {
        if let Err(err) = make_spare(&shared) {
            tracing::warn!(error = %err, "could not make the next segment ahead of time; the writer will");
        }
        if shared
            .preallocate_signal
            .wait(Some(CHECK_INTERVAL), || false)
        {
            return;
        }
    }
}

fn make_spare(shared: &Shared) -> Result<()> {
    let Some(tail) = shared.log.last_segment() else {
        return Ok(());
    };
    let next = tail.end_offset();
    let dir = shared.log.dir();
    for entry in std::fs::read_dir(dir).map_err(StoreError::io("list commit-log directory", dir))? {
        let entry = entry.map_err(StoreError::io("list commit-log directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = name
            .strip_suffix(".spare")
            .and_then(parse_segment_file_name)
        {
            if base != next {
                // The writer may adopt it concurrently; a missing file is fine.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Segment::create_spare(dir, next, shared.config.segment_bytes)
}
