//! What the broker does with a group view from the controller: a pure decision, in the shape of
//! the controller's `election::decide`. [`RoleCell::apply_view`](crate::role::RoleCell) gathers
//! the facts, asks [`decide`], and carries the [`Transition`] out.
//!
//! Safety rests on three rules, each a branch below:
//! - **Only a newer epoch moves the role.** A view names a master and its master epoch; the
//!   broker becomes master only of an epoch newer than every epoch its log holds (a log that
//!   holds the epoch already was master of it before a restart and may lack the unflushed tail
//!   its slaves hold: it waits for the new election its new incarnation triggers), and stops being
//!   master only for a newer epoch than its own (a stale view never deposes a current master).
//! - **Static roles never move.** A static master (`ASYNC_MASTER`, `SYNC_MASTER`) keeps its role
//!   whatever the controller names: static roles have no failover.
//! - **A corrupt replica repairs only out of the in-sync set, and only from a master.** A member
//!   of the set must hold everything the master acknowledged, and the repair cuts a range until
//!   it is copied again.

/// What the broker is now, as far as a view's decision needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleFacts {
    pub broker_id: u64,
    /// `Some(epoch)` while master of that master epoch; `None` while slave.
    pub master_of: Option<u64>,
    /// The controller assigns the role (`CONTROLLED`); else a static role.
    pub controlled: bool,
    /// The newest epoch in the commit log.
    pub log_epoch: u64,
    /// The store holds a corrupt record.
    pub corrupt: bool,
}

/// The group view's part that decides (`pb::GroupView`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewFacts<'a> {
    pub master_id: Option<u64>,
    pub master_epoch: u64,
    pub in_sync_set: &'a [u64],
}

/// What to do with a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Still master of this epoch: take the view's in-sync set.
    TakeInSyncSet,
    /// Elected master of the view's epoch.
    BecomeMaster,
    /// Another master was elected at a newer epoch: become its slave (and repair, if corrupt,
    /// once out of the set: `then_repair`).
    Deposed { then_repair: bool },
    /// A static master named elsewhere keeps its role (and says so).
    KeepStaticMaster,
    /// Named master of an epoch this log already holds: wait for the new election.
    WaitForNewElection,
    /// A slave follows the view's master (and repairs, if corrupt, once out of the set).
    Follow { then_repair: bool },
    /// A stale view for this master: nothing to do.
    Ignore,
}

/// Decides what one view means for this broker (see the module documentation).
pub fn decide(view: &ViewFacts, facts: &RoleFacts) -> Transition {
    let named_me = view.master_id == Some(facts.broker_id);
    // A corrupt replica repairs once it is out of the set and a master serves the range.
    let repair = facts.corrupt
        && view.master_id.is_some()
        && !named_me
        && !view.in_sync_set.contains(&facts.broker_id);
    match facts.master_of {
        Some(epoch) if named_me && view.master_epoch == epoch => Transition::TakeInSyncSet,
        Some(epoch) if named_me && view.master_epoch > epoch => Transition::BecomeMaster,
        Some(_) if !named_me && !facts.controlled => Transition::KeepStaticMaster,
        Some(epoch) if !named_me && view.master_epoch > epoch => Transition::Deposed {
            then_repair: repair,
        },
        Some(_) => Transition::Ignore,
        None if named_me && facts.controlled => {
            if view.master_epoch > facts.log_epoch {
                Transition::BecomeMaster
            } else {
                Transition::WaitForNewElection
            }
        }
        None => Transition::Follow {
            then_repair: repair,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;

    fn view(master_id: Option<u64>, master_epoch: u64, in_sync_set: &[u64]) -> ViewFacts<'_> {
        ViewFacts {
            master_id,
            master_epoch,
            in_sync_set,
        }
    }

    fn master_of(epoch: u64) -> RoleFacts {
        RoleFacts {
            broker_id: ME,
            master_of: Some(epoch),
            controlled: true,
            log_epoch: epoch,
            corrupt: false,
        }
    }

    fn slave(log_epoch: u64) -> RoleFacts {
        RoleFacts {
            master_of: None,
            log_epoch,
            ..master_of(0)
        }
    }

    #[test]
    fn a_master_takes_its_own_epochs_set_and_moves_only_for_a_newer_epoch() {
        let set = [ME, 2];
        assert_eq!(
            decide(&view(Some(ME), 5, &set), &master_of(5)),
            Transition::TakeInSyncSet
        );
        assert_eq!(
            decide(&view(Some(ME), 6, &set), &master_of(5)),
            Transition::BecomeMaster
        );
        assert_eq!(
            decide(&view(Some(2), 6, &set), &master_of(5)),
            Transition::Deposed { then_repair: false }
        );
        // A stale view (an older epoch naming another master, or its own older epoch) is no
        // reason to move.
        assert_eq!(
            decide(&view(Some(2), 4, &set), &master_of(5)),
            Transition::Ignore
        );
        assert_eq!(
            decide(&view(Some(2), 5, &set), &master_of(5)),
            Transition::Ignore
        );
        assert_eq!(
            decide(&view(Some(ME), 4, &set), &master_of(5)),
            Transition::Ignore
        );
    }

    #[test]
    fn a_static_master_keeps_its_role_whoever_is_named() {
        let fixed = RoleFacts {
            controlled: false,
            ..master_of(5)
        };
        assert_eq!(
            decide(&view(Some(2), 9, &[2]), &fixed),
            Transition::KeepStaticMaster
        );
        assert_eq!(
            decide(&view(None, 9, &[]), &fixed),
            Transition::KeepStaticMaster
        );
    }

    #[test]
    fn a_slave_becomes_master_only_of_an_epoch_newer_than_its_log() {
        assert_eq!(
            decide(&view(Some(ME), 6, &[ME]), &slave(5)),
            Transition::BecomeMaster
        );
        assert_eq!(
            decide(&view(Some(ME), 5, &[ME]), &slave(5)),
            Transition::WaitForNewElection,
            "master of this epoch before a restart: its log may lack the slaves' tail"
        );
        let static_slave = RoleFacts {
            controlled: false,
            ..slave(5)
        };
        assert_eq!(
            decide(&view(Some(ME), 6, &[ME]), &static_slave),
            Transition::Follow { then_repair: false },
            "a static slave is never made master"
        );
        assert_eq!(
            decide(&view(Some(2), 6, &[2, ME]), &slave(5)),
            Transition::Follow { then_repair: false }
        );
    }

    #[test]
    fn a_corrupt_replica_repairs_only_out_of_the_set_and_from_a_master() {
        let corrupt = RoleFacts {
            corrupt: true,
            ..slave(5)
        };
        assert_eq!(
            decide(&view(Some(2), 6, &[2, ME]), &corrupt),
            Transition::Follow { then_repair: false },
            "still in the set"
        );
        assert_eq!(
            decide(&view(Some(2), 6, &[2]), &corrupt),
            Transition::Follow { then_repair: true }
        );
        assert_eq!(
            decide(&view(None, 6, &[2]), &corrupt),
            Transition::Follow { then_repair: false },
            "no master to copy from"
        );
        let corrupt_master = RoleFacts {
            corrupt: true,
            ..master_of(5)
        };
        assert_eq!(
            decide(&view(Some(2), 6, &[2]), &corrupt_master),
            Transition::Deposed { then_repair: true },
            "a deposed master is never in the new set"
        );
    }
}
