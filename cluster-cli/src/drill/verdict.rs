//! The drill's verdict on the whole history: what was lost, duplicated or reordered, and the
//! failures by kind; and the percentiles of the failover times.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Delivery, Round, Sent};

/// The drill's verdict on the whole history.
pub(super) struct Report {
    pub(super) lost: Vec<String>,
    pub(super) duplicates: u64,
    /// Deliveries of a stored message handed out before (the rest of `duplicates` are
    /// producer retries: the same key stored twice).
    pub(super) redeliveries: u64,
    pub(super) order_violations: u64,
    /// Sends not answered SEND_OK, by status or error.
    pub(super) failures: BTreeMap<String, u64>,
}

impl Report {
    pub(super) fn of(
        history: &[Sent],
        acked: &HashMap<String, &Sent>,
        deliveries: &[Delivery],
        run_id: &str,
    ) -> Report {
        let mut failures = BTreeMap::new();
        for sent in history {
            if let Err(why) = &sent.outcome {
                // Errors carry details (addresses, ids): count them by their first words.
                let kind: String = why
                    .split(':')
                    .next()
                    .unwrap_or(why)
                    .chars()
                    .take(60)
                    .collect();
                *failures.entry(kind).or_default() += 1;
            }
        }
        let mut seen = HashSet::new();
        let mut stored = HashSet::new();
        let mut duplicates = 0;
        let mut redeliveries = 0;
        let mut order_violations = 0;
        // Per producer and queue, the highest sequence consumed so far: a producer sends one
        // message at a time, so its acknowledged messages of one queue must come in send order.
        let mut highest: HashMap<(u32, String, u32), u64> = HashMap::new();
        let prefix = format!("{run_id}-");
        for delivery in deliveries.iter().filter(|d| d.key.starts_with(&prefix)) {
            let key = &delivery.key;
            if !stored.insert((key.as_str(), delivery.commit_log_offset)) {
                redeliveries += 1;
            }
            if !seen.insert(key.as_str()) {
                duplicates += 1;
                continue;
            }
            let Some(sent) = acked.get(key) else { continue };
            let Ok((group, queue)) = &sent.outcome else {
                continue;
            };
            let top = highest
                .entry((sent.producer, group.clone(), *queue))
                .or_insert(sent.seq);
            if sent.seq < *top {
                order_violations += 1;
            }
            *top = (*top).max(sent.seq);
        }
        let mut lost: Vec<String> = acked
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect();
        lost.sort();
        Report {
            lost,
            duplicates,
            redeliveries,
            order_violations,
            failures,
        }
    }
}

/// Counts each round's redeliveries: deliveries of a stored message handed out before, from the
/// round's kill to the next round's.
pub(super) fn count_redeliveries(rounds: &mut [Round], deliveries: &[Delivery]) {
    let mut seen = HashSet::new();
    for delivery in deliveries {
        if seen.insert((delivery.key.as_str(), delivery.commit_log_offset)) {
            continue;
        }
        let round = rounds
            .iter_mut()
            .rev()
            .find(|r| r.killed_at.is_some_and(|at| at <= delivery.at));
        if let Some(round) = round {
            round.redelivered += 1;
        }
    }
}

/// Nearest-rank percentile.
pub(super) fn percentile(values: &[u64], p: usize) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::key;
    use super::*;

    fn sent(producer: u32, seq: u64, outcome: std::result::Result<(String, u32), String>) -> Sent {
        let now = Instant::now();
        Sent {
            producer,
            seq,
            started: now,
            finished: now,
            outcome,
        }
    }

    fn delivered(key: &str, commit_log_offset: u64, at: Instant) -> Delivery {
        Delivery {
            key: key.to_owned(),
            commit_log_offset,
            at,
        }
    }

    #[test]
    fn the_report_counts_loss_duplicates_redeliveries_and_order_per_producer_and_queue() {
        let ok = |q: u32| Ok(("broker-a".to_owned(), q));
        let history = vec![
            sent(0, 0, ok(0)),
            sent(0, 1, ok(0)),
            sent(0, 2, ok(1)),
            sent(0, 3, Err("FLUSH_SLAVE_TIMEOUT".into())),
            sent(1, 0, ok(0)),
            sent(1, 1, ok(0)),
        ];
        let acked: HashMap<String, &Sent> = history
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| (key("r", s.producer, s.seq), s))
            .collect();
        // p0-1 before p0-0 in queue 0: one violation. p1-1 before p1-0 in another producer's
        // order counts for that producer only. p0-2 delivered twice (the same stored message:
        // a redelivery), p0-0 stored twice (a producer's retry: a duplicate only); p1-0 never.
        let now = Instant::now();
        let deliveries = vec![
            delivered("r-p0-1", 10, now),
            delivered("r-p0-0", 20, now),
            delivered("r-p0-2", 30, now),
            delivered("r-p0-2", 30, now),
            delivered("r-p0-0", 40, now),
            delivered("r-p1-1", 50, now),
            delivered("other-p0-0", 60, now),
        ];
        let report = Report::of(&history, &acked, &deliveries, "r");
        assert_eq!(report.lost, vec!["r-p1-0".to_owned()]);
        assert_eq!(report.duplicates, 2);
        assert_eq!(report.redeliveries, 1);
        assert_eq!(report.order_violations, 1);
        assert_eq!(report.failures.get("FLUSH_SLAVE_TIMEOUT"), Some(&1));
    }

    #[test]
    fn a_redelivery_counts_for_the_round_whose_kill_came_last_before_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let round = |killed: u64| Round {
            killed_at: Some(at(killed)),
            ..Round::new("broker-a")
        };
        let mut rounds = vec![round(100), round(200)];
        let deliveries = vec![
            delivered("a", 1, at(10)),
            // Before any kill: counted nowhere.
            delivered("a", 1, at(50)),
            delivered("b", 2, at(60)),
            delivered("b", 2, at(150)),
            delivered("b", 2, at(250)),
            // A retry's second copy is no redelivery.
            delivered("b", 3, at(260)),
        ];
        count_redeliveries(&mut rounds, &deliveries);
        assert_eq!(rounds[0].redelivered, 1);
        assert_eq!(rounds[1].redelivered, 1);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[4, 1, 3, 2], 50), Some(2));
        assert_eq!(percentile(&[4, 1, 3, 2], 99), Some(4));
    }
}
