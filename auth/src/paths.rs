//! Which RPCs only cluster members may call.
//!
//! Internal RPCs are the ones through which a process that is not a member could take the cluster
//! over or make it lose messages: Raft between controllers (a forged vote poisons the quorum), a
//! broker's registration, heartbeats and in-sync set changes (a forged heartbeat keeps a dead
//! master's lease alive, a forged in-sync set lets a master acknowledge alone), the topics a
//! broker is told to hold, its group's view (whom it would follow), and the log stream (a forged replica acknowledges what it never
//! stored). Client-facing RPCs (send, pull, routes, administration) are not here: users'
//! credentials are step 10's.

/// What a member's signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// The path, timestamp, nonce and the whole request body: for unary calls, whose body is
    /// one message the layers can hold in memory.
    Body,
    /// The path, timestamp and nonce only: for streams, whose body never ends. The stream is
    /// admitted once, at its start.
    Header,
}

/// Largest request body a guard reads to check a `Body` signature: the largest Raft message
/// (64 MiB, a snapshot chunk or a batch of entries) with room for framing.
pub const SIGNED_BODY_BYTES_MAX: usize = (64 << 20) + (1 << 20);

const MEMBER_ONLY: &[(&str, Coverage)] = &[
    ("/broker.controller.v1.Raft/AppendEntries", Coverage::Body),
    ("/broker.controller.v1.Raft/Vote", Coverage::Body),
    ("/broker.controller.v1.Raft/InstallSnapshot", Coverage::Body),
    ("/broker.controller.v1.Raft/Campaign", Coverage::Body),
    (
        "/broker.controller.v1.Controller/RegisterBroker",
        Coverage::Body,
    ),
    (
        "/broker.controller.v1.Controller/BrokerHeartbeat",
        Coverage::Body,
    ),
    (
        "/broker.controller.v1.Controller/GroupTopics",
        Coverage::Body,
    ),
    (
        "/broker.controller.v1.Controller/AlterInSyncSet",
        Coverage::Body,
    ),
    // The group's view: who is master, and where; one request, then a stream of answers.
    (
        "/broker.controller.v1.Controller/WatchGroup",
        Coverage::Body,
    ),
    // The ACL with users' sealed secrets: brokers decide requests with it.
    ("/broker.controller.v1.Controller/WatchAcl", Coverage::Body),
    // A master's handover, and routes for a broker's v5 clients: members act for themselves
    // here, so that they need no user when the ACL is on.
    ("/broker.controller.v1.Controller/HandOver", Coverage::Body),
    (
        "/broker.controller.v1.Controller/RouteForBroker",
        Coverage::Body,
    ),
    (
        "/broker.replication.v1.LogShipping/Replicate",
        Coverage::Header,
    ),
];

/// `Some(coverage)` when only members may call `path`.
pub fn member_only(path: &str) -> Option<Coverage> {
    MEMBER_ONLY
        .iter()
        .find(|(member_path, _)| *member_path == path)
        .map(|(_, coverage)| *coverage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_path_names_a_generated_service() {
        let services = [
            proto::controller::raft_server::SERVICE_NAME,
            proto::controller::controller_server::SERVICE_NAME,
            proto::replication::log_shipping_server::SERVICE_NAME,
        ];
        for (path, _) in MEMBER_ONLY {
            let service = path.trim_start_matches('/').rsplit_once('/').unwrap().0;
            assert!(services.contains(&service), "{path}: no such service");
        }
        assert_eq!(
            member_only("/broker.replication.v1.LogShipping/Replicate"),
            Some(Coverage::Header)
        );
        assert_eq!(member_only("/broker.client.v1.Broker/Send"), None);
        assert_eq!(
            member_only("/broker.controller.v1.Controller/GetRoute"),
            None
        );
    }
}
