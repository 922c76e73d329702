//! The client's error type: a broker's or controller's answer turned back into a typed error (by
//! the stable code the status codec, `proto::status`, reads from it), or a transport failure.

use std::sync::Arc;

use proto::common::ErrorCode;

/// Errors of the client. `Clone`, so that one failure of a batched send can be answered to every
/// caller whose message was in it (the cause is shared, not copied).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker refused the request; `code` says why and never changes meaning.
    #[error("broker answered {code:?} ({}): {message}", *code as i32)]
    Broker { code: ErrorCode, message: String },
    /// The request failed in transport (connection refused or reset, broker unavailable).
    #[error("transport failure: {message}")]
    Transport {
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// No answer within the timeout. The request may or may not have been carried out.
    #[error("no answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The topic's route offers no queue to use (no broker group has a master for it).
    #[error("no route to topic {topic:?}: {reason}")]
    NoRoute { topic: String, reason: &'static str },
    /// The request was refused before it was sent.
    #[error("invalid request: {reason}")]
    Invalid { reason: &'static str },
}

impl ClientError {
    /// True when sending again (to another queue or broker) may succeed: transport failures and
    /// timeouts, and the broker's internal errors. Never bad input. A retried send whose first
    /// attempt did land is a duplicate: delivery is at least once.
    /// The broker could not be reached, or is not (or no longer) its group's master: what a
    /// failover looks like from a client, until the route names the new master.
    pub fn is_master_gone(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. }
                | ClientError::Broker {
                    code: ErrorCode::NotMaster,
                    ..
                }
        )
    }

    /// The broker answered that it is not its group's master (yet, or any more).
    pub fn is_not_master(&self) -> bool {
        matches!(
            self,
            ClientError::Broker {
                code: ErrorCode::NotMaster,
                ..
            }
        )
    }

    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::Broker { code, .. } => matches!(
                code,
                ErrorCode::InternalError
                    | ErrorCode::TooManyRequests
                    | ErrorCode::RequestTimeout
                    | ErrorCode::NotMaster
                    // A drained group: another group takes the message.
                    | ErrorCode::Forbidden
                    // A broker whose store is corrupt: another broker serves.
                    | ErrorCode::MessageCorrupted
            ),
            ClientError::Invalid { .. } | ClientError::NoRoute { .. } => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    /// Read through the status codec (`proto::status`), as every caller of the cluster reads.
    fn from(status: tonic::Status) -> Self {
        match proto::ErrorStatus::from_status(&status) {
            Some(refusal) => ClientError::Broker {
                code: refusal.code,
                message: refusal.message,
            },
            // No code: the status came from the transport, not from the broker's service.
            None => ClientError::Transport {
                message: format!("{:?}: {}", status.code(), status.message()),
                source: Some(Arc::new(status)),
            },
        }
    }
}

impl From<controller_client::ControllerError> for ClientError {
    /// The controller's refusals keep their code; every other failure is the transport's.
    fn from(err: controller_client::ControllerError) -> Self {
        use controller_client::ControllerError as E;
        match err {
            E::Refused { code, message } => ClientError::Broker { code, message },
            E::Transport { message, source } => ClientError::Transport {
                message,
                source: source.map(|status| status as Arc<dyn std::error::Error + Send + Sync>),
            },
            E::Timeout { timeout_ms } => ClientError::Timeout { timeout_ms },
            E::BadAddress(_) => ClientError::Invalid {
                reason: "controller address is not host:port",
            },
        }
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(err: tonic::transport::Error) -> Self {
        ClientError::Transport {
            message: err.to_string(),
            source: Some(Arc::new(err)),
        }
    }
}
