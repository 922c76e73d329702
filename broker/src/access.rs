//! What each request of the broker's APIs needs from the ACL, in one place: the table of every
//! RPC (native, replication, v5) with the action and resources it is checked for, and the
//! helpers the services call before they touch anything (`auth::Gate` decides; a refusal is
//! 40100 for nobody, 40300 for someone without the permission, and changes nothing).
//!
//! Retry and dead-letter topics (`%RETRY%G`, `%DLQ%G`) belong to consumer group `G`: consuming
//! from them is consuming as the group, so the check names the group, as upstream's ACL 2.0
//! does, and a user needs no policy on names only the broker makes.
//!
//! The requests themselves are checked by the services (`service.rs`, `group_service.rs`,
//! `v5/access.rs`); the table here is what docs/ARCHITECTURE.md shows and what
//! `tests/acl.rs` holds the code to: every RPC the protos declare is listed, and each one called
//! anonymously on a broker with `acl_enabled` is refused.

use auth::{Action, Gate, Resource};

/// Every RPC a broker serves, by gRPC path, and what it is checked for.
pub const PERMISSIONS: &[(&str, &str)] = &[
    ("/broker.client.v1.Broker/Send", "send on the topic"),
    ("/broker.client.v1.Broker/Pull", "consume on the topic"),
    (
        "/broker.client.v1.Broker/CreateTopic",
        "admin on the cluster",
    ),
    (
        "/broker.client.v1.Broker/ListTopics",
        "a known user; the answer lists only topics it may send to or consume",
    ),
    (
        "/broker.client.v1.ConsumerGroups/CommitOffset",
        "consume on the topic and the group",
    ),
    (
        "/broker.client.v1.ConsumerGroups/QueryOffset",
        "consume on the topic and the group",
    ),
    (
        "/broker.client.v1.ConsumerGroups/Heartbeat",
        "consume on the group",
    ),
    (
        "/broker.client.v1.ConsumerGroups/SendBack",
        "consume on the topic and the group",
    ),
    (
        "/broker.replication.v1.LogShipping/Replicate",
        "members only (cluster secret), not users",
    ),
    (
        "/broker.replication.v1.LogShipping/HaStatus",
        "admin on the cluster",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/QueryRoute",
        "send or consume on the topic",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/Heartbeat",
        "consume on the group (a consumer); a known user (a producer)",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/SendMessage",
        "send on each message's topic",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/QueryAssignment",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/ReceiveMessage",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/AckMessage",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/ForwardMessageToDeadLetterQueue",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/PullMessage",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/UpdateOffset",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/GetOffset",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/QueryOffset",
        "consume on the topic (the request names no group)",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/EndTransaction",
        "send on the topic",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/Telemetry",
        "a known user",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/NotifyClientTermination",
        "a known user",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/ChangeInvisibleDuration",
        "consume on the topic and the group",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/RecallMessage",
        "send on the topic",
    ),
    (
        "/apache.rocketmq.v2.MessagingService/SyncLiteSubscription",
        "consume on the topic and the group",
    ),
];

/// The resource consuming from `topic` touches: the group that owns a retry or dead-letter
/// topic, else the topic.
pub fn consumed(topic: &str) -> Resource<'_> {
    match topic
        .strip_prefix("%RETRY%")
        .or_else(|| topic.strip_prefix("%DLQ%"))
    {
        Some(group) => Resource::Group(group),
        None => Resource::Topic(topic),
    }
}

/// Consuming `topic` as `group`: both must be allowed, so that one application cannot drain
/// another's group, nor read a topic through a group it owns.
pub fn check_consume(
    gate: &Gate,
    extensions: &tonic::Extensions,
    topic: &str,
    group: &str,
) -> Result<(), tonic::Status> {
    gate.check_all(
        extensions,
        Action::Consume,
        &[consumed(topic), Resource::Group(group)],
    )
}

/// Whether the caller may see `topic` exists: it may send to it or consume it.
pub fn may_see(gate: &Gate, extensions: &tonic::Extensions, topic: &str) -> bool {
    gate.allows(extensions, Action::Send, Resource::Topic(topic))
        || gate.allows(extensions, Action::Consume, consumed(topic))
}

/// Send or consume on `topic` (a route serves producers and consumers alike); a refusal is
/// counted and logged once, as consume's.
pub fn check_send_or_consume(
    gate: &Gate,
    extensions: &tonic::Extensions,
    topic: &str,
) -> Result<(), tonic::Status> {
    if gate.allows(extensions, Action::Send, Resource::Topic(topic)) {
        return Ok(());
    }
    gate.check(extensions, Action::Consume, consumed(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RPC paths `proto` declares in `text` (a .proto file), as `/package.Service/Rpc`.
    fn declared(text: &str) -> Vec<String> {
        let package = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("package "))
            .map(|name| name.trim_end_matches(';').trim().to_owned())
            .unwrap();
        let mut service = String::new();
        let mut paths = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap().to_owned();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                paths.push(format!("/{package}.{service}/{name}"));
            }
        }
        paths
    }

    #[test]
    fn every_rpc_a_broker_serves_is_in_the_permission_table() {
        let protos = [
            include_str!("../../proto/proto/broker.proto"),
            include_str!("../../proto/proto/replication.proto"),
            include_str!("../../proto/proto/apache/rocketmq/v2/service.proto"),
        ];
        let declared: Vec<String> = protos.iter().flat_map(|text| declared(text)).collect();
        assert!(declared.len() > 20, "{declared:?}");
        for path in &declared {
            assert!(
                PERMISSIONS.iter().any(|(listed, _)| listed == path),
                "{path} is served but not in access::PERMISSIONS: decide what it needs, check \
                 it in its service, and add it to tests/acl.rs"
            );
        }
        for (listed, _) in PERMISSIONS {
            assert!(
                declared.contains(&listed.to_string()),
                "{listed} is not served"
            );
        }
    }

    #[test]
    fn retry_and_dead_letter_topics_are_their_groups() {
        assert_eq!(consumed("%RETRY%g1"), Resource::Group("g1"));
        assert_eq!(consumed("%DLQ%g1"), Resource::Group("g1"));
        assert_eq!(consumed("orders"), Resource::Topic("orders"));
    }
}
