//! The broker's listeners and its side of dialling: binding the RocketMQ 5 port and serving it,
//! the accepted connections' TCP settings, TLS from `tls_cert`/`tls_key`/`tls_ca` (every
//! listener and every dialled connection, or a warning that all of them are plaintext), and the
//! source address of outgoing connections. `server.rs` wires them into one broker.

use std::net::SocketAddr;
use std::path::Path;

use proto::v5::messaging_service_server::MessagingServiceServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

use crate::server::StartError;
use crate::v5::V5Service;

/// The connections `listener` accepts, with Nagle's algorithm off. Small answers must leave at
/// once: with it on, an answer waits for the client's delayed ACK (40 ms here), which capped a
/// connection at a few hundred sends a second.
pub(crate) fn nodelay_incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            if let Err(err) = s.set_nodelay(true) {
                tracing::warn!(error = %err, "could not disable Nagle's algorithm on a connection");
            }
        })
    })
}

/// Makes this process's outgoing connections come from `source_ip`, when set. Validated with the
/// configuration, so a bad address never gets here.
pub(crate) fn dial_from_source_ip(settings: &crate::config::BrokerSettings) {
    if let Ok(Some(ip)) = settings.source_ip() {
        if let Err(set) = proto::dial::set_source_ip(ip) {
            tracing::warn!(%ip, %set, "outgoing connections already come from another address in this process");
        }
    }
}

/// The v5 API's listener when `v5_listen` is set, the address it bound, and the address
/// clients are given (`v5_advertised_addr`, else the bound one; empty when off).
pub(crate) async fn bind_v5(
    settings: &crate::config::BrokerSettings,
) -> Result<(Option<TcpListener>, Option<SocketAddr>, String), StartError> {
    let Some(addr) = settings.v5_listen()? else {
        return Ok((None, None, String::new()));
    };
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let advertised = if settings.v5_advertised_addr.is_empty() {
        bound.to_string()
    } else {
        settings.v5_advertised_addr.clone()
    };
    Ok((Some(listener), Some(bound), advertised))
}

/// The key receipt handles are signed with: the cluster key, so that every member reads them;
/// a standalone broker's own random one.
pub(crate) fn receipt_key(
    cluster_key: Option<auth::ClusterKey>,
) -> Result<auth::ClusterKey, StartError> {
    match cluster_key {
        Some(key) => Ok(key),
        None => {
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            Ok(auth::ClusterKey::new(&secret)?)
        }
    }
}

/// Reads the TLS files when set and makes this process dial with them; warns when there are
/// none, since every port is then plaintext.
pub(crate) fn start_tls(
    settings: &crate::config::BrokerSettings,
) -> Result<Option<proto::tls::NodeTls>, StartError> {
    let tls = proto::tls::start_node(settings.tls_paths()?.as_ref())?;
    if tls.is_none() {
        tracing::warn!(
            "no tls_cert, tls_key, tls_ca: every port of this broker is plaintext (development only)"
        );
    }
    Ok(tls)
}

/// Serves the v5 API on `listener` with `builder` (TLS or not), users' signatures established
/// in front of the service, until `stop` says so.
pub(crate) async fn serve_v5(
    builder: tonic::transport::Server,
    v5: V5Service,
    listener: TcpListener,
    request_bytes_max: usize,
    users: auth::UserGuardLayer,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = nodelay_incoming(listener);
    builder
        // Who each call comes from (a bad signature refused here); the service checks what
        // the caller may do.
        .layer(users)
        .add_service(MessagingServiceServer::new(v5).max_decoding_message_size(request_bytes_max))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// The metrics endpoint when `metrics_listen` is set (HTTPS with `tls`), its recorder installed
/// and the broker's metrics described.
pub(crate) async fn bind_exporter(
    settings: &crate::config::BrokerSettings,
    tls: Option<&proto::tls::NodeTls>,
) -> Result<Option<exporter::Exporter>, StartError> {
    let Some(addr) = settings.metrics_listen()? else {
        return Ok(None);
    };
    let labels = [
        ("broker_group", settings.broker_name.clone()),
        ("broker_id", settings.broker_id.to_string()),
    ];
    let mut exporter = exporter::Exporter::bind(addr, &labels).await?;
    if let Some(tls) = tls {
        exporter = exporter.with_tls(tls.rustls_server_config()?);
    }
    if settings.metrics_token_file.is_empty() {
        if settings.acl_enabled {
            tracing::warn!(
                "acl_enabled without metrics_token_file: /metrics (topics, groups, offsets) \
                 answers anyone who reaches its port"
            );
        }
    } else {
        let token = exporter::MetricsToken::from_file(Path::new(&settings.metrics_token_file))?;
        exporter = exporter.with_token(token);
    }
    crate::metrics::describe();
    Ok(Some(exporter))
}

/// The guard of the client port: with TLS, a member-only call (the log stream) needs a client
/// certificate from the cluster CA besides the member signature.
pub(crate) fn member_guard(
    tls: Option<&proto::tls::NodeTls>,
    cluster_key: Option<auth::ClusterKey>,
) -> auth::MemberGuardLayer {
    if tls.is_some() {
        auth::MemberGuardLayer::requiring_client_certificate(cluster_key)
    } else {
        auth::MemberGuardLayer::new(cluster_key)
    }
}
