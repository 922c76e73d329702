//! A wake-up signal between the store's threads: a condition variable with a stop flag.
//!
//! The waiter passes its condition as a closure that reads atomics; the notifier updates those
//! atomics first and then calls [`Signal::notify`], which takes the same mutex. Because the waiter
//! checks the condition under that mutex, a notification between its check and its wait cannot be
//! lost.
//!
//! PERF: the writer notifies after every group commit. [`Signal::notify`] skips the condition
//! variable (a futex system call) when no thread is parked on it, and notifies after releasing
//! the mutex, so that the woken thread does not wait for it.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    stopping: bool,
    parked: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Signal {
    state: Mutex<State>,
    condvar: Condvar,
}

impl Signal {
    /// Wakes every waiter so that it re-checks its condition.
    pub fn notify(&self) {
        // Taking the lock orders this call after any waiter's check of its condition: a waiter
        // that saw the old atomics is parked (counted, and inside the condition variable) by the
        // time the lock is free again. The notification goes after the lock is released: a
        // waiter woken while the notifier still held it would block on the mutex at once and
        // need a second wake-up (two more system calls and a context switch per group commit).
        let parked = self.state.lock().expect("signal lock poisoned").parked;
        if parked > 0 {
            self.condvar.notify_all();
        }
    }

    /// Asks the waiting thread to finish.
    pub fn stop(&self) {
        self.state.lock().expect("signal lock poisoned").stopping = true;
        self.condvar.notify_all();
    }

    /// Waits until `ready()` holds, a stop is asked, or `timeout` passes. Returns true when a stop
    /// was asked.
    pub fn wait(&self, timeout: Option<Duration>, ready: impl Fn() -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.state.lock().expect("signal lock poisoned");
        loop {
            if state.stopping {
                return true;
            }
            if ready() {
                return false;
            }
            state.parked += 1;
            let timed_out = match deadline {
                None => {
                    state = self.condvar.wait(state).expect("signal lock poisoned");
                    false
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.parked -= 1;
                        return false;
                    }
                    let (next, result) = self
                        .condvar
                        .wait_timeout(state, deadline - now)
                        .expect("signal lock poisoned");
                    state = next;
                    result.timed_out()
                }
            };
            state.parked -= 1;
            if timed_out {
                return state.stopping;
            }
        }
    }
}
