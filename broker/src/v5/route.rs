//! `QueryRoute`: a topic's queues as RocketMQ 5 clients address them.
//!
//! With a controller, the route is the controller's (`GetRoute`): per broker group, its queue
//! count and permission, and its members. Each queue is a `MessageQueue` whose broker is named
//! by the group, with id 0 (the official clients send and receive only through queues of broker
//! 0, the master by upstream's convention), reached at one member of the group: an alive slave
//! when the group has one, else the master. Any member serves the group's calls through its
//! current master (see the module above), so a client that holds a slave's address does not
//! notice a master's failover at all.
//!
//! Why one address and not every member's: the official clients dial the addresses of one
//! `Endpoints` as one gRPC target (`ipv4:a:p,b:q`), and gRPC then sends that whole list as the
//! HTTP/2 `:authority`, which is not a valid authority; the HTTP/2 server under tonic refuses
//! such a request with PROTOCOL_ERROR (measured with the Python client 5.1.2). A host name that
//! resolves to every member (`DOMAIN_NAME`, one address) would work and is the way to make the
//! access point itself survive a node's loss (docs/CLIENTS.md).
//!
//! A standalone broker answers with its own topics and its own address.
//!
//! Every queue accepts NORMAL and FIFO messages: the clients check a message's type against
//! `accept_message_types` before they send.

use std::net::IpAddr;
use std::sync::Arc;

use auth::ClusterKey;
use controller_client::{ControllerConnection, ControllerError};
use proto::common::ErrorCode;
use proto::controller as wire;
use proto::v5;

use super::status::{ok, refused, status};
use crate::topics::TopicRegistry;

/// RocketMQ's permission bits in a route: read and write.
const PERM_READ: u32 = 4;
const PERM_WRITE: u32 = 2;
/// Longest topic name accepted in a route query, as everywhere in the cluster.
const TOPIC_BYTES_MAX: usize = 255;

/// The message types every queue accepts.
const ACCEPTED_TYPES: [v5::MessageType; 2] = [v5::MessageType::Normal, v5::MessageType::Fifo];

/// Why the route source could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RouteSourceError {
    #[error("controller_addr: {0}")]
    Controller(#[from] ControllerError),
}

/// Where routes come from.
pub enum Routes {
    /// The controller quorum's routes.
    Controller(ControllerConnection),
    /// A standalone broker: its own topics, at its own v5 address.
    Standalone {
        topics: Arc<TopicRegistry>,
        group: String,
        v5_addr: String,
    },
}

impl Routes {
    /// Routes from the controllers at `controller_addr`, or, when it is empty, this broker's own.
    pub fn new(
        controller_addr: &str,
        cluster_key: &ClusterKey,
        topics: Arc<TopicRegistry>,
        group: String,
        v5_addr: String,
    ) -> Result<Routes, RouteSourceError> {
        if controller_addr.is_empty() {
            return Ok(Routes::Standalone {
                topics,
                group,
                v5_addr,
            });
        }
        // As a member (`RouteForBroker`): the client's own permission on the topic was checked
        // here already, and the controller, which enforces its ACL on `GetRoute`, would refuse
        // a broker that asked without a user.
        Ok(Routes::Controller(ControllerConnection::member(
            controller_addr,
            cluster_key.clone(),
        )?))
    }

    /// The answer to `request`.
    pub async fn query(&self, request: v5::QueryRouteRequest) -> v5::QueryRouteResponse {
        let refusal = |status| v5::QueryRouteResponse {
            status: Some(status),
            message_queues: Vec::new(),
        };
        let Some(topic) = request.topic.filter(|t| !t.name.is_empty()) else {
            return refusal(status(v5::Code::IllegalTopic, "the topic's name is empty"));
        };
        if topic.name.len() > TOPIC_BYTES_MAX {
            return refusal(status(
                v5::Code::IllegalTopic,
                format!("a topic name is at most {TOPIC_BYTES_MAX} bytes"),
            ));
        }
        let queues = match self {
            Routes::Standalone {
                topics,
                group,
                v5_addr,
            } => match topics.get(&topic.name) {
                Some(config) => queues_of(
                    &topic,
                    group,
                    config.queue_count,
                    PERM_READ | PERM_WRITE,
                    &[v5_addr.as_str()],
                ),
                None => Vec::new(),
            },
            Routes::Controller(conn) => match conn.route_for_broker(&topic.name).await {
                Ok(route) => route_queues(&topic, &route),
                Err(err) => return refusal(controller_refusal(&err)),
            },
        };
        if queues.is_empty() {
            return refusal(refused(
                ErrorCode::TopicNotFound,
                format!(
                    "topic {} does not exist, or no broker serves it to RocketMQ 5 clients",
                    proto::Echo(&topic.name)
                ),
            ));
        }
        v5::QueryRouteResponse {
            status: Some(ok()),
            message_queues: queues,
        }
    }
}

