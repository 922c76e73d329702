//! The controller: a Raft quorum (openraft over sled) that is the cluster's name server and its
//! failover authority for groups of controlled brokers. The `controller` binary
//! (`src/bin/controller.rs`) runs one member; its callers reach it through the
//! `controller-client` crate.
//!
//! Map:
//! - [`state`]: the replicated state (broker groups and brokers with their in-sync sets, topics
//!   and their queues per group, consumer-group settings, the ACL) and the commands that change
//!   it, applied deterministically.
//! - [`acl`]: the ACL's part of the state machine: users (secret keys sealed), policies, the
//!   built-in admin, and the commands that change them, with their limits.
//! - [`access`]: the controller's own copy of the ACL for its gate, kept at the applied state,
//!   and the leader's upkeep of the built-in admin (`admin_access_key`).
//! - [`audit`]: the audit log of actions that can lose data or change who may do what.
//! - [`store`]: the Raft log, vote and state machine in sled, each durable before openraft is told
//!   so; snapshots from a consistent copy, the current one never replaced by an older build.
//!   openraft's own storage suite runs against it (`tests/raft_storage_suite.rs`).
//! - [`network`]: Raft between controllers over tonic, both sides; every message signed with
//!   the cluster key (the `auth` crate's guard refuses unsigned ones).
//! - [`admission`]: which Raft messages may reach openraft (members only, plausible terms), and
//!   whether this controller's Raft is healthy (core running, vote not poisoned).
//! - [`liveness`]: which brokers heartbeat lately and what they reported (offsets, log epoch,
//!   incarnation, replication progress, resignation), kept in the leader's memory only.
//! - [`membership`]: adding and removing controllers: the checks before anything changes, the
//!   probe of a controller to add, and the bounds on its catch-up.
//! - [`lease`]: the leases the leader granted masters and the planned switchovers running, in
//!   the leader's memory only.
//! - [`election`]: when a controlled group needs a new master and whom to elect (a pure
//!   decision), and the leader's loop that proposes `ElectMaster` through Raft.
//! - [`gone`]: when a `SYNC` group's master is known gone (every in-sync slave found its host
//!   refusing connections), so that its successor is elected without waiting out the lease;
//!   with the safety argument.
//! - [`handover`]: a stopping controller leader names its successor, which campaigns as soon
//!   as openraft's vote lease lets it (0.9 has no leadership transfer).
//! - [`switchover`]: whether a planned switchover may start and to whom (a pure check beside
//!   `election::decide`).
//! - [`service`]: the gRPC `Controller` service (registration, heartbeats and the lease they
//!   grant, in-sync set changes, planned switchovers, routes and the route watch, topics, cluster and quorum status, membership changes); forwards
//!   to the leader.
//! - [`node`]: starting and stopping one controller: storage, Raft, servers (TLS when
//!   `tls_cert`/`tls_key`/`tls_ca` are set, [`node::start_tls`]), first initialisation.
//! - [`metrics`]: the controller's metrics: the election counter and, at each scrape of the
//!   `/metrics` endpoint, the Raft term, leadership and (on the leader) each group's alive
//!   brokers, in-sync set and master epoch.
//! - [`repair`]: the way back for a quorum whose votes were poisoned anyway (`controller vote`,
//!   `controller repair-vote` on stopped controllers), with its safety argument.
//! - [`config`]: the `controller` binary's settings.

pub mod access;
pub mod acl;
pub mod admission;
pub mod audit;
pub mod config;
pub mod election;
#[cfg(test)]
mod fixtures;
pub mod gone;
pub mod handover;
pub mod lease;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod repair;
pub mod service;
pub mod state;
pub mod store;
pub mod switchover;

/// Controller ids, as configured (`--id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's types for the controller: commands in, command results out, nodes addressed
    /// by their gRPC `host:port`.
    pub TypeConfig:
        D = state::Command,
        R = state::CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// The running Raft of one controller.
pub type Raft = openraft::Raft<TypeConfig>;
