//! The verdict of a run: the store's figures as ratios against the best raw baselines of the same
//! run, with acceptance targets, and the warnings that say which figures to distrust.
//!
//! Owns the ratios (each judged against the BEST raw pass, a conservative baseline; the same
//! ratios against the first pass are kept for information), the warnings (unstable raw passes,
//! appends not `SEND_OK`, data lost by recovery) and their printing. PASS/FAIL is printed but
//! never turned into an exit code: this is a measurement, not a test. The JSON form of all this
//! is `json`'s job.

use broker::store::FlushDiskType;

use crate::raw::{FileKind, MemoryProbe, SeqWrite};
use crate::store_cases::{store_case_name, StoreCase};
use crate::Results;

/// Passes of the same raw measurement further apart than this make its figures suspect.
const PASS_SPREAD_WARN: f64 = 1.5;

pub(crate) struct Ratio {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) value: Option<f64>,
    /// The acceptance target and whether it is a floor (`>=`) rather than a ceiling (`<=`);
    /// `None` for ratios printed for information only.
    target: Option<(f64, bool)>,
}

impl Ratio {
    pub(crate) fn pass(&self) -> Option<bool> {
        let (target, at_least) = self.target?;
        self.value
            .map(|v| if at_least { v >= target } else { v <= target })
    }
    pub(crate) fn target_text(&self) -> String {
        match self.target {
            Some((target, true)) => format!(">= {target}"),
            Some((target, false)) => format!("<= {target}"),
            None => "info only".to_owned(),
        }
    }
}

pub(crate) struct Ratios {
    /// The judged raw batch-64 baseline: the better of the two files.
    pub(crate) fsync_baseline: Option<(FileKind, f64)>,
    pub(crate) all: Vec<Ratio>,
    /// Reasons to distrust some figure of this run, in words.
    pub(crate) warnings: Vec<String>,
}

impl Ratios {
    pub(crate) fn compute(results: &Results) -> Ratios {
        let fsync_baseline = results
            .raw_fsync
            .iter()
            .filter(|r| r.batch_records == 64)
            .map(|r| (r.kind, r.records_per_sec()))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let store = |flush, appenders| {
            results
                .store
                .iter()
                .find(|c| c.flush == flush && c.appenders == appenders)
        };
        let sync = store(FlushDiskType::SyncFlush, 64).map(StoreCase::msgs_per_sec);
        let async_mb = store(FlushDiskType::AsyncFlush, 64).map(StoreCase::body_mb_per_sec);
        let seq_mb: Vec<f64> = results.raw_seq.iter().map(SeqWrite::mb_per_sec).collect();
        let seq_best_mb = seq_mb.iter().copied().reduce(f64::max);
        let recovery = results.recovery.as_ref();
        let recovery_over =
            |read_secs: Option<f64>| recovery.zip(read_secs).map(|(r, s)| r.recovery_secs / s);
        // Judged against the time to read the log's own bytes (the data part of the read), not
        // the whole files: the empty rest of a preallocated segment reads far faster than data
        // and would flatter the ratio.
        let read_best_secs =
            recovery.and_then(|r| r.raw_reads.iter().map(|c| c.data_secs).reduce(f64::min));
        let read_first_secs = recovery.and_then(|r| r.raw_reads.first().map(|c| c.data_secs));
        let all = vec![
            Ratio {
                name: "sync_flush_vs_raw_fsync",
                description: "store SYNC_FLUSH a64 msgs/s / best raw batch-64 fsync records/s",
                value: sync.zip(fsync_baseline).map(|(s, (_, b))| s / b),
                target: Some((0.5, true)),
            },
            Ratio {
                name: "async_flush_vs_raw_seq",
                description: "store ASYNC_FLUSH a64 MB/s / best raw sequential write MB/s",
                value: async_mb.zip(seq_best_mb).map(|(s, r)| s / r),
                target: Some((0.5, true)),
            },
            Ratio {
                name: "recovery_vs_raw_read",
                description: "recovery time / best cold raw read time of the log's bytes",
                value: recovery_over(read_best_secs),
                target: Some((2.0, false)),
            },
            Ratio {
                name: "async_flush_vs_raw_seq_first_pass",
                description: "store ASYNC_FLUSH a64 MB/s / raw sequential write pass 1 MB/s",
                value: async_mb.zip(seq_mb.first().copied()).map(|(s, r)| s / r),
                target: None,
            },
            Ratio {
                name: "recovery_vs_raw_read_first_pass",
                description: "recovery time / cold raw read pass 1 time of the log's bytes",
                value: recovery_over(read_first_secs),
                target: None,
            },
        ];
        Ratios {
            fsync_baseline,
            all,
            warnings: warnings(results),
        }
    }

    pub(crate) fn print(&self) {
        for warning in &self.warnings {
            println!("\nWARNING: {warning}");
        }
        println!("\nratios (PASS/FAIL against the acceptance targets; exit code 0 either way)");
        if let Some((kind, rate)) = self.fsync_baseline {
            println!("  raw batch-64 fsync baseline: {rate:.0} records/s ({} file, the better of the two)", kind.name());
        }
        for r in &self.all {
            let verdict = match (r.pass(), r.target, r.value) {
                (Some(true), _, _) => "PASS",
                (Some(false), _, _) => "FAIL",
                (None, Some(_), _) | (None, None, None) => "n/a (case not run)",
                (None, None, Some(_)) => "",
            };
            let value = r
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            let target = match r.target {
                Some(_) => format!("(target {})", r.target_text()),
                None => "(info only)".to_owned(),
            };
            println!("  {:<66} {value:>7}  {target:<16} {verdict}", r.description);
        }
    }
}

/// What in this run makes a figure suspect: unstable raw passes, failed appends, lost data.
fn warnings(results: &Results) -> Vec<String> {
    let mut warnings = Vec::new();
    let spread = |values: &[f64]| {
        let max = values.iter().copied().reduce(f64::max)?;
        let min = values.iter().copied().reduce(f64::min)?;
        (min > 0.0 && max / min > PASS_SPREAD_WARN).then_some(max / min)
    };
    let seq: Vec<f64> = results.raw_seq.iter().map(SeqWrite::mb_per_sec).collect();
    let reads: Vec<f64> = results
        .recovery
        .iter()
        .flat_map(|r| r.raw_reads.iter().map(|c| c.secs))
        .collect();
    let slow_memory = results
        .memory
        .as_ref()
        .is_some_and(MemoryProbe::first_touch_slow);
    for (what, values) in [("raw-seq", &seq), ("cold raw read", &reads)] {
        if let Some(factor) = spread(values) {
            warnings.push(format!(
                "{what} passes differ {factor:.1}x: page-cache-bound figures on this machine depend \
                 on memory state (first touch of memory {}), not only on the disk; the judged \
                 baseline is the best pass",
                if slow_memory { "measured slow" } else { "may be slow" }
            ));
        }
    }
    for case in &results.store {
        if case.tally.not_ok_total() > 0 || case.tally.errors > 0 {
            warnings.push(format!(
                "{}: {} appends not SEND_OK and {} failed",
                store_case_name(case.flush, case.appenders),
                case.tally.not_ok_total(),
                case.tally.errors
            ));
        }
    }
    if let Some(r) = &results.recovery {
        if r.report.recovered_end_offset != r.write_offset {
            warnings.push(format!(
                "recovery ended at {} but the killed child had written to {}",
                r.report.recovered_end_offset, r.write_offset
            ));
        }
    }
    warnings
}