/// The v5 status of a failed route query.
fn controller_refusal(err: &ControllerError) -> v5::Status {
    match err.code() {
        Some(code) => refused(code, err.to_string()),
        None => refused(ErrorCode::ControllerNotAvailable, err.to_string()),
    }
}

/// The queues of a controller's route: every group that has queues and a member serving v5.
fn route_queues(topic: &v5::Resource, route: &wire::TopicRoute) -> Vec<v5::MessageQueue> {
    let mut queues = Vec::new();
    for group in &route.groups {
        let Some(addr) = endpoint_member(group) else {
            continue;
        };
        queues.extend(queues_of(
            topic,
            &group.group,
            group.queue_count,
            group.perm,
            &[addr],
        ));
    }
    queues
}

/// The v5 address a group's queues are reached at: the alive slave with the lowest id, else
/// the master if alive, else any member serving v5 (the route says who is alive as the
/// controller sees it; a client re-reads it every 30 s).
fn endpoint_member(group: &wire::QueueGroupRoute) -> Option<&str> {
    let serving = || group.brokers.iter().filter(|b| !b.v5_addr.is_empty());
    let is_master = |b: &wire::BrokerRoute| group.master_id == Some(b.broker_id);
    serving()
        .filter(|b| b.alive && !is_master(b))
        .min_by_key(|b| b.broker_id)
        .or_else(|| serving().find(|b| b.alive && is_master(b)))
        .or_else(|| serving().min_by_key(|b| b.broker_id))
        .map(|b| b.v5_addr.as_str())
}

/// `queue_count` queues of `group`, reached at `addrs`; none when no address can be given.
fn queues_of(
    topic: &v5::Resource,
    group: &str,
    queue_count: u32,
    perm: u32,
    addrs: &[&str],
) -> Vec<v5::MessageQueue> {
    let Some(endpoints) = endpoints(addrs) else {
        return Vec::new();
    };
    let broker = v5::Broker {
        name: group.to_owned(),
        id: 0,
        endpoints: Some(endpoints),
    };
    (0..queue_count)
        .map(|queue_id| v5::MessageQueue {
            topic: Some(topic.clone()),
            // Queue counts are bounded far below i32::MAX (topics::QUEUE_COUNT_MAX).
            id: queue_id as i32,
            permission: permission(perm) as i32,
            broker: Some(broker.clone()),
            accept_message_types: ACCEPTED_TYPES.iter().map(|t| *t as i32).collect(),
        })
        .collect()
}

fn permission(perm: u32) -> v5::Permission {
    match (perm & PERM_READ != 0, perm & PERM_WRITE != 0) {
        (true, true) => v5::Permission::ReadWrite,
        (true, false) => v5::Permission::Read,
        (false, true) => v5::Permission::Write,
        (false, false) => v5::Permission::None,
    }
}

