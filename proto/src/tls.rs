//! TLS material of a node or a client: the PEM files named by `tls_cert`, `tls_key` and `tls_ca`
//! (or a client's CA alone), read and checked once at start, and the configurations built from
//! them for each side of a connection.
//!
//! What it owns: reading the files (an error names the file), the all-three-or-none rule, the
//! process's rustls `CryptoProvider`, and the three configurations the cluster uses:
//! - a gRPC server's ([`NodeTls::server_config`]): the node's certificate, and client
//!   certificates *optional* but, when presented, verified against the cluster CA (applications
//!   have none; members present theirs, and `auth::MemberGuard` requires one on member-only
//!   calls);
//! - a dialer's ([`DialTls`], installed process-wide with [`crate::dial::set_tls`]): the CA as the
//!   only root and, for a node, its certificate as the client identity (mutual TLS);
//! - the `/metrics` endpoint's ([`NodeTls::rustls_server_config`]): plain HTTPS, HTTP/1.1.
//!
//! What it does not own: which listener uses what (the broker and controller wire it), and which
//! calls need a client certificate (`auth`).
//!
//! The crypto provider: rustls refuses to pick one when more than one is compiled in, and a
//! dependency could bring in aws-lc-rs beside ring one day. [`install_crypto_provider`] installs
//! ring as the process default once (a provider installed earlier, by anyone, is kept), and every
//! constructor here calls it, so no configuration is ever built before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Longest a TLS handshake may take on a server before the connection is dropped: a peer that
/// opens connections and never finishes the handshake must not hold them forever.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest PEM file read: certificates and keys are a few KiB; a bundle of CAs a few dozen.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Some of `tls_cert`, `tls_key`, `tls_ca` are set and others are not.
    #[error("tls_cert, tls_key and tls_ca are set together or not at all: {missing} is missing")]
    Incomplete { missing: &'static str },
    #[error("cannot read {what} file {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} file {path} is larger than 1 MiB: not a PEM file")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} file {path} holds no PEM {what}")]
    NotPem { what: &'static str, path: PathBuf },
    #[error("{what} file {path} is not valid PEM")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The files parse but do not make a usable configuration (a key that is not the
    /// certificate's, a CA that is not a CA).
    #[error("the TLS files do not make a usable configuration")]
    Config(#[source] rustls::Error),
    #[error("the CA in tls_ca cannot verify client certificates")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the gRPC server refused the TLS configuration")]
    Server(#[source] tonic::transport::Error),
    #[error(transparent)]
    AlreadySet(#[from] crate::dial::TlsAlreadySet),
}

/// A node's start: reads its TLS files when `paths` is set and makes every connection it dials
/// from now on mutual TLS with its certificate. `None`: the node is plaintext (its caller warns).
pub fn start_node(paths: Option<&TlsPaths>) -> Result<Option<NodeTls>, TlsError> {
    let Some(paths) = paths else {
        return Ok(None);
    };
    let tls = paths.load()?;
    crate::dial::set_tls(tls.dial())?;
    Ok(Some(tls))
}

/// A gRPC server builder, with `tls` when given. The one way the broker's and the controller's
/// servers start, so that none of their listeners is forgotten.
pub fn server_builder(tls: Option<&NodeTls>) -> Result<tonic::transport::Server, TlsError> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder
            .tls_config(tls.server_config())
            .map_err(TlsError::Server),
        None => Ok(builder),
    }
}

/// Installs ring as this process's rustls crypto provider, unless one is installed already.
/// Idempotent and cheap after the first call.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // An Err means another provider was installed first: it serves as well.
        let _ = ring_provider().install_default();
    });
}

/// The three settings, checked to be all set or all empty. `None`: plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsPaths {
    /// From the configuration's `tls_cert`, `tls_key`, `tls_ca` (empty: unset). Reads nothing.
    pub fn from_settings(cert: &str, key: &str, ca: &str) -> Result<Option<TlsPaths>, TlsError> {
        let set = [("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)];
        if set.iter().all(|(_, value)| value.is_empty()) {
            return Ok(None);
        }
        if let Some((missing, _)) = set.iter().find(|(_, value)| value.is_empty()) {
            return Err(TlsError::Incomplete { missing });
        }
        Ok(Some(TlsPaths {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            ca: PathBuf::from(ca),
        }))
    }

    /// Reads and checks the three files.
    pub fn load(&self) -> Result<NodeTls, TlsError> {
        install_crypto_provider();
        let cert_pem = read_pem("certificate", &self.cert)?;
        let certs = parse_certificates("certificate", &self.cert, &cert_pem)?;
        let key_pem = read_pem("private key", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NotPem {
                what: "private key",
                path: self.key.clone(),
            },
            source => TlsError::BadPem {
                what: "private key",
                path: self.key.clone(),
                source,
            },
        })?;
        let ca_pem = read_pem("CA certificate", &self.ca)?;
        let cas = parse_certificates("CA certificate", &self.ca, &ca_pem)?;
        let tls = NodeTls {
            cert_pem,
            key_pem,
            ca_pem,
            certs,
            key: Arc::new(key),
            cas,
        };
        // Build both server configurations now, so that a key that does not match its
        // certificate or a CA that is not one fails at start with its cause, not at the first
        // connection.
        tls.rustls_server_config()?;
        tls.client_verifier()?;
        Ok(tls)
    }
}

