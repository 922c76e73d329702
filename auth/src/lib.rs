//! Who may call what: cluster members (controllers and brokers) prove to each other that they
//! hold the cluster secret before any internal RPC is served, and users (applications,
//! operators) sign their requests with an access key whose permissions the ACL gives.
//!
//! Map, following one internal call:
//! - [`key`]: the [`ClusterKey`] made from the configured `cluster_secret` (never logged, never
//!   sent), and the signature itself: an HMAC-SHA256 over the RPC's path, a timestamp, a nonce
//!   and (for unary RPCs) the request body, carried in the [`SIGNATURE_METADATA_KEY`] header.
//! - [`paths`]: which RPCs only members may call ([`member_only`]), and whether the signature
//!   covers the body (unary) or the call's header only (streams, which cannot be buffered).
//! - [`client`]: the tower layer a member's channels go through ([`Signed`], [`SignedChannel`]):
//!   it signs every member-only call and passes every other call untouched.
//! - [`server`]: the tower layer in front of a member's gRPC server ([`MemberGuard`]): a
//!   member-only call without a valid, fresh, unreplayed signature is answered UNAUTHENTICATED
//!   (code 40100, `UNAUTHORIZED`) and never reaches the service, so it changes nothing. With TLS
//!   on, it also needs the connection to have presented a client certificate the cluster CA
//!   signed (`MemberGuardLayer::requiring_client_certificate`).
//! - [`replay`]: the nonces seen within the clock-skew window, so that a captured request cannot
//!   be sent again.
//!
//! Following one user's request:
//! - [`user_sign`]: [`Credentials`] (an access key and its secret key, from a file or the
//!   environment) and the signature RocketMQ 5's official clients send (`authorization`,
//!   `x-mq-date-time`), made and checked;
//! - [`client`] again: [`Signed::with_user`] signs every call a client makes with its
//!   credentials;
//! - [`user_guard`]: the tower layer in front of every node's gRPC server that establishes the
//!   [`Caller`] (anonymous, or the user whose signature verified) and refuses a signature that
//!   does not verify (40100);
//! - [`gate`]: the ACL a node holds ([`Directory`]) and the check each service makes before it
//!   touches a resource ([`Gate::check`]: 40100 for nobody, 40300 for someone without the
//!   permission);
//! - [`acl`]: the model: users, policies (actions on resource patterns, allow or deny) and the
//!   decision; [`seal`]: users' secret keys sealed with a key derived from the cluster secret,
//!   at rest and on the way to brokers.
//!
//! Why an HMAC and not the secret itself: the secret never crosses the wire, so someone who
//! reads the traffic (replication ran in the clear before) learns no key. Without TLS
//! (`tls_cert`, `tls_key`, `tls_ca`) the traffic itself can still be read; the signature makes it
//! impossible to forge or replay an internal call, which is what kept one unauthenticated Raft
//! packet from poisoning the quorum. With TLS, members also prove themselves by their client
//! certificate.

pub mod acl;
pub mod client;
pub mod gate;
pub mod key;
pub mod paths;
pub mod replay;
pub mod seal;
pub mod server;
pub mod user_guard;
pub mod user_sign;
mod warn_limit;

pub use acl::{AclSnapshot, Action, Resource};
pub use client::{SignLayer, Signed, SignedChannel};
pub use gate::{Caller, Directory, Gate, USER_REFUSALS_METRIC};
pub use key::{ClusterKey, KeyError, Signature, SIGNATURE_METADATA_KEY};
pub use paths::{member_only, Coverage};
pub use seal::{SealError, Sealed};
pub use server::{MemberGuard, MemberGuardLayer};
pub use user_guard::{UserGuard, UserGuardLayer};
pub use user_sign::{Credentials, CredentialsError};

/// Counter by `reason` ([`server::Refusal::label`]): member-only calls refused by this process.
pub const REFUSALS_METRIC: &str = "member_auth_refusals_total";

/// Gives this crate's metric its help text (once, after the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        REFUSALS_METRIC,
        "Internal calls refused because the caller did not prove cluster membership, by reason."
    );
    metrics::describe_counter!(
        USER_REFUSALS_METRIC,
        "User requests refused (no credentials, a signature that does not verify, no permission), by reason."
    );
}
