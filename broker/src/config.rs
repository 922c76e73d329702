//! The broker's configuration: one flat TOML table with RocketMQ-style keys.
//!
//! Keys are the broker's own ([`BrokerSettings`]) and the store's ([`StoreConfig`]), side by
//! side, as in RocketMQ's `broker.conf`. A key neither knows is an error. Command-line flags
//! override the file (`--set KEY=VALUE` for any key, in TOML value syntax). Every key is listed in
//! `docs/CONFIG.md`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use exporter::ExporterError;

use crate::store::{StoreConfig, StoreError};

/// The broker's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Cluster this broker belongs to (RocketMQ's brokerClusterName).
    pub broker_cluster_name: String,
    /// Broker group (RocketMQ's brokerName): the master and slaves that hold the same queues.
    pub broker_name: String,
    /// This replica's id within its broker group (0 for the first).
    pub broker_id: u64,
    /// Address the client-facing gRPC service listens on (port 0: any free port).
    pub listen: SocketAddr,
    /// Create unknown topics on first send, with `default_topic_queue_nums` queues.
    pub auto_create_topic_enable: bool,
    /// Queues of an auto-created topic.
    pub default_topic_queue_nums: u32,
    /// Longest a pull may wait for a message (long polling), whatever the client asks.
    pub pull_poll_timeout_max_ms: u32,
    /// A consumer that has not sent a heartbeat for this long leaves its group.
    pub consumer_heartbeat_timeout_ms: u64,
    /// How often every committed offset is written again, so that retention never deletes the
    /// last record of a live offset (keep it well below `file_retention_hours`).
    pub offset_snapshot_interval_ms: u64,
    /// The delay levels of retries (RocketMQ's messageDelayLevel): the n-th retry of a message
    /// waits level 3 + n - 1.
    pub message_delay_level: String,
    /// Retries before a message goes to the group's dead-letter topic (RocketMQ's
    /// maxReconsumeTimes).
    pub max_reconsume_times: u32,
    /// Controller addresses, `host:port,...`. Empty: the broker runs standalone and its topics
    /// are created through its own admin API. Set: the broker registers with the controller,
    /// takes its topics from it, and refuses topic creation of its own.
    pub controller_addr: String,
    /// The address clients and slaves reach this broker at, registered with the controller.
    /// Empty: the address it listens on (which must then not be 0.0.0.0).
    pub advertised_addr: String,
    /// The local IP address this broker's outgoing connections (to the controllers, to its
    /// master, to another broker for RocketMQ 5 calls) come from. Empty: the operating system
    /// picks. For hosts with several addresses, where peers and firewalls know the broker by one.
    pub source_ip: String,
    /// `CONTROLLED` (the controller assigns the role and fails the master over), or a static
    /// role as in RocketMQ 4 (`ASYNC_MASTER`, `SYNC_MASTER`, `SLAVE`: no failover). Empty:
    /// `CONTROLLED` when `controller_addr` is set, `ASYNC_MASTER` otherwise.
    pub broker_role: BrokerRoleSetting,
    /// `CONTROLLED` brokers: how this broker replicates while it is master, `ASYNC` (as
    /// `ASYNC_MASTER`) or `SYNC` (as `SYNC_MASTER`). Set the same on every broker of a group.
    pub replication_mode: ReplicationModeSetting,
    /// `CONTROLLED` brokers: among election candidates equal in log epoch and log end, the
    /// lowest priority wins (then the lowest broker id). RocketMQ's brokerElectionPriority.
    pub election_priority: u32,
    /// `CONTROLLED` brokers: on SIGTERM, a master hands mastership to an in-sync slave and a
    /// slave leaves the in-sync set before the broker stops (`crate::planned_stop`), so that
    /// nobody feels the stop. false: stop at once (a master's group fails over as after a
    /// crash; its master waits for a stopped slave until `in_sync_gone_max_ms`).
    pub planned_stop: bool,
    /// How often the broker heartbeats the controller. The controller shows a broker dead
    /// after its `broker_heartbeat_timeout_ms` of silence; a controlled master's lease is renewed
    /// by these heartbeats, so keep this at most a third of the controller's `broker_lease_ms`.
    pub controller_heartbeat_interval_ms: u64,
    /// `SYNC_MASTER`: the smallest in-sync set, the master included, a send is acknowledged
    /// `SEND_OK` with; below it, sends answer `SLAVE_NOT_AVAILABLE`. 0 means by role: 2 for
    /// `SYNC_MASTER` (never silently async), 1 otherwise. 1 is an explicit choice to let a
    /// `SYNC_MASTER` acknowledge alone when no slave keeps up.
    pub min_in_sync_replicas: u32,
    /// `SYNC_MASTER`: longest a send waits for the in-sync set before `FLUSH_SLAVE_TIMEOUT`.
    pub slave_timeout_ms: u64,
    /// A slave that has not been caught up for this long leaves the in-sync set (RocketMQ's
    /// haMaxTimeSlaveNotCatchup).
    pub in_sync_lag_max_ms: u64,
    /// A slave whose replication stream has been gone (a crash, a cut link) for this long
    /// leaves the in-sync set, so that sends stop waiting for it; one stopped with SIGTERM
    /// leaves at once (`planned_stop`). Longer keeps a dead slave an election candidate longer,
    /// at the cost of `FLUSH_SLAVE_TIMEOUT`s meanwhile.
    pub in_sync_gone_max_ms: u64,
    /// The secret every controller and broker of the cluster shares (at least 16 bytes). Members
    /// sign every internal call with an HMAC made with it (registration, heartbeats, in-sync set
    /// changes, the log stream) and refuse calls not so signed; it never crosses the wire.
    /// Required once `controller_addr` is set.
    pub cluster_secret: String,
    /// Every request must come from a user the ACL knows (signed with its access key) and be
    /// allowed by the user's policies (`auth::Gate`). Needs `cluster_secret`: users' secret keys
    /// reach brokers sealed with a key derived from it. false: anyone who reaches the broker may
    /// send, consume and administer (a warning at start says so).
    pub acl_enabled: bool,
    /// Bytes a master ships per chunk (a larger record goes alone).
    pub replication_chunk_bytes: u64,
    /// Bytes a master sends beyond what a slave acknowledged before it waits.
    pub replication_inflight_bytes_max: u64,
    /// With nothing to ship, master and slave still exchange a message this often; a side
    /// silent for three of these is gone.
    pub replication_keepalive_ms: u64,
    /// `HOST:PORT` of the Prometheus `/metrics` endpoint (docs/METRICS.md); empty: off. Off by
    /// default because the brokers of a group often share a machine, where one fixed default
    /// port would make all but the first fail to start. Port 0 picks a free port, printed as
    /// `metrics listening on ADDR`.
    pub metrics_listen: String,
    /// A file holding the bearer token every scrape of `/metrics` must present (`Authorization:
    /// Bearer TOKEN`, at least 16 visible ASCII characters); empty: the endpoint answers anyone
    /// who reaches it. Read at start.
    pub metrics_token_file: String,
    /// `HOST:PORT` of RocketMQ 5's gRPC API (`apache.rocketmq.v2`, docs/CLIENTS.md), which the
    /// official clients speak; empty: off. RocketMQ's proxy serves it on 8081; off by default
    /// for the same reason as `metrics_listen`. Port 0 picks a free port, printed as
    /// `v5 listening on ADDR`.
    pub v5_listen: String,
    /// The address RocketMQ 5 clients reach the v5 API at, registered with the controller and
    /// given in routes. Empty: the address it listens on (which must then not be 0.0.0.0 when
    /// `controller_addr` is set).
    pub v5_advertised_addr: String,
    /// Threads of the broker's async runtime (network, replication, RPC handling); 0: one per
    /// core. The store's disk work runs on its own threads whatever this says. Where several
    /// brokers and controllers share a machine's cores, fewer workers each avoid the runtime's
    /// workers waking one another for work one of them could do (docs/BENCHMARKS.md, "Idle
    /// path").
    pub runtime_worker_threads: usize,
    /// PEM file of this broker's certificate (chain), for every listener (client API with
    /// replication, v5 API, metrics) and as its client certificate when it dials other nodes.
    /// `tls_cert`, `tls_key` and `tls_ca` are set together or not at all; none: plaintext.
    pub tls_cert: String,
    /// PEM file of the private key of `tls_cert`.
    pub tls_key: String,
    /// PEM file of the cluster CA (one or more certificates): the roots this broker verifies the
    /// nodes it dials against, and the client certificates members present.
    pub tls_ca: String,
}

