//! The last stdout line: one JSON object with every figure of the run, for scripts.
//!
//! Owns the layout of that object and nothing else: the structs below, serialized with
//! `serde_json`, ARE the format. Their fields appear in declaration order, and their names,
//! nesting and types are a contract with the scripts that parse the line: rename or move nothing
//! without changing those scripts too. Floats are rounded to 4 decimal places (`Fixed4`); a float
//! that is not finite is written as `null`. MB = 10^6 bytes; latencies are in microseconds.
//! The figures come from the measurement structs of `raw`, `store_cases`, `recovery` and
//! `report`, which are not serialized directly because most fields here are derived from them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Serialize, Serializer};

use crate::floor::FloorCase;
use crate::raw::{MemoryProbe, RawFsync, SeqWrite};
use crate::recovery::{ColdRead, RecoveryFigures};
use crate::report::{Ratio, Ratios};
use crate::store_cases::{flush_name, store_case_name, StoreCase, Tally};
use crate::{mb_per_sec, Results, Settings, MB, RECORD_BYTES};

/// The whole run as one line of JSON.
pub(crate) fn to_json(settings: &Settings, results: &Results, ratios: &Ratios) -> Result<String> {
    let run = RunJson {
        settings: SettingsJson::from(settings),
        raw_fsync: results.raw_fsync.iter().map(RawFsyncJson::from).collect(),
        raw_fsync_b64_baseline_records_per_sec: ratios.fsync_baseline.map(|b| Fixed4(b.1)),
        raw_fsync_b64_baseline_file: ratios.fsync_baseline.map(|b| b.0.name()),
        memory: results.memory.as_ref().map(MemoryJson::from),
        raw_seq_write_passes: results.raw_seq.iter().map(SeqWriteJson::from).collect(),
        raw_seq_write_best_mb_per_sec: results
            .raw_seq
            .iter()
            .map(SeqWrite::mb_per_sec)
            .reduce(f64::max)
            .map(Fixed4),
        store: results.store.iter().map(StoreCaseJson::from).collect(),
        recovery: results.recovery.as_ref().map(RecoveryJson::from),
        floor: results.floor.iter().map(FloorJson::from).collect(),
        ratios: ratios
            .all
            .iter()
            .map(|r| (r.name, RatioJson::from(r)))
            .collect(),
        warnings: &ratios.warnings,
    };
    serde_json::to_string(&run).context("encode the results as JSON")
}

/// A float written with at most 4 decimal places, or `null` when it is not finite.
struct Fixed4(f64);

impl Serialize for Fixed4 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json writes a non-finite float (which rounding keeps non-finite) as `null`.
        serializer.serialize_f64((self.0 * 1e4).round() / 1e4)
    }
}

/// Serializes pairs as a JSON object with the keys in the pairs' order (a map would sort them).
fn in_order<S: Serializer, V: Serialize>(
    pairs: &[(&'static str, V)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}

#[derive(Serialize)]
struct RunJson<'a> {
    settings: SettingsJson,
    raw_fsync: Vec<RawFsyncJson>,
    raw_fsync_b64_baseline_records_per_sec: Option<Fixed4>,
    raw_fsync_b64_baseline_file: Option<&'static str>,
    memory: Option<MemoryJson>,
    raw_seq_write_passes: Vec<SeqWriteJson>,
    raw_seq_write_best_mb_per_sec: Option<Fixed4>,
    store: Vec<StoreCaseJson<'a>>,
    recovery: Option<RecoveryJson>,
    /// Diagnostic floor cases (empty unless named in `--cases`).
    floor: Vec<FloorJson<'a>>,
    #[serde(serialize_with = "in_order")]
    ratios: Vec<(&'static str, RatioJson)>,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct SettingsJson {
    seconds: Fixed4,
    seq_bytes: u64,
    recovery_bytes: u64,
    quick: bool,
    dir: String,
    record_bytes: usize,
    mb_bytes: u64,
    append_batch: usize,
}

impl From<&Settings> for SettingsJson {
    fn from(s: &Settings) -> Self {
        SettingsJson {
            seconds: Fixed4(s.case_duration.as_secs_f64()),
            seq_bytes: s.seq_bytes,
            recovery_bytes: s.recovery_bytes,
            quick: s.quick,
            dir: s.base_dir.display().to_string(),
            record_bytes: RECORD_BYTES,
            mb_bytes: MB as u64,
            append_batch: s.append_batch,
        }
    }
}

#[derive(Serialize)]
struct RawFsyncJson {
    case: String,
    file: &'static str,
    batch_records: usize,
    records: u64,
    fsyncs: u64,
    elapsed_secs: Fixed4,
    records_per_sec: Fixed4,
    fsyncs_per_sec: Fixed4,
    hit_file_end: bool,
}

impl From<&RawFsync> for RawFsyncJson {
    fn from(r: &RawFsync) -> Self {
        RawFsyncJson {
            case: crate::raw::raw_fsync_name(r.kind, r.batch_records),
            file: r.kind.name(),
            batch_records: r.batch_records,
            records: r.records,
            fsyncs: r.fsyncs,
            elapsed_secs: Fixed4(r.elapsed_secs),
            records_per_sec: Fixed4(r.records_per_sec()),
            fsyncs_per_sec: Fixed4(r.fsyncs_per_sec()),
            hit_file_end: r.hit_file_end,
        }
    }
}

#[derive(Serialize)]
struct MemoryJson {
    first_touch_mb_per_sec: Fixed4,
    reuse_mb_per_sec: Fixed4,
    first_touch_slow: bool,
}

impl From<&MemoryProbe> for MemoryJson {
    fn from(m: &MemoryProbe) -> Self {
        MemoryJson {
            first_touch_mb_per_sec: Fixed4(m.first_touch_mb_per_sec),
            reuse_mb_per_sec: Fixed4(m.reuse_mb_per_sec),
            first_touch_slow: m.first_touch_slow(),
        }
    }
}

#[derive(Serialize)]
struct SeqWriteJson {
    bytes: u64,
    elapsed_secs: Fixed4,
    mb_per_sec: Fixed4,
}

impl From<&SeqWrite> for SeqWriteJson {
    fn from(s: &SeqWrite) -> Self {
        SeqWriteJson {
            bytes: s.bytes,
            elapsed_secs: Fixed4(s.elapsed_secs),
            mb_per_sec: Fixed4(s.mb_per_sec()),
        }
    }
}

#[derive(Serialize)]
struct StoreCaseJson<'a> {
    case: String,
    flush_disk_type: &'static str,
    appenders: usize,
    #[serde(flatten)]
    figures: CaseFigures<'a>,
}

impl<'a> From<&'a StoreCase> for StoreCaseJson<'a> {
    fn from(c: &'a StoreCase) -> Self {
        StoreCaseJson {
            case: store_case_name(c.flush, c.appenders),
            flush_disk_type: flush_name(c.flush),
            appenders: c.appenders,
            figures: CaseFigures::new(&c.tally, c.elapsed_secs),
        }
    }
}

#[derive(Serialize)]
struct FloorJson<'a> {
    case: &'static str,
    #[serde(flatten)]
    figures: CaseFigures<'a>,
}

