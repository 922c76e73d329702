//! `cluster-cli tls generate`: a development CA and node certificates, made with rcgen (pure
//! Rust; no openssl binary), for a cluster on one machine or a test bed.
//!
//! Files written into `--dir` (PEM):
//! - `ca.pem`, `ca-key.pem`: the cluster CA (every node's `tls_ca`, every client's
//!   `--tls-ca`/`CLUSTER_TLS_CA`). Keep the key away from the nodes: it only issues certificates.
//! - `node.pem`, `node-key.pem`: one certificate every node may use (`tls_cert`, `tls_key`),
//!   or with `--nodes N`, `node-1.pem` ... `node-N.pem` and their keys, one per node (so that one
//!   node's certificate can be replaced alone). Each is valid as a server (its SANs: `--hosts`,
//!   which must name every address a node is dialled at, IP addresses as IP SANs) and as a client
//!   (mutual TLS between nodes).
//!
//! Existing files are never overwritten without `--force`. With `--keep-ca`, the CA already in
//! `--dir` (made by this command: its subject is fixed) issues new node certificates: how a
//! node's certificate is renewed without touching the trust of the others.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The addresses tests and `scripts/cluster.sh` dial nodes at: loopback names, and the
/// 127.0.0.x addresses the fault tests give nodes of their own.
pub const DEFAULT_HOSTS: &str = "localhost,127.0.0.1,::1,127.0.0.2,127.0.0.10-127.0.0.30";
/// A CA of this command lives this many years; node certificates, `NODE_YEARS`.
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 2;
/// The CA's subject, fixed so that `--keep-ca` can issue under an existing CA from its key alone
/// (an issuer is its subject name and key).
const CA_COMMON_NAME: &str = "cluster development CA";
const ORGANIZATION: &str = "cluster (development)";
/// Most node certificates one run writes.
const NODES_MAX: u32 = 256;
/// Most SANs in one certificate (an address range expands to one SAN per address).
const SANS_MAX: usize = 1024;

/// `tls` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Write a development CA and node certificates into a directory (see docs/OPERATIONS.md,
    /// "TLS").
    Generate(GenerateArgs),
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Names and addresses nodes are dialled at, comma-separated; `A.B.C.X-A.B.C.Y` is a range
    /// of IPv4 addresses. Every node certificate carries all of them.
    #[arg(long, default_value = DEFAULT_HOSTS)]
    hosts: String,
    /// 0: one certificate shared by every node (`node.pem`); N: N certificates
    /// (`node-1.pem` ... `node-N.pem`).
    #[arg(long, default_value_t = 0)]
    nodes: u32,
    /// Overwrite files that exist.
    #[arg(long)]
    force: bool,
    /// Issue the node certificates with the CA already in the directory (`ca-key.pem`, made by
    /// this command) instead of a new one.
    #[arg(long)]
    keep_ca: bool,
}

pub fn run(command: TlsCommand, json: bool) -> Result<ExitCode> {
    match command {
        TlsCommand::Generate(args) => generate(&args, json),
    }
}

