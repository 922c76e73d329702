//! Topic routes from the controller, cached and kept current by the route watch stream.
//!
//! A route says, per broker group, how many queues the topic has there, who the master is and
//! whether it is alive. The first use of a topic asks the controller (`GetRoute`); from then on
//! the leader pushes every change over `WatchRoutes` (a master changed, a broker died or came
//! back), so clients learn of a failover in milliseconds, not at a 30 s poll. When no controller
//! answers, the cached routes keep serving: sends go on to the brokers that were known.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::Credentials;
use proto::controller::controller_client::ControllerClient;
use tokio::sync::Notify;

use crate::controller::{wire, ControllerConnection};
use crate::error::ClientError;

/// RocketMQ's write permission bit.
const PERM_WRITE: u32 = 2;
/// RocketMQ's read permission bit.
const PERM_READ: u32 = 4;
/// Pause before the watch is opened again after it ended.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);
/// Longest the TCP connect of the route watch to one controller may take.
const WATCH_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the watch task checks whether its cache is still used.
const ORPHAN_CHECK: Duration = Duration::from_secs(1);

/// One queue of a topic as a client addresses it: the broker group, the queue id within that
/// group, and the group's master.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueRef {
    pub group: String,
    pub queue_id: u32,
    /// The master's address; empty when the group has no master.
    pub master_addr: String,
    pub master_alive: bool,
}

/// The one place this crate builds its connection to the controller quorum, for the producer
/// and the push consumer.
pub(crate) fn controller_connection(
    controllers: &str,
    credentials: &Option<Credentials>,
) -> Result<ControllerConnection, ClientError> {
    Ok(ControllerConnection::new(controllers)?.with_user(credentials.clone()))
}

/// The cache, shared by a client's producers and consumers.
pub struct Routes {
    conn: Arc<ControllerConnection>,
    /// What the route watch's own channels are signed with.
    credentials: Option<Credentials>,
    cache: Mutex<HashMap<String, Arc<wire::TopicRoute>>>,
    /// Topics the watch should cover; the watch reopens when this grows.
    watched: Mutex<BTreeSet<String>>,
    watched_changed: Notify,
    /// Raised on every route update, for consumers that rebalance on it.
    updates: tokio::sync::watch::Sender<u64>,
}

impl Routes {
    /// Starts the cache and its watch task on the current tokio runtime; the watch is
    /// anonymous.
    pub fn start(conn: Arc<ControllerConnection>) -> Arc<Routes> {
        Routes::start_as(conn, None)
    }

