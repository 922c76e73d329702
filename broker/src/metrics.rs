//! The broker's metrics (docs/METRICS.md): their names, the recording calls of the send path
//! and the flusher, and the sampler that sets the gauges at each scrape of the `/metrics`
//! endpoint (`exporter`, served when `metrics_listen` is set).
//!
//! Counters and histograms are recorded where things happen: the `Send` handler
//! ([`record_send`], [`record_appended`]), and the store's flusher around its fdatasync and its
//! scrubber, which report to [`StoreMetrics`], the broker's `StoreObserver` (the store imports
//! nothing from the broker: it is handed this observer when the broker opens it). Everything
//! else is a gauge read at scrape time from where it lives: the store's offsets, the role, the
//! master's in-sync tracker (each slave's lag) and the consumer groups' committed offsets.
//! Without a recorder installed (metrics off) every call is a no-op.
//!
//! Consumer lag is reported by the master only (its table is the group's; a slave's follows
//! it), for at most [`CONSUMER_LAG_SERIES_MAX`] (consumer group, topic, queue) series: past
//! that, the rest (in sorted order) are counted in `broker_consumer_lag_series_omitted` rather
//! than shown, so a broker with very many queues and groups cannot blow up the scrape.
//!
//! PERF: the send path records one counter and one histogram per request (never per message);
//! the flusher one histogram per fsync; the scrubber one counter per step (1 MiB).

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use exporter::Sampler;
use proto::client as wire;
use proto::common::SendStatus;

use crate::error::BrokerError;
use crate::groups::ConsumerGroupState;
use crate::role::{Role, RoleCell};
use crate::store::{Store, StoreObserver};

/// Counter by `status`: `Send` requests answered (a send status, or the error code's name).
pub const SEND_REQUESTS: &str = "broker_send_requests_total";
/// Histogram by `status`: a `Send` request's time in the broker, from request to answer.
pub const SEND_LATENCY_SECONDS: &str = "broker_send_latency_seconds";
/// Counter: messages `Send` appended to the commit log (each of a batch), whatever the status.
pub const MESSAGES_APPENDED: &str = "broker_messages_appended_total";
/// Histogram: one flush's fdatasync of the commit log.
pub const FLUSH_LATENCY_SECONDS: &str = "broker_flush_latency_seconds";
/// Gauges: the store's `write_offset`, `flushed_offset` and `confirm_offset`.
pub const WRITE_OFFSET_BYTES: &str = "broker_write_offset_bytes";
pub const FLUSHED_OFFSET_BYTES: &str = "broker_flushed_offset_bytes";
pub const CONFIRM_OFFSET_BYTES: &str = "broker_confirm_offset_bytes";
/// Gauge: 1 while this broker is its group's master, 0 while slave.
pub const IS_MASTER: &str = "broker_is_master";
/// Gauge: the master epoch this broker acts in (its own as master, its master's as slave).
pub const MASTER_EPOCH: &str = "broker_master_epoch";
/// Gauge (master only): members of the in-sync set, the master included.
pub const IN_SYNC_SET_SIZE: &str = "broker_in_sync_set_size";
/// Gauges by `slave_id` (master only): the slave's lag behind `write_offset` in bytes, the time
/// since it was last caught up, and whether its log stream is connected.
pub const SLAVE_LAG_BYTES: &str = "broker_slave_lag_bytes";
pub const SLAVE_LAG_SECONDS: &str = "broker_slave_lag_seconds";
pub const SLAVE_CONNECTED: &str = "broker_slave_connected";
/// Gauge by `consumer_group`, `topic`, `queue_id` (master only): the queue's max queue offset
/// minus the group's committed queue offset.
pub const CONSUMER_LAG_MESSAGES: &str = "broker_consumer_lag_messages";
/// Gauge (master only): consumer-lag series left out past [`CONSUMER_LAG_SERIES_MAX`].
pub const CONSUMER_LAG_SERIES_OMITTED: &str = "broker_consumer_lag_series_omitted";

