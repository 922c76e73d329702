//! Which brokers are alive, as the controller leader sees it: the time of each broker's last
//! heartbeat, in memory only. Writing heartbeats to the Raft log would grow it with time instead
//! of with changes; a new leader simply starts listening.
//!
//! What a broker last said also feeds elections (`election.rs`): its process incarnation, the
//! newest epoch in its log and its log end rank it as a candidate, and a master's `resigned` flag
//! ends a planned switchover. Registration counts as a heartbeat, so that a broker is a candidate
//! as soon as it has registered.
//!
//! A broker process that stops cleanly says so in its last heartbeat ([`Liveness::stopped`]):
//! it counts as not alive at once, not after the timeout, until a process of another incarnation
//! registers. That notice changes nothing else: elections and leases go by the heartbeats before
//! it.
//!
//! A leader that has just taken over has heard nobody yet. For one timeout after it became
//! leader, a broker it has not heard from counts as alive (it was, as far as anyone knows): a
//! controller election must not look like every broker dying at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::controller as pb;
use proto::controller::ReplicaProgress;

use super::gone::GoneReport;
use tokio::sync::watch;

/// Most replica progress entries kept from one heartbeat: a group is a master and a few slaves,
/// and the in-sync set is capped the same way, so more is a malformed report whose tail can go.
pub const REPLICAS_MAX: usize = super::state::IN_SYNC_SET_MAX;

/// What a broker says in one heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heartbeat {
    /// The broker's commit-log end.
    pub max_offset: u64,
    /// The metadata revision the broker has applied.
    pub synced_revision: u64,
    /// The broker's confirm offset: what its consumers may see.
    pub confirm_offset: u64,
    /// From a master: how far each slave it knows is. Empty from a slave.
    pub replicas: Vec<ReplicaProgress>,
    /// The broker process's incarnation (random per process start).
    pub incarnation: u64,
    /// The newest epoch in the broker's commit log.
    pub log_epoch: u64,
    /// The master epoch the broker acts in (0: none yet).
    pub master_epoch: u64,
    /// A master asked to resign says it has stopped acknowledging.
    pub resigned: bool,
    /// Its store's faults and verification.
    pub store: StoreReport,
    /// From a slave: the master it found gone (`gone.rs`).
    pub master_gone: Option<GoneReport>,
}

/// A broker's store as it reported it (`StoreHealth` on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// A write or fsync failed: the store takes no writes until the broker restarts it.
    pub write_failed: bool,
    /// The lowest commit-log offset known corrupt.
    pub corrupt_offset: Option<u64>,
    /// The disk is past the high-water mark: client sends are refused.
    pub disk_full: bool,
    /// Every record held at the store's open has been verified since.
    pub verified: bool,
    /// The faults in words (bounded), for cluster list.
    pub problem: String,
}

/// Longest store problem text kept per broker: it comes from the network.
const STORE_PROBLEM_BYTES_MAX: usize = 512;

