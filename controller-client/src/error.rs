//! What a call to the controller quorum can end with, typed: the quorum's refusal with its stable
//! code, a transport failure, a timeout, or an address that cannot be dialled.

use std::sync::Arc;

use proto::common::ErrorCode;

/// Why a call to the controller quorum failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ControllerError {
    /// A controller answered with this refusal (its stable code, read through the status
    /// codec). `CONTROLLER_NOT_AVAILABLE` among them means no leader was reachable.
    #[error("{code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// No answer: the connection failed, or a status without a code came from the transport.
    #[error("transport: {message}")]
    Transport {
        message: String,
        #[source]
        source: Option<Arc<tonic::Status>>,
    },
    /// The last attempt had no answer within its time.
    #[error("no answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("bad controller address: {0}")]
    BadAddress(#[from] proto::dial::AddressError),
}

impl ControllerError {
    /// The refusal's code, if a controller answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ControllerError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the failure says nothing about the request: no connection, no answer in time,
    /// or no leader. Another controller, or the same one later, may answer.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ControllerError::Transport { .. } | ControllerError::Timeout { .. } => true,
            ControllerError::Refused { code, .. } => *code == ErrorCode::ControllerNotAvailable,
            ControllerError::BadAddress(_) => false,
        }
    }

    /// How much the failure says about the quorum: an answer from a controller, then a timeout,
    /// then a connection that failed.
    pub(crate) fn telling(&self) -> u8 {
        match self {
            ControllerError::Refused { .. } => 2,
            ControllerError::Timeout { .. } => 1,
            _ => 0,
        }
    }
}

impl From<tonic::Status> for ControllerError {
    /// Read through the status codec (`proto::status`), as every caller of the cluster reads.
    fn from(status: tonic::Status) -> Self {
        match proto::ErrorStatus::from_status(&status) {
            Some(refusal) => ControllerError::Refused {
                code: refusal.code,
                message: refusal.message,
            },
            None => ControllerError::Transport {
                message: format!("{:?}: {}", status.code(), status.message()),
                source: Some(Arc::new(status)),
            },
        }
    }
}
