//! Controller faults under load, as real processes: three `controller`s and broker group
//! `broker-a` of three `CONTROLLED` brokers (`replication_mode = SYNC`, `SYNC_FLUSH`), on
//! 127.0.0.1 with ephemeral ports, killed with real signals, while a routed producer sends
//! without pause, one message at a time.
//!
//! Invariants, checked on the whole history of each test:
//! - every message acknowledged `SEND_OK` is consumed afterwards, from whichever broker is
//!   master at the end, and per queue in the order it was sent;
//! - up to the confirm offset, every broker's log is byte-identical to the final master's, and
//!   every group view the test read names one master per master epoch;
//! - the controller leader and the master killed at the same moment: a new controller leader is
//!   elected, then a new master (another broker, a higher master epoch), and sends are answered
//!   `SEND_OK` again, each within a deadline;
//! - without a controller quorum (two of three controllers killed) the master acknowledges
//!   nothing once its lease has run out: no send is answered `SEND_OK` later than the kill plus
//!   `broker_lease_ms` plus [`SLACK`] until a controller is started again, and the master itself
//!   answers `NOT_MASTER`; once the quorum is back, `SEND_OK` resumes.
//!
//! The time from the kill to the first `SEND_OK` of a send started after it is printed per
//! round, and so is when a master without a quorum stopped acknowledging.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{ClientError, ErrorCode, Message, Producer, ProducerConfig, SendStatus};
use cluster_tests::failover::{
    broker, check_history, create_topic, group_state, runtime, wait_for_full_set, GroupState,
    Sender, Sent, BROKERS, TOPIC,
};
use cluster_tests::{
    controller_leader, wait_for_controller_leader, wait_until, BrokerProcess, ControllerQuorum,
};

/// The controllers' `broker_lease_ms`, set explicitly so that the outage check below uses the
/// lease the quorum grants.
const LEASE: Duration = Duration::from_millis(1_000);

/// What a `SEND_OK` may still take to reach the sender's history after the master's last lease
/// check passed: the answer's trip over loopback, the scheduling of the broker's answer task and
/// of the sender's task (debug builds, two cores shared with five other processes). Both
/// processes read the same monotonic clock, so no clock-rate term is needed.
const SLACK: Duration = Duration::from_millis(500);

/// Every (master epoch -> master ids) pair the test read from the controller.
#[derive(Default)]
struct Views(BTreeMap<u64, BTreeSet<u64>>);

impl Views {
    /// `group_state` through `controllers`, recorded.
    fn read(&mut self, controllers: &str) -> GroupState {
        let state = group_state(controllers);
        if let Some(master) = state.master {
            self.0.entry(state.epoch).or_default().insert(master);
        }
        state
    }

    fn assert_one_master_per_epoch(&self) {
        for (epoch, masters) in &self.0 {
            assert_eq!(
                masters.len(),
                1,
                "master epoch {epoch} had masters {masters:?}"
            );
        }
    }
}

/// The addresses of the controllers running now, as `--controller` takes them.
fn running(quorum: &ControllerQuorum) -> String {
    quorum
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.addr.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts three controllers (lease [`LEASE`]), the three brokers, the topic, and waits for a
/// master with everybody in sync.
fn cluster(dir: &std::path::Path) -> (ControllerQuorum, Vec<BrokerProcess>) {
    let lease = format!("broker_lease_ms={}", LEASE.as_millis());
    let quorum = ControllerQuorum::start(dir, 3, &["--set", &lease]);
    let controllers = quorum.addrs();
    let brokers = (0..BROKERS)
        .map(|id| broker(dir, id, &controllers))
        .collect();
    // Three controllers elect a leader only after an election timeout: a topic creation before
    // that is refused.
    wait_for_controller_leader(&controllers);
    create_topic(&controllers);
    wait_for_full_set(&controllers, Duration::from_secs(30));
    (quorum, brokers)
}

/// When the first send that finished at or after `at` was answered `SEND_OK`, if one has.
fn first_ok_finished_after(sender: &Sender, at: Instant) -> Option<Instant> {
    sender
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.finished >= at && s.outcome.is_ok())
        .map(|s| s.finished)
        .min()
}

