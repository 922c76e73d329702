//! The controller: a Raft quorum (openraft) that is the cluster's name server and, from step 5,
//! its failover authority.
//!
//! Map:
//! - [`state`]: the replicated state (broker groups and brokers with their in-sync sets, topics
//!   and their queues per group, consumer-group settings) and the commands that change it,
//!   applied deterministically.
//! - [`store`]: the Raft log, vote and state machine in sled, each durable before openraft is told
//!   so; snapshots from a consistent copy.
//! - [`network`]: Raft between controllers over tonic, both sides.
//! - [`liveness`]: which brokers heartbeat lately and what they reported (offsets, replication
//!   progress), kept in the leader's memory only.
//! - [`service`]: the gRPC `Controller` service (registration, heartbeats, in-sync set changes,
//!   routes and the route watch, topics, cluster and quorum status, membership changes); forwards
//!   to the leader.
//! - [`node`]: starting and stopping one controller: storage, Raft, servers, first
//!   initialisation.
//! - [`config`]: the `controller` binary's settings.
//! - [`link`]: the broker's side: registration, heartbeats with replication progress, topics
//!   synced from the controller, group views handed to the broker, in-sync set proposals.

pub mod config;
pub mod link;
pub mod liveness;
pub mod network;
pub mod node;
pub mod service;
pub mod state;
pub mod store;

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
