//! The receiver's side of users' signatures: a tower layer in front of a node's gRPC server that
//! establishes who each request comes from and puts it in the request's extensions as a
//! [`Caller`], for the services' [`Gate`](crate::Gate) to decide on.
//!
//! A request without an `authorization` header, or with an empty access key (upstream's clients
//! send one even without credentials), is [`Caller::Anonymous`]. One with an access key must
//! verify ([`crate::user_sign`]): a malformed header, an unknown access key, a date outside the
//! skew window or a wrong signature is answered `UNAUTHORIZED` (40100) before any service sees
//! the request. Member-only paths are left to the [`MemberGuard`](crate::MemberGuard).
//!
//! With the gate not enforced (development), nothing is refused here: a request that does not
//! verify is anonymous, which the open gate allows anyway.

use crate::warn_limit::WarnLimit;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use proto::common::ErrorCode;
use tonic::body::Body;
use tower_service::Service;

use crate::client::unix_now_ms;
use crate::gate::{Caller, Gate, USER_REFUSALS_METRIC};
use crate::paths::member_only;
use crate::user_sign::{
    Authorization, SignatureError, AUTHORIZATION_METADATA_KEY, DATE_TIME_METADATA_KEY,
};

/// Wraps a server's routes in [`UserGuard`]: `Server::builder().layer(layer)`.
#[derive(Clone, Debug)]
pub struct UserGuardLayer {
    gate: Gate,
    warn_limit: WarnLimit,
}

impl UserGuardLayer {
    pub fn new(gate: Gate) -> UserGuardLayer {
        UserGuardLayer {
            gate,
            warn_limit: WarnLimit::default(),
        }
    }
}

impl<S> tower_layer::Layer<S> for UserGuardLayer {
    type Service = UserGuard<S>;

    fn layer(&self, inner: S) -> UserGuard<S> {
        UserGuard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct UserGuard<S> {
    inner: S,
    layer: UserGuardLayer,
}

/// Why a user's signature was refused: the `reason` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Malformed,
    UnknownAccessKey,
    Stale,
    BadSignature,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "signature_malformed",
            Refusal::UnknownAccessKey => "unknown_access_key",
            Refusal::Stale => "signature_stale",
            Refusal::BadSignature => "bad_signature",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed authorization header",
            Refusal::UnknownAccessKey => "unknown access key",
            Refusal::Stale => {
                "x-mq-date-time missing, malformed or outside the clock-skew window (replayed, or the clocks differ)"
            }
            Refusal::BadSignature => "signature does not verify with the access key's secret",
        }
    }
}

