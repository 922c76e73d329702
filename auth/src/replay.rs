//! The nonces a guard has admitted within the skew window, so that a captured signed request
//! sent again is refused.
//!
//! A nonce is remembered until its signature's timestamp leaves the window; after that the
//! timestamp alone refuses it. Only requests with a valid MAC are remembered, so an outsider
//! cannot fill the table; members fill it at their request rate (tens per second each), far below
//! [`REMEMBERED_MAX`].

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Most nonces remembered at once. A member flood past it (a bug, not an attack: only members
/// get here) is refused rather than let the table grow without bound.
pub const REMEMBERED_MAX: usize = 1 << 20;

/// Why a nonce was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    Replayed,
    Full,
}

#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<u128>,
    /// (forget at, nonce), in the order admitted; forget-at times are nearly ordered because
    /// admission checks the timestamp against the window.
    expiry: VecDeque<(u64, u128)>,
}

impl ReplayCache {
    /// Admits `nonce` once: remembered until `forget_at_ms`; `now_ms` drops what has expired.
    pub fn admit(&self, nonce: u128, forget_at_ms: u64, now_ms: u64) -> Result<(), ReplayError> {
        let mut inner = self.inner.lock().expect("replay cache lock poisoned");
        while let Some(&(at, old)) = inner.expiry.front() {
            if at > now_ms {
                break;
            }
            inner.expiry.pop_front();
            inner.seen.remove(&old);
        }
        if inner.seen.contains(&nonce) {
            return Err(ReplayError::Replayed);
        }
        if inner.seen.len() >= REMEMBERED_MAX {
            return Err(ReplayError::Full);
        }
        inner.seen.insert(nonce);
        inner.expiry.push_back((forget_at_ms, nonce));
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_admitted_once_until_forgotten() {
        let cache = ReplayCache::default();
        assert_eq!(cache.admit(7, 100, 0), Ok(()));
        assert_eq!(cache.admit(7, 100, 50), Err(ReplayError::Replayed));
        assert_eq!(cache.admit(8, 120, 50), Ok(()));
        assert_eq!(cache.len(), 2);
        // At 100 the first is forgotten (its timestamp now refuses it on its own).
        assert_eq!(cache.admit(9, 200, 100), Ok(()));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.admit(7, 200, 100), Ok(()));
    }
}