/// Most runtime worker threads a configuration may ask for.
pub const RUNTIME_WORKER_THREADS_MAX: usize = 256;

/// The `broker_role` key as written. A value outside these is refused when the configuration is
/// read, naming the allowed ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerRoleSetting {
    /// Empty: `CONTROLLED` with a `controller_addr`, `ASYNC_MASTER` without.
    #[default]
    #[serde(rename = "")]
    Auto,
    #[serde(rename = "CONTROLLED")]
    Controlled,
    #[serde(rename = "ASYNC_MASTER")]
    AsyncMaster,
    #[serde(rename = "SYNC_MASTER")]
    SyncMaster,
    #[serde(rename = "SLAVE")]
    Slave,
}

/// The `replication_mode` key: how a `CONTROLLED` broker replicates while it is master.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationModeSetting {
    /// As `ASYNC_MASTER`.
    #[default]
    #[serde(rename = "ASYNC")]
    Async,
    /// As `SYNC_MASTER`.
    #[serde(rename = "SYNC")]
    Sync,
}

/// A broker's role with the empty default resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerRoleKind {
    /// The controller assigns the role and fails the master over.
    Controlled,
    /// Static roles, as in RocketMQ 4: no failover.
    AsyncMaster,
    SyncMaster,
    Slave,
}

