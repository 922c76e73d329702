//! The last common point of two replicas' logs, from their epoch histories (Kafka's leader epoch,
//! RocketMQ 5's epoch file).
//!
//! Only one master writes in an epoch, so two logs that both hold records of epoch `e` starting
//! at the same offset hold the same bytes there, up to where the shorter one's `e` ends. Their
//! last common point is therefore, for the newest epoch both histories hold with the same start
//! offset, the smaller of the two offsets where that epoch ends (the next entry's start, or the
//! log's end for the last entry). Everything a replica holds beyond that point was written by a
//! master whose records the current master does not have, and must be cut before the replica
//! appends or serves anything.
//!
//! The replica's history arrives over the network: it is checked (epochs strictly increasing,
//! starts never decreasing, the end not before the last start) and a malformed one is refused,
//! never guessed at.

/// One epoch and the commit-log offset of its first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpochEntry {
    pub epoch: u64,
    pub start_offset: u64,
}

/// What a replica must do to agree with its master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// The logs agree below this offset: the replica truncates to it (nothing to cut when it is
    /// the replica's end) and fetches from it.
    TruncateTo(u64),
    /// No epoch in common: the replica's whole log is foreign to this master (or it has none);
    /// it must be emptied and fetched from the master's beginning.
    NothingInCommon,
}

/// A history that cannot describe a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("epoch history out of order at entry {index}: epochs must increase and start offsets never decrease")]
    OutOfOrder { index: usize },
    #[error("log end {end_offset} is before the start {start_offset} of its last epoch")]
    EndBeforeLastStart { end_offset: u64, start_offset: u64 },
}

/// Checks that `history` with a log ending at `end_offset` describes a log.
pub fn check_history(history: &[EpochEntry], end_offset: u64) -> Result<(), HistoryError> {
    for (index, pair) in history.windows(2).enumerate() {
        if pair[1].epoch <= pair[0].epoch || pair[1].start_offset < pair[0].start_offset {
            return Err(HistoryError::OutOfOrder { index: index + 1 });
        }
    }
    match history.last() {
        Some(last) if end_offset < last.start_offset => Err(HistoryError::EndBeforeLastStart {
            end_offset,
            start_offset: last.start_offset,
        }),
        _ => Ok(()),
    }
}

/// Where the replica's log (`replica`, ending at `replica_end`) stops agreeing with the
/// master's (`master`, ending at `master_end`). Both histories are checked first.
pub fn last_common_offset(
    master: &[EpochEntry],
    master_end: u64,
    replica: &[EpochEntry],
    replica_end: u64,
) -> Result<Divergence, HistoryError> {
    check_history(master, master_end)?;
    check_history(replica, replica_end)?;
    // Newest first: the first shared entry is the newest common epoch.
    for (index, entry) in replica.iter().enumerate().rev() {
        let Ok(master_index) = master.binary_search_by_key(&entry.epoch, |e| e.epoch) else {
            continue;
        };
        if master[master_index].start_offset != entry.start_offset {
            // The same epoch number starting elsewhere is not the same epoch's records.
            continue;
        }
        let replica_epoch_end = epoch_end(replica, index, replica_end);
        let master_epoch_end = epoch_end(master, master_index, master_end);
        return Ok(Divergence::TruncateTo(
            replica_epoch_end.min(master_epoch_end),
        ));
    }
    Ok(Divergence::NothingInCommon)
}

