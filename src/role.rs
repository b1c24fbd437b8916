//! Roles: what a team may do. A leaf: the config names roles, the pipeline checks them.

use http::Method;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Readonly,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Readonly => "readonly",
            Role::Auditor => "auditor",
        }
    }

    /// What the role may do, in words, for 403 messages.
    pub fn allowance(self) -> &'static str {
        match self {
            Role::Admin => "every call",
            Role::Operator => {
                "GET and HEAD on /v1, and mutating calls on /v1 except /v1/users/** and /v1/roles/**"
            }
            Role::Readonly => "GET and HEAD on /v1 only",
            Role::Auditor => "only the audit endpoints /_gateway/audit*, and nothing under /v1",
        }
    }

    /// Whether the role may make this call on a /v1 path.
    pub fn may_call_v1(self, method: &Method, path: &str) -> bool {
        let read = method == Method::GET || method == Method::HEAD;
        match self {
            Role::Admin => true,
            Role::Readonly => read,
            Role::Operator => read || !touches_identity(path),
            Role::Auditor => false,
        }
    }

    /// Whether the role sees secrets in responses in the clear.
    pub fn sees_secrets(self) -> bool {
        self == Role::Admin
    }
}

/// /v1/users/** and /v1/roles/** manage the company's identities; only admins change them. Matched
/// as Contabo's router matches them: without regard to case, with or without `;params`.
pub fn touches_identity(path: &str) -> bool {
    ["/v1/users", "/v1/roles"].iter().any(|prefix| {
        path.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            && path[prefix.len()..]
                .chars()
                .next()
                .is_none_or(|next| next == '/' || next == ';')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        use Method as M;
        let cases = [
            (Role::Readonly, M::GET, "/v1/compute/instances", true),
            (Role::Readonly, M::POST, "/v1/compute/instances", false),
            (Role::Operator, M::POST, "/v1/compute/instances", true),
            (Role::Operator, M::PATCH, "/v1/users/1", false),
            (Role::Operator, M::PUT, "/v1/roles/1", false),
            (Role::Operator, M::GET, "/v1/users", true),
            (Role::Operator, M::POST, "/v1/usersx", true),
            (Role::Operator, M::POST, "/v1/USERS", false),
            (Role::Operator, M::POST, "/v1/Roles/x/y", false),
            (Role::Operator, M::POST, "/v1/users;x", false),
            (Role::Admin, M::DELETE, "/v1/users/1", true),
            (Role::Auditor, M::GET, "/v1/users", false),
        ];
        for (role, method, path, allowed) in cases {
            assert_eq!(
                role.may_call_v1(&method, path),
                allowed,
                "{role:?} {method} {path}"
            );
        }
    }
}
