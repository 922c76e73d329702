//! Every `.proto` of the cluster compiles with stock `protoc`, not only with protox (which
//! build.rs uses so that no machine needs `protoc`): other tooling (grpcurl, other languages'
//! code generators) reads these files with `protoc`, and the two compilers do not accept exactly
//! the same files (protoc once refused `controller.proto` for a message named like an rpc).
//! The `protoc` binary comes from the pinned `protoc-bin-vendored` crate, so nothing is
//! installed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read proto/proto")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_proto_compiles_with_stock_protoc() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this host");
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files = proto_files(&proto_dir);
    assert!(
        files.len() >= 4,
        "expected the cluster's .proto files in {}: {files:?}",
        proto_dir.display()
    );
    let out = output_dir();
    // One file at a time, so that a failure names its file; imports resolve through -I.
    for file in &files {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let output = Command::new(&protoc)
            .arg("-I")
            .arg(&proto_dir)
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
