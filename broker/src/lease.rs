//! A controlled master's lease and its resignation, as the controller's heartbeat answers last
//! described them (see `role/mod.rs`, "Fencing" and "Resigning").
//!
//! - The lease: a master of epoch E may acknowledge until the instant the last answer about E
//!   granted (its send time plus `lease_ms`, by this process's monotonic clock). An answer about
//!   an older epoch is ignored; one about a newer epoch starts afresh.
//! - Resigning: an answer that asks the master of E to resign stops its acknowledgements at once
//!   (`Resigning`); once its in-sync set caught up (or the patience ran out), it is `Resigned`,
//!   which the next heartbeat tells. A later answer that grants a lease again without asking
//!   calls the switchover off.

use std::sync::Mutex;
use std::time::Instant;

use controller_client::broker_link::LeaseAnswer;

use crate::error::BrokerError;

#[derive(Debug, Default)]
struct State {
    /// The master epoch the answers were about.
    epoch: u64,
    valid_until: Option<Instant>,
    resign: Resign,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Resign {
    #[default]
    No,
    /// Asked; acknowledging stopped; waiting for the set to catch up.
    Resigning,
    /// Done: the next heartbeat says so.
    Resigned,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct MasterLease {
    state: Mutex<State>,
}

impl MasterLease {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease lock poisoned")
    }

    /// Whether the master of `epoch` may acknowledge at `now`.
    pub fn check(&self, epoch: u64, now: Instant) -> Result<(), BrokerError> {
        let state = self.lock();
        if state.epoch == epoch && state.resign != Resign::No {
            return Err(BrokerError::CannotAcknowledge {
                reason: "this master is handing mastership over (planned switchover)".into(),
            });
        }
        match state.valid_until {
            Some(until) if state.epoch == epoch && now < until => Ok(()),
            _ => Err(BrokerError::CannotAcknowledge {
                reason: format!(
                    "no master lease for epoch {epoch} (the controller has not renewed it)"
                ),
            }),
        }
    }

    /// Takes a heartbeat answer in. `master_of`: the epoch this broker is master of now, if any.
    /// True when the answer starts a resignation of that epoch: acknowledging has stopped, and
    /// the caller lets the set catch up, then calls [`MasterLease::finish_resigning`].
    pub fn answered(&self, answer: LeaseAnswer, master_of: Option<u64>) -> bool {
        let mut state = self.lock();
        if answer.master_epoch < state.epoch {
            return false;
        }
        if answer.master_epoch > state.epoch {
            *state = State {
                epoch: answer.master_epoch,
                ..State::default()
            };
        }
        state.valid_until = answer.valid_until;
        if !answer.resign {
            if answer.valid_until.is_some() && state.resign != Resign::No {
                tracing::info!(
                    epoch = state.epoch,
                    "the controller renewed the lease: the switchover was called off"
                );
                state.resign = Resign::No;
            }
            return false;
        }
        if state.resign != Resign::No || master_of != Some(answer.master_epoch) {
            return false;
        }
        state.resign = Resign::Resigning;
        true
    }

    /// The resignation of `epoch` is done (unless it was called off meanwhile): true when the
    /// controller is to be told.
    pub fn finish_resigning(&self, epoch: u64) -> bool {
        let mut state = self.lock();
        if state.epoch == epoch && state.resign == Resign::Resigning {
            state.resign = Resign::Resigned;
            return true;
        }
        false
    }

    /// True once the master of `epoch` has resigned.
    pub fn resigned(&self, epoch: u64) -> bool {
        let state = self.lock();
        state.epoch == epoch && state.resign == Resign::Resigned
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(epoch: u64, valid_until: Option<Instant>, resign: bool) -> LeaseAnswer {
        LeaseAnswer {
            master_epoch: epoch,
            valid_until,
            resign,
        }
    }

    #[test]
    fn a_lease_holds_for_its_epoch_until_it_runs_out() {
        let lease = MasterLease::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        assert!(lease.check(3, t0).is_err(), "no answer yet");
        assert!(!lease.answered(answer(3, Some(until), false), Some(3)));
        assert!(lease.check(3, t0).is_ok());
        assert!(lease.check(3, until).is_err(), "ran out");
        assert!(lease.check(2, t0).is_err(), "another epoch");
        // An answer about an older epoch changes nothing.
        assert!(!lease.answered(answer(2, None, false), Some(3)));
        assert!(lease.check(3, t0).is_ok());
        // One about a newer epoch starts afresh.
        assert!(!lease.answered(answer(4, None, false), Some(3)));
        assert!(lease.check(3, t0).is_err());
    }

    #[test]
    fn a_resignation_stops_acknowledging_at_once_and_can_be_called_off() {
        let lease = MasterLease::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        lease.answered(answer(3, Some(until), false), Some(3));
        assert!(lease.answered(answer(3, None, true), Some(3)));
        assert!(lease.check(3, t0).is_err(), "acknowledging stopped");
        assert!(
            !lease.answered(answer(3, None, true), Some(3)),
            "asked once"
        );
        assert!(!lease.resigned(3));
        assert!(lease.finish_resigning(3));
        assert!(lease.resigned(3));
        // Renewed without asking: called off.
        lease.answered(answer(3, Some(until), false), Some(3));
        assert!(!lease.resigned(3));
        assert!(lease.check(3, t0).is_ok());
        assert!(!lease.finish_resigning(3), "nothing to finish");
        // A request to resign an epoch this broker is not master of starts nothing.
        assert!(!lease.answered(answer(3, None, true), None));
    }
}
