//! The `controller` binary's settings: a flat TOML table, overridden by command-line flags.
//! Every key is listed in `docs/CONFIG.md` (section "Controller").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// Shortest lease: a master renews it by heartbeat, so it must outlast a few heartbeat round
/// trips.
pub const BROKER_LEASE_MS_MIN: u64 = 100;
/// Smallest margin: below this, scheduling delays alone (a GC-free process still gets descheduled
/// for tens of milliseconds) could let a master act on a lease the controller counts as over.
pub const LEASE_MARGIN_MS_MIN: u64 = 50;

/// Settings of one controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// This controller's id; unique in the quorum and never reused for another machine.
    pub id: NodeId,
    /// Address the Raft and controller services listen on.
    pub listen: SocketAddr,
    /// The quorum's first members, `ID=HOST:PORT,...`, the same on each of them. A controller
    /// whose id is listed initialises the quorum on its first start (doing so on every listed one
    /// is safe); a controller added later with `cluster-cli controller add` leaves it empty.
    pub peers: String,
    /// Where the Raft log, vote and state machine live.
    pub data_dir: PathBuf,
    /// How often the Raft leader sends heartbeats to the other controllers.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time between these two starts an election;
    /// a controller leader change takes about twice the maximum.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A broker silent for this long is shown dead and its queues are skipped by clients.
    pub broker_heartbeat_timeout_ms: u64,
    /// The lease a heartbeat answer grants a controlled master: it may acknowledge sends until
    /// this long after it sent the heartbeat, by its own clock.
    pub broker_lease_ms: u64,
    /// What the controller adds to the lease before it elects a successor, counted from when it
    /// received the last heartbeat it granted a lease on: covers the rates of the two clocks
    /// differing and the master's scheduling delays.
    pub lease_margin_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot, so that a briefly lagging controller catches up from
    /// the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// `HOST:PORT` of the Prometheus `/metrics` endpoint (docs/METRICS.md); empty: off. Off by
    /// default because several controllers often share a machine, where one fixed default port
    /// would make all but the first fail to start. Port 0 picks a free port, printed as
    /// `metrics listening on ADDR`.
    pub metrics_listen: String,
    /// A file holding the bearer token every scrape of `/metrics` must present (`Authorization:
    /// Bearer TOKEN`, at least 16 visible ASCII characters); empty: the endpoint answers anyone
    /// who reaches it. Read at start.
    pub metrics_token_file: String,
    /// The secret every controller and broker of the cluster shares (at least 16 bytes): members
    /// sign every internal call with an HMAC made with it (Raft, broker registration and
    /// heartbeats, in-sync set changes, the log stream), and refuse calls not so signed. It
    /// never crosses the wire. Required.
    pub cluster_secret: String,
    /// Whether users' requests are checked against the ACL (docs/OPERATIONS.md, "Users and
    /// ACLs"). Off, anyone who reaches a controller may administer the cluster (the controller
    /// warns at start); on, every request that is not a member's needs a user's signature and
    /// the permission for what it does.
    pub acl_enabled: bool,
    /// The built-in admin's access key: the leader makes sure this user exists, is an admin and
    /// has `admin_secret_key`. It cannot be deleted or demoted through the API. The same on
    /// every controller.
    pub admin_access_key: String,
    /// The built-in admin's secret key (8 to 256 printable ASCII characters, no spaces).
    /// Required when `acl_enabled`; the same on every controller. Kept sealed in the replicated
    /// state; never logged.
    pub admin_secret_key: String,
    /// The audit log: one JSON object per line for every administrative action that can lose
    /// data or change who may do what (unclean elections, topic deletions, user and ACL
    /// changes), allowed or refused. Empty: `<data_dir>/audit.log`.
    pub audit_log: String,
    /// PEM file of this controller's certificate (chain): its port is TLS, and it is the client
    /// certificate it presents to other controllers. `tls_cert`, `tls_key` and `tls_ca` are set
    /// together or not at all; none: plaintext.
    pub tls_cert: String,
    /// PEM file of the private key of `tls_cert`.
    pub tls_key: String,
    /// PEM file of the cluster CA (one or more certificates): the roots the controller verifies
    /// the nodes it dials against, and the client certificates members present.
    pub tls_ca: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: 1,
            listen: SocketAddr::from(([0, 0, 0, 0], 9876)),
            peers: String::new(),
            data_dir: PathBuf::from("./.controller-data"),
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            broker_heartbeat_timeout_ms: 3_000,
            broker_lease_ms: 600,
            lease_margin_ms: 100,
            snapshot_logs_since_last: 5_000,
            logs_kept_after_snapshot: 1_000,
            metrics_listen: String::new(),
            metrics_token_file: String::new(),
            cluster_secret: String::new(),
            acl_enabled: false,
            admin_access_key: "admin".to_owned(),
            admin_secret_key: String::new(),
            audit_log: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
        }
    }
}