fn generate(args: &GenerateArgs, json: bool) -> Result<ExitCode> {
    if args.nodes > NODES_MAX {
        bail!("--nodes: at most {NODES_MAX}");
    }
    let sans = parse_hosts(&args.hosts)?;
    let node_names: Vec<String> = if args.nodes == 0 {
        vec!["node".to_owned()]
    } else {
        (1..=args.nodes).map(|n| format!("node-{n}")).collect()
    };
    let mut to_write: Vec<PathBuf> = Vec::new();
    if !args.keep_ca {
        to_write.extend([args.dir.join("ca.pem"), args.dir.join("ca-key.pem")]);
    }
    for name in &node_names {
        to_write.push(args.dir.join(format!("{name}.pem")));
        to_write.push(args.dir.join(format!("{name}-key.pem")));
    }
    if !args.force {
        if let Some(existing) = to_write.iter().find(|path| path.exists()) {
            bail!(
                "{} exists: pass --force to overwrite (nodes using the old files must then get \
                 the new ones)",
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let year = current_year();
    let (ca_key, ca_params) = if args.keep_ca {
        let path = args.dir.join("ca-key.pem");
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("--keep-ca: read {}", path.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("--keep-ca: {} is not a PEM private key", path.display()))?;
        (key, ca_params(year))
    } else {
        let key = KeyPair::generate().context("generate the CA key")?;
        let params = ca_params(year);
        let cert = params.self_signed(&key).context("sign the CA")?;
        write(&args.dir.join("ca.pem"), &cert.pem(), false)?;
        write(&args.dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
        (key, params)
    };
    let issuer = Issuer::new(ca_params, ca_key);
    for name in &node_names {
        let key = KeyPair::generate().context("generate a node key")?;
        let cert = node_params(name, &sans, year)
            .signed_by(&key, &issuer)
            .with_context(|| format!("sign {name}"))?;
        write(&args.dir.join(format!("{name}.pem")), &cert.pem(), false)?;
        write(
            &args.dir.join(format!("{name}-key.pem")),
            &key.serialize_pem(),
            true,
        )?;
    }
    let written: Vec<String> = to_write.iter().map(|p| p.display().to_string()).collect();
    if json {
        out!(
            "{}",
            serde_json::json!({ "written": written, "sans": sans.len() })
        );
    } else {
        for path in &written {
            out!("wrote {path}");
        }
        out!(
            "node certificates carry {} names and addresses; set tls_cert, tls_key and tls_ca \
             on every node, and --tls-ca (or CLUSTER_TLS_CA) for clients",
            sans.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ca_params(year: i32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // From a year back: a node whose clock runs behind still accepts it.
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    params
}

fn node_params(name: &str, sans: &[SanType], year: i32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans.to_vec();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Server and client: every node both listens and dials its peers with mutual TLS.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + NODE_YEARS, 1, 1);
    params
}

/// `--hosts`: names become DNS SANs, addresses IP SANs, `A.B.C.X-A.B.C.Y` every IPv4 address
/// from X to Y.
fn parse_hosts(hosts: &str) -> Result<Vec<SanType>> {
    let mut sans = Vec::new();
    for item in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if let Some((from, to)) = item
            .split_once('-')
            .filter(|(from, _)| from.parse::<IpAddr>().is_ok())
        {
            let (from, to): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
                from.parse()
                    .with_context(|| format!("{item:?}: not an IPv4 range"))?,
                to.parse()
                    .with_context(|| format!("{item:?}: not an IPv4 range"))?,
            );
            let (from, to) = (u32::from(from), u32::from(to));
            if to < from || (to - from) as usize >= SANS_MAX {
                bail!("{item:?}: a range goes up, over at most {SANS_MAX} addresses");
            }
            sans.extend(
                (from..=to)
                    .map(|ip| SanType::IpAddress(IpAddr::from(std::net::Ipv4Addr::from(ip)))),
            );
        } else if let Ok(ip) = item.parse::<IpAddr>() {
            sans.push(SanType::IpAddress(ip));
        } else {
            let name = item
                .to_owned()
                .try_into()
                .with_context(|| format!("{item:?} is neither an address nor a DNS name"))?;
            sans.push(SanType::DnsName(name));
        }
        if sans.len() > SANS_MAX {
            bail!("--hosts: at most {SANS_MAX} names and addresses");
        }
    }
    if sans.is_empty() {
        bail!("--hosts: at least one name or address");
    }
    Ok(sans)
}

/// Writes `text` to `path`; a private key readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    // Truncate: --force was checked before anything was written.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// This year by the system clock (days since 1970 over the mean Gregorian year; a day off at a
/// year's edge does not matter: validity starts a year back).
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_expand_ranges_and_tell_names_from_addresses() {
        let sans = parse_hosts("localhost, 127.0.0.1,127.0.0.10-127.0.0.12,::1").unwrap();
        assert_eq!(sans.len(), 6);
        assert!(matches!(&sans[0], SanType::DnsName(_)));
        assert_eq!(sans[3], SanType::IpAddress("127.0.0.11".parse().unwrap()));
        assert!(parse_hosts("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_hosts(" , ").is_err());
        assert!(parse_hosts(DEFAULT_HOSTS).unwrap().len() > 20);
    }

    fn args(dir: &Path, nodes: u32, keep_ca: bool, force: bool) -> GenerateArgs {
        GenerateArgs {
            dir: dir.to_owned(),
            hosts: "localhost,127.0.0.1".to_owned(),
            nodes,
            force,
            keep_ca,
        }
    }

    /// Whether `cert` (PEM file) chains to the CA in `ca` (PEM file) as a server at 127.0.0.1.
    fn verifies(ca: &Path, cert: &Path) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let end_entity = CertificateDer::from_pem_file(cert).unwrap();
        let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        verifier
            .verify_server_cert(&end_entity, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    use std::sync::Arc;

    #[test]
    fn node_certificates_chain_to_their_ca_and_a_kept_ca_issues_more() {
        let dir = tempfile::tempdir().unwrap();
        let (first, other) = (dir.path().join("first"), dir.path().join("other"));
        generate(&args(&first, 0, false, false), true).unwrap();
        generate(&args(&other, 0, false, false), true).unwrap();
        assert!(verifies(&first.join("ca.pem"), &first.join("node.pem")));
        assert!(!verifies(&other.join("ca.pem"), &first.join("node.pem")));

        // Existing files are kept without --force.
        assert!(generate(&args(&first, 0, false, false), true).is_err());
        let ca_before = std::fs::read(first.join("ca.pem")).unwrap();
        // Renewal: new node certificates from the CA already there, which stays as it was.
        generate(&args(&first, 2, true, false), true).unwrap();
        assert_eq!(std::fs::read(first.join("ca.pem")).unwrap(), ca_before);
        for name in ["node-1.pem", "node-2.pem"] {
            assert!(verifies(&first.join("ca.pem"), &first.join(name)), "{name}");
        }
    }
}
