//! Where a round's failover time goes, as users feel it: from the kill to the controller's
//! decision (the first route push that names another master for the group: clients learn of a
//! failover by that push), to the new master serving (it answers its `HaStatus` as master of the
//! new epoch, which it does once the heartbeat answer that told it brought its lease), to the
//! first `SEND_OK` (measured by the round itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::controller::ControllerConnection;
use client::routes::{writable_queues, Routes};

/// How often the new master is asked whether it serves yet.
const SERVING_POLL: Duration = Duration::from_millis(5);

/// Every route push the drill received, per broker group: when it named which master address.
#[derive(Clone)]
pub(super) struct RouteLog {
    changes: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

impl RouteLog {
    /// Watches `topic`'s route from the controllers at `controllers` (comma-separated), the way a
    /// producer does, until the process ends.
    pub(super) async fn start(controllers: &str, topic: &str) -> anyhow::Result<RouteLog> {
        // Signed as the drill's user, as producers' route watches are: with the ACL on, routes
        // are read by users who may send to or consume the topic.
        let credentials = crate::identity::credentials();
        let connection = ControllerConnection::new(controllers)?.with_user(credentials.clone());
        let routes = Routes::start_as(Arc::new(connection), credentials);
        // The first read makes the cache watch the topic.
        routes.get(topic).await?;
        let log = RouteLog {
            changes: Arc::default(),
        };
        let (changes, topic) = (log.changes.clone(), topic.to_owned());
        tokio::spawn(async move {
            let mut updates = routes.updates();
            let mut masters: HashMap<String, String> = HashMap::new();
            loop {
                if let Ok(route) = routes.get(&topic).await {
                    let now = Instant::now();
                    for queue in writable_queues(&route) {
                        if masters.get(&queue.group) != Some(&queue.master_addr) {
                            masters.insert(queue.group.clone(), queue.master_addr.clone());
                            changes.lock().expect("lock").push((
                                now,
                                queue.group,
                                queue.master_addr,
                            ));
                        }
                    }
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(log)
    }

    /// When a push after `since` first named a master of `group` other than `old_addr`.
    pub(super) fn moved_at(&self, group: &str, old_addr: &str, since: Instant) -> Option<Instant> {
        self.changes
            .lock()
            .expect("lock")
            .iter()
            .find(|(at, g, addr)| {
                *at >= since && g == group && addr != old_addr && !addr.is_empty()
            })
            .map(|(at, _, _)| *at)
    }
}

/// Asks each of a group's other brokers, from a kill on, whether it serves as master of a newer
/// epoch ([`serving_at`]). Dropping it stops the asking.
pub(super) struct ServingProbe {
    tasks: Vec<tokio::task::JoinHandle<Option<Instant>>>,
}

impl ServingProbe {
    pub(super) fn start(addrs: Vec<String>, epoch: u64, deadline: Instant) -> ServingProbe {
        let tasks = addrs
            .into_iter()
            .map(|addr| tokio::spawn(async move { serving_at(&addr, epoch, deadline).await }))
            .collect();
        ServingProbe { tasks }
    }

    /// The earliest time a broker was seen serving, waiting at most `grace` for each that has
    /// not seen it yet (only the new master does; the others would ask until their deadline).
    pub(super) async fn first(mut self, grace: Duration) -> Option<Instant> {
        let mut first: Option<Instant> = None;
        for task in &mut self.tasks {
            if let Ok(Ok(Some(at))) = tokio::time::timeout(grace, task).await {
                first = Some(first.map_or(at, |f| f.min(at)));
            }
        }
        first
    }
}

impl Drop for ServingProbe {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Asks the broker at `addr` every [`SERVING_POLL`] until it answers as master of `epoch` (or
/// a later one), or `deadline` passes; when it first did.
async fn serving_at(addr: &str, epoch: u64, deadline: Instant) -> Option<Instant> {
    loop {
        if let Ok(status) = crate::ha::ha_status(addr).await {
            if status.master_epoch >= epoch {
                return Some(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(SERVING_POLL).await;
    }
}
