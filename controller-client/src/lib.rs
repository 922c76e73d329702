//! The one way to talk to the controller quorum, for the broker, the Rust client and cluster-cli
//! alike.
//!
//! Map:
//! - [`quorum`]: [`ControllerConnection`], the quorum seen as one service: knows every
//!   controller's address, starts with the one that answered last, moves on when one is down or
//!   has no leader, backs off with jitter between rounds; signed for members, plain for clients.
//! - [`admin`]: the typed calls of routing and administration (routes, topics, drains, cluster
//!   list, quorum status and membership).
//! - [`acl`]: users and their policies (typed admin calls), and [`acl::follow_acl`], which keeps
//!   a broker's `auth::Directory` at the quorum's ACL.
//! - [`broker_link`]: a broker's session with the quorum: registration, heartbeats that carry
//!   its replication progress and bring back its group's view and lease, topics and
//!   consumer-group settings synced on every new metadata revision, the stopping notice, and the
//!   group watch that pushes the group's view as it changes.
//! - [`master_calls`]: a controlled master's own calls beside the link: in-sync set proposals
//!   ([`master_calls::InSyncSetProposer`]) and the handover before it stops
//!   ([`master_calls::Handover`]).
//! - [`error`]: [`ControllerError`], a controller's refusal with its stable code, or why no
//!   controller answered.
//!
//! This crate depends on the wire (`proto`) and member signing (`auth`) only: neither openraft
//! nor sled, which live in the `controller` crate, the server side.

pub mod acl;
pub mod admin;
pub mod broker_link;
pub mod error;
pub mod master_calls;
pub mod quorum;

pub use auth::Credentials;
pub use error::ControllerError;
pub use quorum::{ControllerConnection, Retry};

/// The wire types of the controller's requests and answers.
pub use proto::controller as wire;