#[test]
fn killing_the_controller_leader_and_the_master_together_loses_nothing() {
    const ROUNDS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let (mut quorum, mut brokers) = cluster(dir.path());
    let controllers = quorum.addrs();
    let mut views = Views::default();
    let rt = runtime();
    let sender = Sender::start(&rt, &controllers);
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        views.read(&controllers);
        // Some load first, so the kill lands in the middle of sending.
        let warm = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || sender.acked_since(warm) >= 50),
            "the producer is not acknowledged before round {round}"
        );
        // Asked just before the kill (polled: one `controller status` can fail under load).
        let leader = wait_for_controller_leader(&controllers);
        let master = before.master.expect("a master");

        // Both SIGKILLs back to back: the controller is reaped after both are sent.
        brokers[master as usize].signal(libc::SIGKILL);
        quorum.kill(leader, libc::SIGKILL);
        let killed_at = Instant::now();
        let survivors = running(&quorum);

        let mut new_leader = None;
        assert!(
            wait_until(Duration::from_secs(15), || {
                new_leader = controller_leader(&survivors).filter(|id| *id != leader);
                new_leader.is_some()
            }),
            "round {round}: no new controller leader within 15 s of killing leader {leader}"
        );
        let leader_after = killed_at.elapsed();
        let mut after = GroupState::default();
        assert!(
            wait_until(Duration::from_secs(15), || {
                after = views.read(&survivors);
                after.master.is_some_and(|m| m != master) && after.epoch > before.epoch
            }),
            "round {round}: no new master within 15 s of killing master {master}: {after:?}"
        );
        let master_after = killed_at.elapsed();
        assert!(
            wait_until(Duration::from_secs(15), || sender
                .first_ok_started_after(killed_at)
                .is_some()),
            "round {round}: no SEND_OK within 15 s of the kill: {:?}",
            views.read(&survivors)
        );
        let took = sender.first_ok_started_after(killed_at).unwrap() - killed_at;
        eprintln!(
            "round {round}: killed controller leader {leader} and master {master} (epoch {}); \
             controller leader {new_leader:?} seen after {leader_after:?}, master {:?} (epoch \
             {}) after {master_after:?}, SEND_OK again after {took:?}",
            before.epoch, after.master, after.epoch
        );
        times.push(took);

        // Both come back on their data and rejoin: the controller as a follower, the broker as a
        // slave that catches up.
        quorum.restart(leader);
        brokers[master as usize] = broker(dir.path(), master, &controllers);
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    views.read(&controllers);
    let history = sender.finish(&rt);
    times.sort();
    eprintln!(
        "kill to SEND_OK over {ROUNDS} rounds: min {:?}, median {:?}, max {:?}",
        times.first(),
        times.get(times.len() / 2),
        times.last()
    );
    views.assert_one_master_per_epoch();
    check_history(dir.path(), &controllers, &brokers, &history);
}

/// Which two controllers a quorum outage kills.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Both followers: the leader lives on alone and must grant no lease (it cannot confirm its
    /// leadership with a quorum).
    Followers,
    /// The leader and one follower: the survivor has no leader to forward heartbeats to.
    LeaderAndFollower,
}