/// `text` cut to at most `bytes_max` bytes at a character boundary.
fn bounded(text: &str, bytes_max: usize) -> String {
    let mut cut = text.len().min(bytes_max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

impl StoreReport {
    pub fn from_wire(wire: Option<&pb::StoreHealth>) -> StoreReport {
        let Some(wire) = wire else {
            return StoreReport::default();
        };
        StoreReport {
            write_failed: wire.write_failed,
            corrupt_offset: wire.corrupt_offset,
            disk_full: wire.disk_full,
            verified: wire.verified,
            problem: bounded(&wire.problem, STORE_PROBLEM_BYTES_MAX),
        }
    }

    pub fn to_wire(&self) -> pb::StoreHealth {
        pb::StoreHealth {
            write_failed: self.write_failed,
            corrupt_offset: self.corrupt_offset,
            disk_full: self.disk_full,
            verified: self.verified,
            problem: self.problem.clone(),
        }
    }

    /// How fit the broker is to be master, best first (elections pick from the best tier that
    /// has an alive candidate): `None` for a store that cannot write at all.
    pub fn master_tier(&self) -> Option<u8> {
        if self.write_failed {
            None
        } else if self.corrupt_offset.is_some() {
            Some(3)
        } else if self.disk_full {
            Some(2)
        } else if !self.verified {
            Some(1)
        } else {
            Some(0)
        }
    }

    /// A master with this store should hand mastership to a sounder in-sync broker.
    pub fn unfit_master(&self) -> bool {
        self.master_tier().is_none_or(|tier| tier >= 2)
    }
}

/// What the leader last heard from one broker.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the leader received it (for a forwarded heartbeat: when the forward arrived, which
    /// is later than the broker sent it).
    pub at: Instant,
    pub max_offset: u64,
    /// The metadata revision the broker has applied.
    pub synced_revision: u64,
    pub confirm_offset: u64,
    /// The master's report on its slaves (at most [`REPLICAS_MAX`]).
    pub replicas: Vec<ReplicaProgress>,
    pub incarnation: u64,
    pub log_epoch: u64,
    pub master_epoch: u64,
    pub resigned: bool,
    pub store: StoreReport,
    /// From a slave: the master it found gone, as its latest heartbeat said.
    pub master_gone: Option<GoneReport>,
}

impl Seen {
    /// This (master's) report on slave `broker_id`, if it made one.
    pub fn replica(&self, broker_id: u64) -> Option<&ReplicaProgress> {
        self.replicas.iter().find(|r| r.broker_id == broker_id)
    }
}

/// The leader's liveness table.
pub struct Liveness {
    timeout: Duration,
    inner: Mutex<Inner>,
    /// Raised whenever some broker's alive flag may have changed, for route watches.
    changes: watch::Sender<u64>,
}

struct Inner {
    seen: HashMap<(String, u64), Seen>,
    /// Brokers whose process said it is stopping, with that process's incarnation.
    stopped: HashMap<(String, u64), u64>,
    /// When this node last became leader; None while it is not leader.
    leader_since: Option<Instant>,
    /// The alive set as last published, to tell when it changed.
    published: Vec<(String, u64, bool)>,
}

impl Liveness {
    pub fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                stopped: HashMap::new(),
                leader_since: None,
                published: Vec::new(),
            }),
            changes: watch::channel(0).0,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This node became leader (`true`) or stopped being it: either way, forget what was heard.
    pub fn set_leader(&self, leader: bool) {
        let mut inner = self.inner.lock().expect("liveness lock poisoned");
        inner.seen.clear();
        inner.stopped.clear();
        inner.leader_since = leader.then(Instant::now);
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
    }

    /// When this node last became leader; None while it is not leader.
    pub fn leader_since(&self) -> Option<Instant> {
        self.inner
            .lock()
            .expect("liveness lock poisoned")
            .leader_since
    }

    /// Records a heartbeat (or a registration) received at `received_at`.
    pub fn beat(&self, group: &str, broker_id: u64, heartbeat: Heartbeat, received_at: Instant) {
        let Heartbeat {
            max_offset,
            synced_revision,
            confirm_offset,
            mut replicas,
            incarnation,
            log_epoch,
            master_epoch,
            resigned,
            store,
            master_gone,
        } = heartbeat;
        replicas.truncate(REPLICAS_MAX);
        let mut inner = self.inner.lock().expect("liveness lock poisoned");
        let was_alive = Self::alive_in(&inner, self.timeout, group, broker_id, Instant::now());
        let key = (group.to_owned(), broker_id);
        // A new process of a stopped broker is alive again; the stopped one stays stopped.
        if inner
            .stopped
            .get(&key)
            .is_some_and(|stopped| *stopped != incarnation)
        {
            inner.stopped.remove(&key);
        }
        // Two heartbeats of one broker handled concurrently: the later receive time stays, so
        // that a broker never looks silent longer than it was.
        if inner.seen.get(&key).is_some_and(|s| s.at > received_at) {
            return;
        }
        inner.seen.insert(
            key,
            Seen {
                at: received_at,
                max_offset,
                synced_revision,
                confirm_offset,
                replicas,
                incarnation,
                log_epoch,
                master_epoch,
                resigned,
                store,
                master_gone,
            },
        );
        drop(inner);
        if !was_alive {
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Broker process `incarnation` of `group` said it is stopping: not alive from now on, until
    /// a process of another incarnation registers or heartbeats. What was last heard from it is
    /// kept as it was.
    pub fn stopped(&self, group: &str, broker_id: u64, incarnation: u64) {
        let mut inner = self.inner.lock().expect("liveness lock poisoned");
        inner
            .stopped
            .insert((group.to_owned(), broker_id), incarnation);
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
    }

    /// What was last heard from a broker, since this node became leader.
    pub fn seen(&self, group: &str, broker_id: u64) -> Option<Seen> {
        let inner = self.inner.lock().expect("liveness lock poisoned");
        inner.seen.get(&(group.to_owned(), broker_id)).cloned()
    }

    /// What was last heard from each broker of `group` since this node became leader, by id.
    pub fn seen_group(&self, group: &str) -> BTreeMap<u64, Seen> {
        let inner = self.inner.lock().expect("liveness lock poisoned");
        inner
            .seen
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, id), seen)| (*id, seen.clone()))
            .collect()
    }

    /// Whether the broker counts as alive now.
    pub fn is_alive(&self, group: &str, broker_id: u64) -> bool {
        let inner = self.inner.lock().expect("liveness lock poisoned");
        Self::alive_in(&inner, self.timeout, group, broker_id, Instant::now())
    }

    fn alive_in(inner: &Inner, timeout: Duration, group: &str, id: u64, now: Instant) -> bool {
        let key = (group.to_owned(), id);
        if inner.stopped.contains_key(&key) {
            return false;
        }
        match inner.seen.get(&key) {
            Some(seen) => now.duration_since(seen.at) < timeout,
            None => inner
                .leader_since
                .is_some_and(|since| now.duration_since(since) < timeout),
        }
    }

    /// Re-evaluates the alive flags of `brokers` and tells route watches if any changed. Called
    /// periodically: a broker dies by silence, so no event marks the moment.
    pub fn publish(&self, brokers: &[(String, u64)]) {
        let mut inner = self.inner.lock().expect("liveness lock poisoned");
        let now = Instant::now();
        let flags: Vec<_> = brokers
            .iter()
            .map(|(g, id)| {
                (
                    g.clone(),
                    *id,
                    Self::alive_in(&inner, self.timeout, g, *id, now),
                )
            })
            .collect();
        if flags != inner.published {
            inner.published = flags;
            drop(inner);
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// A receiver that changes whenever alive flags may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_counts_unheard_brokers_alive_for_one_timeout() {
        let liveness = Liveness::new(Duration::from_millis(50));
        assert!(!liveness.is_alive("a", 0), "not leader: nothing is known");
        liveness.set_leader(true);
        assert!(liveness.is_alive("a", 0));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!liveness.is_alive("a", 0), "grace over, never heard");
        liveness.beat(
            "a",
            0,
            Heartbeat {
                max_offset: 7,
                synced_revision: 1,
                ..Heartbeat::default()
            },
            Instant::now(),
        );
        assert!(liveness.is_alive("a", 0));
        assert_eq!(liveness.seen("a", 0).map(|s| s.max_offset), Some(7));
    }

    #[test]
    fn a_heartbeat_keeps_the_confirm_offset_and_a_bounded_replica_report() {
        let liveness = Liveness::new(Duration::from_secs(60));
        liveness.set_leader(true);
        let replicas: Vec<ReplicaProgress> = (1..=REPLICAS_MAX as u64 + 5)
            .map(|broker_id| ReplicaProgress {
                broker_id,
                acked_offset: 90,
                lag_bytes: 10,
                lag_ms: 3,
                connected: true,
            })
            .collect();
        liveness.beat(
            "a",
            0,
            Heartbeat {
                max_offset: 100,
                synced_revision: 1,
                confirm_offset: 90,
                replicas,
                ..Heartbeat::default()
            },
            Instant::now(),
        );
        let seen = liveness.seen("a", 0).unwrap();
        assert_eq!(seen.confirm_offset, 90);
        assert_eq!(seen.replicas.len(), REPLICAS_MAX);
        assert_eq!(seen.replica(1).map(|r| r.lag_bytes), Some(10));
        assert!(seen.replica(0).is_none());
    }

    #[test]
    fn a_heartbeat_handled_late_does_not_roll_the_receive_time_back() {
        let liveness = Liveness::new(Duration::from_secs(60));
        liveness.set_leader(true);
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(5);
        let beat = |log_epoch| Heartbeat {
            log_epoch,
            incarnation: 7,
            ..Heartbeat::default()
        };
        liveness.beat("a", 0, beat(2), later);
        liveness.beat("a", 0, beat(1), earlier);
        let seen = liveness.seen("a", 0).unwrap();
        assert_eq!((seen.at, seen.log_epoch, seen.incarnation), (later, 2, 7));
        assert_eq!(liveness.seen_group("a").len(), 1);
        assert!(liveness.seen_group("b").is_empty());
    }

    #[test]
    fn a_stopping_broker_is_not_alive_until_a_new_process_is_heard() {
        let liveness = Liveness::new(Duration::from_secs(60));
        liveness.set_leader(true);
        let beat = |incarnation| Heartbeat {
            incarnation,
            max_offset: 5,
            ..Heartbeat::default()
        };
        let heard = Instant::now();
        liveness.beat("a", 0, beat(7), heard);
        let mut changes = liveness.changes();
        changes.mark_unchanged();
        liveness.stopped("a", 0, 7);
        assert!(!liveness.is_alive("a", 0));
        assert!(
            changes.has_changed().unwrap(),
            "route watches are told at once"
        );
        let seen = liveness.seen("a", 0).unwrap();
        assert_eq!((seen.at, seen.max_offset), (heard, 5), "kept as it was");
        // A late heartbeat of the stopping process does not bring it back; a new process does.
        liveness.beat("a", 0, beat(7), Instant::now());
        assert!(!liveness.is_alive("a", 0));
        liveness.beat("a", 0, beat(8), Instant::now());
        assert!(liveness.is_alive("a", 0));
        // Unheard brokers of a new leader are presumed alive again, a stopped one among them.
        liveness.stopped("a", 1, 3);
        liveness.set_leader(true);
        assert!(liveness.is_alive("a", 1));
    }

    #[test]
    fn publish_signals_only_changes() {
        let liveness = Liveness::new(Duration::from_secs(60));
        liveness.set_leader(true);
        let mut changes = liveness.changes();
        changes.mark_unchanged();
        let brokers = vec![("a".to_owned(), 0)];
        liveness.publish(&brokers);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        liveness.publish(&brokers);
        assert!(!changes.has_changed().unwrap());
    }
}