impl<'a> From<&'a FloorCase> for FloorJson<'a> {
    fn from(c: &'a FloorCase) -> Self {
        FloorJson {
            case: c.name,
            figures: CaseFigures::new(&c.tally, c.elapsed_secs),
        }
    }
}

/// What the appenders of a store or floor case measured (flattened into its object).
#[derive(Serialize)]
struct CaseFigures<'a> {
    ok: u64,
    elapsed_secs: Fixed4,
    msgs_per_sec: Fixed4,
    body_mb_per_sec: Fixed4,
    latency_p50_us: u64,
    latency_p99_us: u64,
    latency_max_us: u64,
    not_ok_total: u64,
    /// Appends by status other than `SEND_OK`; a `BTreeMap`, so the keys are sorted.
    not_ok: &'a BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<&'a str>,
}

impl<'a> CaseFigures<'a> {
    fn new(tally: &'a Tally, elapsed_secs: f64) -> Self {
        CaseFigures {
            ok: tally.ok,
            elapsed_secs: Fixed4(elapsed_secs),
            msgs_per_sec: Fixed4(tally.msgs_per_sec(elapsed_secs)),
            body_mb_per_sec: Fixed4(tally.body_mb_per_sec(elapsed_secs)),
            latency_p50_us: tally.latency_us.value_at_quantile(0.5),
            latency_p99_us: tally.latency_us.value_at_quantile(0.99),
            latency_max_us: tally.latency_us.max(),
            not_ok_total: tally.not_ok_total(),
            not_ok: &tally.not_ok,
            errors: tally.errors,
            first_error: tally.first_error.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ColdReadJson {
    bytes: u64,
    secs: Fixed4,
    mb_per_sec: Fixed4,
    data_secs: Fixed4,
}

impl From<&ColdRead> for ColdReadJson {
    fn from(c: &ColdRead) -> Self {
        ColdReadJson {
            bytes: c.bytes,
            secs: Fixed4(c.secs),
            mb_per_sec: Fixed4(mb_per_sec(c.bytes, c.secs)),
            data_secs: Fixed4(c.data_secs),
        }
    }
}

#[derive(Serialize)]
struct RecoveryJson {
    write_offset: u64,
    segment_files: usize,
    raw_read_passes: Vec<ColdReadJson>,
    raw_read_best_secs: Option<Fixed4>,
    recovery_secs: Fixed4,
    records_checked: u64,
    bytes_checked: u64,
    torn_tail_offset: Option<u64>,
    checked_from_offset: u64,
    recovered_end_offset: u64,
    recovered_end_matches_write_offset: bool,
    clean_shutdown: bool,
    report_duration_secs: Fixed4,
}

impl From<&RecoveryFigures> for RecoveryJson {
    fn from(r: &RecoveryFigures) -> Self {
        RecoveryJson {
            write_offset: r.write_offset,
            segment_files: r.segment_files,
            raw_read_passes: r.raw_reads.iter().map(ColdReadJson::from).collect(),
            raw_read_best_secs: r
                .raw_reads
                .iter()
                .map(|c| c.secs)
                .reduce(f64::min)
                .map(Fixed4),
            recovery_secs: Fixed4(r.recovery_secs),
            records_checked: r.report.records_checked,
            bytes_checked: r.report.bytes_checked,
            torn_tail_offset: r.report.torn_tail_offset,
            checked_from_offset: r.report.checked_from_offset,
            recovered_end_offset: r.report.recovered_end_offset,
            recovered_end_matches_write_offset: r.report.recovered_end_offset == r.write_offset,
            clean_shutdown: r.report.clean_shutdown,
            report_duration_secs: Fixed4(r.report.duration.as_secs_f64()),
        }
    }
}

#[derive(Serialize)]
struct RatioJson {
    value: Option<Fixed4>,
    target: String,
    pass: Option<bool>,
    description: &'static str,
}

impl From<&Ratio> for RatioJson {
    fn from(r: &Ratio) -> Self {
        RatioJson {
            value: r.value.map(Fixed4),
            target: r.target_text(),
            pass: r.pass(),
            description: r.description,
        }
    }
}
