//! A wake-up signal between the store's threads: a condition variable with a stop flag.
//!
//! The waiter passes its condition as a closure that reads atomics; the notifier updates those
//! atomics first and then calls [`Signal::notify`], which takes the same mutex. Because the waiter
//! checks the condition under that mutex, a notification between its check and its wait cannot be
//! lost.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    stopping: Mutex<bool>,
    condvar: Condvar,
}

impl Signal {
    /// Wakes every waiter so that it re-checks its condition.
    pub fn notify(&self) {
        let _guard = self.stopping.lock().expect("signal lock poisoned");
        self.condvar.notify_all();
    }

    /// Asks the waiting thread to finish.
    pub fn stop(&self) {
        *self.stopping.lock().expect("signal lock poisoned") = true;
        self.condvar.notify_all();
    }

    /// Waits until `ready()` holds, a stop is asked, or `timeout` passes. Returns true when a stop
    /// was asked.
    pub fn wait(&self, timeout: Option<Duration>, ready: impl Fn() -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut stopping = self.stopping.lock().expect("signal lock poisoned");
        loop {
            if *stopping {
                return true;
            }
            if ready() {
                return false;
            }
            match deadline {
                None => stopping = self.condvar.wait(stopping).expect("signal lock poisoned"),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    stopping = self
                        .condvar
                        .wait_timeout(stopping, deadline - now)
                        .expect("signal lock poisoned")
                        .0;
                }
            }
        }
    }
}
