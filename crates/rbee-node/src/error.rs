//! One error type for everything a node answers, with the HTTP status and OpenAI error type
//! each maps to.

use rbee_infer::InferError;
use rbee_proto::pool::ErrorCode;
use rbee_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PromptTooLong(String),
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    #[error("model `{model}` is still loading ({elapsed_secs}s so far); retry shortly")]
    Loading { model: String, elapsed_secs: u64 },
    #[error(
        "model `{model}` needs {needed} bytes but this node's {device} budget is {budget} bytes; it can never be loaded here"
    )]
    NeverFits {
        model: String,
        device: String,
        needed: u64,
        budget: u64,
    },
    /// [`NodeError::NeverFits`] as a peer reported it (its words, without the numbers).
    #[error("{0}")]
    NeverFitsOnPeer(String),
    #[error("{0}")]
    InvalidModel(String),
    #[error("missing or wrong API token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BodyTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// The client (or a job's `DELETE`) cancelled it: not the request's fault, not a 400.
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    pub fn status(&self) -> u16 {
        match self {
            NodeError::BadRequest(_) => 400,
            NodeError::Unauthorized => 401,
            NodeError::Forbidden(_) => 403,
            NodeError::RequestTimeout(_) => 408,
            NodeError::BodyTooLarge(_) => 413,
            NodeError::UnsupportedMediaType(_) => 415,
            NodeError::NotFound(_) => 404,
            NodeError::PromptTooLong(_) => 400,
            // nginx's "client closed request": what the few clients that see it expect.
            NodeError::Cancelled(_) => 499,
            NodeError::InvalidModel(_) => 422,
            NodeError::Busy { .. } | NodeError::Loading { .. } | NodeError::Unavailable(_) => 503,
            NodeError::NeverFits { .. } | NodeError::NeverFitsOnPeer(_) => 507,
            NodeError::Internal(_) => 500,
        }
    }

    /// OpenAI's `error.type` vocabulary where it has a word for it.
    pub fn error_type(&self) -> &'static str {
        match self {
            NodeError::BadRequest(_)
            | NodeError::PromptTooLong(_)
            | NodeError::BodyTooLarge(_)
            | NodeError::UnsupportedMediaType(_)
            | NodeError::RequestTimeout(_) => "invalid_request_error",
            NodeError::Forbidden(_) => "permission_error",
            NodeError::NotFound(_) => "not_found_error",
            NodeError::Unauthorized => "authentication_error",
            NodeError::InvalidModel(_) => "invalid_model",
            NodeError::Busy { .. } | NodeError::Loading { .. } | NodeError::Unavailable(_) => {
                "overloaded_error"
            }
            NodeError::NeverFits { .. } | NodeError::NeverFitsOnPeer(_) => "insufficient_memory",
            NodeError::Cancelled(_) => "cancelled",
            NodeError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`: a string where OpenAI has one for the case, else null.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            NodeError::PromptTooLong(_) => Some("context_length_exceeded"),
            NodeError::Unauthorized => Some("invalid_api_key"),
            _ => None,
        }
    }

    /// What a peer is told about this error on `/rbee/infer/1` and `/rbee/shard/1`.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            NodeError::BadRequest(_)
            | NodeError::BodyTooLarge(_)
            | NodeError::UnsupportedMediaType(_)
            | NodeError::RequestTimeout(_) => ErrorCode::BadRequest,
            NodeError::NotFound(_) => ErrorCode::NotFound,
            NodeError::PromptTooLong(_) => ErrorCode::ContextLengthExceeded,
            NodeError::InvalidModel(_) => ErrorCode::InvalidModel,
            NodeError::Busy {
                retry_after_secs, ..
            } => ErrorCode::Busy {
                retry_after_secs: u32::try_from(*retry_after_secs).unwrap_or(u32::MAX),
            },
            NodeError::Loading { .. } => ErrorCode::Loading,
            NodeError::NeverFits { .. } | NodeError::NeverFitsOnPeer(_) => ErrorCode::NeverFits,
            NodeError::Unavailable(_) => ErrorCode::Unavailable,
            NodeError::Cancelled(_) => ErrorCode::Cancelled,
            // Auth is between a client and its node; a peer never sees these.
            NodeError::Unauthorized | NodeError::Forbidden(_) | NodeError::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// The error a peer reported, as this node's own, its message naming the peer.
    pub fn from_wire(code: ErrorCode, message: String, node: &str) -> NodeError {
        let message = format!("{message} (on node {node})");
        match code {
            ErrorCode::BadRequest => NodeError::BadRequest(message),
            ErrorCode::NotFound => NodeError::NotFound(message),
            ErrorCode::ContextLengthExceeded => NodeError::PromptTooLong(message),
            ErrorCode::InvalidModel => NodeError::InvalidModel(message),
            ErrorCode::Busy { retry_after_secs } => NodeError::Busy {
                message,
                retry_after_secs: retry_after_secs.into(),
            },
            // The peer's words already say what is loading or does not fit.
            ErrorCode::Loading | ErrorCode::Unavailable => NodeError::Unavailable(message),
            ErrorCode::NeverFits => NodeError::NeverFitsOnPeer(message),
            ErrorCode::Cancelled => NodeError::Cancelled(message),
            ErrorCode::Internal => NodeError::Internal(message),
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            NodeError::Busy {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            NodeError::Loading { .. } => Some(2),
            _ => None,
        }
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => NodeError::NotFound(e.to_string()),
            StoreError::NodeRunning { .. } => NodeError::Unavailable(e.to_string()),
            StoreError::Gguf { .. }
            | StoreError::Safetensors { .. }
            | StoreError::Unsupported { .. }
            | StoreError::DamagedModel { .. }
            | StoreError::CorruptModelFile { .. } => NodeError::InvalidModel(e.to_string()),
            StoreError::BadSource(_)
            | StoreError::InvalidName(_)
            | StoreError::NameTaken { .. }
            | StoreError::AlreadyCataloged { .. }
            | StoreError::NotRegularFile { .. }
            | StoreError::Pinned(_)
            | StoreError::Ollama { .. }
            | StoreError::HfCache(_) => NodeError::BadRequest(e.to_string()),
            StoreError::Cancelled => NodeError::Cancelled(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl From<InferError> for NodeError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::PromptTooLong { .. } | InferError::PromptTooLarge { .. } => {
                NodeError::PromptTooLong(e.to_string())
            }
            InferError::QueueFull { .. } => NodeError::Busy {
                message: e.to_string(),
                retry_after_secs: 1,
            },
            InferError::InvalidRequest(_) | InferError::Chat(_) => {
                NodeError::BadRequest(e.to_string())
            }
            InferError::Invalid { .. }
            | InferError::Unsupported { .. }
            | InferError::Model(rbee_infer::model::ModelError::NonFinite { .. }) => {
                NodeError::InvalidModel(e.to_string())
            }
            InferError::Unloaded => NodeError::Unavailable(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl From<rbee_proto::RefError> for NodeError {
    fn from(e: rbee_proto::RefError) -> Self {
        NodeError::BadRequest(e.to_string())
    }
}

/// Turns an actor call failure into an error a client can act on.
pub(crate) fn actor_failed(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Unavailable(format!("{what} did not answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_the_wire_as_what_it_is() {
        // What a client of the forwarding node sees is what it would have seen from the
        // serving node: same HTTP status, same OpenAI code.
        let errors = [
            NodeError::BadRequest("x".into()),
            NodeError::NotFound("x".into()),
            NodeError::PromptTooLong("x".into()),
            NodeError::InvalidModel("x".into()),
            NodeError::Busy {
                message: "x".into(),
                retry_after_secs: 5,
            },
            NodeError::Unavailable("x".into()),
            NodeError::Cancelled("x".into()),
            NodeError::Internal("x".into()),
            NodeError::NeverFits {
                model: "m".into(),
                device: "cpu".into(),
                needed: 2,
                budget: 1,
            },
        ];
        for e in errors {
            let back = NodeError::from_wire(e.wire_code(), e.to_string(), "b");
            assert_eq!(
                (back.status(), back.code(), back.retry_after()),
                (e.status(), e.code(), e.retry_after()),
                "{e:?}"
            );
        }
    }
}
