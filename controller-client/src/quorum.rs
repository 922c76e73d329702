//! One connection to the controller quorum, seen as one service.
//!
//! Any controller answers any request (followers forward to the leader), so the connection uses
//! one address at a time, the one that answered last, and moves to the next when that one cannot
//! be reached, does not answer in time, or answers `CONTROLLER_NOT_AVAILABLE` (no leader yet). A
//! controller leader change costs a pause, not an error, as long as it ends within the call's
//! patience. After every round over all addresses without an answer it backs off, doubling from
//! 50 ms to at most 1 s with random jitter, so that many brokers and clients that lost the same
//! controller do not come back in step.
//!
//! The connection is cheap to clone; clones share their channels and which controller answered
//! last. A member (a broker) makes it with the cluster key, and its member-only calls are signed;
//! a client or cluster-cli makes it without one.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use auth::{ClusterKey, SignedChannel};
use proto::common::ErrorCode;
use proto::controller::controller_client::ControllerClient;
use rand::Rng;

use crate::error::ControllerError;

/// A generated controller client on the connection's channel.
pub type Client = ControllerClient<SignedChannel>;

/// How long a call keeps trying other controllers before it gives up, unless told otherwise.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a single attempt may take, unless told otherwise.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the TCP connect to one controller may take: a controller on this network answers in
/// well under that, and a dead one should cost little before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The first pause after a round without an answer; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between rounds: an election takes a few hundred milliseconds, and a
/// caller should notice the new leader soon after.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Which failures move a call on to the next controller; the others end it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Only failures that say nothing about the request: no connection, no answer in time, no
    /// leader (`CONTROLLER_NOT_AVAILABLE`). Every other answer is the quorum's verdict.
    WhenUnavailable,
    /// Everything but the given refusals, which retrying the same request cannot change.
    UnlessRefused(&'static [ErrorCode]),
}

impl Retry {
    fn moves_on(self, error: &ControllerError) -> bool {
        if error.is_unavailable() {
            return true;
        }
        match self {
            Retry::WhenUnavailable => false,
            Retry::UnlessRefused(final_codes) => {
                !matches!(error.code(), Some(code) if final_codes.contains(&code))
            }
        }
    }
}

/// A connection to the controller quorum.
#[derive(Clone)]
pub struct ControllerConnection {
    /// (address, client) per controller, in the order given.
    controllers: Arc<[(String, Client)]>,
    /// The channels under `controllers`, same order: [`Self::with_user`] wraps them again.
    channels: Arc<[SignedChannel]>,
    /// Index of the controller to try first: the last one that answered.
    current: Arc<AtomicUsize>,
    patience: Duration,
    attempt_timeout: Duration,
}

