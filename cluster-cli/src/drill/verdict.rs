//! The drill's verdict on the whole history: what was lost, duplicated or reordered, and the
//! failures by kind; and the percentiles of the failover times.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Sent;

/// The drill's verdict on the whole history.
pub(super) struct Report {
    pub(super) lost: Vec<String>,
    pub(super) duplicates: u64,
    pub(super) order_violations: u64,
    /// Sends not answered SEND_OK, by status or error.
    pub(super) failures: BTreeMap<String, u64>,
}

impl Report {
    pub(super) fn of(
        history: &[Sent],
        acked: &HashMap<String, &Sent>,
        deliveries: &[String],
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
        let mut duplicates = 0;
        let mut order_violations = 0;
        // Per producer and queue, the highest sequence consumed so far: a producer sends one
        // message at a time, so its acknowledged messages of one queue must come in send order.
        let mut highest: HashMap<(u32, String, u32), u64> = HashMap::new();
        let prefix = format!("{run_id}-");
        for key in deliveries.iter().filter(|k| k.starts_with(&prefix)) {
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
            order_violations,
            failures,
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