#[test]
fn without_a_controller_quorum_a_master_stops_acknowledging_and_resumes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut quorum, brokers) = cluster(dir.path());
    let controllers = quorum.addrs();
    let mut views = Views::default();
    let rt = runtime();
    // A send retries a refusing master until its send timeout; 2 s instead of the default 6 s
    // makes the refusals show up as errors in the history while the quorum is down.
    let sender = Sender::start_with(
        &rt,
        &controllers,
        ProducerConfig {
            send_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    );
    for (round, outage) in [Outage::Followers, Outage::LeaderAndFollower]
        .into_iter()
        .enumerate()
    {
        let before = wait_for_full_set(&controllers, Duration::from_secs(30));
        views.read(&controllers);
        let master = before.master.expect("a master");
        // A second producer talks to the master alone, one attempt per send: what the master
        // itself answers.
        let probe = rt
            .block_on(Producer::connect(
                brokers[master as usize].addr(),
                ProducerConfig {
                    retries: 0,
                    send_timeout: Duration::from_secs(2),
                    ..ProducerConfig::default()
                },
            ))
            .expect("direct producer");
        let warm = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || sender.acked_since(warm) >= 50),
            "the producer is not acknowledged before round {round}"
        );
        // Asked just before the kill (polled: one `controller status` can fail under load).
        let leader = wait_for_controller_leader(&controllers);
        let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let victims = match outage {
            Outage::Followers => [followers[0], followers[1]],
            Outage::LeaderAndFollower => [leader, followers[0]],
        };
        for id in victims {
            quorum.member(id).signal(libc::SIGKILL);
        }
        // From here on no two controllers run: a lease needs a leader confirmed by a quorum, so
        // the master's last one came from a heartbeat it sent before now, and ends before
        // `killed_at + LEASE`.
        let killed_at = Instant::now();
        for id in victims {
            quorum.kill(id, libc::SIGKILL);
        }
        let refusing_from = killed_at + LEASE + SLACK;

        // The master itself refuses, within its lease: probe it until it answers NOT_MASTER.
        let mut last_probe: Option<(Instant, Result<SendStatus, ClientError>)> = None;
        let refused = wait_until(LEASE + Duration::from_secs(5), || {
            let answer = rt.block_on(probe.send(Message::new(
                TOPIC,
                Bytes::from_static(b"probe without a key: check_history skips it"),
            )));
            let refused = matches!(
                &answer,
                Err(ClientError::Broker {
                    code: ErrorCode::NotMaster,
                    ..
                })
            );
            last_probe = Some((Instant::now(), answer.map(|r| r.status)));
            refused
        });
        let (refused_at, refusal) = last_probe.expect("one probe at least");
        assert!(
            refused,
            "round {round} ({outage:?}): the master never refused without a quorum; last \
             answer {refusal:?}"
        );
        assert!(
            refused_at <= refusing_from,
            "round {round} ({outage:?}): the master answered NOT_MASTER only {:?} after the \
             kill, past its lease",
            refused_at - killed_at
        );

        // Keep the quorum down until the sender has met the refusal too: an error for a send
        // started after the lease ran out, and two seconds of refusals.
        let errors_since = |at: Instant| {
            sender
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.started >= at && s.outcome.is_err())
                .count()
        };
        assert!(
            wait_until(Duration::from_secs(15), || {
                errors_since(refusing_from) > 0
                    && Instant::now() >= refusing_from + Duration::from_secs(2)
            }),
            "round {round} ({outage:?}): the sender met no refusal while the quorum was down"
        );

        let restarting_at = Instant::now();
        for id in victims {
            quorum.restart(id);
        }
        let resumed = wait_until(Duration::from_secs(15), || {
            first_ok_finished_after(&sender, restarting_at).is_some()
        });
        assert!(
            resumed,
            "round {round} ({outage:?}): no SEND_OK within 15 s of the quorum's return: {:?}",
            views.read(&controllers)
        );

        // The history of the outage: no SEND_OK past the lease until a controller was started
        // again.
        let (last_ok, late): (Option<Instant>, Vec<Sent>) = {
            let log = sender.log.lock().unwrap();
            let during = |s: &&Sent| {
                s.outcome.is_ok() && s.finished > killed_at && s.finished < restarting_at
            };
            (
                log.iter().filter(during).map(|s| s.finished).max(),
                log.iter()
                    .filter(during)
                    .filter(|s| s.finished > refusing_from)
                    .cloned()
                    .collect(),
            )
        };
        assert!(
            late.is_empty(),
            "round {round} ({outage:?}): {} SEND_OK answered without a quorum past the lease \
             (kill + {LEASE:?} + {SLACK:?}), e.g. {:?} finished {:?} after the kill",
            late.len(),
            late[0].key,
            late[0].finished - killed_at
        );
        let after = views.read(&controllers);
        eprintln!(
            "round {round} ({outage:?}): killed controllers {victims:?} (leader {leader}); last \
             SEND_OK {:?} after the kill, the master answered NOT_MASTER after {:?}; quorum \
             down for {:?}; SEND_OK again {:?} after the restart; master {:?} epoch {} (was {} \
             epoch {})",
            last_ok.map(|at| at - killed_at),
            refused_at - killed_at,
            restarting_at - killed_at,
            first_ok_finished_after(&sender, restarting_at).unwrap() - restarting_at,
            after.master,
            after.epoch,
            master,
            before.epoch
        );
    }
    wait_for_full_set(&controllers, Duration::from_secs(30));
    views.read(&controllers);
    let history = sender.finish(&rt);
    views.assert_one_master_per_epoch();
    check_history(dir.path(), &controllers, &brokers, &history);
}