/// Counter: commit-log bytes the scrubber re-read and CRC-checked.
pub const SCRUB_BYTES: &str = "broker_scrub_bytes_total";
/// Counter: scrub passes ended (each from the log's start to its flushed offset, or to the first
/// corrupt record).
pub const SCRUB_PASSES: &str = "broker_scrub_passes_total";
/// Gauge: the store's verified offset (every record below it CRC-checked, none known corrupt).
pub const VERIFIED_OFFSET_BYTES: &str = "broker_verified_offset_bytes";
/// Gauge: 1 while a corrupt record is known in the commit log, else 0.
pub const STORE_CORRUPT: &str = "broker_store_corrupt";
/// Gauge: 1 once every record held at open has been checked since, with none found corrupt.
pub const STORE_VERIFIED: &str = "broker_store_verified";

/// Most consumer-lag series one broker reports: 8 groups on 64 topics of 8 queues each. Each
/// series costs the scrape about 150 bytes and Prometheus one time series.
pub const CONSUMER_LAG_SERIES_MAX: usize = 4096;

/// Gives every metric its help text (once, after the recorder is installed).
pub fn describe() {
    auth::describe_metrics();
    describe_counter!(
        SEND_REQUESTS,
        "Send requests answered, by status: SEND_OK, FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT, \
         SLAVE_NOT_AVAILABLE, or the error code."
    );
    describe_histogram!(
        SEND_LATENCY_SECONDS,
        "Time of a Send request in the broker, from request to answer, by status."
    );
    describe_counter!(
        MESSAGES_APPENDED,
        "Messages Send appended to the commit log (each message of a batch)."
    );
    describe_histogram!(
        FLUSH_LATENCY_SECONDS,
        "Time of one flush's fdatasync of the commit log."
    );
    describe_gauge!(WRITE_OFFSET_BYTES, "The commit log's write_offset.");
    describe_gauge!(FLUSHED_OFFSET_BYTES, "The commit log's flushed_offset.");
    describe_gauge!(CONFIRM_OFFSET_BYTES, "The commit log's confirm_offset.");
    describe_counter!(
        SCRUB_BYTES,
        "Commit-log bytes the scrubber re-read and CRC-checked."
    );
    describe_counter!(
        SCRUB_PASSES,
        "Scrub passes ended (the whole log, or up to the first corrupt record)."
    );
    describe_gauge!(
        VERIFIED_OFFSET_BYTES,
        "The store's verified offset: every record below it CRC-checked, none known corrupt."
    );
    describe_gauge!(
        STORE_CORRUPT,
        "1 while a corrupt record is known in the commit log, else 0."
    );
    describe_gauge!(
        STORE_VERIFIED,
        "1 once every record held at open has been checked since without finding corruption."
    );
    describe_gauge!(IS_MASTER, "1 while this broker is master, 0 while slave.");
    describe_gauge!(MASTER_EPOCH, "The master epoch this broker acts in.");
    describe_gauge!(
        IN_SYNC_SET_SIZE,
        "Members of the in-sync set, the master included (master only)."
    );
    describe_gauge!(
        SLAVE_LAG_BYTES,
        "Bytes the slave's acknowledged offset is behind write_offset (master only)."
    );
    describe_gauge!(
        SLAVE_LAG_SECONDS,
        "Time since the slave was last caught up (master only)."
    );
    describe_gauge!(
        SLAVE_CONNECTED,
        "1 while the slave's log stream is connected, else 0 (master only)."
    );
    describe_gauge!(
        CONSUMER_LAG_MESSAGES,
        "The queue's max queue offset minus the consumer group's committed queue offset \
         (master only)."
    );
    describe_gauge!(
        CONSUMER_LAG_SERIES_OMITTED,
        "Consumer-lag series left out past the broker's limit (master only)."
    );
}

/// Records one answered `Send` request: its status (or error code) and its time.
pub fn record_send(answer: &Result<wire::SendResponse, BrokerError>, latency: Duration) {
    let status = match answer {
        Ok(response) => SendStatus::try_from(response.status)
            .unwrap_or(SendStatus::Unspecified)
            .as_str_name(),
        Err(err) => err.code().as_str_name(),
    };
    counter!(SEND_REQUESTS, "status" => status).increment(1);
    histogram!(SEND_LATENCY_SECONDS, "status" => status).record(latency.as_secs_f64());
}