impl BrokerRoleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerRoleKind::Controlled => "CONTROLLED",
            BrokerRoleKind::AsyncMaster => "ASYNC_MASTER",
            BrokerRoleKind::SyncMaster => "SYNC_MASTER",
            BrokerRoleKind::Slave => "SLAVE",
        }
    }
}

impl std::fmt::Display for BrokerRoleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BrokerSettings {
    /// `broker_role` with the empty default resolved.
    pub fn role(&self) -> BrokerRoleKind {
        match self.broker_role {
            BrokerRoleSetting::Auto if self.controller_addr.is_empty() => {
                BrokerRoleKind::AsyncMaster
            }
            BrokerRoleSetting::Auto | BrokerRoleSetting::Controlled => BrokerRoleKind::Controlled,
            BrokerRoleSetting::AsyncMaster => BrokerRoleKind::AsyncMaster,
            BrokerRoleSetting::SyncMaster => BrokerRoleKind::SyncMaster,
            BrokerRoleSetting::Slave => BrokerRoleKind::Slave,
        }
    }

    /// The key this broker signs internal calls with and checks them by; `None` without a
    /// `cluster_secret` (a broker with no controller), which then serves no internal call.
    pub fn cluster_key(&self) -> Result<Option<auth::ClusterKey>, auth::KeyError> {
        if self.cluster_secret.is_empty() {
            return Ok(None);
        }
        auth::ClusterKey::new(&self.cluster_secret).map(Some)
    }

    /// A static slave of its group (`broker_role = SLAVE`).
    pub fn is_slave(&self) -> bool {
        self.role() == BrokerRoleKind::Slave
    }

    /// The controller assigns this broker's role.
    pub fn is_controlled(&self) -> bool {
        self.role() == BrokerRoleKind::Controlled
    }

    /// Whether this broker, as master, waits for its in-sync set (`SYNC_MASTER`).
    pub fn sync_master(&self) -> bool {
        match self.role() {
            BrokerRoleKind::SyncMaster => true,
            BrokerRoleKind::Controlled => self.replication_mode == ReplicationModeSetting::Sync,
            BrokerRoleKind::AsyncMaster | BrokerRoleKind::Slave => false,
        }
    }

