//! The Prometheus metrics exporter that both processes serve (`metrics_listen`): the broker's
//! and the controller's `GET /metrics` in Prometheus' text format. docs/METRICS.md lists every
//! metric.
//!
//! Code anywhere in the process records through the `metrics` facade (`metrics::counter!`, ...);
//! this module installs the one process-wide recorder (`metrics-exporter-prometheus`) and serves
//! its rendering over HTTP with hyper. It does not use the exporter crate's own listener: that
//! one cannot report the port it bound, and `metrics_listen` port 0 (tests, several processes
//! on one machine) needs the bound address, printed as `metrics listening on ADDR`.
//!
//! Gauges are set at scrape time: before each rendering, the process's [`Sampler`] reads the
//! current values (offsets, roles, lags, ...) from where they live, so a scrape is exact and
//! nothing polls between scrapes. A gauge series that no sample has set for
//! [`GAUGE_IDLE_TIMEOUT`] is dropped, so a slave that left, a consumer group that is gone or a
//! role given up disappear from the output instead of showing their last value forever. Counters
//! and histograms are never dropped.
//!
//! TLS: with [`Exporter::with_tls`] (a node with `tls_cert`, `tls_key`, `tls_ca`), every
//! connection is a TLS handshake first (tokio-rustls, HTTP/1.1 inside), bounded by the same
//! connection time; a plaintext request gets no answer. Scrapers present no certificate.
//!
//! Authentication: with [`Exporter::with_token`] (a node with `metrics_token_file`), every
//! request must carry `Authorization: Bearer TOKEN` (Prometheus' `authorization:
//! credentials_file`), compared in constant time; any other request, whatever its path, gets 401
//! and nothing else. The metrics name topics, consumer groups, offsets and lags: without a token
//! anyone who reaches the port reads them.
//!
//! Limits: at most [`SCRAPE_CONNECTIONS_MAX`] connections at once (more are closed at once), one
//! request per connection, each connection closed after [`SCRAPE_CONNECTION_TIME_MAX`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Scrape connections served at once: Prometheus opens one per scrape; a few more leave room
/// for a person with curl, and the cap keeps a flood of connections from costing more.
pub const SCRAPE_CONNECTIONS_MAX: usize = 8;
/// Longest one scrape connection stays open (a client that never sends its request).
pub const SCRAPE_CONNECTION_TIME_MAX: Duration = Duration::from_secs(10);
/// A gauge series not set by any sample for this long is dropped (see the module docs). Every
/// live gauge is set at each scrape, so only departed series ever get this old.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histogram samples are folded into their buckets between scrapes, bounding the
/// memory they hold (the exporter crate's own interval).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed accept (out of file descriptors), wait this long before the next, instead of
/// spinning.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Buckets of every histogram whose name ends in `_seconds` (all of ours): from 100 µs (an
/// fdatasync on a fast NVMe) to 10 s (past the send timeouts).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// The Content-Type of Prometheus' text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the process knows at scrape time: sets every gauge to its current value.
pub trait Sampler: Send + Sync + 'static {
    /// Called before each scrape is rendered; must set every gauge series that should appear
    /// (series it no longer sets are dropped after [`GAUGE_IDLE_TIMEOUT`]).
    fn sample(&self) -> impl Future<Output = ()> + Send;
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("metrics_listen {addr:?} is not HOST:PORT")]
    Address {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder")]
    Install(#[source] BuildError),
    #[error("metrics_token_file {path:?} cannot be read")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics_token_file {path:?}: {reason}")]
    TokenInvalid { path: PathBuf, reason: &'static str },
}

/// The bearer token every scrape must present (`metrics_token_file`).
#[derive(Clone)]
pub struct MetricsToken(Arc<[u8]>);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: configurations are logged.
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// Shortest token accepted: a guessable token protects nothing.
    pub const MIN_BYTES: usize = 16;
    /// Longest token accepted (a header's worth).
    pub const MAX_BYTES: usize = 4096;

    /// Reads the token from `path`: its content without surrounding whitespace, of
    /// [`Self::MIN_BYTES`] to [`Self::MAX_BYTES`] visible ASCII characters (what a header can
    /// carry unchanged).
    pub fn from_file(path: &Path) -> Result<MetricsToken, ExporterError> {
        use std::io::Read;
        let unreadable = |source| ExporterError::TokenFile {
            path: path.to_owned(),
            source,
        };
        // Bounded: a path naming a device or a huge file must not fill the memory. Anything
        // past the longest token (and its whitespace) makes it too long below.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(unreadable)?
            .take(Self::MAX_BYTES as u64 + 64)
            .read_to_string(&mut text)
            .map_err(unreadable)?;
        MetricsToken::new(text.trim()).map_err(|reason| ExporterError::TokenInvalid {
            path: path.to_owned(),
            reason,
        })
    }

    fn new(token: &str) -> Result<MetricsToken, &'static str> {
        if token.len() < Self::MIN_BYTES {
            return Err("the token is shorter than 16 characters");
        }
        if token.len() > Self::MAX_BYTES {
            return Err("the token is longer than 4096 characters");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token holds characters other than visible ASCII");
        }
        Ok(MetricsToken(token.as_bytes().into()))
    }

    /// `Authorization: Bearer TOKEN`, compared in constant time (for a token of the right
    /// length): a timing difference must not tell an attacker how much of a guess was right.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization
            .map(HeaderValue::as_bytes)
            .and_then(|value| value.strip_prefix(b"Bearer "))
        else {
            return false;
        };
        // `subtle` compares every byte whatever differs (and a length difference at once: the
        // length is no secret).
        bool::from(given.ct_eq(&self.0))
    }
}

