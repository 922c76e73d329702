//! TLS for an application: every connection this process makes to the cluster (brokers,
//! controllers, route watches) goes over TLS and checks the node's certificate against the
//! cluster CA, once [`trust_ca`] was called, before the first producer or consumer connects.
//!
//! Process-wide, as `proto::dial` holds it: a process talks to one cluster, which is encrypted
//! or not, so no producer or consumer configuration can leave one connection plaintext.
//! Applications present no client certificate; nodes do (their `tls_cert`).

use std::path::Path;

pub use proto::tls::{DialTls, TlsError};

/// Dials every later connection of this process with TLS, trusting the CA certificates in the
/// PEM file `ca` (the cluster's `tls_ca`; during a CA rotation, a bundle of the old and the new).
/// Once per process: another CA afterwards is refused (`TlsError::AlreadySet`).
pub fn trust_ca(ca: &Path) -> Result<(), TlsError> {
    install(DialTls::trusting(ca)?)
}

/// Dials every later connection of this process with `tls`.
pub fn install(tls: DialTls) -> Result<(), TlsError> {
    proto::dial::set_tls(tls)?;
    Ok(())
}