    /// The v5 API's address; `None` when `v5_listen` is empty (off).
    pub fn v5_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.v5_listen.is_empty() {
            return Ok(None);
        }
        self.v5_listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Value {
                key: "v5_listen".to_owned(),
                reason: format!("{:?} is not HOST:PORT", self.v5_listen),
            })
    }

    /// The TLS files, all three or none (`None`: plaintext). Reads nothing.
    pub fn tls_paths(&self) -> Result<Option<proto::tls::TlsPaths>, proto::tls::TlsError> {
        proto::tls::TlsPaths::from_settings(&self.tls_cert, &self.tls_key, &self.tls_ca)
    }

    /// The metrics endpoint's address; `None` when `metrics_listen` is empty (off).
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, ExporterError> {
        exporter::parse_listen(&self.metrics_listen)
    }

    /// `source_ip`, parsed; `None` when empty (the operating system picks).
    pub fn source_ip(&self) -> Result<Option<std::net::IpAddr>, ConfigError> {
        if self.source_ip.is_empty() {
            return Ok(None);
        }
        self.source_ip
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Rule {
                field: "source_ip",
                reason: "must be an IP address (such as 10.0.0.5), or empty",
            })
    }

    /// `min_in_sync_replicas` with 0 resolved by role: 2 for a synchronous master.
    pub fn min_in_sync_replicas(&self) -> u32 {
        match self.min_in_sync_replicas {
            0 if self.sync_master() => 2,
            0 => 1,
            n => n,
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            broker_cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 10911)),
            auto_create_topic_enable: false,
            default_topic_queue_nums: 8,
            pull_poll_timeout_max_ms: 30_000,
            consumer_heartbeat_timeout_ms: 10_000,
            offset_snapshot_interval_ms: 3_600_000,
            message_delay_level: crate::retry::DEFAULT_DELAY_LEVELS.to_owned(),
            max_reconsume_times: 16,
            controller_addr: String::new(),
            advertised_addr: String::new(),
            source_ip: String::new(),
            broker_role: BrokerRoleSetting::Auto,
            replication_mode: ReplicationModeSetting::Async,
            election_priority: 100,
            planned_stop: true,
            controller_heartbeat_interval_ms: 100,
            min_in_sync_replicas: 0,
            slave_timeout_ms: 3_000,
            in_sync_lag_max_ms: 15_000,
            in_sync_gone_max_ms: 3_000,
            cluster_secret: String::new(),
            acl_enabled: false,
            replication_chunk_bytes: 1 << 20,
            replication_inflight_bytes_max: 16 << 20,
            replication_keepalive_ms: 500,
            metrics_listen: String::new(),
            metrics_token_file: String::new(),
            v5_listen: String::new(),
            v5_advertised_addr: String::new(),
            runtime_worker_threads: 0,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("unknown configuration key {key:?}")]
    UnknownKey { key: String },
    #[error("configuration key {key:?}: {reason}")]
    Value { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metrics(#[from] ExporterError),
    #[error("invalid configuration: {0}")]
    Tls(#[from] proto::tls::TlsError),
    #[error("invalid configuration: {field}: {reason}")]
    Rule {
        field: &'static str,
        reason: &'static str,
    },
}

/// Everything a broker process needs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BrokerConfig {
    pub broker: BrokerSettings,
    pub store: StoreConfig,
}

impl BrokerConfig {
    /// Parses a flat TOML table, giving each key to the broker or the store.
    pub fn from_toml(text: &str) -> Result<BrokerConfig, ConfigError> {
        let table: toml::Table = text.parse()?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<BrokerConfig, ConfigError> {
        let broker_keys = keys_of(&BrokerSettings::default());
        let store_keys = keys_of(&StoreConfig::default());
        let (mut broker, mut store) = (toml::Table::new(), toml::Table::new());
        for (key, value) in table {
            if broker_keys.contains(&key) {
                broker.insert(key, value);
            } else if store_keys.contains(&key) {
                store.insert(key, value);
            } else {
                return Err(ConfigError::UnknownKey { key });
            }
        }
        Ok(BrokerConfig {
            broker: broker.try_into()?,
            store: store.try_into()?,
        })
    }

    /// Applies `KEY=VALUE` overrides (VALUE in TOML syntax; a bare word is taken as a string).
    pub fn with_overrides(self, overrides: &[String]) -> Result<BrokerConfig, ConfigError> {
        let mut table = toml::Table::try_from(&self.broker).expect("settings serialize");
        table.extend(toml::Table::try_from(&self.store).expect("settings serialize"));
        for assignment in overrides {
            let Some((key, raw)) = assignment.split_once('=') else {
                return Err(ConfigError::Value {
                    key: assignment.clone(),
                    reason: "expected KEY=VALUE".into(),
                });
            };
            let key = key.trim().to_owned();
            let raw = raw.trim();
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
            table.insert(key, value);
        }
        Self::from_table(table)
    }

    /// Checks rules between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        if !(1..=crate::topics::QUEUE_COUNT_MAX).contains(&self.broker.default_topic_queue_nums) {
            return Err(ConfigError::Rule {
                field: "default_topic_queue_nums",
                reason: "must be between 1 and 1024",
            });
        }
        if self.broker.consumer_heartbeat_timeout_ms == 0 {
            return Err(ConfigError::Rule {
                field: "consumer_heartbeat_timeout_ms",
                reason: "must be above 0",
            });
        }
        let retention_ms = self.store.file_retention_hours.saturating_mul(3_600_000);
        if self.broker.offset_snapshot_interval_ms == 0
            || self.broker.offset_snapshot_interval_ms >= retention_ms
        {
            return Err(ConfigError::Rule {
                field: "offset_snapshot_interval_ms",
                reason: "must be above 0 and below file_retention_hours",
            });
        }
        if crate::retry::parse_delay_levels(&self.broker.message_delay_level).is_err() {
            return Err(ConfigError::Rule {
                field: "message_delay_level",
                reason: "must be 1 to 64 durations such as 1s 5s 10s 2m 1h (units ms s m h d)",
            });
        }
        if self.broker.is_controlled() && self.broker.controller_addr.is_empty() {
            return Err(ConfigError::Rule {
                field: "controller_addr",
                reason: "must be set for broker_role CONTROLLED: the controller assigns the role",
            });
        }
        if !self.broker.controller_addr.is_empty() {
            if self.broker.auto_create_topic_enable {
                return Err(ConfigError::Rule {
                    field: "auto_create_topic_enable",
                    reason: "cannot be used with controller_addr: topics are created on the \
                             controller (cluster-cli topic create)",
                });
            }
            if self.broker.advertised_addr.is_empty() && self.broker.listen.ip().is_unspecified() {
                return Err(ConfigError::Rule {
                    field: "advertised_addr",
                    reason: "must be set when listen is 0.0.0.0 and controller_addr is set: \
                             clients need an address they can reach",
                });
            }
            if self.broker.controller_heartbeat_interval_ms == 0 {
                return Err(ConfigError::Rule {
                    field: "controller_heartbeat_interval_ms",
                    reason: "must be above 0",
                });
            }
        }
        if self.broker.runtime_worker_threads > RUNTIME_WORKER_THREADS_MAX {
            return Err(ConfigError::Rule {
                field: "runtime_worker_threads",
                reason: "at most 256 (0: one per core)",
            });
        }
        self.validate_replication()?;
        self.broker.tls_paths()?;
        self.broker.metrics_listen()?;
        let v5 = self.broker.v5_listen()?;
        if let Some(v5) = v5.filter(|_| !self.broker.controller_addr.is_empty()) {
            if self.broker.v5_advertised_addr.is_empty() && v5.ip().is_unspecified() {
                return Err(ConfigError::Rule {
                    field: "v5_advertised_addr",
                    reason: "must be set when v5_listen is 0.0.0.0 and controller_addr is set: \
                             RocketMQ 5 clients need an address they can reach",
                });
            }
        }
        if self.broker.broker_name.is_empty() {
            return Err(ConfigError::Rule {
                field: "broker_name",
                reason: "must not be empty",
            });
        }
        Ok(())
    }
}