    /// [`Routes::start`], the route watch signed with `credentials`.
    pub fn start_as(
        conn: Arc<ControllerConnection>,
        credentials: Option<Credentials>,
    ) -> Arc<Routes> {
        let routes = Arc::new(Routes {
            conn,
            credentials,
            cache: Mutex::new(HashMap::new()),
            watched: Mutex::new(BTreeSet::new()),
            watched_changed: Notify::new(),
            updates: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(watch_loop(Arc::downgrade(&routes)));
        routes
    }

    /// The route of `topic`: cached, or asked of the controller on first use.
    pub async fn get(&self, topic: &str) -> Result<Arc<wire::TopicRoute>, ClientError> {
        if let Some(route) = self.cache.lock().expect("route cache lock").get(topic) {
            return Ok(route.clone());
        }
        let route = Arc::new(self.conn.route(topic).await?);
        self.cache
            .lock()
            .expect("route cache lock")
            .insert(topic.to_owned(), route.clone());
        if self
            .watched
            .lock()
            .expect("watched lock")
            .insert(topic.to_owned())
        {
            self.watched_changed.notify_one();
        }
        Ok(route)
    }

    /// A receiver that changes on every route update.
    pub fn updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.updates.subscribe()
    }

    fn apply(&self, update: wire::RouteUpdate) {
        let mut cache = self.cache.lock().expect("route cache lock");
        for route in update.routes {
            cache.insert(route.topic.clone(), Arc::new(route));
        }
        drop(cache);
        self.updates.send_modify(|v| *v += 1);
    }
}

/// The queues of `route` a producer may write: groups with write permission, every queue, with
/// the master's address and liveness.
pub fn writable_queues(route: &wire::TopicRoute) -> Vec<QueueRef> {
    queues(route, PERM_WRITE)
}

/// The queues of `route` a consumer may read.
pub fn readable_queues(route: &wire::TopicRoute) -> Vec<QueueRef> {
    queues(route, PERM_READ)
}

fn queues(route: &wire::TopicRoute, perm: u32) -> Vec<QueueRef> {
    let mut out = Vec::new();
    for group in route.groups.iter().filter(|g| g.perm & perm != 0) {
        let master = group
            .brokers
            .iter()
            .find(|b| Some(b.broker_id) == group.master_id);
        for queue_id in 0..group.queue_count {
            out.push(QueueRef {
                group: group.group.clone(),
                queue_id,
                master_addr: master.map(|m| m.addr.clone()).unwrap_or_default(),
                master_alive: master.is_some_and(|m| m.alive),
            });
        }
    }
    out
}

/// The brokers of `group` in `route` that a consumer may read from, best first: the master,
/// then the slaves the controller reports alive, then the others.
pub fn read_candidates(route: &wire::TopicRoute, group: &str) -> Vec<String> {
    let Some(group) = route.groups.iter().find(|g| g.group == group) else {
        return Vec::new();
    };
    let mut brokers: Vec<&wire::BrokerRoute> = group.brokers.iter().collect();
    brokers.sort_by_key(|b| (Some(b.broker_id) != group.master_id, !b.alive, b.broker_id));
    brokers.into_iter().map(|b| b.addr.clone()).collect()
}

/// Keeps a watch open on the controller leader for the watched topics; reopens it when it ends
/// (leader change) or when the watched set grows. Ends when the cache is dropped.
async fn watch_loop(routes: std::sync::Weak<Routes>) {
    loop {
        let Some(this) = routes.upgrade() else { return };
        let topics: Vec<String> = this
            .watched
            .lock()
            .expect("watched lock")
            .iter()
            .cloned()
            .collect();
        if topics.is_empty() {
            let _ = tokio::time::timeout(ORPHAN_CHECK, this.watched_changed.notified()).await;
            continue;
        }
        if let Some(mut stream) = open_watch(&this.conn, this.credentials.as_ref(), &topics).await {
            let mut orphan_check = tokio::time::interval(ORPHAN_CHECK);
            loop {
                tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(update)) => this.apply(update),
                        Ok(None) | Err(_) => break,
                    },
                    () = this.watched_changed.notified() => break,
                    _ = orphan_check.tick() => {
                        // Only this task still holds the cache: its owner is gone.
                        if Arc::strong_count(&this) == 1 {
                            return;
                        }
                    }
                }
            }
        }
        drop(this);
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// Opens the watch on whichever controller is leader: tries each address, following a
/// follower's redirect to the leader.
async fn open_watch(
    conn: &ControllerConnection,
    credentials: Option<&Credentials>,
    topics: &[String],
) -> Option<tonic::Streaming<wire::RouteUpdate>> {
    let request = wire::WatchRoutesRequest {
        topics: topics.to_vec(),
    };
    let mut candidates: Vec<String> = conn.addrs().map(str::to_owned).collect();
    let mut tried = BTreeSet::new();
    while let Some(addr) = candidates.pop() {
        if !tried.insert(addr.clone()) {
            continue;
        }
        let Ok(endpoint) = proto::dial::endpoint(&addr, WATCH_CONNECT_TIMEOUT) else {
            continue;
        };
        let channel = crate::pool::signed(endpoint.connect_lazy(), credentials);
        match ControllerClient::new(channel)
            .watch_routes(request.clone())
            .await
        {
            Ok(response) => return Some(response.into_inner()),
            Err(status) => {
                if let Some(leader) =
                    proto::ErrorStatus::from_status(&status).and_then(|error| error.leader_addr)
                {
                    candidates.push(leader);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> wire::TopicRoute {
        wire::TopicRoute {
            topic: "t".into(),
            groups: vec![
                wire::QueueGroupRoute {
                    group: "a".into(),
                    queue_count: 2,
                    perm: 6,
                    master_id: Some(0),
                    master_epoch: 1,
                    brokers: vec![wire::BrokerRoute {
                        broker_id: 0,
                        addr: "h:1".into(),
                        role: wire::BrokerRole::Master as i32,
                        alive: true,
                        ..Default::default()
                    }],
                },
                wire::QueueGroupRoute {
                    group: "b".into(),
                    queue_count: 1,
                    perm: 4,
                    master_id: None,
                    master_epoch: 0,
                    brokers: vec![],
                },
            ],
        }
    }

    #[test]
    fn queues_follow_permissions_and_masters() {
        let writable = writable_queues(&route());
        assert_eq!(writable.len(), 2);
        assert!(writable.iter().all(|q| q.group == "a" && q.master_alive));
        let readable = readable_queues(&route());
        assert_eq!(readable.len(), 3);
        assert!(readable
            .iter()
            .any(|q| q.group == "b" && q.master_addr.is_empty() && !q.master_alive));
    }
}
