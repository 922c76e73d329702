//! What a controlled broker does when told to stop (SIGTERM), before it stops taking requests,
//! so that nobody feels a planned stop: a master hands mastership to an in-sync slave (a
//! planned switchover, as `cluster elect` makes), and a slave of the in-sync set leaves it, so
//! that its master never waits for a slave that is gone. Both keep serving meanwhile, and both
//! are bounded: a group with no other in-sync member, or no controller answering, leaves the
//! master to stop as one (its group fails over as after a crash), and a slave whose master
//! cannot be reached stops after the wait (its master drops it after `in_sync_gone_max_ms`).

use std::time::{Duration, Instant};

use controller_client::broker_link::Handover;

use crate::role::{Leaving, RoleCell};

/// Longest a stopping master waits for the controller to hand its mastership over (one takes
/// 0.1-0.3 s here). Below the handover call's own timeout (12 s), so that a call that got no
/// answer is not repeated; a stop with no controller reachable is delayed this much at most.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(3);
/// Then how long it waits for the view that makes it a slave (a heartbeat brings it).
const HANDOVER_ROLE_WAIT: Duration = Duration::from_secs(2);
/// Longest a stopping slave waits to be out of the in-sync set (its master proposes the set
/// without it within a review, 100 ms, plus a controller round trip).
const LEAVE_IN_SYNC_SET_WAIT: Duration = Duration::from_secs(2);

/// A controlled master hands its mastership over, then (a slave now, or still master) a slave
/// of the in-sync set leaves it.
pub async fn before_stop(role: &RoleCell, handover: Handover) {
    role.begin_planned_stop();
    if role.is_controlled_master() {
        hand_over(role, handover).await;
    }
    leave_in_sync_set(role).await;
}

/// Asks the controller to move mastership to an in-sync slave, and waits until this broker is
/// a slave; logs what happened. A group with no other alive in-sync member, or no controller
/// answering, leaves this broker master: it stops as one (its group fails over as after a
/// crash).
async fn hand_over(role: &RoleCell, handover: Handover) {
    let started = Instant::now();
    tracing::info!("stopping: handing mastership to an in-sync slave first");
    match handover.hand_over(HANDOVER_PATIENCE).await {
        Ok(view) => {
            let resigned = role.wait_until_not_master(HANDOVER_ROLE_WAIT).await;
            tracing::info!(
                new_master = ?view.master_id,
                master_epoch = view.master_epoch,
                took_ms = started.elapsed().as_millis() as u64,
                resigned,
                "stopping: handed mastership over"
            );
        }
        Err(err) => tracing::warn!(
            error = %err,
            took_ms = started.elapsed().as_millis() as u64,
            "stopping: could not hand mastership over; stopping as master"
        ),
    }
}

/// A slave of the in-sync set leaves it, so that its master never waits for a slave that is
/// gone; logs what happened.
async fn leave_in_sync_set(role: &RoleCell) {
    match role.leave_in_sync_set(LEAVE_IN_SYNC_SET_WAIT).await {
        Leaving::NotMember => {}
        Leaving::Left(took) => tracing::info!(
            took_ms = took.as_millis() as u64,
            "stopping: left the in-sync set; the master no longer waits for this broker"
        ),
        Leaving::TimedOut => tracing::warn!(
            wait_ms = LEAVE_IN_SYNC_SET_WAIT.as_millis() as u64,
            "stopping: still in the in-sync set after the wait (master unreachable?); \
             the master waits for this broker until it drops it"
        ),
    }
}
