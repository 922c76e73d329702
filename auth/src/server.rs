//! The receiver's side: a tower layer in front of a member's gRPC server that admits a
//! member-only call only with a valid signature, and passes every other call untouched.
//!
//! A call is admitted when, in this order (cheapest first, so that garbage costs little):
//! 0. with TLS on ([`MemberGuardLayer::requiring_client_certificate`]), its connection presented
//!    a client certificate, which the TLS handshake already verified against the cluster CA
//!    (a certificate the CA did not sign never gets this far: the handshake fails);
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

use crate::warn_limit::WarnLimit;
use std::future::Future;
use std::pin::Pin;
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
    /// TLS is on and the connection presented no client certificate signed by the cluster CA.
    NoClientCertificate,
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
            Refusal::NoClientCertificate => "no_client_certificate",
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
            Refusal::NoClientCertificate => {
                "internal call without a client certificate signed by the cluster CA"
            }
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
    /// TLS is on: member-only calls need a verified client certificate too.
    require_client_certificate: bool,
    replay: ReplayCache,
    warn_limit: WarnLimit,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .field(
                "require_client_certificate",
                &self.require_client_certificate,
            )
            .finish()
    }
}

impl MemberGuardLayer {
    /// `None`: this node has no cluster key and refuses every member-only call.
    pub fn new(key: Option<ClusterKey>) -> MemberGuardLayer {
        Self::build(key, false)
    }

    /// As [`MemberGuardLayer::new`], for a server behind TLS with client certificates verified
    /// against the cluster CA: a member-only call must also come over a connection that
    /// presented such a certificate (`NoClientCertificate` otherwise). Two proofs, so that
    /// neither a leaked secret alone nor a stolen certificate alone makes a member.
    pub fn requiring_client_certificate(key: Option<ClusterKey>) -> MemberGuardLayer {
        Self::build(key, true)
    }

    fn build(key: Option<ClusterKey>, require_client_certificate: bool) -> MemberGuardLayer {
        MemberGuardLayer {
            shared: Arc::new(Shared {
                key,
                require_client_certificate,
                replay: ReplayCache::default(),
                warn_limit: WarnLimit::default(),
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
    /// Steps 0, 1 and 2: the connection and the header alone.
    fn signature(
        &self,
        request: &http::Request<Body>,
    ) -> Result<(&ClusterKey, Signature), Refusal> {
        let key = self.key.as_ref().ok_or(Refusal::NoKey)?;
        if self.require_client_certificate && !has_client_certificate(request) {
            return Err(Refusal::NoClientCertificate);
        }
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
        if self.warn_limit.allows() {
            tracing::warn!(path, peer = ?peer, reason = refusal.label(), "internal call refused: caller did not prove cluster membership");
        } else {
            tracing::debug!(path, peer = ?peer, reason = refusal.label(), "internal call refused");
        }
        proto::error_status(proto::common::ErrorCode::Unauthorized, refusal.message()).into_http()
    }
}

/// Whether the request's connection presented a client certificate. tonic records the peer's
/// certificates only after rustls verified them against the server's client CA, so presence
/// means verified.
fn has_client_certificate(request: &http::Request<Body>) -> bool {
    request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certs| !certs.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every call it is given with 200 and an empty body.
    #[derive(Clone)]
    struct Served;

    impl Service<http::Request<Body>> for Served {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    /// A member-only stream opening (its signature covers the header only), well signed.
    fn signed_stream(key: &ClusterKey) -> http::Request<Body> {
        let path = "/broker.replication.v1.LogShipping/Replicate";
        let signature = key.sign(path, unix_now_ms(), rand::random(), &[]);
        http::Request::builder()
            .uri(path)
            .header(SIGNATURE_METADATA_KEY, signature.to_header())
            .body(Body::empty())
            .expect("a valid request")
    }

    fn refusal_label(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-message")
            .and_then(|value| value.to_str().ok())
    }

    #[tokio::test]
    async fn a_signed_call_without_a_client_certificate_is_refused_only_when_required() {
        use tower_layer::Layer;
        let key = ClusterKey::new("a-test-secret-of-16-bytes").expect("long enough");

        let mut plain = MemberGuardLayer::new(Some(key.clone())).layer(Served);
        let answer = plain.call(signed_stream(&key)).await.expect("infallible");
        assert_eq!(
            refusal_label(&answer),
            None,
            "no TLS: the signature suffices"
        );

        let mut tls =
            MemberGuardLayer::requiring_client_certificate(Some(key.clone())).layer(Served);
        let answer = tls.call(signed_stream(&key)).await.expect("infallible");
        let message = refusal_label(&answer).expect("refused");
        // grpc-message is percent-encoded.
        assert!(message.contains("client%20certificate"), "{message}");
    }
}
