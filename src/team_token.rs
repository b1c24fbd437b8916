//! Access and refresh tokens the gateway issues to teams, so tools that insist on an OAuth token
//! endpoint (Contabo's CLI `cntb`, its Terraform provider) can use a team's key through one.
//!
//! Tokens are JWTs signed HS256 with a key every replica shares, so any replica accepts any
//! replica's tokens and nothing is stored. Each names its team (`azp`) and a fingerprint of the
//! team's key digest (`kfp`): when the key is removed or rotated the fingerprint no longer matches
//! and the team's tokens stop working at once. They carry what Contabo's tools read from a Keycloak
//! token (`preferred_username`, `sub`).
//!
//! `cntb` decodes the payload with the standard base64 alphabet although JWTs use the URL-safe one.
//! The two agree on every character except `-` and `_`, which only appear when an ASCII payload
//! holds `>`, `?`, `~` or DEL (or any non-ASCII byte). The payload's JSON therefore writes those
//! characters as `\u` escapes: the same JSON to any parser, and one spelling both alphabets read.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` of every token this gateway issues.
pub const ISSUER: &str = "contabo-gateway";
/// Tokens are accepted this long past their `exp`, for clocks that differ between replicas.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest signing key accepted: HS256 is only as strong as its key.
pub const MIN_KEY_BYTES: usize = 32;

/// What a token is for: calls (`Bearer`) or getting a new access token (`Refresh`), as Keycloak's
/// `typ` claim says. One is never accepted as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Access,
    Refresh,
}

impl Use {
    fn typ(self) -> &'static str {
        match self {
            Use::Access => "Bearer",
            Use::Refresh => "Refresh",
        }
    }
}

/// The claims of a team token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub typ: String,
    /// The team's name.
    pub azp: String,
    pub preferred_username: String,
    /// The user id of the company's Contabo credential (Terraform's provider needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The session a refresh keeps (`session_state` in the token answer).
    pub sid: String,
    pub scope: String,
    /// Fingerprint of the team's key digest when the token was issued.
    pub kfp: String,
}

/// Who a token is for, and for how long.
pub struct Grant<'a> {
    pub team: &'a str,
    pub key_fingerprint: &'a str,
    pub username: &'a str,
    pub subject: Option<&'a str>,
    pub session: &'a str,
    pub lifetime_secs: u64,
}

/// Why a presented token is refused; each says what to do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum Refused {
    Expired,
    NotOurs,
    Malformed,
    KeyGone,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Expired => {
                "the token has expired; get a new one from the gateway's token endpoint"
            }
            Refused::NotOurs => {
                "the token was not issued by this gateway (its signature does not verify with the \
                 gateway's signing key); get one from the gateway's token endpoint"
            }
            Refused::Malformed => {
                "the token is not one this gateway issued for this use; send a team key or an \
                 access token from the gateway's token endpoint"
            }
            Refused::KeyGone => {
                "the token's team no longer exists or its key was rotated; get a new token with \
                 the team's current key"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the token signing key has {0} bytes; use at least {MIN_KEY_BYTES} random bytes \
     (e.g. `openssl rand -base64 48`)"
)]
pub struct KeyTooShort(usize);

/// Signs and verifies team tokens with the shared key.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: [REDACTED] }")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Result<Self, KeyTooShort> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let unusable = |_| KeyTooShort(secret.len());
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).map_err(unusable)?,
            decoding: DecodingKey::from_secret(secret).map_err(unusable)?,
            validation,
        })
    }

    /// A signed token for `grant`, valid for `use_` from now.
    pub fn issue(&self, grant: &Grant<'_>, use_: Use) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            iat: now,
            exp: now + grant.lifetime_secs,
            jti: uuid::Uuid::new_v4().to_string(),
            typ: use_.typ().into(),
            azp: grant.team.into(),
            preferred_username: grant.username.into(),
            sub: grant.subject.map(str::to_string),
            sid: grant.session.into(),
            scope: "profile email".into(),
            kfp: grant.key_fingerprint.into(),
        };
        self.sign(&claims)
    }

    /// Signs any claims (tests make expired tokens with it).
    pub fn sign(&self, claims: &Claims) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = serde_json::to_string(claims).expect("claims serialise");
        let payload = b64.encode(one_alphabet_json(&payload));
        let message = format!("{header}.{payload}");
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, Algorithm::HS256)
                .expect("HS256 signs with any key");
        format!("{message}.{signature}")
    }

    /// The claims of a token this gateway signed, when it is for `use_` and not expired (beyond
    /// the leeway). Whether its team and key are still current is the caller's to check.
    pub fn verify(&self, token: &str, use_: Use) -> Result<Claims, Refused> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refused::Expired,
                ErrorKind::InvalidSignature => Refused::NotOurs,
                _ => Refused::Malformed,
            })?;
        if data.claims.typ != use_.typ() {
            return Err(Refused::Malformed);
        }
        Ok(data.claims)
    }
}

/// Whether a presented credential has a JWT's shape (three dot-separated parts); team keys never
/// contain a dot.
pub fn looks_like_token(credential: &str) -> bool {
    credential.bytes().filter(|b| *b == b'.').count() == 2
}

/// JSON text with every character whose byte would make base64url differ from standard base64
/// (`>`, `?`, `~`, DEL, anything not ASCII) written as a `\u` escape. Those characters only occur
/// inside JSON strings, where the escape means the same.
fn one_alphabet_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !matches!(c, '>' | '?' | '~' | '\x7f') {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(&[7u8; 32]).unwrap()
    }

    fn grant<'a>(username: &'a str) -> Grant<'a> {
        Grant {
            team: "team-a",
            key_fingerprint: "f1",
            username,
            subject: Some("user-1"),
            session: "s1",
            lifetime_secs: 300,
        }
    }

    #[test]
    fn issued_tokens_verify_for_their_use_only() {
        let s = signer();
        let access = s.issue(&grant("me"), Use::Access);
        let claims = s.verify(&access, Use::Access).unwrap();
        assert_eq!(
            (claims.azp.as_str(), claims.sub.as_deref()),
            ("team-a", Some("user-1"))
        );
        assert_eq!(s.verify(&access, Use::Refresh), Err(Refused::Malformed));
        let refresh = s.issue(&grant("me"), Use::Refresh);
        assert_eq!(s.verify(&refresh, Use::Access), Err(Refused::Malformed));
        let other = TokenSigner::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&access, Use::Access), Err(Refused::NotOurs));
        assert_eq!(s.verify("a.b.c", Use::Access), Err(Refused::Malformed));
    }

    #[test]
    fn expiry_counts_with_leeway() {
        let s = signer();
        let mut claims = s
            .verify(&s.issue(&grant("me"), Use::Access), Use::Access)
            .unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        claims.exp = now - LEEWAY_SECS + 5;
        assert!(s.verify(&s.sign(&claims), Use::Access).is_ok());
        claims.exp = now - LEEWAY_SECS - 5;
        assert_eq!(
            s.verify(&s.sign(&claims), Use::Access),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn payload_reads_with_the_standard_alphabet() {
        let s = signer();
        for username in ["a>b?c~d", "ünïcode-名前", "~~~???>>>", "x\u{7f}y", "😀"] {
            let token = s.issue(&grant(username), Use::Access);
            let payload = token.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(payload)
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["preferred_username"], username);
            assert!(s.verify(&token, Use::Access).is_ok());
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(TokenSigner::new(&[1u8; 31]).is_err());
        assert!(!looks_like_token("abc_DEF-123"));
        assert!(looks_like_token("a.b.c"));
    }
}
