//! The caller's side: a tower layer that signs every member-only call a member makes.
//!
//! Wrap a channel once (`Signed::new(channel, key)`) and build any generated client on it; calls
//! to paths [`member_only`] does not list go through untouched, so one channel serves both kinds.
//! For a `Body` path the request body is read into memory (one unary message), signed, and sent
//! as read. With a user's credentials ([`Signed::with_user`]) every other call carries that
//! user's signature.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use tonic::body::Body;
use tower_service::Service;

use crate::key::{ClusterKey, SIGNATURE_METADATA_KEY};
use crate::paths::{member_only, Coverage};
use crate::user_sign::Credentials;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tonic channel whose member-only calls are signed.
pub type SignedChannel = Signed<tonic::transport::Channel>;

/// Wraps services in [`Signed`].
#[derive(Clone, Debug)]
pub struct SignLayer {
    key: ClusterKey,
}

impl SignLayer {
    pub fn new(key: ClusterKey) -> SignLayer {
        SignLayer { key }
    }
}

impl<S> tower_layer::Layer<S> for SignLayer {
    type Service = Signed<S>;

    fn layer(&self, inner: S) -> Signed<S> {
        Signed::new(inner, self.key.clone())
    }
}

/// A service (usually a channel) that signs member-only calls with the cluster key, or, made
/// with [`Signed::unsigned`], passes every call untouched (a client or an operator's tool, which
/// holds no cluster key): one channel type for both, so that code which dials the controller
/// quorum is written once.
#[derive(Clone, Debug)]
pub struct Signed<S> {
    inner: S,
    key: Option<ClusterKey>,
    /// Signs every call that is not member-only as this user ([`crate::user_sign`]).
    user: Option<std::sync::Arc<Credentials>>,
}

impl<S> Signed<S> {
    pub fn new(inner: S, key: ClusterKey) -> Signed<S> {
        Signed {
            inner,
            key: Some(key),
            user: None,
        }
    }

    /// Signs nothing: members refuse this channel's member-only calls.
    pub fn unsigned(inner: S) -> Signed<S> {
        Signed {
            inner,
            key: None,
            user: None,
        }
    }

    /// Also signs every call that is not member-only with `credentials` (none: unchanged).
    pub fn with_user(mut self, credentials: Option<Credentials>) -> Signed<S> {
        self.user = credentials.map(std::sync::Arc::new);
        self
    }
}

/// Milliseconds since the Unix epoch by this machine's clock (0 if it is set before 1970).
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl<S, B> Service<http::Request<Body>> for Signed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let coverage = member_only(request.uri().path());
        if let (Some(user), None) = (&self.user, coverage) {
            user.sign_now().apply(request.headers_mut());
        }
        let (Some(key), Some(coverage)) = (&self.key, coverage) else {
            let call = self.inner.call(request);
            return Box::pin(async move { call.await.map_err(Into::into) });
        };
        let key = key.clone();
        // The service made ready by poll_ready is the one that must take the call: keep it and
        // leave a fresh clone behind (tower's usual pattern for calls that await first).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path().to_owned();
            let nonce: u128 = rand::random();
            let (body, signature) = match coverage {
                Coverage::Body => {
                    let bytes = body.collect().await.map_err(Box::new)?.to_bytes();
                    let signature = key.sign(&path, unix_now_ms(), nonce, &bytes);
                    (Body::new(http_body_util::Full::new(bytes)), signature)
                }
                Coverage::Header => (body, key.sign(&path, unix_now_ms(), nonce, &[])),
            };
            let value = http::HeaderValue::from_str(&signature.to_header())
                .expect("a signature header is ASCII digits, hex and dots");
            parts.headers.insert(SIGNATURE_METADATA_KEY, value);
            inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}
