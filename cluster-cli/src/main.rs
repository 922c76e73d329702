//! `cluster-cli`: administration, role inspection, send/consume drills and benchmarks.
//!
//! Commands arrive with the broker service (step 2) and the controller (step 3). Until then the
//! binary only prints its version, so that scripts can already check that it is built.

use clap::Parser;

/// Administration tool of the broker cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    println!("cluster-cli {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