/// Where the epoch at `index` of `history` ends: where the next one starts, or the log's end.
fn epoch_end(history: &[EpochEntry], index: usize, end_offset: u64) -> u64 {
    history
        .get(index + 1)
        .map_or(end_offset, |next| next.start_offset)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn history(entries: &[(u64, u64)]) -> Vec<EpochEntry> {
        entries
            .iter()
            .map(|&(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            })
            .collect()
    }

    #[test]
    fn a_deposed_master_cuts_what_it_wrote_alone() {
        // The replica was master in epoch 2 and wrote 80..120 that nobody received; the new
        // master began epoch 3 at 100.
        let master = history(&[(1, 0), (3, 100)]);
        let replica = history(&[(1, 0), (2, 80)]);
        assert_eq!(
            last_common_offset(&master, 200, &replica, 120),
            Ok(Divergence::TruncateTo(80))
        );
    }

    #[test]
    fn records_of_a_shared_epoch_past_its_end_on_the_master_are_cut() {
        // The old master wrote 50..70 in epoch 1 after the new master's epoch 2 began at 50.
        let master = history(&[(1, 0), (2, 50)]);
        let replica = history(&[(1, 0)]);
        assert_eq!(
            last_common_offset(&master, 90, &replica, 70),
            Ok(Divergence::TruncateTo(50))
        );
    }

    #[test]
    fn a_replica_behind_keeps_everything() {
        let master = history(&[(1, 0), (2, 50)]);
        let replica = history(&[(1, 0), (2, 50)]);
        assert_eq!(
            last_common_offset(&master, 90, &replica, 60),
            Ok(Divergence::TruncateTo(60))
        );
    }

    #[test]
    fn no_shared_epoch_or_an_empty_replica_has_nothing_in_common() {
        let master = history(&[(4, 0)]);
        assert_eq!(
            last_common_offset(&master, 10, &history(&[(3, 0)]), 5),
            Ok(Divergence::NothingInCommon)
        );
        assert_eq!(
            last_common_offset(&master, 10, &[], 0),
            Ok(Divergence::NothingInCommon)
        );
        // Same epoch number, another start: not the same records.
        assert_eq!(
            last_common_offset(&master, 10, &history(&[(4, 2)]), 5),
            Ok(Divergence::NothingInCommon)
        );
    }

    #[test]
    fn malformed_histories_are_refused() {
        let good = history(&[(1, 0)]);
        assert_eq!(
            last_common_offset(&good, 10, &history(&[(2, 0), (2, 5)]), 9),
            Err(HistoryError::OutOfOrder { index: 1 })
        );
        assert_eq!(
            last_common_offset(&good, 10, &history(&[(1, 5), (2, 4)]), 9),
            Err(HistoryError::OutOfOrder { index: 1 })
        );
        assert_eq!(
            last_common_offset(&good, 10, &history(&[(1, 0), (2, 8)]), 7),
            Err(HistoryError::EndBeforeLastStart {
                end_offset: 7,
                start_offset: 8
            })
        );
    }

    /// A log as the epoch of each record and the record sizes.
    fn history_of(records: &[(u64, u64)]) -> (Vec<EpochEntry>, u64) {
        let mut entries: Vec<EpochEntry> = Vec::new();
        let mut offset = 0;
        for &(epoch, size) in records {
            if entries.last().is_none_or(|last| last.epoch != epoch) {
                entries.push(EpochEntry {
                    epoch,
                    start_offset: offset,
                });
            }
            offset += size;
        }
        (entries, offset)
    }

    /// Records (epoch, size) from runs of record sizes, one epoch per run: increasing epoch
    /// numbers above `after` of one parity, so that the master's and a divergent tail's never
    /// coincide.
    fn epochs(runs: &[Vec<u64>], parity: u64, after: u64) -> Vec<(u64, u64)> {
        let mut epoch = after;
        let mut records = Vec::new();
        for sizes in runs {
            epoch += 1;
            if epoch % 2 != parity {
                epoch += 1;
            }
            records.extend(sizes.iter().map(|&size| (epoch, size)));
        }
        records
    }

    proptest! {
        /// Model: the replica holds the master's first `shared` records, then possibly records
        /// of epochs the master never had (written while it was deposed or cut off). The last
        /// common offset is exactly the end of the shared records.
        #[test]
        fn the_last_common_offset_is_the_end_of_the_shared_records(
            master_runs in prop::collection::vec(prop::collection::vec(1u64..50, 1..6), 1..6),
            tail_runs in prop::collection::vec(prop::collection::vec(1u64..50, 1..6), 0..4),
            shared_fraction in 0.0f64..=1.0,
        ) {
            let master_records = epochs(&master_runs, 0, 0);
            let shared = (master_records.len() as f64 * shared_fraction).floor() as usize;
            let mut replica_records = master_records[..shared].to_vec();
            let last_shared_epoch = replica_records.last().map_or(0, |r| r.0);
            // The tail's epochs are odd and newer than the last shared one: no other master
            // wrote them, and they begin where the shared records end.
            replica_records.extend(epochs(&tail_runs, 1, last_shared_epoch));
            let (master, master_end) = history_of(&master_records);
            let (replica, replica_end) = history_of(&replica_records);
            let shared_end: u64 = master_records[..shared].iter().map(|r| r.1).sum();
            let expected = if shared == 0 {
                Divergence::NothingInCommon
            } else {
                Divergence::TruncateTo(shared_end)
            };
            prop_assert_eq!(
                last_common_offset(&master, master_end, &replica, replica_end),
                Ok(expected)
            );
        }
    }
}
