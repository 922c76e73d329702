//! The receiver's side: a tower layer in front of a member's gRPC server that admits a
//! member-only call only with a valid signature, and passes every other call untouched.
//!
//! A call is admitted when, in this order (cheapest first, so that garbage costs little):
//! 1. it carries exactly one well-formed signature header;
//! 2. its timestamp is within [`CLOCK_SKEW_MS_MAX`] of this machine's clock;
//! 3. the MAC over path, timestamp, nonce (and the body, read up to
//!    [`SIGNED_BODY_BYTES_MAX`](crate::paths::SIGNED_BODY_BYTES_MAX)) verifies with the cluster
//!    key;
//! 4. its nonce was not admitted before (the [`ReplayCache`]).
//!
//! Anything else is answered `UNAUTHORIZED` (40100; gRPC UNAUTHENTICATED, as `proto::status`
//! maps it) before the service sees a byte of it, counted in `member_auth_refusals_total{reason}`
//! and logged (at most once a second at warn, so a flood cannot fill the disk with logs). A node
//! with no cluster key refuses every member-only call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Limited};
use tonic::body::Body;
use tower_service::Service;

use crate::client::unix_now_ms;
use crate::key::{ClusterKey, Signature, SIGNATURE_METADATA_KEY};
use crate::paths::{member_only, Coverage, SIGNED_BODY_BYTES_MAX};
use crate::replay::{ReplayCache, ReplayError};

/// How far a signature's timestamp may be from the receiver's clock, either way. Members' clocks
/// must agree to this (NTP keeps them within milliseconds); a replay is possible only within it,
/// and the replay cache closes that.
pub const CLOCK_SKEW_MS_MAX: u64 = 30_000;

/// Why a call was refused: the `reason` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoKey,
    Missing,
    Malformed,
    Stale,
    BodyUnreadable,
    BadSignature,
    Replayed,
    ReplayCacheFull,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoKey => "no_key",
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Stale => "stale",
            Refusal::BodyUnreadable => "body_unreadable",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replayed => "replayed",
            Refusal::ReplayCacheFull => "replay_cache_full",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::NoKey => "this node has no cluster_secret: it serves no internal call",
            Refusal::Missing => "internal call without a member signature",
            Refusal::Malformed => "malformed member signature",
            Refusal::Stale => {
                "member signature outside the clock-skew window (replayed, or the clocks differ)"
            }
            Refusal::BodyUnreadable => "request body unreadable or too large to verify",
            Refusal::BadSignature => "member signature does not verify: not this cluster's key",
            Refusal::Replayed => "member signature already used",
            Refusal::ReplayCacheFull => "too many signed calls within the skew window; retry",
        }
    }
}

/// Wraps a server's routes in [`MemberGuard`]: `Server::builder().layer(layer)`.
#[derive(Clone, Debug)]
pub struct MemberGuardLayer {
    shared: Arc<Shared>,
}

struct Shared {
    key: Option<ClusterKey>,
    replay: ReplayCache,
    last_warn_ms: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("key", &self.key).finish()
    }
}

impl MemberGuardLayer {
    /// `None`: this node has no cluster key and refuses every member-only call.
    pub fn new(key: Option<ClusterKey>) -> MemberGuardLayer {
        MemberGuardLayer {
            shared: Arc::new(Shared {
                key,
                replay: ReplayCache::default(),
                last_warn_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for MemberGuardLayer {
    type Service = MemberGuard<S>;

    fn layer(&self, inner: S) -> MemberGuard<S> {
        MemberGuard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct MemberGuard<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// Steps 1 and 2: the header alone.
    fn signature(
        &self,
        request: &http::Request<Body>,
    ) -> Result<(&ClusterKey, Signature), Refusal> {
        let key = self.key.as_ref().ok_or(Refusal::NoKey)?;
        let mut values = request.headers().get_all(SIGNATURE_METADATA_KEY).iter();
        let value = values.next().ok_or(Refusal::Missing)?;
        if values.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let signature = value
            .to_str()
            .ok()
            .and_then(Signature::parse)
            .ok_or(Refusal::Malformed)?;
        if unix_now_ms().abs_diff(signature.timestamp_ms) > CLOCK_SKEW_MS_MAX {
            return Err(Refusal::Stale);
        }
        Ok((key, signature))
    }

    /// Steps 3 and 4, once the covered bytes are at hand.
    fn admit(
        &self,
        key: &ClusterKey,
        path: &str,
        signature: &Signature,
        body: &[u8],
    ) -> Result<(), Refusal> {
        if !key.verify(path, signature, body) {
            return Err(Refusal::BadSignature);
        }
        let forget_at_ms = signature.timestamp_ms.saturating_add(CLOCK_SKEW_MS_MAX);
        self.replay
            .admit(signature.nonce, forget_at_ms, unix_now_ms())
            .map_err(|err| match err {
                ReplayError::Replayed => Refusal::Replayed,
                ReplayError::Full => Refusal::ReplayCacheFull,
            })
    }

    fn refuse(
        &self,
        refusal: Refusal,
        path: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> http::Response<Body> {
        metrics::counter!(crate::REFUSALS_METRIC, "reason" => refusal.label()).increment(1);
        let now = unix_now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(path, peer = ?peer, reason = refusal.label(), "internal call refused: caller did not prove cluster membership");
        } else {
            tracing::debug!(path, peer = ?peer, reason = refusal.label(), "internal call refused");
        }
        proto::error_status(proto::common::ErrorCode::Unauthorized, refusal.message()).into_http()
    }
}

impl<S> Service<http::Request<Body>> for MemberGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(coverage) = member_only(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr());
        let path = request.uri().path().to_owned();
        let (key, signature) = match self.shared.signature(&request) {
            Ok(found) => found,
            Err(refusal) => {
                let answer = self.shared.refuse(refusal, &path, peer);
                return Box::pin(async move { Ok(answer) });
            }
        };
        let key = key.clone();
        if coverage == Coverage::Header {
            return match self.shared.admit(&key, &path, &signature, &[]) {
                Ok(()) => Box::pin(self.inner.call(request)),
                Err(refusal) => {
                    let answer = self.shared.refuse(refusal, &path, peer);
                    Box::pin(async move { Ok(answer) })
                }
            };
        }
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match Limited::new(body, SIGNED_BODY_BYTES_MAX).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Ok(shared.refuse(Refusal::BodyUnreadable, &path, peer)),
            };
            if let Err(refusal) = shared.admit(&key, &path, &signature, &bytes) {
                return Ok(shared.refuse(refusal, &path, peer));
            }
            let body = Body::new(http_body_util::Full::new(bytes));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}
