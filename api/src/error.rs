//! Every REST error answer has one body: what is wrong and what to do
//! (`error`), its kind from the one table (`kind`, [`common::errors`]), and
//! the pre-checks' verdicts when a refusal comes from them.

use common::errors::ErrorKind;
use coordinator::request::Precheck;
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, and what to do about it.
    pub error: String,
    /// The kind of error: decide on it, not on the words.
    pub kind: ErrorKind,
    /// When pre-checks ran and refused: every verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prechecks: Vec<Precheck>,
}

impl ErrorBody {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { error: message.into(), kind, prechecks: vec![] }
    }
}

/// The errors any API call may answer: credentials, the leader, and the server itself.
#[derive(Debug, IntoResponses)]
pub enum Errors {
    /// The request is malformed: its body, a parameter, or a path segment.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or a wrong or revoked one.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// A read-only token asked for a change.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// What the path names does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The path exists, the method does not (`Allow` lists those that do).
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// It conflicts with the state: an operation runs, or the thing exists.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// A pre-check failed (the body holds every verdict).
    #[response(status = 412)]
    PreconditionFailed(ErrorBody),
    /// The body is larger than allowed.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Something broke on the server.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// No leader or no quorum, or the configuration is read-only while an upgrade runs.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// A disk lacks the space.
    #[response(status = 507)]
    InsufficientStorage(ErrorBody),
}