impl BrokerConfig {
    fn validate_replication(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        b.source_ip()?;
        let replicates = b.is_slave() || b.min_in_sync_replicas() > 1;
        if replicates && b.controller_addr.is_empty() {
            return Err(ConfigError::Rule {
                field: "controller_addr",
                reason: "must be set for a SLAVE, and for a synchronous master that needs \
                         slaves: the controller holds the in-sync set and tells slaves where the \
                         master is",
            });
        }
        if !b.controller_addr.is_empty() && b.cluster_secret.is_empty() {
            return Err(ConfigError::Rule {
                field: "cluster_secret",
                reason: "must be set with controller_addr: controllers and masters serve \
                         internal calls only to members that sign them with it",
            });
        }
        if !b.cluster_secret.is_empty() && b.cluster_key().is_err() {
            return Err(ConfigError::Rule {
                field: "cluster_secret",
                reason: "must be at least 16 bytes",
            });
        }
        if b.acl_enabled && b.cluster_secret.is_empty() {
            return Err(ConfigError::Rule {
                field: "acl_enabled",
                reason: "needs cluster_secret: users' secret keys are sealed with it, so without \
                         it no signature could verify",
            });
        }
        if b.slave_timeout_ms == 0
            || b.in_sync_lag_max_ms == 0
            || b.in_sync_gone_max_ms == 0
            || b.replication_keepalive_ms == 0
        {
            return Err(ConfigError::Rule {
                field: "slave_timeout_ms",
                reason: "slave_timeout_ms, in_sync_lag_max_ms, in_sync_gone_max_ms and \
                         replication_keepalive_ms must be above 0",
            });
        }
        if !(64 << 10..=16 << 20).contains(&b.replication_chunk_bytes) {
            return Err(ConfigError::Rule {
                field: "replication_chunk_bytes",
                reason: "must be 64 KiB to 16 MiB",
            });
        }
        if b.replication_inflight_bytes_max < b.replication_chunk_bytes
            || b.replication_inflight_bytes_max > 1 << 30
        {
            return Err(ConfigError::Rule {
                field: "replication_inflight_bytes_max",
                reason: "must be at least replication_chunk_bytes and at most 1 GiB",
            });
        }
        if b.min_in_sync_replicas > 64 {
            return Err(ConfigError::Rule {
                field: "min_in_sync_replicas",
                reason: "must be at most 64",
            });
        }
        Ok(())
    }
}