/// The endpoints of `addrs` (`host:port` each). One scheme per endpoints: IPv4 when every host
/// is an IPv4 address, IPv6 when every host is an IPv6 one; otherwise a host name, of which the
/// clients take only one (the first). None when no address parses.
fn endpoints(addrs: &[&str]) -> Option<v5::Endpoints> {
    let parsed: Vec<(String, i32)> = addrs.iter().filter_map(|addr| split(addr)).collect();
    let first = parsed.first()?;
    let ips: Vec<Option<IpAddr>> = parsed.iter().map(|(host, _)| host.parse().ok()).collect();
    let (scheme, chosen) = if ips.iter().all(|ip| matches!(ip, Some(IpAddr::V4(_)))) {
        (v5::AddressScheme::IPv4, parsed.clone())
    } else if ips.iter().all(|ip| matches!(ip, Some(IpAddr::V6(_)))) {
        (v5::AddressScheme::IPv6, parsed.clone())
    } else {
        (v5::AddressScheme::DomainName, vec![first.clone()])
    };
    Some(v5::Endpoints {
        scheme: scheme as i32,
        addresses: chosen
            .into_iter()
            .map(|(host, port)| v5::Address { host, port })
            .collect(),
    })
}

/// `host:port` split; an IPv6 host loses its brackets.
fn split(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> v5::Resource {
        v5::Resource {
            resource_namespace: String::new(),
            name: "orders".into(),
        }
    }

    #[test]
    fn a_group_is_reached_at_an_alive_slave_else_its_master() {
        let route = wire::TopicRoute {
            topic: "orders".into(),
            groups: vec![wire::QueueGroupRoute {
                group: "broker-a".into(),
                queue_count: 2,
                perm: 6,
                master_id: Some(1),
                master_epoch: 3,
                brokers: vec![
                    // Not alive.
                    wire::BrokerRoute {
                        broker_id: 0,
                        v5_addr: "127.0.0.2:8081".into(),
                        ..Default::default()
                    },
                    // The master.
                    wire::BrokerRoute {
                        broker_id: 1,
                        v5_addr: "127.0.0.1:8081".into(),
                        alive: true,
                        ..Default::default()
                    },
                    // Not serving v5.
                    wire::BrokerRoute {
                        broker_id: 2,
                        alive: true,
                        ..Default::default()
                    },
                    wire::BrokerRoute {
                        broker_id: 3,
                        v5_addr: "127.0.0.3:8081".into(),
                        alive: true,
                        ..Default::default()
                    },
                ],
            }],
        };
        let queues = route_queues(&topic(), &route);
        assert_eq!(queues.len(), 2);
        let broker = queues[1].broker.as_ref().unwrap();
        assert_eq!((broker.name.as_str(), broker.id), ("broker-a", 0));
        let endpoints = broker.endpoints.as_ref().unwrap();
        assert_eq!(endpoints.scheme, v5::AddressScheme::IPv4 as i32);
        assert_eq!(endpoints.addresses.len(), 1);
        assert_eq!(endpoints.addresses[0].host, "127.0.0.3", "the alive slave");
        let mut no_slave = route.groups[0].clone();
        no_slave.brokers.truncate(2);
        assert_eq!(
            endpoint_member(&no_slave),
            Some("127.0.0.1:8081"),
            "the master"
        );
        no_slave.brokers[1].alive = false;
        assert_eq!(
            endpoint_member(&no_slave),
            Some("127.0.0.2:8081"),
            "anyone serving"
        );
        assert_eq!(queues[1].id, 1);
        assert_eq!(queues[1].permission, v5::Permission::ReadWrite as i32);
        assert_eq!(
            queues[1].accept_message_types,
            vec![v5::MessageType::Normal as i32, v5::MessageType::Fifo as i32]
        );
    }

    #[test]
    fn a_group_nobody_serves_to_v5_clients_has_no_queues() {
        assert!(queues_of(&topic(), "g", 4, 6, &[]).is_empty());
        assert!(queues_of(&topic(), "g", 4, 6, &["not an address"]).is_empty());
    }

    #[test]
    fn endpoints_keep_one_scheme() {
        let v6 = endpoints(&["[::1]:8081"]).unwrap();
        assert_eq!(v6.scheme, v5::AddressScheme::IPv6 as i32);
        assert_eq!(v6.addresses[0].host, "::1");
        let names = endpoints(&["a.example:8081", "b.example:8081"]).unwrap();
        assert_eq!(names.scheme, v5::AddressScheme::DomainName as i32);
        assert_eq!(
            names.addresses.len(),
            1,
            "clients refuse several host names"
        );
        assert_eq!(permission(4), v5::Permission::Read);
        assert_eq!(permission(0), v5::Permission::None);
    }
}
