//! The scrubber: re-reads the whole commit log in the background, CRC-checking every record, so
//! that bytes that rot on disk (a flipped bit, a misdirected write, a bad sector) are found
//! before a consumer, a slave or an election needs them. Recovery checks only what lies past the
//! verified offset; everything below it is this thread's to prove again.
//!
//! The rule: passes back to back at `scrub_bytes_per_second`. A pass checks every record from
//! the log's first offset to the flushed offset as of its start (what is written later is checked
//! by its writer, see `verified`), in steps of at most [`SCRUB_STEP_BYTES`] (less when the rate is
//! below that per second); after each step it waits until the pass's bytes so far are due at the
//! configured rate ([`Pacer`]). A pass starts no sooner than `scrub_pass_interval_ms` (a minute)
//! after the previous one started, so that a small log is not re-read in a tight loop. A rate of 0
//! turns it off (the thread is not started).
//!
//! What a pass proves: each clean step raises the verified range (`VerifiedRange::on_checked`),
//! which the next checkpoint saves; a pass that ends without finding corruption marks the store
//! `verified` (store health), unless a corrupt record is known. A corrupt record (a CRC mismatch,
//! bad framing, zeros below the flushed offset, or a failed read) is reported with its
//! commit-log offset (`Shared::report_corrupt`: logged, published in the store's health, which
//! the broker acts on) and ends the pass: a repair cuts the log there, so the rest of the pass
//! would prove nothing the repair keeps. The next pass starts again from the log's start.
//!
//! Living with the other threads, without ever making the writer wait:
//! - it reads with `pread` on its own clone of a segment (an `Arc`), holding no lock during I/O;
//!   a segment that retention deletes under it stays readable until dropped, and each step
//!   re-reads the segment list: a pass whose position fell below the log's first offset goes on
//!   from there;
//! - a truncation (a new truncation generation) restarts the pass from the log's start: the
//!   bytes past the cut are new, and its old record boundaries mean nothing there;
//! - before reporting, it re-reads the record alone and confirms that it still fails, that no
//!   truncation or `start_at` ran during either read (`Shared::log_rewrite_seq`, a sequence
//!   lock: each bumps it before touching a byte and again when done), that retention did not
//!   delete it, and that it is below the flushed offset. A read that raced a cut, or a bad read
//!   that does not repeat, is never reported; and no lock is taken, so nothing the writer needs
//!   is ever held across the scrubber's I/O.
//!
//! Page cache: after each step it hands the pages it read back to the kernel
//! (`POSIX_FADV_DONTNEED`), except within `page_cache_keep_bytes` of the flushed offset, the part
//! near the tail that consumers and slaves read (see `page_cache`). A consumer far behind the tail
//! may find its pages gone and read them from the disk again.
//!
//! PERF: one `pread` per step into a buffer of at most [`SCRUB_STEP_BYTES`], CRCs checked in
//! place; no allocation per record, no logging per step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::scan::{self, ScanEnd, Stop};
use super::shared::Shared;

/// Most bytes one step reads: bounds the scrubber's buffer and how long a step holds the disk.
pub const SCRUB_STEP_BYTES: u64 = 1 << 20;
/// Fewest bytes one step reads, whatever the rate (the pacer still keeps the average): smaller
/// reads would cost a system call per record.
const SCRUB_STEP_BYTES_MIN: u64 = 4 << 10;
/// How far behind its schedule the pacer may fall (the thread was descheduled, the disk was
/// slow) before it counts afresh, instead of catching up in a burst.
const PACER_SLACK: Duration = Duration::from_secs(1);

/// Bytes one step reads at `bytes_per_second`: at most one second's worth.
pub fn step_bytes(bytes_per_second: u64) -> u64 {
    bytes_per_second.clamp(SCRUB_STEP_BYTES_MIN, SCRUB_STEP_BYTES)
}

