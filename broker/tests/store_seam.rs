//! The store imports nothing from the rest of the broker crate: every path out of
//! `broker/src/store/` into this crate goes through `crate::store`. The store reports what the
//! broker counts through its own `StoreObserver` and owns its failpoints (see `store/mod.rs`), so
//! that the broker depends on the store and never the other way round, and the store can become
//! its own crate without untangling a loop.
//!
//! Why a scan of the source and not the compiler: inside one crate Rust lets every module name
//! every other (`crate::metrics`, `super::super::failpoint`), so nothing fails to build when a
//! back-arrow comes in. Once the store is a crate of its own the compiler enforces this and this
//! test can go. Until then a textual scan is the cheapest guard that runs with `cargo test`. It
//! is strict on purpose: it reads comments too (an intra-doc link to `crate::metrics` ties the
//! store's documentation to the broker as well), and it refuses `super::super` (which names the
//! crate root from a file of the store) and `super::` in `store/mod.rs` (the same), for which
//! `crate::store::` is always the unambiguous spelling.

use std::path::{Path, PathBuf};

/// Every way a file of the store breaks the seam, as `path:line: what`.
fn back_arrows(path: &Path, text: &str) -> Vec<String> {
    let is_store_root = path.file_name().is_some_and(|name| name == "mod.rs")
        && path.parent().is_some_and(|dir| dir.ends_with("store"));
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut report =
            |what: String| found.push(format!("{}:{}: {what}", path.display(), index + 1));
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let stays_in_store = rest
                .strip_prefix("store")
                .is_some_and(|after| !after.starts_with(|c: char| c.is_alphanumeric() || c == '_'));
            if !stays_in_store {
                report(format!(
                    "`crate::{}` leaves the store",
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '{'))
                        .next()
                        .unwrap_or("")
                ));
            }
        }
        if line.contains("super::super") {
            report("`super::super` (write `crate::store::...`)".to_owned());
        }
        if is_store_root && line.contains("super::") {
            report("`super::` in store/mod.rs names the crate root".to_owned());
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn store_imports_nothing_from_the_rest_of_the_broker() {
    let store_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = Vec::new();
    rust_files(&store_dir, &mut files);
    // The scan must see the store (a moved directory would make it pass vacuously).
    assert!(
        files.iter().any(|path| path.ends_with("store/mod.rs")) && files.len() >= 10,
        "found only {files:?} under {}",
        store_dir.display()
    );
    let found: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            back_arrows(path, &text)
        })
        .collect();
    assert!(
        found.is_empty(),
        "the store imports from the rest of the broker; report through `StoreObserver` or move \
         the code into the store instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_finds_each_kind_of_back_arrow() {
    let file = Path::new("src/store/flush.rs");
    let bad = [
        "    crate::metrics::record_flush(started.elapsed());",
        "use crate::{metrics, store::Store};",
        "use crate::failpoint;",
        "use crate::storage::X;",
        "use super::super::failpoint;",
    ];
    for line in bad {
        assert_eq!(back_arrows(file, line).len(), 1, "{line}");
    }
    let good = [
        "use crate::store::shared::Shared;",
        "use crate::store;",
        "use super::shared::Shared;",
        "shared.observer.flushed(started.elapsed());",
    ];
    for line in good {
        assert!(back_arrows(file, line).is_empty(), "{line}");
    }
    let root = Path::new("src/store/mod.rs");
    assert_eq!(back_arrows(root, "use super::metrics;").len(), 1);
    assert!(back_arrows(root, "use self::shared::Shared;").is_empty());
}
