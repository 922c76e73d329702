//! The crash-safe protocol for every metadata file the store writes (checkpoint, epoch history,
//! truncation intent), and their common framing.
//!
//! ```text
//! offset size field
//!  0     4    magic            one per file kind
//!  4     2    format_version
//!  6     2    reserved (0)
//!  8     4    payload_bytes
//! 12     n    payload
//! 12+n   4    crc32c           over bytes [0, 12+n)
//! ```
//!
//! Saving, in this order: write `NAME.tmp`, fsync it, rename it over `NAME`, fsync the directory.
//! A crash leaves either the old file or the new one, never a mix: rename is atomic, and the
//! directory fsync makes the rename itself durable before `save` returns. A stray `NAME.tmp` from
//! a crash is overwritten by the next save. Reading refuses a wrong magic, an unknown version or
//! a CRC mismatch with [`StoreError::Format`]: metadata is never guessed.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::error::{Result, StoreError};
use super::record::{read_u16, read_u32};

const FRAME_HEADER_BYTES: usize = 12;
/// Metadata files are small; anything larger is not one of ours.
const PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// Writes `payload` to `dir/name` by temp file, fsync, rename, fsync of the directory.
pub fn save(dir: &Path, name: &str, magic: u32, version: u16, payload: &[u8]) -> Result<()> {
    assert!(
        payload.len() <= PAYLOAD_BYTES_MAX,
        "metadata payload too large"
    );
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len() + 4);
    frame.extend_from_slice(&magic.to_le_bytes());
    frame.extend_from_slice(&version.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());

    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .map_err(StoreError::io("create", &temp_path))?;
    file.write_all(&frame)
        .map_err(StoreError::io("write", &temp_path))?;
    file.sync_all()
        .map_err(StoreError::io("fsync", &temp_path))?;
    drop(file);
    fs::rename(&temp_path, &final_path)
        .map_err(StoreError::io("rename into place", &final_path))?;
    sync_dir(dir)
}

/// Reads `dir/name`: `None` when it does not exist, else `(version, payload)`.
pub fn load(
    dir: &Path,
    name: &str,
    magic: u32,
    version_max: u16,
) -> Result<Option<(u16, Vec<u8>)>> {
    let path = dir.join(name);
    let frame = match fs::read(&path) {
        Ok(frame) => frame,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StoreError::io("read", &path)(err)),
    };
    let fail = |reason: &str| {
        Err(StoreError::Format {
            path: path.clone(),
            reason: reason.to_owned(),
        })
    };
    if frame.len() < FRAME_HEADER_BYTES + 4 {
        return fail("shorter than its framing");
    }
    if read_u32(&frame, 0) != magic {
        return fail("wrong magic number");
    }
    let payload_bytes = read_u32(&frame, 8) as usize;
    if frame.len() != FRAME_HEADER_BYTES + payload_bytes + 4 {
        return fail("length does not match its payload size");
    }
    let crc_at = frame.len() - 4;
    if crc32c::crc32c(&frame[..crc_at]) != read_u32(&frame, crc_at) {
        return fail("CRC mismatch");
    }
    let version = read_u16(&frame, 4);
    if version == 0 || version > version_max {
        return Err(StoreError::Format {
            path: path.clone(),
            reason: format!(
                "format version {version} is not supported (newest known: {version_max})"
            ),
        });
    }
    Ok(Some((version, frame[FRAME_HEADER_BYTES..crc_at].to_vec())))
}

/// Removes `dir/name` durably (unlink, then fsync the directory). Missing is fine.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StoreError::io("remove", &path)(err)),
    }
}

/// Fsyncs a directory so that creations, renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: u32 = u32::from_le_bytes(*b"TEST");

    #[test]
    fn save_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "m", MAGIC, 1).unwrap().is_none());
        save(dir.path(), "m", MAGIC, 1, b"first").unwrap();
        save(dir.path(), "m", MAGIC, 1, b"second").unwrap();
        assert_eq!(
            load(dir.path(), "m", MAGIC, 1).unwrap(),
            Some((1, b"second".to_vec()))
        );
        assert!(!dir.path().join("m.tmp").exists());
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "m", MAGIC, 2, b"payload").unwrap();
        assert!(matches!(
            load(dir.path(), "m", MAGIC, 1),
            Err(StoreError::Format { .. })
        ));
        assert!(matches!(
            load(dir.path(), "m", MAGIC + 1, 2),
            Err(StoreError::Format { .. })
        ));
        let path = dir.path().join("m");
        let mut bytes = fs::read(&path).unwrap();
        bytes[13] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load(dir.path(), "m", MAGIC, 2),
            Err(StoreError::Format { .. })
        ));
    }

    #[test]
    fn stray_temp_file_from_a_crash_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "m", MAGIC, 1, b"good").unwrap();
        fs::write(dir.path().join("m.tmp"), b"half written").unwrap();
        assert_eq!(load(dir.path(), "m", MAGIC, 1).unwrap().unwrap().1, b"good");
        save(dir.path(), "m", MAGIC, 1, b"newer").unwrap();
        assert_eq!(
            load(dir.path(), "m", MAGIC, 1).unwrap().unwrap().1,
            b"newer"
        );
    }
}
