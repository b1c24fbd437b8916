//! Team identity and roles: who is calling, and what that team may do.
//!
//! Keys are never stored: the config holds their SHA-256 digests and a presented key is hashed and
//! compared against every digest in constant time. Roles decide which calls a team may make; a
//! refused call never reaches upstream.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::role::{Role, touches_identity};

use crate::config::{ClientConfig, RateLimitConfig, subject_key};
use crate::ratelimit::{Policy, TeamLimit};

/// An identified caller. Cheap to clone: shared by every call of that team.
#[derive(Debug)]
pub struct Client {
    /// Shared, so metric labels and log fields take it without a copy per call.
    pub name: Arc<str>,
    pub role: Role,
    /// The team's rate limit; kept across a reload when the team's limits did not change.
    pub limit: Arc<TeamLimit>,
    /// Secret fields this team sees in the clear although it is not admin (`reveal`).
    pub reveal: Vec<String>,
    /// None for a team identified by its client certificate alone.
    key_digest: Option<[u8; 32]>,
    /// The subject of its client certificate (see [`crate::config::subject_key`]).
    cert_subject: Option<Vec<(String, String)>>,
}

impl Client {
    /// The secret fields of an answer this team must not see: none for admins, the route's
    /// fields less those the team may see (`reveal`) for everyone else.
    pub fn hidden_fields(&self, fields: &'static [&'static str]) -> Vec<&'static str> {
        if self.role.sees_secrets() {
            return Vec::new();
        }
        fields
            .iter()
            .copied()
            .filter(|field| !self.reveal.iter().any(|r| r.eq_ignore_ascii_case(field)))
            .collect()
    }

    /// A fingerprint of the team's key digest that its tokens carry: a token whose fingerprint is
    /// not the current one was issued for a key that was since rotated or removed. One-way, so a
    /// token tells nothing about the key.
    pub fn key_fingerprint(&self) -> String {
        let mut input = b"contabo-gateway team token\0".to_vec();
        input.extend_from_slice(self.key_digest.as_ref().map_or(&[][..], |d| &d[..]));
        hex::encode(&sha256(&input)[..12])
    }
}

/// All configured teams, looked up by key.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Vec<Arc<Client>>,
}

impl ClientRegistry {
    pub fn from_config(clients: &[ClientConfig], rate_limit: &RateLimitConfig) -> Self {
        Self::default().reloaded(clients, rate_limit)
    }

    /// A registry for a new configuration. A team whose name and limits are unchanged keeps its
    /// bucket, so a reload neither refills nor empties it.
    pub fn reloaded(&self, clients: &[ClientConfig], rate_limit: &RateLimitConfig) -> Self {
        let clients = clients
            .iter()
            .filter_map(|c| {
                let key_digest: Option<[u8; 32]> = hex::decode(&c.key_sha256)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok());
                if key_digest.is_none() && c.cert_subject.is_none() {
                    return None;
                }
                let policy = Policy {
                    per_second: c.per_second,
                    burst: c.burst,
                };
                let limit = self
                    .clients
                    .iter()
                    .find(|old| *old.name == *c.name && old.limit.policy_configured == policy)
                    .map(|old| old.limit.clone())
                    .unwrap_or_else(|| Arc::new(TeamLimit::new(&c.name, policy, rate_limit)));
                Some(Arc::new(Client {
                    name: Arc::from(c.name.as_str()),
                    role: c.role,
                    limit,
                    reveal: c.reveal.clone(),
                    key_digest,
                    cert_subject: c.cert_subject.as_deref().map(subject_key),
                }))
            })
            .collect();
        Self { clients }
    }

    /// Team names, in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.iter().map(|c| &*c.name)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The team of that name.
    pub fn named(&self, name: &str) -> Option<Arc<Client>> {
        self.clients.iter().find(|c| *c.name == *name).cloned()
    }

    /// Finds the client whose key digest equals the digest of `key`. Every digest is compared, in
    /// constant time, so the timing tells nothing about which (or whether a) client matched.
    pub fn identify(&self, key: &str) -> Option<Arc<Client>> {
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for client in &self.clients {
            if let Some(digest) = &client.key_digest
                && bool::from(digest.ct_eq(&presented))
            {
                found = Some(client.clone());
            }
        }
        found
    }

    /// The team whose `cert_subject` is the subject of a verified client certificate.
    pub fn identify_by_certificate(&self, subject: &str) -> Option<Arc<Client>> {
        let presented = subject_key(subject);
        self.clients
            .iter()
            .find(|c| c.cert_subject.as_ref() == Some(&presented))
            .cloned()
    }
}

/// A fresh team key: 32 random bytes, URL-safe base64 without padding (43 characters).
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why a caller could not be identified; each says what to send instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    Missing,
    Malformed,
    Unknown,
}

impl KeyProblem {
    pub fn message(self) -> &'static str {
        match self {
            KeyProblem::Missing => {
                "no team key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"
            }
            KeyProblem::Malformed => {
                "the Authorization header must be `Bearer <key>` with your team key"
            }
            KeyProblem::Unknown => {
                "the team key is not known to this gateway; ask the operator for a key \
                 (`contabo-gateway keys new`)"
            }
        }
    }
}

/// Extracts the presented team key: `Authorization: Bearer <key>` first, else `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, KeyProblem> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| KeyProblem::Malformed)?;
        let (scheme, key) = value.split_once(' ').ok_or(KeyProblem::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(KeyProblem::Malformed);
        }
        return Ok(key);
    }
    match headers.get("x-api-key") {
        Some(value) => match value.to_str() {
            Ok(key) if !key.trim().is_empty() => Ok(key.trim()),
            _ => Err(KeyProblem::Malformed),
        },
        None => Err(KeyProblem::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ClientRegistry {
        let cfg = |name: &str, key: &str, role| ClientConfig {
            name: name.into(),
            key_sha256: hex::encode(sha256(key.as_bytes())),
            role,
            per_second: 1.0,
            burst: 1,
            reveal: vec![],
            cert_subject: None,
        };
        ClientRegistry::from_config(
            &[
                cfg("a", "key-a", Role::Admin),
                cfg("b", "key-b", Role::Readonly),
            ],
            &RateLimitConfig::default(),
        )
    }

    #[test]
    fn identifies_by_key() {
        let r = registry();
        assert_eq!(&*r.identify("key-a").unwrap().name, "a");
        assert_eq!(r.identify("key-b").unwrap().role, Role::Readonly);
        assert!(r.identify("key-c").is_none());
        assert!(r.identify("").is_none());
    }

    #[test]
    fn key_extraction() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), Err(KeyProblem::Missing));
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(presented_key(&h), Ok("k1"));
        h.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(presented_key(&h), Ok("k2"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), Err(KeyProblem::Malformed));
    }
}
