//! The broker's error type, and the one place where its errors get their stable codes.
//!
//! Every error maps to a stable numeric code (`proto::common::ErrorCode`, RocketMQ 5's numbers
//! where one exists); `proto::status` turns it into a gRPC status (the code in `x-error-code`,
//! the gRPC code its table gives). Bad input changes nothing; fatal store errors are internal
//! errors.

use proto::common::ErrorCode;

use crate::store::StoreError;

/// Errors of the broker service.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic {} does not exist", proto::Echo(topic))]
    TopicNotFound { topic: String },
    #[error("topic {} exists with {queue_count} queues", proto::Echo(topic))]
    TopicExists { topic: String, queue_count: u32 },
    #[error(
        "queue {queue_id} does not exist: topic {} has {queue_count} queues",
        proto::Echo(topic)
    )]
    QueueNotFound {
        topic: String,
        queue_id: u32,
        queue_count: u32,
    },
    #[error("illegal request: {reason}")]
    BadRequest { reason: &'static str },
    #[error("property name {} is reserved", proto::Echo(name))]
    PropertyReserved { name: String },
    #[error("illegal tag {}: {reason}", proto::Echo(tag))]
    TagInvalid { tag: String, reason: &'static str },
    #[error("illegal key {}: {reason}", proto::Echo(key))]
    KeyInvalid { key: String, reason: &'static str },
    #[error("topic registry: {reason}")]
    Registry { reason: String },
    #[error(
        "illegal consumer group {}: 1 to 120 bytes of A-Z a-z 0-9 _ - |, not starting with %",
        proto::Echo(group)
    )]
    GroupInvalid { group: String },
    #[error("queue offset {queue_offset} is beyond the queue's end {max_queue_offset}")]
    OffsetBeyondEnd {
        queue_offset: u64,
        max_queue_offset: u64,
    },
    #[error("stored, but not yet durable: the fsync did not finish in time")]
    NotDurable,
    /// Under `SYNC_MASTER`: written on the master, but the in-sync set did not hold it in time
    /// (or the set was below `min_in_sync_replicas`). Retriable.
    #[error("stored on the master, but not replicated: {reason}")]
    NotReplicated { reason: &'static str },
    #[error("topic names starting with % belong to the broker")]
    TopicReserved { topic: String },
    #[error("this broker is a slave and serves reads only; the master is {}", master_addr.as_deref().unwrap_or("not known now"))]
    NotMaster { master_addr: Option<String> },
    /// A master that may not acknowledge now: its lease ran out, it was deposed, or it is
    /// handing over. Retriable: the client asks the controller for the master again.
    #[error("this broker cannot acknowledge writes now: {reason}")]
    CannotAcknowledge { reason: String },
    /// The store's disk is past its high-water mark (`disk_high_water_ratio`): client sends are
    /// refused before the file system fails. Retriable, on another group.
    #[error("this broker's disk is above its high-water mark: it takes no client messages until space returns")]
    DiskFull,
    /// A message's born timestamp outside the sane window (`service::BORN_TIMESTAMP_MIN_MS` to
    /// `service::BORN_TIMESTAMP_AHEAD_MAX_MS` past the broker's clock).
    #[error(
        "born_timestamp_ms {born_timestamp_ms} is outside the accepted window: from {} \
         (2000-01-01) to {} ms past the broker's clock ({now_ms})",
        crate::service::BORN_TIMESTAMP_MIN_MS,
        crate::service::BORN_TIMESTAMP_AHEAD_MAX_MS
    )]
    BornTimestampInvalid { born_timestamp_ms: u64, now_ms: u64 },
    /// The group is drained for maintenance (`cluster-cli broker drain`).
    #[error("broker group {group} is drained for maintenance and takes no new messages")]
    Drained { group: String },
}

impl BrokerError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Store(err) => store_code(err),
            BrokerError::TopicNotFound { .. } => ErrorCode::TopicNotFound,
            BrokerError::TopicExists { .. } => ErrorCode::BadRequest,
            BrokerError::QueueNotFound { .. } => ErrorCode::BadRequest,
            BrokerError::BadRequest { .. } | BrokerError::BornTimestampInvalid { .. } => {
                ErrorCode::BadRequest
            }
            BrokerError::PropertyReserved { .. } => ErrorCode::IllegalMessagePropertyKey,
            BrokerError::TagInvalid { .. } => ErrorCode::IllegalMessageTag,
            BrokerError::KeyInvalid { .. } => ErrorCode::IllegalMessageKey,
            BrokerError::Registry { .. } => ErrorCode::InternalError,
            BrokerError::GroupInvalid { .. } => ErrorCode::IllegalConsumerGroup,
            BrokerError::OffsetBeyondEnd { .. } => ErrorCode::IllegalOffset,
            BrokerError::NotDurable => ErrorCode::MasterPersistenceTimeout,
            BrokerError::NotReplicated { .. } => ErrorCode::SlavePersistenceTimeout,
            BrokerError::TopicReserved { .. } => ErrorCode::IllegalTopic,
            BrokerError::Drained { .. } => ErrorCode::Forbidden,
            BrokerError::DiskFull => ErrorCode::TooManyRequests,
            BrokerError::NotMaster { .. } | BrokerError::CannotAcknowledge { .. } => {
                ErrorCode::NotMaster
            }
        }
    }

    /// The gRPC status of this error, through the status codec (`proto::status`): its stable
    /// code, and on `NOT_MASTER` the master's address when known.
    pub fn into_status(self) -> tonic::Status {
        let code = self.code();
        let master_addr = match &self {
            BrokerError::NotMaster { master_addr } => master_addr.clone(),
            _ => None,
        };
        proto::ErrorStatus::new(code, self.to_string())
            .with_master_addr(master_addr)
            .into_status()
    }
}

fn store_code(err: &StoreError) -> ErrorCode {
    match err {
        StoreError::BodyEmpty => ErrorCode::MessageBodyEmpty,
        StoreError::BodyTooLarge { .. } => ErrorCode::MessageBodyTooLarge,
        StoreError::PropertiesTooLarge { .. } => ErrorCode::MessagePropertiesTooLarge,
        StoreError::PropertyInvalid { .. } => ErrorCode::IllegalMessagePropertyKey,
        StoreError::TopicInvalid { .. } => ErrorCode::IllegalTopic,
        StoreError::QueueIdInvalid { .. }
        | StoreError::BatchInvalid { .. }
        | StoreError::OffsetInvalid { .. }
        | StoreError::RawInvalid { .. } => ErrorCode::BadRequest,
        StoreError::ReplicaOnly => ErrorCode::NotMaster,
        StoreError::Corrupt { .. } => ErrorCode::MessageCorrupted,
        _ => ErrorCode::InternalError,
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(err: BrokerError) -> Self {
        err.into_status()
    }
}