fn keys_of<T: Serialize>(value: &T) -> Vec<String> {
    toml::Table::try_from(value)
        .expect("settings serialize to a table")
        .keys()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keys_go_to_broker_and_store() {
        let config = BrokerConfig::from_toml(
            "broker_name = \"broker-b\"\nflush_disk_type = \"ASYNC_FLUSH\"\nlisten = \"127.0.0.1:0\"",
        )
        .unwrap();
        assert_eq!(config.broker.broker_name, "broker-b");
        assert_eq!(
            config.store.flush_disk_type,
            crate::store::FlushDiskType::AsyncFlush
        );
        config.validate().unwrap();
    }

    #[test]
    fn roles_and_modes_are_typed_and_a_bad_one_names_the_allowed_ones() {
        let config =
            BrokerConfig::from_toml("broker_role = \"SYNC_MASTER\"\nreplication_mode = \"SYNC\"")
                .unwrap();
        assert_eq!(config.broker.role(), BrokerRoleKind::SyncMaster);
        assert!(config.broker.sync_master());
        let auto = BrokerConfig::from_toml("broker_role = \"\"").unwrap();
        assert_eq!(auto.broker.role(), BrokerRoleKind::AsyncMaster);
        let controlled = BrokerConfig::from_toml(
            "controller_addr = \"127.0.0.1:9876\"\nreplication_mode = \"SYNC\"",
        )
        .unwrap();
        assert_eq!(controlled.broker.role(), BrokerRoleKind::Controlled);
        assert!(controlled.broker.sync_master());
        let err = BrokerConfig::from_toml("broker_role = \"MASTER\"")
            .unwrap_err()
            .to_string();
        for allowed in ["CONTROLLED", "ASYNC_MASTER", "SYNC_MASTER", "SLAVE"] {
            assert!(err.contains(allowed), "{err}");
        }
        let err = BrokerConfig::default()
            .with_overrides(&["replication_mode=\"sync\"".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ASYNC") && err.contains("SYNC"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = BrokerConfig::from_toml("brokr_name = \"x\"").unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownKey { ref key } if key == "brokr_name"),
            "{err}"
        );
    }

    #[test]
    fn overrides_replace_file_values() {
        let config = BrokerConfig::default()
            .with_overrides(&[
                "broker_id=3".into(),
                "store_path=/tmp/x".into(),
                "auto_create_topic_enable=true".into(),
            ])
            .unwrap();
        assert_eq!(config.broker.broker_id, 3);
        assert_eq!(config.store.store_path, std::path::PathBuf::from("/tmp/x"));
        assert!(config.broker.auto_create_topic_enable);
        assert!(BrokerConfig::default()
            .with_overrides(&["nope=1".into()])
            .is_err());
    }

    #[test]
    fn runtime_worker_threads_is_bounded() {
        let with = |value: usize| {
            BrokerConfig::default()
                .with_overrides(&[format!("runtime_worker_threads={value}")])
                .unwrap()
                .validate()
        };
        with(0).unwrap();
        with(RUNTIME_WORKER_THREADS_MAX).unwrap();
        let err = with(RUNTIME_WORKER_THREADS_MAX + 1).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Rule {
                    field: "runtime_worker_threads",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_empty_or_an_address() {
        let with = |value: &str| {
            BrokerConfig::default()
                .with_overrides(&[format!("metrics_listen={value}")])
                .unwrap()
        };
        assert_eq!(with("\"\"").broker.metrics_listen().unwrap(), None);
        let config = with("127.0.0.1:0");
        config.validate().unwrap();
        assert_eq!(
            config.broker.metrics_listen().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(matches!(
            with("localhost").validate(),
            Err(ConfigError::Metrics(_))
        ));
    }
}
