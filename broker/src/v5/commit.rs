//! Group commit of v5 consumer groups' committed offsets.
//!
//! A queue's committed offset (the lowest offset not acknowledged) is written through the
//! consumer groups' offsets (`crate::groups`): a record in the log, fsynced and, under
//! `SYNC_MASTER`, held by the in-sync set before the commit returns, about a millisecond here.
//! Written once per acknowledgement, that wait bounded a consumer to about a thousand
//! acknowledgements a second. So commits of one queue go one at a time, and each writes the
//! queue's newest offset when it starts: acknowledgements that arrive while one commit is out
//! are all covered by the next, and an acknowledgement whose offset a commit already covered
//! returns at once. Every acknowledgement is still answered only once a commit that covers it
//! returned, so a failover redelivers only what was not answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use super::pop::PopQueue;
use crate::groups::ConsumerGroupState;

/// (consumer group, topic, queue id).
pub type QueueKey = (String, String, u32);

/// Per queue, in one master epoch: the last offset committed, held while a commit is out.
type Slots = (u64, HashMap<QueueKey, Arc<AsyncMutex<u64>>>);

/// Commits queues' offsets, one commit of a queue at a time, each covering all acknowledged so
/// far.
pub struct Committer {
    groups: Arc<ConsumerGroupState>,
    slots: Mutex<Slots>,
}

impl Committer {
    pub fn new(groups: Arc<ConsumerGroupState>) -> Committer {
        Committer {
            groups,
            slots: Mutex::new((0, HashMap::new())),
        }
    }

    /// Returns once `key`'s committed offset is at least `low` (or a commit of it failed: the
    /// failure is logged, the offset is written again at the next move, and meanwhile a
    /// failover redelivers a little more). `pop` is the queue's state in `epoch`, read for its
    /// newest low when this call commits.
    pub async fn commit(&self, epoch: u64, key: &QueueKey, low: u64, pop: &AsyncMutex<PopQueue>) {
        let slot = {
            let mut slots = self.slots.lock().expect("commit slots lock poisoned");
            if slots.0 != epoch {
                *slots = (epoch, HashMap::new());
            }
            slots.1.entry(key.clone()).or_default().clone()
        };
        let mut committed = slot.lock().await;
        if *committed >= low {
            return;
        }
        // At least `low`: a queue's low only moves up within an epoch.
        let newest = pop.lock().await.low().max(low);
        let (group, topic, queue_id) = key;
        match self.groups.commit(group, topic, *queue_id, newest).await {
            Ok(_) => *committed = newest,
            Err(err) => tracing::warn!(
                group = %group,
                topic = %topic,
                queue_id,
                low = newest,
                error = %err,
                "could not commit a v5 group's offset"
            ),
        }
    }
}
