//! Golden files pin the on-disk layouts drawn in docs/FORMATS.md: a message record, a padding
//! record, a consume-queue entry, a segment header, an epoch file and a checkpoint (the current
//! version, and the older one this build must still read). A change to any layout
//! fails here until the format version is raised and the files are regenerated on purpose
//! (`UPDATE_GOLDEN=1 cargo test -p broker --test golden`), together with the docs.

// An integration test: its helpers may unwrap, as tests do (the lint is for production code).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use broker::store::checkpoint::{Checkpoint, CHECKPOINT_FILE_NAME};
use broker::store::consume_queue::CqEntry;
use broker::store::epoch::EpochHistory;
use broker::store::record::{self, RecordLimits};
use broker::store::segment::Segment;
use broker::store::NewMessage;
use bytes::Bytes;

fn golden(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(actual, &expected[..], "{name} differs from its golden file");
}

fn sample_record() -> Vec<u8> {
    let message = NewMessage {
        topic: "orders".into(),
        queue_id: 3,
        body: Bytes::from_static(b"hello"),
        properties: vec![("TAGS".into(), "paid".into()), ("KEYS".into(), "k1".into())],
        born_timestamp_ms: 0x0102_0304_0506,
        retry_count: 2,
    };
    let mut bytes = Vec::new();
    let limits = RecordLimits {
        max_message_bytes: 1024,
        max_properties_bytes: 1024,
    };
    record::encode_message(&message, limits, &mut bytes).unwrap();
    record::seal(&mut bytes, 7, 0x1000, 0x0A0B_0C0D_0E0F);
    bytes
}

#[test]
fn message_record_layout_is_pinned() {
    let bytes = sample_record();
    golden("record_v1.bin", &bytes);
    // And the reader decodes the pinned bytes to the same fields.
    let header = record::check_message(&bytes).unwrap();
    assert_eq!(header.total_bytes as usize, bytes.len());
    assert_eq!(
        (
            header.queue_id,
            header.queue_offset,
            header.commit_log_offset
        ),
        (3, 7, 0x1000)
    );
    assert_eq!(
        (header.born_timestamp_ms, header.store_timestamp_ms),
        (0x0102_0304_0506, 0x0A0B_0C0D_0E0F)
    );
    assert_eq!(header.retry_count, 2);
    assert_eq!(header.tag_hash, record::tag_hash("paid"));
    assert_eq!(&bytes[header.body_range()], b"hello");
}

#[test]
fn padding_record_layout_is_pinned() {
    golden("padding_v1.bin", &record::padding(4000));
}

#[test]
fn consume_queue_entry_layout_is_pinned() {
    let entry = CqEntry {
        commit_log_offset: 0x1122_3344_5566,
        size_bytes: 1090,
        tag_hash: record::tag_hash("paid"),
    };
    let mut bytes = Vec::new();
    entry.encode(&mut bytes);
    assert_eq!(bytes.len(), 20);
    golden("cq_entry_v1.bin", &bytes);
    assert_eq!(CqEntry::decode(&bytes), entry);
}

#[test]
fn segment_header_layout_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let segment = Segment::create(dir.path(), 1 << 30, 1 << 20).unwrap();
    let header = std::fs::read(segment.path()).unwrap();
    golden("segment_header_v1.bin", &header[..64]);
    assert!(header[64..4096].iter().all(|&b| b == 0));
}

#[test]
fn epoch_file_layout_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = EpochHistory::load(dir.path()).unwrap();
    history.begin(1, 0).unwrap();
    history.begin(5, 0x10_0000).unwrap();
    golden(
        "epoch_v1.bin",
        &std::fs::read(dir.path().join("epoch")).unwrap(),
    );
}

#[test]
fn checkpoint_layout_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint {
        flushed_offset: 0x4000_0000,
        dispatched_offset: 0x3FFF_F000,
        confirm_offset: 0x3FFF_E000,
        saved_at_ms: 0x0102_0304_0506,
        verified_offset: 0x2000_0000,
    };
    checkpoint.save(dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join(CHECKPOINT_FILE_NAME)).unwrap();
    golden("checkpoint_v2.bin", &bytes);
    assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(checkpoint));
}

/// A checkpoint saved by a build that knew only version 1 (no verified offset) still loads: its
/// flushed offset stands for the verified offset (see `checkpoint.rs`). The golden file is what
/// that build wrote; it is never regenerated.
#[test]
fn a_version_1_checkpoint_still_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/checkpoint_v1.bin");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&path, dir.path().join(CHECKPOINT_FILE_NAME))
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(
        Checkpoint::load(dir.path()).unwrap(),
        Some(Checkpoint {
            flushed_offset: 0x4000_0000,
            dispatched_offset: 0x3FFF_F000,
            confirm_offset: 0x3FFF_E000,
            saved_at_ms: 0x0102_0304_0506,
            verified_offset: 0x4000_0000,
        })
    );
}