/// Records messages `Send` appended.
pub fn record_appended(messages: usize) {
    counter!(MESSAGES_APPENDED).increment(messages as u64);
}

/// The store's observer in the broker: turns what the flusher and the scrubber report into
/// [`FLUSH_LATENCY_SECONDS`], [`SCRUB_BYTES`] and [`SCRUB_PASSES`]. Handed to
/// `Store::open_with` by the broker binary.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreMetrics;

impl StoreObserver for StoreMetrics {
    fn flushed(&self, fsync_latency: Duration) {
        histogram!(FLUSH_LATENCY_SECONDS).record(fsync_latency.as_secs_f64());
    }

    fn scrubbed(&self, bytes: u64) {
        counter!(SCRUB_BYTES).increment(bytes);
    }

    fn scrub_pass_ended(&self) {
        counter!(SCRUB_PASSES).increment(1);
    }
}

/// Sets the broker's gauges from the store, the role and the consumer groups.
pub struct BrokerSampler {
    store: Arc<Store>,
    role: Arc<RoleCell>,
    groups: Arc<ConsumerGroupState>,
}

impl BrokerSampler {
    pub fn new(
        store: Arc<Store>,
        role: Arc<RoleCell>,
        groups: Arc<ConsumerGroupState>,
    ) -> BrokerSampler {
        BrokerSampler {
            store,
            role,
            groups,
        }
    }

    async fn sample_consumer_lag(&self) {
        let committed = self.groups.committed_offsets().await;
        let omitted = committed.len().saturating_sub(CONSUMER_LAG_SERIES_MAX);
        for ((group, topic, queue_id), committed_queue_offset) in
            committed.into_iter().take(CONSUMER_LAG_SERIES_MAX)
        {
            let max_queue_offset = self
                .store
                .queue_offsets(&topic, queue_id)
                .map_or(0, |(_, max)| max);
            let lag = max_queue_offset.saturating_sub(committed_queue_offset);
            gauge!(
                CONSUMER_LAG_MESSAGES,
                "consumer_group" => group,
                "topic" => topic,
                "queue_id" => queue_id.to_string()
            )
            .set(lag as f64);
        }
        gauge!(CONSUMER_LAG_SERIES_OMITTED).set(omitted as f64);
    }
}

impl Sampler for BrokerSampler {
    async fn sample(&self) {
        gauge!(WRITE_OFFSET_BYTES).set(self.store.write_offset() as f64);
        gauge!(FLUSHED_OFFSET_BYTES).set(self.store.flushed_offset() as f64);
        gauge!(CONFIRM_OFFSET_BYTES).set(self.store.confirm_offset() as f64);
        gauge!(VERIFIED_OFFSET_BYTES).set(self.store.verified_offset() as f64);
        let health = self.store.health().borrow().clone();
        gauge!(STORE_CORRUPT).set(if health.corrupt.is_some() { 1.0 } else { 0.0 });
        gauge!(STORE_VERIFIED).set(if health.verified { 1.0 } else { 0.0 });
        gauge!(MASTER_EPOCH).set(self.role.master_epoch() as f64);
        let role = self.role.current();
        let Role::Master(master) = role.as_ref() else {
            gauge!(IS_MASTER).set(0.0);
            return;
        };
        gauge!(IS_MASTER).set(1.0);
        let view = master.in_sync.view();
        gauge!(IN_SYNC_SET_SIZE).set(view.set.len() as f64);
        for slave in view.replicas {
            let slave_id = slave.broker_id.to_string();
            gauge!(SLAVE_LAG_BYTES, "slave_id" => slave_id.clone()).set(slave.lag_bytes as f64);
            gauge!(SLAVE_LAG_SECONDS, "slave_id" => slave_id.clone()).set(slave.lag.as_secs_f64());
            gauge!(SLAVE_CONNECTED, "slave_id" => slave_id).set(if slave.connected {
                1.0
            } else {
                0.0
            });
        }
        self.sample_consumer_lag().await;
    }
}
