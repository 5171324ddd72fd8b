//! The one error table: every kind of error molt answers maps to one HTTP
//! status and one gRPC code, here and nowhere else. The REST layer
//! (`controller-agent/src/api.rs`) and every gRPC service build their error
//! answers from an [`ErrorKind`], so the same condition answers the same
//! status on every path.

/// What kind of error an answer reports. Every REST error body names it
/// (`{"error": "...", "kind": "conflict"}`), so a client decides on the kind,
/// not on the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong: fix it and send it again.
    BadRequest,
    /// No (valid) credential: a token or a cluster certificate is needed.
    Unauthenticated,
    /// The caller's credential does not allow this.
    Forbidden,
    /// What the request names does not exist.
    NotFound,
    /// The path exists, the method does not (the answer's `Allow` lists those that do).
    MethodNotAllowed,
    /// It conflicts with the state: another operation runs, or it exists.
    Conflict,
    /// The configuration and the cluster's membership are read-only while
    /// an operation runs (the contract's 503 "upgrade in progress").
    ReadOnly,
    /// A pre-check failed.
    PreconditionFailed,
    /// The body is larger than allowed.
    TooLarge,
    /// An offset past the end.
    OutOfRange,
    /// A limit of concurrent use is reached: try again later.
    Exhausted,
    /// A disk lacks the space.
    InsufficientStorage,
    /// Not now: no leader, no quorum, or the node is busy; try again.
    Unavailable,
    /// Something broke on this side.
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Conflict,
        ErrorKind::ReadOnly,
        ErrorKind::PreconditionFailed,
        ErrorKind::TooLarge,
        ErrorKind::OutOfRange,
        ErrorKind::Exhausted,
        ErrorKind::InsufficientStorage,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// Its HTTP status and gRPC code: the table.
    pub fn codes(self) -> (u16, tonic::Code) {
        use tonic::Code;
        match self {
            ErrorKind::BadRequest => (400, Code::InvalidArgument),
            ErrorKind::Unauthenticated => (401, Code::Unauthenticated),
            ErrorKind::Forbidden => (403, Code::PermissionDenied),
            ErrorKind::NotFound => (404, Code::NotFound),
            ErrorKind::MethodNotAllowed => (405, Code::Unimplemented),
            ErrorKind::Conflict => (409, Code::AlreadyExists),
            ErrorKind::ReadOnly => (503, Code::Unavailable),
            ErrorKind::PreconditionFailed => (412, Code::FailedPrecondition),
            ErrorKind::TooLarge => (413, Code::ResourceExhausted),
            ErrorKind::OutOfRange => (416, Code::OutOfRange),
            ErrorKind::Exhausted => (429, Code::ResourceExhausted),
            ErrorKind::InsufficientStorage => (507, Code::ResourceExhausted),
            ErrorKind::Unavailable => (503, Code::Unavailable),
            ErrorKind::Internal => (500, Code::Internal),
        }
    }

    /// Its HTTP status.
    pub fn http(self) -> u16 {
        self.codes().0
    }

    /// Its gRPC code.
    pub fn code(self) -> tonic::Code {
        self.codes().1
    }

    /// A gRPC status of this kind.
    pub fn grpc(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.code(), message)
    }

    /// The REST error body of this kind: `{"error": MESSAGE, "kind": KIND}`,
    /// the one shape every error answer has (some add fields, such as the
    /// pre-checks of a refused start).
    pub fn body(self, message: impl Into<String>) -> serde_json::Value {
        serde_json::json!({ "error": message.into(), "kind": self })
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn every_kind_is_an_error_status_in_both_protocols() {
        for k in ErrorKind::ALL {
            let (http, code) = k.codes();
            assert!((400..600).contains(&http), "{k:?}: {http}");
            assert_ne!(code, tonic::Code::Ok, "{k:?}");
        }
        // What the contract names.
        assert_eq!(ErrorKind::ReadOnly.http(), 503);
        assert_eq!(ErrorKind::Conflict.http(), 409);
    }
}