impl std::fmt::Debug for ControllerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConnection")
            .field("addrs", &self.addrs().collect::<Vec<_>>())
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl ControllerConnection {
    /// `addrs`: one or more `host:port`, comma-separated. Connects lazily. Calls are unsigned:
    /// for clients and operators' tools.
    pub fn new(addrs: &str) -> Result<ControllerConnection, ControllerError> {
        Self::build(addrs, None)
    }

    /// As [`Self::new`], for a member of the cluster: member-only calls (registration,
    /// heartbeats, topics, in-sync set changes) are signed with `key`.
    pub fn member(addrs: &str, key: ClusterKey) -> Result<ControllerConnection, ControllerError> {
        Self::build(addrs, Some(key))
    }

    fn build(
        addrs: &str,
        key: Option<ClusterKey>,
    ) -> Result<ControllerConnection, ControllerError> {
        let mut controllers = Vec::new();
        let mut channels = Vec::new();
        for addr in proto::dial::address_list(addrs)? {
            let channel = proto::dial::endpoint(&addr, CONNECT_TIMEOUT)?.connect_lazy();
            let channel = match &key {
                Some(key) => SignedChannel::new(channel, key.clone()),
                None => SignedChannel::unsigned(channel),
            };
            controllers.push((addr, ControllerClient::new(channel.clone())));
            channels.push(channel);
        }
        Ok(ControllerConnection {
            controllers: controllers.into(),
            channels: channels.into(),
            current: Arc::new(AtomicUsize::new(0)),
            patience: DEFAULT_PATIENCE,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        })
    }

    /// Signs every call that is not member-only as the user of `credentials` (none: calls go
    /// anonymous, as before), for a controller with `acl_enabled`.
    pub fn with_user(mut self, credentials: Option<auth::Credentials>) -> Self {
        let controllers: Vec<(String, Client)> = self
            .controllers
            .iter()
            .zip(self.channels.iter())
            .map(|((addr, _), channel)| {
                let signed = channel.clone().with_user(credentials.clone());
                (addr.clone(), ControllerClient::new(signed))
            })
            .collect();
        self.controllers = controllers.into();
        self
    }

    /// How long each call keeps trying (default 10 s).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Longest one attempt at one controller may take (default 5 s).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The controllers' addresses, in the order given.
    pub fn addrs(&self) -> impl Iterator<Item = &str> {
        self.controllers.iter().map(|(addr, _)| addr.as_str())
    }

    /// Every controller's address and client, starting with the one tried first now.
    pub fn clients(&self) -> impl Iterator<Item = (&str, Client)> {
        let first = self.current.load(Ordering::Relaxed);
        let count = self.controllers.len();
        (0..count).map(move |i| {
            let (addr, client) = &self.controllers[(first + i) % count];
            (addr.as_str(), client.clone())
        })
    }

    /// The controller tried first now: its index, address and client.
    pub fn current(&self) -> (usize, &str, Client) {
        let index = self.current.load(Ordering::Relaxed) % self.controllers.len();
        let (addr, client) = &self.controllers[index];
        (index, addr, client.clone())
    }

    /// The controller at `index` failed: the next call starts with the one after it. Of
    /// concurrent failures of the same controller only the first moves on, so that two calls
    /// failing at once do not skip a controller.
    pub fn move_past(&self, index: usize) {
        let next = (index + 1) % self.controllers.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One attempt at the controller tried first now, within the attempt timeout (a timeout
    /// answers DEADLINE_EXCEEDED). For callers that pace their own retries (a broker's
    /// heartbeats): a failure does not move the connection on; [`Self::move_past`] does.
    pub async fn once<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (_, _, client) = self.current();
        match tokio::time::timeout(self.attempt_timeout, call(client)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {} ms",
                self.attempt_timeout.as_millis()
            ))),
        }
    }

    /// Runs `call` with the connection's patience, moving on as [`Retry::WhenUnavailable`]
    /// says.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ControllerError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(self.patience, Retry::WhenUnavailable, call)
            .await
    }

    /// Runs `call` against one controller after another until one answers, `retry` says the
    /// failure is final, or `patience` runs out. The error then is the most telling failure
    /// seen: a controller's own answer (no quorum) says more than a timeout, and a timeout more
    /// than a refused connection to a controller that is down.
    pub async fn call_with<T, F, Fut>(
        &self,
        patience: Duration,
        retry: Retry,
        call: F,
    ) -> Result<T, ControllerError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = FIRST_BACKOFF;
        let mut last_error: Option<ControllerError> = None;
        let mut tried_this_round = 0;
        loop {
            let (index, addr, client) = self.current();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeout = self.attempt_timeout.min(left).max(Duration::from_millis(1));
            let error = match tokio::time::timeout(timeout, call(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => ControllerError::from(status),
                Err(_) => ControllerError::Timeout {
                    timeout_ms: timeout.as_millis() as u64,
                },
            };
            if !retry.moves_on(&error) {
                return Err(error);
            }
            tracing::debug!(controller = %addr, %error, "controller did not answer; trying the next");
            if last_error
                .as_ref()
                .is_none_or(|last| error.telling() >= last.telling())
            {
                last_error = Some(error);
            }
            self.move_past(index);
            tried_this_round += 1;
            if tried_this_round >= self.controllers.len() {
                tried_this_round = 0;
                let pause = jittered(backoff);
                if tokio::time::Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Err(last_error.unwrap_or(ControllerError::Timeout {
            timeout_ms: patience.as_millis() as u64,
        }))
    }
}

/// `pause` scaled by a random factor in [0.5, 1.5).
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(rand::rng().random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_address_lists_are_refused_up_front() {
        assert!(matches!(
            ControllerConnection::new(" , "),
            Err(ControllerError::BadAddress(_))
        ));
        assert!(matches!(
            ControllerConnection::new("127.0.0.1:1,a b:2"),
            Err(ControllerError::BadAddress(_))
        ));
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..1000 {
            let pause = jittered(Duration::from_millis(100));
            assert!(pause >= Duration::from_millis(50) && pause < Duration::from_millis(150));
        }
    }

    #[test]
    fn refusals_end_a_call_and_unavailability_moves_on() {
        let refused = ControllerError::Refused {
            code: ErrorCode::Conflict,
            message: String::new(),
        };
        let internal = ControllerError::Refused {
            code: ErrorCode::InternalError,
            message: String::new(),
        };
        let no_leader = ControllerError::Refused {
            code: ErrorCode::ControllerNotAvailable,
            message: String::new(),
        };
        let timeout = ControllerError::Timeout { timeout_ms: 1 };
        assert!(!Retry::WhenUnavailable.moves_on(&refused));
        assert!(!Retry::WhenUnavailable.moves_on(&internal));
        assert!(Retry::WhenUnavailable.moves_on(&no_leader));
        assert!(Retry::WhenUnavailable.moves_on(&timeout));
        let unless = Retry::UnlessRefused(&[ErrorCode::Conflict]);
        assert!(!unless.moves_on(&refused));
        assert!(unless.moves_on(&internal));
        assert!(unless.moves_on(&no_leader));
    }

    #[tokio::test]
    async fn a_quorum_nobody_answers_gives_up_after_the_patience() {
        // Port 1 on loopback refuses connections at once.
        let conn = ControllerConnection::new("127.0.0.1:1,127.0.0.1:1")
            .unwrap()
            .with_patience(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let result: Result<proto::controller::ListTopicsResponse, _> = conn
            .call(
                |mut c| async move { c.list_topics(proto::controller::ListTopicsRequest {}).await },
            )
            .await;
        assert!(result.unwrap_err().is_unavailable());
        // Bounded by the patience (the next pause would pass it), not by rounds or timeouts.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "gave up late: {took:?}");
    }
}
