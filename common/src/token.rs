//! REST tokens and their roles. The admin token (`admin.token`, made by
//! `molt pki init`) is the operator. Named tokens are derived from it
//! (`molt pki token --role admin|read-only --name NAME`): `molt.ROLE.NAME.MAC`,
//! where MAC is HMAC-SHA256 keyed by the admin token over the role and the
//! name. Every controller already holds the admin token, so a named token
//! needs no configuration to be checked, and it cannot be forged or given
//! another role or name without the admin token. Rotating the admin token
//! revokes every named token.

use ring::hmac;

/// What a token may do on the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRole {
    /// Everything.
    Admin,
    /// Reads only: status, cluster, configuration, metrics.
    ReadOnly,
}

impl ApiRole {
    /// As tokens and messages name it.
    pub fn name(self) -> &'static str {
        match self {
            ApiRole::Admin => "admin",
            ApiRole::ReadOnly => "read-only",
        }
    }

    /// Parses `admin` or `read-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(ApiRole::Admin),
            "read-only" => Some(ApiRole::ReadOnly),
            _ => None,
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its role.
    pub role: ApiRole,
    /// `admin` for the admin token, else the token's name.
    pub name: String,
}

impl ApiRole {
    /// The role an operator's client certificate carries (`None`: a node's).
    pub fn of_certificate(role: crate::Role) -> Option<Self> {
        match role {
            crate::Role::Admin => Some(ApiRole::Admin),
            crate::Role::ReadOnly => Some(ApiRole::ReadOnly),
            crate::Role::Controller | crate::Role::ServiceEngine => None,
        }
    }

    /// The role of the client certificate of a token of this role.
    pub fn certificate_role(self) -> crate::Role {
        match self {
            ApiRole::Admin => crate::Role::Admin,
            ApiRole::ReadOnly => crate::Role::ReadOnly,
        }
    }
}

/// Whether `name` may name a token: 1-32 letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn mac(admin_token: &str, role: ApiRole, name: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, admin_token.as_bytes());
    hex::encode(hmac::sign(&key, format!("molt token\n{}\n{name}", role.name()).as_bytes()).as_ref())
}

/// The token of `name` with `role`.
pub fn derive(admin_token: &str, role: ApiRole, name: &str) -> String {
    format!("molt.{}.{name}.{}", role.name(), mac(admin_token, role, name))
}

/// The caller a presented token stands for, if it is the admin token or one derived from it.
pub fn check(admin_token: &str, given: &str) -> Option<Caller> {
    if admin_token.is_empty() {
        return None;
    }
    if eq(given.as_bytes(), admin_token.as_bytes()) {
        return Some(Caller { role: ApiRole::Admin, name: "admin".into() });
    }
    let mut parts = given.splitn(4, '.');
    let (Some("molt"), Some(role), Some(name), Some(m)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let role = ApiRole::parse(role)?;
    (valid_name(name) && eq(m.as_bytes(), mac(admin_token, role, name).as_bytes()))
        .then(|| Caller { role, name: name.to_owned() })
}

/// Compares in time independent of where the bytes differ.
fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tokens_carry_their_role_and_cannot_be_forged() {
        let admin = "0123456789abcdef0123456789abcdef";
        assert_eq!(check(admin, admin), Some(Caller { role: ApiRole::Admin, name: "admin".into() }));
        let ro = derive(admin, ApiRole::ReadOnly, "noc");
        assert_eq!(check(admin, &ro), Some(Caller { role: ApiRole::ReadOnly, name: "noc".into() }));
        // Another role, name or admin token does not verify.
        assert_eq!(check(admin, &ro.replace("read-only", "admin")), None);
        assert_eq!(check(admin, &ro.replace(".noc.", ".ops.")), None);
        assert_eq!(check("another-admin-token-of-32-chars!", &ro), None);
        assert_eq!(check(admin, ""), None);
        assert_eq!(check("", ""), None);
        assert!(!valid_name("a.b") && !valid_name("") && valid_name("noc-1"));
    }
}