/// A node's TLS material, checked: its certificate chain and key, and the cluster CA (one or
/// more certificates: during a CA rotation, the old and the new).
#[derive(Clone)]
pub struct NodeTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    cas: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeTls")
            .field("certs", &self.certs.len())
            .field("cas", &self.cas.len())
            .finish()
    }
}

impl NodeTls {
    /// A gRPC server's TLS: this node's certificate; client certificates optional, verified
    /// against the CA when presented (a certificate the CA did not sign fails the handshake).
    pub fn server_config(&self) -> ServerTlsConfig {
        install_crypto_provider();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// How this node dials other nodes: the CA as root, its certificate as client identity.
    pub fn dial(&self) -> DialTls {
        DialTls {
            ca_pem: self.ca_pem.clone(),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
        }
    }

    /// The `/metrics` endpoint's server configuration: HTTPS (HTTP/1.1), no client
    /// certificates asked (scrapers have none).
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn client_verifier(&self) -> Result<(), TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.cas {
            roots.add(ca.clone()).map_err(TlsError::Config)?;
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(TlsError::Verifier)?;
        Ok(())
    }
}

/// How this process dials: the CA its peers' certificates must chain to, and for a node its
/// own certificate and key (mutual TLS). Compared by content, so that installing the same one
/// twice is harmless.
#[derive(Clone, PartialEq, Eq)]
pub struct DialTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for DialTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialTls")
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl DialTls {
    /// An application's or operator's: trusts the CA in `ca` (PEM, one or more certificates),
    /// presents no certificate.
    pub fn trusting(ca: &Path) -> Result<DialTls, TlsError> {
        install_crypto_provider();
        let ca_pem = read_pem("CA certificate", ca)?;
        parse_certificates("CA certificate", ca, &ca_pem)?;
        Ok(DialTls {
            ca_pem,
            identity: None,
        })
    }

    /// The same CA, presenting `cert` and `key` (PEM) as this side's identity: for tests that
    /// play a node with another certificate.
    pub fn with_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> DialTls {
        self.identity = Some((cert_pem, key_pem));
        self
    }

    /// Whether this side presents a certificate.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's client configuration. The server's name is checked against the address dialled
    /// (an IP address against the certificate's IP SANs).
    pub fn client_config(&self) -> ClientTlsConfig {
        install_crypto_provider();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The ring provider: every configuration here names it, so that none depends on which one
/// happens to be the process default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring_provider())
}

/// rustls 0.23.48 deprecates its ring provider because ring has no post-quantum key exchange;
/// the alternative, aws-lc-rs, compiles a C library with cmake (minutes on the 2-core build
/// machines, and a toolchain the builds do not need today). tonic's `tls-ring` calls the same
/// function. Classical X25519/ECDHE key exchange protects today's traffic; switching the
/// workspace to `tls-aws-lc` is the way to post-quantum key exchange.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(read_error)
}

fn parse_certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_or_none() {
        assert_eq!(TlsPaths::from_settings("", "", "").unwrap(), None);
        assert!(TlsPaths::from_settings("c", "k", "a").unwrap().is_some());
        for (cert, key, ca, missing) in [
            ("c", "", "", "tls_key"),
            ("", "k", "a", "tls_cert"),
            ("c", "k", "", "tls_ca"),
        ] {
            match TlsPaths::from_settings(cert, key, ca) {
                Err(TlsError::Incomplete { missing: named }) => assert_eq!(named, missing),
                other => panic!("{cert:?} {key:?} {ca:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn unreadable_and_non_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("proto-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"not a certificate").unwrap();
        let missing = dir.join("missing.pem");
        let paths = TlsPaths {
            cert: missing.clone(),
            key: garbage.clone(),
            ca: garbage.clone(),
        };
        let err = paths.load().unwrap_err();
        assert!(matches!(&err, TlsError::Read { path, .. } if *path == missing));
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = DialTls::trusting(&garbage).unwrap_err();
        assert!(matches!(&err, TlsError::NotPem { path, .. } if *path == garbage));
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