/// A configuration that cannot be used: the key or rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("configuration cannot be written as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("override {item:?} is not KEY=VALUE")]
    OverrideShape { item: String },
    #[error("override {key}: {source}")]
    OverrideValue {
        key: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("peers: {0}")]
    Peers(String),
    /// A rule between keys, said in full.
    #[error("{0}")]
    Rule(String),
    #[error("metrics_listen: {0}")]
    Metrics(#[from] exporter::ExporterError),
    #[error("cluster_secret: {0}")]
    Key(#[from] auth::KeyError),
    /// The built-in admin's settings: which key, and why.
    #[error("{key}: {source}")]
    Admin {
        key: &'static str,
        #[source]
        source: auth::acl::AclError,
    },
    #[error("admin_secret_key is required when acl_enabled is true: the built-in admin is the only way in")]
    AdminSecretMissing,
    #[error(transparent)]
    Tls(#[from] proto::tls::TlsError),
}

impl ControllerConfig {
    /// Parses a TOML file's text; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<ControllerConfig, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Applies `KEY=VALUE` overrides (TOML value syntax), as the broker's `--set` does.
    pub fn with_overrides(self, overrides: &[String]) -> Result<ControllerConfig, ConfigError> {
        let mut table = toml::Table::try_from(&self)?;
        for item in overrides {
            let Some((key, value)) = item.split_once('=') else {
                return Err(ConfigError::OverrideShape { item: item.clone() });
            };
            let key = key.trim();
            let parsed: toml::Table = toml::from_str(&format!("v = {}", value.trim()))
                .or_else(|_| toml::from_str(&format!("v = {:?}", value.trim())))
                .map_err(|source| ConfigError::OverrideValue {
                    key: key.to_owned(),
                    source,
                })?;
            table.insert(key.to_owned(), parsed["v"].clone());
        }
        Ok(toml::Value::Table(table).try_into()?)
    }

    /// The initial members from `peers`.
    pub fn peer_map(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        let mut peers = BTreeMap::new();
        for item in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some((id, addr)) = item.split_once('=') else {
                return Err(ConfigError::Peers(format!("{item:?} is not ID=HOST:PORT")));
            };
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| ConfigError::Peers(format!("{id:?} is not a number")))?;
            if peers.insert(id, addr.trim().to_owned()).is_some() {
                return Err(ConfigError::Peers(format!("id {id} is listed twice")));
            }
        }
        Ok(peers)
    }

    /// Checks the rules between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.peer_map()?;
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::Rule(
                "heartbeat_interval_ms must be above 0".to_owned(),
            ));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms * 2 {
            return Err(ConfigError::Rule(
                "election_timeout_min_ms must be above twice heartbeat_interval_ms".to_owned(),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::Rule(
                "election_timeout_max_ms must be above election_timeout_min_ms".to_owned(),
            ));
        }
        if self.broker_heartbeat_timeout_ms < 100 {
            return Err(ConfigError::Rule(
                "broker_heartbeat_timeout_ms must be at least 100".to_owned(),
            ));
        }
        if self.broker_lease_ms < BROKER_LEASE_MS_MIN {
            return Err(ConfigError::Rule(format!(
                "broker_lease_ms must be at least {BROKER_LEASE_MS_MIN}: a master renews its \
                 lease by heartbeat, and a shorter one runs out between heartbeats"
            )));
        }
        if self.lease_margin_ms < LEASE_MARGIN_MS_MIN {
            return Err(ConfigError::Rule(format!(
                "lease_margin_ms must be at least {LEASE_MARGIN_MS_MIN}: it covers clock-rate \
                 drift and a master's scheduling delay before it checks its lease"
            )));
        }
        let lease_wait_ms = self.broker_lease_ms.saturating_add(self.lease_margin_ms);
        if self.broker_heartbeat_timeout_ms < lease_wait_ms {
            return Err(ConfigError::Rule(format!(
                "broker_heartbeat_timeout_ms ({}) must be at least broker_lease_ms + \
                 lease_margin_ms ({} + {} = {lease_wait_ms}): a master whose lease may still \
                 run must not be shown dead to clients",
                self.broker_heartbeat_timeout_ms, self.broker_lease_ms, self.lease_margin_ms
            )));
        }
        if self.snapshot_logs_since_last == 0 {
            return Err(ConfigError::Rule(
                "snapshot_logs_since_last must be above 0".to_owned(),
            ));
        }
        self.metrics_listen()?;
        self.cluster_key()?;
        self.built_in_admin()?;
        self.tls_paths()?;
        Ok(())
    }

    /// The TLS files, all three or none (`None`: plaintext). Reads nothing.
    pub fn tls_paths(&self) -> Result<Option<proto::tls::TlsPaths>, proto::tls::TlsError> {
        proto::tls::TlsPaths::from_settings(&self.tls_cert, &self.tls_key, &self.tls_ca)
    }

    /// The built-in admin's access key and secret key, checked; `None` when no secret key is
    /// set (allowed only with the ACL off).
    pub fn built_in_admin(&self) -> Result<Option<(&str, &str)>, ConfigError> {
        auth::acl::check_user_name(&self.admin_access_key).map_err(|source| {
            ConfigError::Admin {
                key: "admin_access_key",
                source,
            }
        })?;
        if self.admin_secret_key.is_empty() {
            return if self.acl_enabled {
                Err(ConfigError::AdminSecretMissing)
            } else {
                Ok(None)
            };
        }
        auth::acl::check_secret_key(&self.admin_secret_key).map_err(|source| {
            ConfigError::Admin {
                key: "admin_secret_key",
                source,
            }
        })?;
        Ok(Some((&self.admin_access_key, &self.admin_secret_key)))
    }

    /// Where the audit log goes: `audit_log`, or `<data_dir>/audit.log`.
    pub fn audit_log_path(&self) -> PathBuf {
        if self.audit_log.is_empty() {
            self.data_dir.join("audit.log")
        } else {
            PathBuf::from(&self.audit_log)
        }
    }

    /// The key members sign internal calls with, from `cluster_secret`.
    pub fn cluster_key(&self) -> Result<auth::ClusterKey, auth::KeyError> {
        auth::ClusterKey::new(&self.cluster_secret)
    }

    /// The metrics endpoint's address; `None` when `metrics_listen` is empty (off).
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, exporter::ExporterError> {
        exporter::parse_listen(&self.metrics_listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with the one required key set.
    fn valid() -> ControllerConfig {
        ControllerConfig {
            cluster_secret: "config-test-secret".into(),
            ..ControllerConfig::default()
        }
    }

    #[test]
    fn a_cluster_secret_is_required() {
        let err = ControllerConfig::default()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster_secret is empty"), "{err}");
        let short = ControllerConfig {
            cluster_secret: "short".into(),
            ..ControllerConfig::default()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn the_built_in_admin_needs_a_good_secret_key_when_the_acl_is_on() {
        let on = ControllerConfig {
            acl_enabled: true,
            ..valid()
        };
        assert!(matches!(
            on.validate(),
            Err(ConfigError::AdminSecretMissing)
        ));
        let short = ControllerConfig {
            admin_secret_key: "short".into(),
            ..on.clone()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(err.starts_with("admin_secret_key: "), "{err}");
        assert!(!err.contains("short"), "the secret is not echoed: {err}");
        let bad_name = ControllerConfig {
            admin_access_key: "a b".into(),
            admin_secret_key: "admin-secret-1".into(),
            ..on.clone()
        };
        assert!(matches!(
            bad_name.validate(),
            Err(ConfigError::Admin {
                key: "admin_access_key",
                ..
            })
        ));
        let good = ControllerConfig {
            admin_secret_key: "admin-secret-1".into(),
            ..on
        };
        assert_eq!(
            good.built_in_admin().unwrap(),
            Some(("admin", "admin-secret-1"))
        );
        assert_eq!(valid().built_in_admin().unwrap(), None);
        assert_eq!(
            valid().audit_log_path(),
            PathBuf::from("./.controller-data/audit.log")
        );
    }

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        let config = ControllerConfig {
            peers: "1=127.0.0.1:1, 2=127.0.0.1:2".into(),
            ..valid()
        };
        assert_eq!(config.peer_map().unwrap().len(), 2);
        for bad in ["1", "x=a:1", "1=a:1,1=b:2"] {
            let config = ControllerConfig {
                peers: bad.into(),
                ..valid()
            };
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_settings_are_validated() {
        assert!(valid().validate().is_ok());
        let with = |lease, margin, timeout| ControllerConfig {
            broker_lease_ms: lease,
            lease_margin_ms: margin,
            broker_heartbeat_timeout_ms: timeout,
            ..valid()
        };
        let err = with(99, 200, 3_000).validate().unwrap_err().to_string();
        assert!(
            err.contains("broker_lease_ms must be at least 100"),
            "{err}"
        );
        let err = with(1_000, 49, 3_000).validate().unwrap_err().to_string();
        assert!(err.contains("lease_margin_ms must be at least 50"), "{err}");
        let err = with(1_000, 200, 1_000).validate().unwrap_err().to_string();
        assert!(
            err.contains(
                "(1000) must be at least broker_lease_ms + lease_margin_ms (1000 + 200 = 1200)"
            ),
            "{err}"
        );
        assert!(with(800, 200, 1_000).validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_and_overrides_apply() {
        assert!(ControllerConfig::from_toml("no_such_key = 1").is_err());
        let config = ControllerConfig::default()
            .with_overrides(&["id=3".into(), "data_dir=/tmp/x".into()])
            .unwrap();
        assert_eq!(config.id, 3);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert!(ControllerConfig::default()
            .with_overrides(&["bogus=1".into()])
            .is_err());
    }

    #[test]
    fn docs_config_shows_the_defaults_and_every_key() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
                .expect("docs/CONFIG.md");
        let section = doc
            .split("## Controller")
            .nth(1)
            .expect("a Controller section");
        let block = section
            .split("```text")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a block of defaults");
        assert_eq!(
            ControllerConfig::from_toml(block).unwrap(),
            ControllerConfig::default()
        );
        for line in toml::to_string(&ControllerConfig::default())
            .unwrap()
            .lines()
        {
            let key = line.split('=').next().unwrap().trim();
            assert!(
                section.contains(&format!("`{key}`")),
                "docs/CONFIG.md does not list `{key}`"
            );
        }
    }
}
