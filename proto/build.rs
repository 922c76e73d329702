//! Compiles every `.proto` under `proto/proto/` with protox, the pure-Rust compiler, so that no
//! machine needs `protoc`. protox prints no `rerun-if-changed` lines of its own: we emit them.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(proto_dir, &mut files)?;
    // Sorted so that generated code does not depend on directory order.
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [proto_dir])?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Every `.proto` under `dir`, at any depth (RocketMQ 5's files sit in `apache/rocketmq/v2/`,
/// the path their imports name).
fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    Ok(())
}