/// Paces reads at a rate: after each step, how long to wait before the next. Pure: the caller
/// passes the time, so tests need no clock.
///
/// Invariant: a step starts only once the bytes read before it are due at the rate since the
/// pacer began counting, so at any time the bytes read are at most `rate * elapsed` plus one step.
#[derive(Clone, Debug)]
pub struct Pacer {
    bytes_per_second: u64,
    since: Instant,
    bytes: u64,
}

impl Pacer {
    pub fn new(bytes_per_second: u64, now: Instant) -> Pacer {
        assert!(bytes_per_second > 0, "a rate of 0 turns the scrubber off");
        Pacer {
            bytes_per_second,
            since: now,
            bytes: 0,
        }
    }

    /// Counts `bytes` just read at `now`; returns how long to wait before reading more.
    pub fn wait_after(&mut self, bytes: u64, now: Instant) -> Duration {
        self.bytes += bytes;
        let due =
            self.since + Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second as f64);
        if due + PACER_SLACK < now {
            self.restart(now);
            return Duration::ZERO;
        }
        due.saturating_duration_since(now)
    }

    /// Counts afresh from `now` (a new pass, after a pause).
    pub fn restart(&mut self, now: Instant) {
        self.since = now;
        self.bytes = 0;
    }
}

/// What one [`Scrubber::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Checked this many bytes of the log (0 when it found nothing to read or restarted).
    Checked { bytes: u64 },
    /// A pass ended (`clean`: it checked everything it set out to and found nothing); it began at
    /// `started`.
    PassEnded { clean: bool, started: Instant },
}

/// A pass under way.
#[derive(Clone, Copy, Debug)]
struct Pass {
    /// The truncation generation it began in.
    generation: u64,
    /// The next record boundary to check.
    commit_log_offset: u64,
    /// The flushed offset when it began: where it ends.
    end_offset: u64,
    clean: bool,
    started: Instant,
}

/// The scrubber's state: the pass under way.
pub(crate) struct Scrubber {
    shared: Arc<Shared>,
    step_bytes: u64,
    pass: Option<Pass>,
}

impl Scrubber {
    /// A scrubber whose steps suit `bytes_per_second` (see [`step_bytes`]); the caller paces it.
    pub fn new(shared: Arc<Shared>, bytes_per_second: u64) -> Scrubber {
        Scrubber {
            shared,
            step_bytes: step_bytes(bytes_per_second),
            pass: None,
        }
    }

    /// Whether no pass is under way (the next step starts one).
    pub fn between_passes(&self) -> bool {
        self.pass.is_none()
    }

