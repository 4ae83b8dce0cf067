//! One error type for everything a node answers, with the HTTP status and OpenAI error type
//! each maps to.

use rbee_infer::InferError;
use rbee_proto::pool::ErrorCode;
use rbee_store::StoreError;

/// A node's errors by what went wrong, with the context a user needs to act on each; the
/// HTTP status, OpenAI type and code, and wire code are decided here, at the edge, from the
/// variant (and, for wrapped store, engine and hub errors, from their own kind).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    /// Something other than a model (a job, a route) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No model answers to the reference anywhere this node looked; `checked` says where.
    #[error("no model `{model}`: {}{}", checked.join("; "), hint.as_deref().map(|h| format!(". {h}")).unwrap_or_default())]
    ModelNotFound {
        model: String,
        checked: Vec<String>,
        hint: Option<String>,
    },
    /// [`NodeError::ModelNotFound`] as a peer reported it (its words).
    #[error("{0}")]
    ModelNotFoundOnPeer(String),
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
    /// A peer could not be asked or stopped answering (not an error it reported).
    #[error("node {node}: {why}")]
    PeerFailed { node: String, why: String },
    /// The model store refused or failed; its own kind decides the status.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// The engine refused or failed.
    #[error(transparent)]
    Infer(Box<InferError>),
    /// HuggingFace refused or could not be reached.
    #[error(transparent)]
    Hub(Box<rbee_hub::HubError>),
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

/// What an error means to a client: every variant, wrapped errors by their kind, is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    ModelNotFound,
    RequestTimeout,
    BodyTooLarge,
    UnsupportedMediaType,
    PromptTooLong,
    Cancelled,
    InvalidModel,
    Busy,
    Loading,
    Unavailable,
    NeverFits,
    Internal,
}

fn store_class(e: &StoreError) -> Class {
    match e {
        StoreError::NotFound(_) => Class::ModelNotFound,
        StoreError::NodeRunning { .. } => Class::Unavailable,
        StoreError::Gguf { .. }
        | StoreError::Safetensors { .. }
        | StoreError::Unsupported { .. }
        | StoreError::DamagedModel { .. }
        | StoreError::CorruptModelFile { .. } => Class::InvalidModel,
        StoreError::BadSource(_)
        | StoreError::InvalidName(_)
        | StoreError::NameTaken { .. }
        | StoreError::AlreadyCataloged { .. }
        | StoreError::NotRegularFile { .. }
        | StoreError::Pinned(_)
        | StoreError::Ollama { .. }
        | StoreError::HfCache(_) => Class::BadRequest,
        StoreError::Cancelled => Class::Cancelled,
        _ => Class::Internal,
    }
}

fn infer_class(e: &InferError) -> Class {
    match e {
        InferError::Input { source, .. } => infer_class(source),
        InferError::PromptTooLong { .. } | InferError::PromptTooLarge { .. } => {
            Class::PromptTooLong
        }
        InferError::QueueFull { .. } => Class::Busy,
        InferError::InvalidRequest(_)
        | InferError::Chat(_)
        | InferError::EmbeddingOnly { .. }
        | InferError::NotAnEmbeddingModel { .. } => Class::BadRequest,
        InferError::Invalid { .. }
        | InferError::Unsupported { .. }
        | InferError::UnsupportedArchitecture { .. } => Class::InvalidModel,
        // The file's own fault (its metadata, tensors, a feature such as YaRN scaling the
        // engine does not run, activations that turn NaN): a 422 naming it, not a 500.
        InferError::Model(m) => {
            use rbee_infer::model::ModelError as M;
            match m {
                M::Gguf(_)
                | M::UnsupportedArchitecture { .. }
                | M::MissingMetadata { .. }
                | M::BadMetadata { .. }
                | M::Unsupported(_)
                | M::Safetensors { .. }
                | M::MissingTensor(_)
                | M::TensorShape { .. }
                | M::TensorType { .. }
                | M::NonFinite { .. } => Class::InvalidModel,
                _ => Class::Internal,
            }
        }
        InferError::Unloaded => Class::Unavailable,
        _ => Class::Internal,
    }
}

fn hub_class(e: &rbee_hub::HubError) -> Class {
    use rbee_hub::HubError;
    match e {
        HubError::NotFound(_) => Class::ModelNotFound,
        HubError::Gated { .. }
        | HubError::NoUsableFiles { .. }
        | HubError::Invalid(_)
        | HubError::Config(_) => Class::BadRequest,
        HubError::Cancelled => Class::Cancelled,
        HubError::Io { .. } => Class::Internal,
        _ => Class::Unavailable,
    }
}

