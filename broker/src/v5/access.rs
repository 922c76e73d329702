//! The v5 API's permission checks (`crate::access` has the table of what each RPC needs): each
//! RPC checks before it touches anything, and a refusal is answered in the body `Status` with
//! upstream's `UNAUTHORIZED` (40100) or `FORBIDDEN` (40300), the way the official clients read
//! a refusal: they raise `UnauthorizedException` / `ForbiddenException` to the application (a
//! producer after its few send attempts) instead of taking it for a broken connection.
//!
//! A signature that does not verify never gets here: `auth::UserGuard` answers it with the gRPC
//! status `UNAUTHENTICATED` (40100 in its metadata), which the clients raise as an RPC error.

use auth::{Action, Gate, Resource};
use proto::common::ErrorCode;
use proto::v5;
use tonic::Extensions;

use super::status::refused;
use crate::access::{check_consume, check_send_or_consume};

/// The gate's refusal as a v5 body status.
pub fn refusal(status: tonic::Status) -> v5::Status {
    let code = proto::status::error_code(&status).unwrap_or(ErrorCode::Unauthorized);
    refused(code, status.message())
}

fn name(resource: &Option<v5::Resource>) -> &str {
    resource.as_ref().map(|r| r.name.as_str()).unwrap_or("")
}

fn queue_topic(queue: &Option<v5::MessageQueue>) -> &str {
    queue.as_ref().map(|q| name(&q.topic)).unwrap_or("")
}

/// Consume on `topic` as `group`.
pub fn consume(
    gate: &Gate,
    extensions: &Extensions,
    topic: &Option<v5::Resource>,
    group: &Option<v5::Resource>,
) -> Result<(), tonic::Status> {
    check_consume(gate, extensions, name(topic), name(group))
}

/// Consume on the topic of `queue` as `group`.
pub fn consume_queue(
    gate: &Gate,
    extensions: &Extensions,
    queue: &Option<v5::MessageQueue>,
    group: &Option<v5::Resource>,
) -> Result<(), tonic::Status> {
    check_consume(gate, extensions, queue_topic(queue), name(group))
}

/// Consume on the topic of `queue`, for a request that names no group.
pub fn consume_topic_of(
    gate: &Gate,
    extensions: &Extensions,
    queue: &Option<v5::MessageQueue>,
) -> Result<(), tonic::Status> {
    gate.check(
        extensions,
        Action::Consume,
        crate::access::consumed(queue_topic(queue)),
    )
}

/// A route is for producers and consumers alike: send or consume on the topic.
pub fn route(
    gate: &Gate,
    extensions: &Extensions,
    topic: &Option<v5::Resource>,
) -> Result<(), tonic::Status> {
    check_send_or_consume(gate, extensions, name(topic))
}

/// Send on `topic`.
pub fn send_to(
    gate: &Gate,
    extensions: &Extensions,
    topic: &Option<v5::Resource>,
) -> Result<(), tonic::Status> {
    gate.check(extensions, Action::Send, Resource::Topic(name(topic)))
}

/// Send on every topic `messages` go to: all or nothing, so that a request is never half sent
/// for want of a permission.
pub fn send(
    gate: &Gate,
    extensions: &Extensions,
    messages: &[v5::Message],
) -> Result<(), tonic::Status> {
    let mut checked: Vec<&str> = Vec::new();
    for message in messages {
        let topic = name(&message.topic);
        if !checked.contains(&topic) {
            gate.check(extensions, Action::Send, Resource::Topic(topic))?;
            checked.push(topic);
        }
    }
    Ok(())
}

/// A heartbeat: a consumer's names its group (consume on it, so that a stranger's heartbeat
/// registers no member of anyone's group); a producer's names none (a known user).
pub fn heartbeat(
    gate: &Gate,
    extensions: &Extensions,
    group: &Option<v5::Resource>,
) -> Result<(), tonic::Status> {
    match name(group) {
        "" => gate.check_user(extensions),
        group => gate.check(extensions, Action::Consume, Resource::Group(group)),
    }
}
