//! At most one warning a second per guard: a flood of refused calls must not fill the disk with
//! logs, while the first of each burst still reaches the operator (the rest go to debug, and
//! every refusal is counted in a metric).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::client::unix_now_ms;

/// Shared by the clones of one guard.
#[derive(Clone, Debug, Default)]
pub(crate) struct WarnLimit {
    last_ms: Arc<AtomicU64>,
}

impl WarnLimit {
    /// Whether this refusal may be logged at warn: the first one in a second does (and takes the
    /// second); concurrent callers race for it and one wins.
    pub(crate) fn allows(&self) -> bool {
        let now = unix_now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1_000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second() {
        let limit = WarnLimit::default();
        assert!(limit.allows());
        assert!(!limit.allows());
        assert!(!limit.clone().allows(), "clones share the second");
    }
}
