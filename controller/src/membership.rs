//! Changes of the controller quorum's membership (`AddController`, `RemoveController`): the
//! checks a request must pass before anything changes, as pure functions of the membership
//! ([`admit`], [`check_removal`]), the probe that a controller to add answers at its address
//! ([`probe`]), and the bounds on how long an addition may take.
//!
//! An addition answers within a few seconds whatever it names: an id of 0, an address that is
//! not `host:port`, or an id or address that belongs to another member are refused before
//! anything changes; a controller that does not answer at its address within [`PROBE_TIMEOUT`]
//! is refused before it is added; a learner that stops catching up for [`CATCH_UP_STALL_MAX`]
//! (or has not caught up within [`CATCH_UP_TIMEOUT`]) is removed again and the addition fails.
//! The service (`service.rs`) carries the decisions out through openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;

use super::NodeId;

/// How long the controller to add has to answer `NodeStatus` at its address. A controller
/// that is running answers in milliseconds; one that is not is refused after this, not after
/// the catch-up wait.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a learner may go without its replicated log index moving while it is behind: Raft
/// cannot reach it (or it refuses what it is sent), and waiting longer would not help.
pub const CATCH_UP_STALL_MAX: Duration = Duration::from_secs(3);
/// Longest a new controller may take to catch up before it is made a voter. The controller's
/// state is metadata (topics, groups, brokers): megabytes at most, seconds at worst. Below the
/// forwarding timeout (10 s), so that a request forwarded by a follower gets this answer.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest one membership change (adding the learner, promoting it, removing a member) may wait
/// to be committed: the leader has a quorum, or it could not have started the change.
pub const CHANGE_COMMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest controller address accepted (a DNS name is at most 253 bytes, plus `:port`).
pub const CONTROLLER_ADDR_BYTES_MAX: usize = 260;

/// The quorum's members as the leader sees them: every node with its address, and the voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub nodes: BTreeMap<NodeId, String>,
    pub voters: BTreeSet<NodeId>,
}

/// What an addition that passed the checks does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The id is a voter at this address already: nothing to do (a repeated request).
    AlreadyVoter,
    /// The id is a learner at this address (an earlier addition did not finish): catch it up
    /// and promote it.
    Learner,
    /// A new member: add it as a learner, catch it up, promote it.
    New,
}

/// Why a membership change was refused or did not complete. Every refusal changes nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("controller id 0 is not allowed: ids start at 1")]
    IdZero,
    #[error("controller address {}: {reason}", proto::Echo(addr))]
    AddrInvalid { addr: String, reason: &'static str },
    #[error(
        "controller {id} is already a member at {member_addr}, not at {}; remove it first \
         (and never reuse an id for another machine)",
        proto::Echo(addr)
    )]
    IdTaken {
        id: NodeId,
        addr: String,
        member_addr: String,
    },
    #[error("address {addr} is already controller {member}")]
    AddrTaken { addr: String, member: NodeId },
    #[error(
        "no controller answers at {addr} within {} ms ({reason}): start it first, with empty \
         peers",
        PROBE_TIMEOUT.as_millis()
    )]
    Unreachable { addr: String, reason: String },
    #[error("the controller at {addr} is controller {found}, not {id}")]
    WrongId {
        id: NodeId,
        addr: String,
        found: NodeId,
    },
    #[error(
        "controller {id} at {addr} did not catch up ({reason}); it was removed again, nothing \
         changed"
    )]
    CatchUpFailed {
        id: NodeId,
        addr: String,
        reason: String,
    },
    #[error("controller {id} is not a member")]
    NotMember { id: NodeId },
    #[error("cannot remove the last controller")]
    LastVoter,
}

impl MembershipError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            MembershipError::IdZero | MembershipError::AddrInvalid { .. } => ErrorCode::BadRequest,
            MembershipError::IdTaken { .. }
            | MembershipError::AddrTaken { .. }
            | MembershipError::WrongId { .. }
            | MembershipError::LastVoter => ErrorCode::Conflict,
            // Not retried by clients: asking again does not start the missing controller.
            MembershipError::Unreachable { .. } | MembershipError::NotMember { .. } => {
                ErrorCode::NotFound
            }
            MembershipError::CatchUpFailed { .. } => ErrorCode::RequestTimeout,
        }
    }
}

/// Checks that `addr` is `host:port` with a non-zero port: what peers dial for Raft.
pub fn check_addr(addr: &str) -> Result<(), MembershipError> {
    let invalid = |reason| MembershipError::AddrInvalid {
        addr: addr.to_owned(),
        reason,
    };
    if addr.is_empty() {
        return Err(invalid("an address is required (host:port)"));
    }
    if addr.len() > CONTROLLER_ADDR_BYTES_MAX {
        return Err(invalid("longer than 260 bytes"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("not host:port"));
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid("no host before the port"));
    }
    if !port.parse::<u16>().is_ok_and(|port| port > 0) {
        return Err(invalid("the port must be a number from 1 to 65535"));
    }
    // A bare IPv6 address needs brackets: "::1:9876" would be read as host "::1", port 9876.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 host must be in brackets ([::1]:9876)"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
    {
        return Err(invalid("the host holds characters no host name has"));
    }
    if proto::dial::endpoint(addr, PROBE_TIMEOUT).is_err() {
        return Err(invalid("not an address gRPC can dial"));
    }
    Ok(())
}

