//! The broker: the store, and the client-facing gRPC service over it.
//!
//! Map, following a send from the wire to the disk:
//! - [`service`]: the `broker.client.v1.Broker` gRPC service. Validates requests (topic, queue,
//!   tag, keys, properties, ids), turns them into store calls, answers with send statuses; pull
//!   with long polling; topic administration.
//! - [`topics`]: the topics and their queue counts, persisted crash-safely.
//! - [`groups`]: consumer groups: committed offsets (records of an internal topic in the commit
//!   log, so they survive restarts and replicate with it) and live members; [`group_service`]:
//!   the `ConsumerGroups` gRPC service over them.
//! - [`access`]: what each RPC of every API needs from the ACL (the table, and the checks the
//!   services make through `auth::Gate` before they touch anything; users are established by
//!   `auth::UserGuard` in front of every server).
//! - [`authority`]: the controller as the authority over a master's in-sync set (proposals
//!   over the controller link).
//! - [`role`]: master or slave of its group: the slave's `NOT_MASTER` refusal, the master's
//!   `SYNC_MASTER` wait, and the controller's group view turned into each role's state.
//! - [`lease`]: a controlled master's lease and its resignation, from the controller's heartbeat
//!   answers (the fence `role` checks before and after every acknowledgement).
//! - [`transition`]: what a group view from the controller means for the broker's role, as a
//!   pure decision (`decide(view, facts) -> Transition`) that `role` carries out.
//! - [`retry`]: send-back of failed messages: delay levels through the schedule topic, the
//!   group's retry topic, and its dead-letter topic after `max_reconsume_times`.
//! - [`error`]: the broker's error type and the one place errors become gRPC statuses with
//!   their stable codes.
//! - [`config`]: the flat RocketMQ-style configuration (broker keys and store keys).
//! - [`metrics`]: the broker's metrics: what the send path records, the store's observer (what
//!   the flusher and the scrubber report), and the gauges (offsets, role, epoch, each slave's
//!   lag, consumer lag) set at each scrape of the `/metrics` endpoint (`exporter`).
//! - [`store`]: the commit log and everything that makes it durable and readable: segments,
//!   group commit, flush, consume queues, recovery, truncation, retention, the epoch history.
//!   Its own `mod.rs` maps its files and follows one append through them. The store imports
//!   nothing from the rest of this crate (`tests/store_seam.rs` checks it): it reports flushes and
//!   scrubbing through its `StoreObserver` trait, which [`metrics`] implements, and owns the pause
//!   points a fault test arms (`--failpoint`, `store::failpoint`) to kill a broker at one exact
//!   step, such as the middle of a truncation.
//! - [`fault`]: a store that failed to write (a full disk, EIO) makes the broker restart itself
//!   in place, giving mastership up at once; a restarted broker waits for disk space first.
//! - [`server`]: one broker wired (`Broker::start(config)`, `Broker::run_until(stop)`): the
//!   store, the role, the controller link, the gRPC services (TLS on every listener when
//!   `tls_cert`/`tls_key`/`tls_ca` are set), and the clean stop; the binary and the tests share
//!   it.
//! - `listen` (private): the listeners' TCP settings and TLS (or the plaintext warning), the v5
//!   port, the source address of outgoing connections.
//! - [`planned_stop`]: what a controlled broker does on SIGTERM before it stops: a master hands
//!   mastership to an in-sync slave, a slave of the in-sync set leaves it.
//! - [`link`]: the broker's side of its controller link (`controller-client`'s `BrokerMetadata`
//!   over the store, topics, retries and role) and the tasks that run it.
//! - `src/bin/broker.rs`: the `broker` process (configuration, signals, ready lines). `src/bin/store-bench/`: the store benchmark
//!   against raw-disk baselines measured in the same run (`docs/BENCHMARKS.md`).

pub mod access;
pub mod authority;
pub mod config;
pub mod error;
pub mod fault;
pub mod group_service;
pub mod groups;
pub mod lease;
pub mod link;
mod listen;
pub mod metrics;
pub mod planned_stop;
pub mod retry;
pub mod role;
pub mod server;
pub mod service;
pub mod store;
pub mod topics;
pub mod transition;
pub mod v5;