/// `metrics_listen` as configured: empty is off, anything else must be `HOST:PORT`.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, ExporterError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|source| ExporterError::Address {
            addr: value.to_owned(),
            source,
        })
}

/// The installed recorder and the bound (not yet serving) listener.
pub struct Exporter {
    handle: PrometheusHandle,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    token: Option<MetricsToken>,
}

impl Exporter {
    /// Installs the process-wide recorder, with `global_labels` on every series, and binds
    /// `listen`. Once per process: a second install fails. Connections wait in the backlog until
    /// [`Exporter::serve`].
    pub async fn bind(
        listen: SocketAddr,
        global_labels: &[(&str, String)],
    ) -> Result<Exporter, ExporterError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ExporterError::Bind {
                addr: listen,
                source,
            })?;
        let mut builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)
            .map_err(ExporterError::Install)?
            .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT));
        for (key, value) in global_labels {
            builder = builder.add_global_label(*key, value.clone());
        }
        let handle = builder.install_recorder().map_err(ExporterError::Install)?;
        Ok(Exporter {
            handle,
            listener,
            tls: None,
            token: None,
        })
    }

    /// Answers only requests that carry `token` (see the module docs).
    pub fn with_token(self, token: MetricsToken) -> Exporter {
        Exporter {
            token: Some(token),
            ..self
        }
    }

    /// Serves HTTPS with `config` instead of plain HTTP.
    pub fn with_tls(self, config: Arc<ServerConfig>) -> Exporter {
        Exporter {
            tls: Some(TlsAcceptor::from(config)),
            ..self
        }
    }

    /// The address it listens on (with port 0, the port the system chose).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` (anything else: 404 or 405) until the task is aborted, sampling
    /// with `sampler` before each rendering.
    pub fn serve(self, sampler: Arc<impl Sampler>) -> JoinHandle<()> {
        tokio::spawn(serve(
            self.listener,
            self.handle,
            self.tls,
            self.token,
            sampler,
        ))
    }
}

async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    tls: Option<TlsAcceptor>,
    token: Option<MetricsToken>,
    sampler: Arc<impl Sampler>,
) {
    let connections = Arc::new(Semaphore::new(SCRAPE_CONNECTIONS_MAX));
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stream = tokio::select! {
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the cap: closing at once costs less than queueing.
            continue;
        };
        let (handle, sampler, tls) = (handle.clone(), sampler.clone(), tls.clone());
        let token = token.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                respond(request, handle.clone(), token.clone(), sampler.clone())
            });
            let connection = async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.keep_alive(false);
                match tls {
                    Some(tls) => {
                        let stream = tls.accept(stream).await.map_err(ConnectionError::Tls)?;
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                            .map_err(ConnectionError::Http)
                    }
                    None => builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                        .map_err(ConnectionError::Http),
                }
            };
            match tokio::time::timeout(SCRAPE_CONNECTION_TIME_MAX, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "metrics endpoint: connection"),
                Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
            }
            drop(permit);
        });
    }
}

/// Why one scrape connection ended badly (logged at debug: a scraper's problem, not ours).
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("TLS handshake")]
    Tls(#[source] std::io::Error),
    #[error("HTTP")]
    Http(#[source] hyper::Error),
}

async fn respond(
    request: Request<Incoming>,
    handle: PrometheusHandle,
    token: Option<MetricsToken>,
    sampler: Arc<impl Sampler>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(token) = &token {
        if !token.admits(request.headers().get(AUTHORIZATION)) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
            return Ok(response);
        }
    }
    let status = if request.uri().path() != "/metrics" {
        StatusCode::NOT_FOUND
    } else if request.method() != Method::GET {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        sampler.sample().await;
        let mut response = Response::new(Full::new(Bytes::from(handle.render())));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
        return Ok(response);
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_is_off_when_empty_and_refused_when_not_an_address() {
        assert_eq!(parse_listen("").unwrap(), None);
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(matches!(
            parse_listen("localhost"),
            Err(ExporterError::Address { .. })
        ));
    }

    #[test]
    fn a_token_admits_only_its_own_bearer_header() {
        let token = MetricsToken::new("0123456789abcdef-token").unwrap();
        let header = |value: &str| HeaderValue::from_str(value).unwrap();
        assert!(token.admits(Some(&header("Bearer 0123456789abcdef-token"))));
        assert!(!token.admits(None));
        assert!(!token.admits(Some(&header("Bearer 0123456789abcdef-tokeN"))));
        assert!(!token.admits(Some(&header("Bearer 0123456789abcdef-token2"))));
        assert!(!token.admits(Some(&header("Bearer 0123456789abcdef-toke"))));
        assert!(!token.admits(Some(&header("Basic 0123456789abcdef-token"))));
        assert!(!token.admits(Some(&header("0123456789abcdef-token"))));
        assert!(
            !format!("{token:?}").contains("0123"),
            "Debug shows no token"
        );
    }

    #[test]
    fn a_weak_or_unreadable_token_file_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("exporter-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert!(MetricsToken::from_file(&write("good", "  0123456789abcdef\n")).is_ok());
        let long = "x".repeat(MetricsToken::MAX_BYTES + 1);
        for (name, text) in [
            ("short", "0123456789"),
            ("spaces", "0123456789 abcdef"),
            ("empty", "\n"),
            ("long", long.as_str()),
        ] {
            let path = write(name, text);
            match MetricsToken::from_file(&path) {
                Err(ExporterError::TokenInvalid { path: named, .. }) => assert_eq!(named, path),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            MetricsToken::from_file(&dir.join("missing")),
            Err(ExporterError::TokenFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