impl NodeError {
    fn class(&self) -> Class {
        match self {
            NodeError::BadRequest(_) => Class::BadRequest,
            NodeError::NotFound(_) => Class::NotFound,
            NodeError::ModelNotFound { .. } | NodeError::ModelNotFoundOnPeer(_) => {
                Class::ModelNotFound
            }
            NodeError::PromptTooLong(_) => Class::PromptTooLong,
            NodeError::Busy { .. } => Class::Busy,
            NodeError::Loading { .. } => Class::Loading,
            NodeError::NeverFits { .. } | NodeError::NeverFitsOnPeer(_) => Class::NeverFits,
            NodeError::InvalidModel(_) => Class::InvalidModel,
            NodeError::PeerFailed { .. } | NodeError::Unavailable(_) => Class::Unavailable,
            NodeError::Store(e) => store_class(e),
            NodeError::Infer(e) => infer_class(e),
            NodeError::Hub(e) => hub_class(e),
            NodeError::Unauthorized => Class::Unauthorized,
            NodeError::Forbidden(_) => Class::Forbidden,
            NodeError::BodyTooLarge(_) => Class::BodyTooLarge,
            NodeError::UnsupportedMediaType(_) => Class::UnsupportedMediaType,
            NodeError::RequestTimeout(_) => Class::RequestTimeout,
            NodeError::Cancelled(_) => Class::Cancelled,
            NodeError::Internal(_) => Class::Internal,
        }
    }

    /// No model by that reference (here, in the pool, or on the hub).
    pub fn is_model_not_found(&self) -> bool {
        self.class() == Class::ModelNotFound
    }

    /// The failure is about the node that tried (busy, loading, out of memory, gone, no such
    /// model there): another node may still serve the request.
    pub fn is_node_specific(&self) -> bool {
        matches!(
            self.class(),
            Class::Unavailable
                | Class::Busy
                | Class::Loading
                | Class::NeverFits
                | Class::NotFound
                | Class::ModelNotFound
                | Class::Internal
        )
    }

    /// Busy or loading: a healthy node that cannot take this one now.
    pub fn is_transient(&self) -> bool {
        matches!(self.class(), Class::Busy | Class::Loading)
    }

    pub fn status(&self) -> u16 {
        match self.class() {
            Class::BadRequest | Class::PromptTooLong => 400,
            Class::Unauthorized => 401,
            Class::Forbidden => 403,
            Class::NotFound | Class::ModelNotFound => 404,
            Class::RequestTimeout => 408,
            Class::BodyTooLarge => 413,
            Class::UnsupportedMediaType => 415,
            Class::InvalidModel => 422,
            // nginx's "client closed request": what the few clients that see it expect.
            Class::Cancelled => 499,
            Class::Internal => 500,
            Class::Busy | Class::Loading | Class::Unavailable => 503,
            Class::NeverFits => 507,
        }
    }

