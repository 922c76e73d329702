//! Every `.proto` of the cluster compiles with stock `protoc`, not only with protox (which
//! build.rs uses so that no machine needs `protoc`): other tooling (grpcurl, other languages'
//! code generators) reads these files with `protoc`, and the two compilers do not accept exactly
//! the same files (protoc once refused `controller.proto` for a message named like an rpc).
//! The `protoc` binary comes from the pinned `protoc-bin-vendored` crate, so nothing is
//! installed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every `.proto` under `dir`, at any depth, sorted.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a proto directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_proto_compiles_with_stock_protoc() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this host");
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files = proto_files(&proto_dir);
    assert!(
        files.len() >= 6,
        "expected the cluster's .proto files in {}: {files:?}",
        proto_dir.display()
    );
    // Google's well-known types (Duration, Timestamp), which RocketMQ 5's files import.
    let well_known = protoc_bin_vendored::include_path().expect("protoc's bundled includes");
    let out = output_dir();
    // One file at a time, so that a failure names its file; imports resolve through -I.
    for file in &files {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let output = Command::new(&protoc)
            .arg("-I")
            .arg(&proto_dir)
            .arg("-I")
            .arg(&well_known)
            .arg(format!(
                "--descriptor_set_out={}",
                out.join(format!("{name}.pb")).display()
            ))
            .arg("--include_imports")
            .arg(file)
            .output()
            .expect("run protoc");
        assert!(
            output.status.success(),
            "protoc refused {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A fresh directory for the descriptor sets protoc writes (it needs some output to compile
/// anything); under the target directory, so that nothing is left elsewhere.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("protoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for protoc's output");
    dir
}
