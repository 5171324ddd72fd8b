//! The audit trail: one entry per operator action.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One operator action: who, what, when, and how it was answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Unix seconds, to the millisecond.
    pub at: f64,
    /// The token's name (`admin` for the admin token).
    pub who: String,
    /// Its role.
    pub role: String,
    /// `METHOD /path`: the path without its query, at most
    /// `AUDIT_PATH_MAX` (256) bytes of it.
    pub action: String,
    /// The HTTP status it was answered with.
    pub status: u16,
    /// How many times in a row this caller was refused this same action
    /// (folded into one entry: refusals cannot push the trail's other
    /// entries out); 1 for anything else.
    #[serde(default = "one")]
    pub count: u32,
    /// SHA-256 of the request's body (hex), for a write that carried one
    /// (an upload's image is named by its own digest instead): what was
    /// asked can be matched against what the operator sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// The health gates the body sets (an SE group's, or a whole
    /// configuration's), compact JSON on one line of at most
    /// `AUDIT_GATES_MAX` (2048) bytes: an exec gate runs a program on SEs, so the
    /// trail says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<String>,
}

fn one() -> u32 {
    1
}

impl AuditEntry {
    /// Whether `next` repeats this entry's refusal (same caller, action and
    /// status, a 4xx): then it is counted here rather than added.
    pub fn folds(&self, next: &AuditEntry) -> bool {
        (400..500).contains(&next.status)
            && (self.who.as_str(), self.role.as_str(), self.action.as_str(), self.status, &self.body_sha256)
                == (next.who.as_str(), next.role.as_str(), next.action.as_str(), next.status, &next.body_sha256)
    }
}
