//! How every node and client dials another: one way to read an address list and build a tonic
//! `Endpoint`, so that a `host:port` is checked the same everywhere and every connection gets
//! the same TCP settings (no Nagle delay: the cluster's messages are small and latency-bound).
//!
//! Each caller still chooses its own timeouts, because they mean different things: a Raft
//! message, a broker's heartbeat and an operator's election wait for different lengths of time.
//!
//! TLS is a property of the process, not of each call site: once [`set_tls`] installed a
//! [`DialTls`] (a node at start, with its certificate as client identity; an application or
//! `cluster-cli` with the CA alone), every endpoint is `https://` and verifies its peer against
//! that CA. A process talks to one cluster, which is either encrypted or not, so one setting
//! serves every connection it makes, and no caller can forget it.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::transport::Endpoint;

use crate::tls::DialTls;

/// The local address every outgoing connection of this process comes from, once set (a broker's
/// `source_ip`): on a host with several addresses, the one its peers and their firewalls know it
/// by. Unset: the operating system picks one per connection.
static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();

/// Makes every later outgoing connection of this process come from `ip`. Once per process:
/// setting another address afterwards is refused with the one set.
pub fn set_source_ip(ip: IpAddr) -> Result<(), IpAddr> {
    let set = *SOURCE_IP.get_or_init(|| ip);
    if set == ip {
        Ok(())
    } else {
        Err(set)
    }
}

/// The address set by [`set_source_ip`], if any: for connections made without [`endpoint`].
pub fn source_ip() -> Option<IpAddr> {
    SOURCE_IP.get().copied()
}

/// The TLS every later outgoing connection of this process uses, once set.
static TLS: OnceLock<DialTls> = OnceLock::new();

/// Makes every later endpoint of this process `https://` with `tls`. Once per process: another
/// configuration afterwards is refused (the one set stays); the same one again is accepted.
pub fn set_tls(tls: DialTls) -> Result<(), TlsAlreadySet> {
    if *TLS.get_or_init(|| tls.clone()) == tls {
        Ok(())
    } else {
        Err(TlsAlreadySet)
    }
}

/// Whether this process dials with TLS.
pub fn tls_enabled() -> bool {
    TLS.get().is_some()
}

/// [`set_tls`] was called before with another configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this process already dials with another TLS configuration")]
pub struct TlsAlreadySet;

/// How often a connection with requests in flight is pinged (HTTP/2 PING), and how long an
/// answer may take before the connection counts as dead and the channel dials again. Without
/// it, a connection whose packets were dropped for a while (a cut link, since healed) stalls
/// every request on it until TCP's retransmission, whose backoff grows to minutes, gets
/// through; with it, a new connection is made within a few seconds.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// An address that cannot be dialled, or an empty address list.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AddressError {
    #[error("no address given")]
    Empty,
    #[error("{addr:?} is not a host:port gRPC can dial")]
    NotDialable { addr: String },
    /// TLS cannot be set up for this address (a host that is not a valid server name).
    #[error("{addr:?}: cannot dial it with TLS")]
    Tls {
        addr: String,
        #[source]
        source: Arc<tonic::transport::Error>,
    },
}

/// The addresses in a comma-separated list (`host:port,host:port`), blanks ignored, each checked
/// to be dialable; at least one.
pub fn address_list(list: &str) -> Result<Vec<String>, AddressError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_owned)
        .collect();
    if addrs.is_empty() {
        return Err(AddressError::Empty);
    }
    for addr in &addrs {
        endpoint(addr, Duration::from_secs(1))?;
    }
    Ok(addrs)
}

/// An endpoint for `addr` (`host:port`; HTTP/2, over TLS once [`set_tls`] was called) that
/// gives up connecting after `connect_timeout`, with TCP_NODELAY and keep-alive pings, from the
/// process's source address if one is set. Connecting is left to the caller (`connect_lazy` for a
/// channel that dials on first use, `connect` to know now).
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, AddressError> {
    let not_dialable = || AddressError::NotDialable {
        addr: addr.to_owned(),
    };
    // `http://` with an empty host, a path or a query would parse as a URI but not dial.
    if addr.is_empty() || addr.contains(['/', '?', '#', '@']) {
        return Err(not_dialable());
    }
    let tls = TLS.get();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| not_dialable())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .local_address(source_ip());
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config())
            .map_err(|source| AddressError::Tls {
                addr: addr.to_owned(),
                source: Arc::new(source),
            }),
        None => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_trimmed_and_checked() {
        assert_eq!(
            address_list(" 127.0.0.1:1, ,localhost:2 ").unwrap(),
            vec!["127.0.0.1:1".to_owned(), "localhost:2".to_owned()]
        );
        assert!(matches!(address_list(" , "), Err(AddressError::Empty)));
        assert!(matches!(
            address_list("127.0.0.1:1,bad host:2"),
            Err(AddressError::NotDialable { .. })
        ));
    }

    #[test]
    fn addresses_with_a_path_or_user_are_refused() {
        for bad in ["", "a:1/x", "user@a:1", "a:1?q", "a:1#f"] {
            assert!(endpoint(bad, Duration::from_secs(1)).is_err(), "{bad:?}");
        }
        assert!(endpoint("[::1]:9876", Duration::from_secs(1)).is_ok());
    }
}