/// Whether controller `id` at `addr` may be added to `members`, and what adding it takes.
pub fn admit(members: &Members, id: NodeId, addr: &str) -> Result<Admission, MembershipError> {
    if id == 0 {
        return Err(MembershipError::IdZero);
    }
    check_addr(addr)?;
    if let Some((member, _)) = members
        .nodes
        .iter()
        .find(|(member, member_addr)| **member != id && member_addr.as_str() == addr)
    {
        return Err(MembershipError::AddrTaken {
            addr: addr.to_owned(),
            member: *member,
        });
    }
    match members.nodes.get(&id) {
        None => Ok(Admission::New),
        Some(member_addr) if member_addr != addr => Err(MembershipError::IdTaken {
            id,
            addr: addr.to_owned(),
            member_addr: member_addr.clone(),
        }),
        Some(_) if members.voters.contains(&id) => Ok(Admission::AlreadyVoter),
        Some(_) => Ok(Admission::Learner),
    }
}

/// Whether controller `id` may be removed from `members`.
pub fn check_removal(members: &Members, id: NodeId) -> Result<(), MembershipError> {
    if !members.nodes.contains_key(&id) {
        return Err(MembershipError::NotMember { id });
    }
    if members.voters.contains(&id) && members.voters.len() <= 1 {
        return Err(MembershipError::LastVoter);
    }
    Ok(())
}

/// Asks the controller at `addr` for its own status within [`PROBE_TIMEOUT`]: it must answer,
/// as controller `id`.
pub async fn probe(id: NodeId, addr: &str) -> Result<(), MembershipError> {
    let unreachable = |reason: String| MembershipError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let endpoint = proto::dial::endpoint(addr, PROBE_TIMEOUT)
        .map_err(|err| unreachable(err.to_string()))?
        .timeout(PROBE_TIMEOUT);
    let asked = async {
        let channel = endpoint.connect().await.map_err(|err| err.to_string())?;
        ControllerClient::new(channel)
            .node_status(pb::NodeStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.to_string())
    };
    let status = match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Err(_) => return Err(unreachable("no answer".to_owned())),
        Ok(Err(reason)) => return Err(unreachable(reason)),
        Ok(Ok(status)) => status,
    };
    if status.id != id {
        return Err(MembershipError::WrongId {
            id,
            addr: addr.to_owned(),
            found: status.id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Members {
        Members {
            nodes: [
                (1, "10.0.0.1:9876".to_owned()),
                (2, "10.0.0.2:9876".to_owned()),
                (3, "10.0.0.3:9876".to_owned()),
            ]
            .into(),
            voters: [1, 2].into(),
        }
    }

    #[test]
    fn an_address_must_be_host_and_port() {
        for good in [
            "10.0.0.4:9876",
            "controller-4.example.com:1",
            "[::1]:9876",
            "localhost:65535",
        ] {
            assert_eq!(check_addr(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "10.0.0.4",
            "10.0.0.4:",
            ":9876",
            "10.0.0.4:0",
            "10.0.0.4:65536",
            "10.0.0.4:port",
            "::1:9876",
            "[]:9876",
            "a b:1",
            "host/x:1",
            &format!("{}:1", "h".repeat(300)),
        ] {
            assert!(
                matches!(check_addr(bad), Err(MembershipError::AddrInvalid { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn an_addition_is_refused_for_id_zero_a_bad_address_or_a_member_elsewhere() {
        let m = members();
        assert_eq!(admit(&m, 0, "10.0.0.4:9876"), Err(MembershipError::IdZero));
        assert!(matches!(
            admit(&m, 4, "nowhere"),
            Err(MembershipError::AddrInvalid { .. })
        ));
        assert!(matches!(
            admit(&m, 1, "10.0.0.4:9876"),
            Err(MembershipError::IdTaken { id: 1, .. })
        ));
        assert!(matches!(
            admit(&m, 3, "10.0.0.9:9876"),
            Err(MembershipError::IdTaken { id: 3, .. })
        ));
        assert_eq!(
            admit(&m, 4, "10.0.0.2:9876"),
            Err(MembershipError::AddrTaken {
                addr: "10.0.0.2:9876".into(),
                member: 2
            })
        );
    }

    #[test]
    fn an_addition_of_a_voter_is_a_repeat_and_of_a_learner_resumes() {
        let m = members();
        assert_eq!(admit(&m, 1, "10.0.0.1:9876"), Ok(Admission::AlreadyVoter));
        assert_eq!(admit(&m, 3, "10.0.0.3:9876"), Ok(Admission::Learner));
        assert_eq!(admit(&m, 4, "10.0.0.4:9876"), Ok(Admission::New));
    }

    #[test]
    fn a_removal_needs_a_member_and_leaves_a_voter() {
        let m = members();
        assert_eq!(
            check_removal(&m, 9),
            Err(MembershipError::NotMember { id: 9 })
        );
        assert_eq!(
            check_removal(&m, 0),
            Err(MembershipError::NotMember { id: 0 })
        );
        assert_eq!(check_removal(&m, 3), Ok(()));
        assert_eq!(check_removal(&m, 1), Ok(()));
        let alone = Members {
            nodes: [(1, "10.0.0.1:9876".to_owned())].into(),
            voters: [1].into(),
        };
        assert_eq!(check_removal(&alone, 1), Err(MembershipError::LastVoter));
    }

    #[test]
    fn every_refusal_has_a_code_clients_do_not_retry() {
        let errors = [
            MembershipError::IdZero,
            MembershipError::NotMember { id: 9 },
            MembershipError::Unreachable {
                addr: "a:1".into(),
                reason: "refused".into(),
            },
            MembershipError::CatchUpFailed {
                id: 4,
                addr: "a:1".into(),
                reason: "stalled".into(),
            },
            MembershipError::LastVoter,
        ];
        for err in errors {
            assert_ne!(err.code(), ErrorCode::ControllerNotAvailable, "{err}");
        }
    }
}