    /// OpenAI's `error.type` vocabulary where it has a word for it.
    pub fn error_type(&self) -> &'static str {
        match self.class() {
            Class::BadRequest
            | Class::PromptTooLong
            | Class::BodyTooLarge
            | Class::UnsupportedMediaType
            | Class::RequestTimeout => "invalid_request_error",
            Class::Forbidden => "permission_error",
            Class::NotFound | Class::ModelNotFound => "not_found_error",
            Class::Unauthorized => "authentication_error",
            Class::InvalidModel => "invalid_model",
            Class::Busy | Class::Loading | Class::Unavailable => "overloaded_error",
            Class::NeverFits => "insufficient_memory",
            Class::Cancelled => "cancelled",
            Class::Internal => "server_error",
        }
    }

    /// OpenAI's `error.code`: a string where OpenAI has one for the case, else null.
    pub fn code(&self) -> Option<&'static str> {
        match self.class() {
            Class::PromptTooLong => Some("context_length_exceeded"),
            Class::Unauthorized => Some("invalid_api_key"),
            Class::ModelNotFound => Some("model_not_found"),
            _ => None,
        }
    }

    /// What a peer is told about this error on `/rbee/infer/2` and `/rbee/shard/1`.
    pub fn wire_code(&self) -> ErrorCode {
        match self.class() {
            Class::BadRequest
            | Class::BodyTooLarge
            | Class::UnsupportedMediaType
            | Class::RequestTimeout => ErrorCode::BadRequest,
            Class::NotFound => ErrorCode::NotFound,
            Class::ModelNotFound => ErrorCode::ModelNotFound,
            Class::PromptTooLong => ErrorCode::ContextLengthExceeded,
            Class::InvalidModel => ErrorCode::InvalidModel,
            Class::Busy => ErrorCode::Busy {
                retry_after_secs: u32::try_from(self.retry_after().unwrap_or(1))
                    .unwrap_or(u32::MAX),
            },
            Class::Loading => ErrorCode::Loading,
            Class::NeverFits => ErrorCode::NeverFits,
            Class::Unavailable => ErrorCode::Unavailable,
            Class::Cancelled => ErrorCode::Cancelled,
            // Auth is between a client and its node; a peer never sees these.
            Class::Unauthorized | Class::Forbidden | Class::Internal => ErrorCode::Internal,
        }
    }

    /// This error as a generation's last event.
    pub fn to_event(&self) -> rbee_proto::generation::GenerationEvent {
        rbee_proto::generation::GenerationEvent::Error {
            code: self.wire_code(),
            message: self.to_string(),
        }
    }

    /// The error a peer reported, as this node's own, its message naming the peer.
    pub fn from_wire(code: ErrorCode, message: String, node: &str) -> NodeError {
        NodeError::from_code(code, format!("{message} (on node {node})"))
    }

    /// The error a generation's `Error` event carries (same status, type and code as the
    /// error it was made from).
    pub fn from_code(code: ErrorCode, message: String) -> NodeError {
        match code {
            ErrorCode::BadRequest => NodeError::BadRequest(message),
            ErrorCode::NotFound => NodeError::NotFound(message),
            ErrorCode::ModelNotFound => NodeError::ModelNotFoundOnPeer(message),
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
        match (self, self.class()) {
            (
                NodeError::Busy {
                    retry_after_secs, ..
                },
                _,
            ) => Some(*retry_after_secs),
            (_, Class::Busy) => Some(1),
            (_, Class::Loading) => Some(2),
            _ => None,
        }
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Store(Box::new(e))
    }
}

impl From<InferError> for NodeError {
    fn from(e: InferError) -> Self {
        NodeError::Infer(Box::new(e))
    }
}

impl From<rbee_hub::HubError> for NodeError {
    fn from(e: rbee_hub::HubError) -> Self {
        NodeError::Hub(Box::new(e))
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
            NodeError::ModelNotFound {
                model: "m".into(),
                checked: vec!["this node's catalog".into()],
                hint: None,
            },
            NodeError::PeerFailed {
                node: "b".into(),
                why: "timed out".into(),
            },
            StoreError::NotFound("m".into()).into(),
            StoreError::Cancelled.into(),
            InferError::QueueFull { capacity: 4 }.into(),
            rbee_hub::HubError::Cancelled.into(),
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

    #[test]
    fn wrapped_errors_keep_their_meaning_at_the_edge() {
        let cancelled = NodeError::from(StoreError::Cancelled);
        assert_eq!(cancelled.status(), 499, "a cancel is not a 400");
        let missing = NodeError::ModelNotFound {
            model: "qwen".into(),
            checked: vec![
                "not in this node's catalog".into(),
                "none of 2 peers has it".into(),
            ],
            hint: Some("pull it by a HuggingFace reference".into()),
        };
        assert_eq!(
            (missing.status(), missing.code()),
            (404, Some("model_not_found"))
        );
        assert_eq!(
            missing.to_string(),
            "no model `qwen`: not in this node's catalog; none of 2 peers has it. pull it by a HuggingFace reference"
        );
        let full = NodeError::from(InferError::QueueFull { capacity: 4 });
        assert_eq!((full.status(), full.retry_after()), (503, Some(1)));
        assert!(full.is_transient() && full.is_node_specific());
        let peer = NodeError::PeerFailed {
            node: "b".into(),
            why: "did not answer in time".into(),
        };
        assert!(peer.is_node_specific() && !peer.is_transient());
        assert_eq!(peer.to_string(), "node b: did not answer in time");
        assert!(!NodeError::BadRequest("x".into()).is_node_specific());
        let yarn = NodeError::from(InferError::Model(
            rbee_infer::model::ModelError::Unsupported("YaRN rope scaling".into()),
        ));
        assert_eq!((yarn.status(), yarn.error_type()), (422, "invalid_model"));
    }
}