    /// Checks the next step of the pass under way, starting a pass if none is.
    pub fn step(&mut self) -> Step {
        let shared = Arc::clone(&self.shared);
        // Read before any byte of this step: a finding is kept only if no rewrite ran since.
        let rewrite_seq = shared.log_rewrite_seq();
        let generation = shared.flush_progress.borrow().truncation_generation;
        let min_offset = shared.log.min_offset();
        let pass = match &mut self.pass {
            Some(pass) if pass.generation == generation => pass,
            // No pass, or a truncation since this one began: start from the log's start.
            _ => self.pass.insert(Pass {
                generation,
                commit_log_offset: min_offset,
                end_offset: shared.log.flushed_offset(),
                clean: true,
                started: Instant::now(),
            }),
        };
        // Retention may have deleted the segments ahead of the pass.
        let from = pass.commit_log_offset.max(min_offset);
        if from >= pass.end_offset {
            return self.end_pass();
        }
        let limit = (from + self.step_bytes).min(pass.end_offset);
        let scanned = scan::scan(
            &shared.log,
            from,
            limit,
            SCRUB_STEP_BYTES as usize,
            |_, _| Ok(()),
        );
        let (checked_end, finding) = match scanned {
            Ok(ScanEnd::Limit { commit_log_offset }) if commit_log_offset == from => {
                // No segment holds `from`: the log changed under the pass (a segment list
                // without it yet no new truncation generation). End it; the next one re-reads it.
                pass.clean = false;
                return self.end_pass();
            }
            Ok(ScanEnd::Limit { commit_log_offset }) => (commit_log_offset, None),
            Ok(ScanEnd::Stopped {
                commit_log_offset,
                stop,
                ..
            }) => {
                let reason = match stop {
                    Stop::Zeros => "zeros below the flushed offset".to_owned(),
                    Stop::Invalid(reason) => reason.to_owned(),
                };
                (commit_log_offset, Some(Finding::Record(reason)))
            }
            // The read itself failed (EIO: a bad sector): the damage is somewhere in the step.
            Err(err) => (from, Some(Finding::Read(err.to_string()))),
        };
        pass.commit_log_offset = checked_end;
        let bytes = checked_end - from;
        if bytes > 0 {
            shared
                .verified
                .lock()
                .expect("verified range lock poisoned")
                .on_checked(from, checked_end, min_offset);
            release_page_cache(&shared, from, checked_end);
            shared.observer.scrubbed(bytes);
        }
        let Some(finding) = finding else {
            return Step::Checked { bytes };
        };
        match self.confirm(checked_end, &finding, rewrite_seq) {
            Confirmed::Corrupt => {
                let reason = match finding {
                    Finding::Record(reason) => reason,
                    Finding::Read(error) => format!("read failed: {error}"),
                };
                shared.report_corrupt(checked_end, reason);
                if let Some(pass) = &mut self.pass {
                    pass.clean = false;
                }
                self.end_pass()
            }
            Confirmed::Changed => {
                // The log changed under the read: start again from its start.
                self.pass = None;
                Step::Checked { bytes }
            }
            Confirmed::Sound => Step::Checked { bytes },
        }
    }

    /// Re-checks a finding at `commit_log_offset`, and keeps it only if the log did not change
    /// under either read (see the module header).
    fn confirm(&self, commit_log_offset: u64, finding: &Finding, rewrite_seq: u64) -> Confirmed {
        let shared = &self.shared;
        let reread = match finding {
            Finding::Read(_) => None,
            Finding::Record(_) => Some(scan::scan(
                &shared.log,
                commit_log_offset,
                commit_log_offset + 1,
                SCRUB_STEP_BYTES as usize,
                |_, _| Ok(()),
            )),
        };
        // After both reads: no truncation or start_at ran meanwhile (the sequence is even and
        // unchanged; each bumps it before touching a byte), retention did not take the record
        // away, and it is still below the flushed offset.
        if rewrite_seq % 2 == 1
            || shared.log_rewrite_seq() != rewrite_seq
            || commit_log_offset < shared.log.min_offset()
            || commit_log_offset >= shared.log.flushed_offset()
        {
            return Confirmed::Changed;
        }
        match reread {
            Some(Ok(ScanEnd::Limit {
                commit_log_offset: end,
            })) if end > commit_log_offset => {
                tracing::warn!(
                    commit_log_offset,
                    "a record failed its check once and passed on a second read: not reported"
                );
                Confirmed::Sound
            }
            _ => Confirmed::Corrupt,
        }
    }

    fn end_pass(&mut self) -> Step {
        let pass = self.pass.take().expect("a pass is under way");
        self.shared.observer.scrub_pass_ended();
        if pass.clean && self.shared.mark_verified() {
            tracing::info!(
                end_offset = pass.end_offset,
                duration_ms = pass.started.elapsed().as_millis() as u64,
                "scrub pass found no corrupt record: the store is verified"
            );
        }
        Step::PassEnded {
            clean: pass.clean,
            started: pass.started,
        }
    }
}

/// Something a step found.
enum Finding {
    /// A record that failed its check, and why.
    Record(String),
    /// A read that failed.
    Read(String),
}

/// What [`Scrubber::confirm`] concluded.
enum Confirmed {
    Corrupt,
    /// The log changed under the read (a cut, retention): nothing to report.
    Changed,
    /// The record reads sound now.
    Sound,
}

