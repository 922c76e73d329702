//! The v5 API's own listener and server: bound at start (`v5_listen`), served with users'
//! signatures established in front of the service (`auth::UserGuardLayer`), stopped with the
//! broker. Its receipt handles are signed with the cluster key.

use std::net::SocketAddr;

use proto::v5::messaging_service_server::MessagingServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use super::V5Service;
use crate::server::StartError;

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

/// Serves the v5 API on `listener` until `stop` says so.
pub(crate) async fn serve_v5(
    v5: V5Service,
    listener: TcpListener,
    request_bytes_max: usize,
    users: auth::UserGuardLayer,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            if let Err(err) = s.set_nodelay(true) {
                tracing::warn!(error = %err, "could not disable Nagle's algorithm on a connection");
            }
        })
    });
    tonic::transport::Server::builder()
        // Who each call comes from; the service checks what the caller may do.
        .layer(users)
        .add_service(MessagingServiceServer::new(v5).max_decoding_message_size(request_bytes_max))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}