impl UserGuardLayer {
    /// Who `headers` say the caller is.
    fn caller(&self, headers: &http::HeaderMap) -> Result<(Caller, Option<String>), Refusal> {
        let mut values = headers.get_all(AUTHORIZATION_METADATA_KEY).iter();
        let Some(value) = values.next() else {
            return Ok((Caller::Anonymous, None));
        };
        if values.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let header = value.to_str().map_err(|_| Refusal::Malformed)?;
        let parsed = Authorization::parse(header).map_err(|_| Refusal::Malformed)?;
        let Some(parsed) = parsed else {
            return Ok((Caller::Anonymous, None));
        };
        let user = Some(parsed.access_key.clone());
        let secret = self
            .gate
            .directory()
            .secret_of(&parsed.access_key)
            .ok_or(Refusal::UnknownAccessKey)?;
        let date_time = headers
            .get(DATE_TIME_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .ok_or(Refusal::Stale)?;
        parsed
            .verify(&secret, date_time, unix_now_ms() / 1000)
            .map_err(|err| match err {
                SignatureError::Malformed => Refusal::Malformed,
                SignatureError::Stale => Refusal::Stale,
                SignatureError::BadSignature => Refusal::BadSignature,
            })?;
        Ok((Caller::User(parsed.access_key.into()), user))
    }

    fn refuse(&self, refusal: Refusal, path: &str, user: Option<&str>) -> http::Response<Body> {
        metrics::counter!(USER_REFUSALS_METRIC, "reason" => refusal.label()).increment(1);
        if self.warn_limit.allows() {
            tracing::warn!(
                path,
                user,
                reason = refusal.label(),
                "request refused: signature not accepted"
            );
        } else {
            tracing::debug!(path, user, reason = refusal.label(), "request refused");
        }
        proto::error_status(ErrorCode::Unauthorized, refusal.message()).into_http()
    }
}

impl<S> Service<http::Request<Body>> for UserGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if member_only(request.uri().path()).is_some() {
            return Box::pin(self.inner.call(request));
        }
        let caller = match self.layer.caller(request.headers()) {
            Ok((caller, _)) => caller,
            Err(_) if !self.layer.gate.enforced() => Caller::Anonymous,
            Err(refusal) => {
                let user = Authorization::parse(
                    request
                        .headers()
                        .get(AUTHORIZATION_METADATA_KEY)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or(""),
                )
                .ok()
                .flatten()
                .map(|parsed| parsed.access_key);
                let answer = self
                    .layer
                    .refuse(refusal, request.uri().path(), user.as_deref());
                return Box::pin(async move { Ok(answer) });
            }
        };
        request.extensions_mut().insert(caller);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AclSnapshot, User};
    use crate::gate::Directory;
    use crate::key::ClusterKey;
    use crate::user_sign::{format_date_time, Credentials};

    fn layer(enforced: bool) -> UserGuardLayer {
        let key = ClusterKey::new("0123456789abcdef").unwrap();
        let directory = Directory::new(Some(key.clone()));
        let mut acl = AclSnapshot::default();
        acl.users.insert(
            "app".into(),
            User {
                name: "app".into(),
                secret: key.seal("app", "secret-key-1"),
                admin: false,
            },
        );
        directory.replace(acl);
        UserGuardLayer::new(Gate::new(directory, enforced))
    }

    fn headers(credentials: &Credentials, unix_secs: u64) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        credentials.sign(unix_secs).apply(&mut headers);
        headers
    }

    #[test]
    fn callers_are_who_their_signature_proves_or_refused() {
        let layer = layer(true);
        let now = unix_now_ms() / 1000;
        let app = Credentials::new("app", "secret-key-1").unwrap();
        assert_eq!(
            layer.caller(&headers(&app, now)).unwrap().0,
            Caller::User("app".into())
        );
        assert_eq!(
            layer.caller(&http::HeaderMap::new()).unwrap().0,
            Caller::Anonymous
        );
        let wrong = Credentials::new("app", "secret-key-2").unwrap();
        assert_eq!(
            layer.caller(&headers(&wrong, now)).unwrap_err(),
            Refusal::BadSignature
        );
        let ghost = Credentials::new("ghost", "secret-key-1").unwrap();
        assert_eq!(
            layer.caller(&headers(&ghost, now)).unwrap_err(),
            Refusal::UnknownAccessKey
        );
        assert_eq!(
            layer.caller(&headers(&app, now - 3600)).unwrap_err(),
            Refusal::Stale,
            "a captured request an hour later"
        );
        let mut no_date = headers(&app, now);
        no_date.remove(DATE_TIME_METADATA_KEY);
        assert_eq!(layer.caller(&no_date).unwrap_err(), Refusal::Stale);
        let mut swapped = headers(&app, now);
        swapped.insert(
            DATE_TIME_METADATA_KEY,
            http::HeaderValue::from_str(&format_date_time(now + 1)).unwrap(),
        );
        assert_eq!(layer.caller(&swapped).unwrap_err(), Refusal::BadSignature);
        let mut garbage = http::HeaderMap::new();
        garbage.insert(
            AUTHORIZATION_METADATA_KEY,
            http::HeaderValue::from_static("MQv2-HMAC-SHA1 junk"),
        );
        assert_eq!(layer.caller(&garbage).unwrap_err(), Refusal::Malformed);
    }
}