/// Hands the pages of `[from, to)` back to the kernel, except those within
/// `page_cache_keep_bytes` of the flushed offset (see the module header).
fn release_page_cache(shared: &Shared, from: u64, to: u64) {
    let keep_from = shared
        .log
        .flushed_offset()
        .saturating_sub(shared.config.page_cache_keep_bytes);
    let to = to.min(keep_from);
    if from >= to {
        return;
    }
    for segment in shared.log.segments() {
        let start = segment.base_offset().max(from);
        let stop = segment.end_offset().min(to);
        if start < stop {
            segment.release_page_cache(start, stop);
        }
    }
}

/// The scrubber thread: steps, paced, until the store stops.
pub(crate) fn run(shared: Arc<Shared>) {
    let bytes_per_second = shared.config.scrub_bytes_per_second;
    let mut scrubber = Scrubber::new(Arc::clone(&shared), bytes_per_second);
    let mut pacer = Pacer::new(bytes_per_second, Instant::now());
    let pass_interval = Duration::from_millis(shared.config.scrub_pass_interval_ms);
    let mut next_pass_at = Instant::now();
    loop {
        let now = Instant::now();
        let wait = if scrubber.between_passes() && now < next_pass_at {
            next_pass_at - now
        } else {
            if scrubber.between_passes() {
                pacer.restart(now);
            }
            match scrubber.step() {
                Step::Checked { bytes } => pacer.wait_after(bytes, Instant::now()),
                Step::PassEnded { started, .. } => {
                    next_pass_at = started + pass_interval;
                    next_pass_at.saturating_duration_since(Instant::now())
                }
            }
        };
        if shared.scrub_signal.wait(Some(wait), || false) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At any time the pacer allowed at most `rate * elapsed` plus one step, however late the
    /// thread wakes, and it never waits longer than the rate requires (a simulated clock: no
    /// timing precision involved).
    #[test]
    fn the_pacer_never_allows_more_than_the_rate_plus_one_step() {
        let rate = 10 << 20;
        let step = step_bytes(rate);
        let start = Instant::now();
        let mut pacer = Pacer::new(rate, start);
        let mut now = start;
        let mut waited = Duration::ZERO;
        let mut read = 0u64;
        // Wake-up delays after each wait, in microseconds: on time, late, past the slack (which
        // makes the pacer count afresh rather than catch up in a burst).
        let delays = [0u64, 0, 150, 3, 0, 2_500_000, 0, 0, 40_000, 0];
        for round in 0..1000 {
            read += step;
            let wait = pacer.wait_after(step, now);
            waited += wait;
            now += wait + Duration::from_micros(delays[round % delays.len()]);
            // The next step starts at `now`: what was read since the pacer began counting is
            // due by then.
            let elapsed = now.duration_since(pacer.since).as_secs_f64();
            assert!(
                pacer.bytes as f64 <= rate as f64 * elapsed + 1.0,
                "round {round}: {} bytes in {elapsed} s",
                pacer.bytes
            );
        }
        assert!(
            waited.as_secs_f64() <= read as f64 / rate as f64,
            "waited {waited:?} for {read} bytes at {rate} B/s"
        );
        // On time every round, it waits exactly what the rate requires.
        let mut pacer = Pacer::new(rate, start);
        let mut now = start;
        for _ in 0..100 {
            now += pacer.wait_after(step, now);
        }
        let expected = 100.0 * step as f64 / rate as f64;
        assert!((now.duration_since(start).as_secs_f64() - expected).abs() < 1e-6);
    }

    #[test]
    fn a_step_is_at_most_one_seconds_worth_and_at_most_the_step_cap() {
        assert_eq!(step_bytes(100 << 20), SCRUB_STEP_BYTES);
        assert_eq!(step_bytes(64 << 10), 64 << 10);
        assert_eq!(step_bytes(1), SCRUB_STEP_BYTES_MIN);
    }
}
