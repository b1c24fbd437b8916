//! The admission stages of a call: path and header hygiene, team identity, permission by role, and
//! the bounded request body. Whatever fails here never reaches upstream.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::CallContext;
use crate::clients::{Client, KeyProblem, presented_key};
use crate::error::GatewayError;
use crate::gateway::{ClientCertificate, Gateway};
use crate::team_token::{Refused, TokenSigner, Use, looks_like_token};

/// Refuses paths that could mean something else after normalisation: dot segments, encoded
/// slashes and backslashes, empty segments. Allocation-free and mostly memchr: it runs on every
/// call.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    let bytes = path.as_bytes();
    let encoded_separator = memchr::memchr_iter(b'%', bytes).any(|at| {
        matches!(
            bytes.get(at + 1..at + 3),
            Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C'])
        )
    });
    if encoded_separator || memchr::memchr(b'\\', bytes).is_some() {
        return Err(GatewayError::BadRequest(
            "the path contains an encoded slash or a backslash; send plain path segments".into(),
        ));
    }
    // A dot segment needs a dot, plain or encoded.
    if memchr::memchr2(b'.', b'%', bytes).is_some()
        && bytes.split(|&b| b == b'/').any(is_dot_segment)
    {
        return Err(GatewayError::BadRequest(
            "the path contains a dot segment (. or ..); send the resolved path".into(),
        ));
    }
    if memchr::memmem::find(bytes, b"//").is_some() {
        return Err(GatewayError::BadRequest(
            "the path contains an empty segment (//); send the path without it".into(),
        ));
    }
    Ok(())
}

/// "." or "..", with any dot possibly written as %2e.
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Only the methods Contabo's spec uses, plus HEAD and OPTIONS, are forwarded. Methods are
/// case-sensitive: `post` is not POST, and an upstream that reads it as POST must not get it
/// unaudited.
pub fn check_method(method: &Method) -> Result<(), GatewayError> {
    let forwarded = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if forwarded.contains(method) {
        Ok(())
    } else {
        Err(GatewayError::MethodNotAllowed(method.to_string()))
    }
}

/// Header values must be visible ASCII: anything else cannot be forwarded faithfully.
pub fn check_header_values(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.iter().find(|(_, v)| v.to_str().is_err()) {
        Some((name, _)) => Err(GatewayError::BadRequest(format!(
            "header {name} has a value with characters outside visible ASCII; send it ASCII-only"
        ))),
        None => Ok(()),
    }
}

/// The calling team, from its key or from an access token of the gateway's token endpoint, or,
/// when the call carries neither, from the subject of the connection's verified client
/// certificate. An address that got too many 401s lately is refused first (429), whatever it
/// sends; a 401 counts against its address.
pub fn identify(
    gw: &Gateway,
    headers: &HeaderMap,
    address: Option<std::net::IpAddr>,
    certificate: Option<&ClientCertificate>,
) -> Result<Arc<Client>, GatewayError> {
    gw.auth_throttle.check(address)?;
    let identified = match (presented_key(headers), certificate) {
        (Err(KeyProblem::Missing), Some(ClientCertificate(subject))) => gw
            .clients()
            .identify_by_certificate(subject)
            .ok_or(GatewayError::Unauthenticated(
                "the client certificate is valid but its subject is no team's cert_subject, \
                 and no team key was sent; ask the operator to add the subject or send a key",
            )),
        (presented, _) => presented
            .map_err(|p| GatewayError::Unauthenticated(p.message()))
            .and_then(|credential| match &gw.team_tokens {
                Some(signer) if looks_like_token(credential) => {
                    team_of_token(gw, signer, credential)
                        .map_err(|refused| GatewayError::Unauthenticated(refused.message()))
                }
                _ => gw
                    .clients()
                    .identify(credential)
                    .ok_or(GatewayError::Unauthenticated(KeyProblem::Unknown.message())),
            }),
    };
    if identified.is_err() {
        gw.auth_throttle.failed(address);
    }
    identified
}

/// The team an access token of this gateway stands for, while the team and its key are current.
pub fn team_of_token(
    gw: &Gateway,
    signer: &TokenSigner,
    token: &str,
) -> Result<Arc<Client>, Refused> {
    let claims = signer.verify(token, Use::Access)?;
    gw.clients()
        .named(&claims.azp)
        .filter(|team| team.key_fingerprint() == claims.kfp)
        .ok_or(Refused::KeyGone)
}

pub fn authorize(call: &CallContext, parts: &Parts) -> Result<(), GatewayError> {
    let role = call.client.role;
    if role.may_call_v1(&parts.method, parts.uri.path()) {
        return Ok(());
    }
    Err(GatewayError::Forbidden {
        role: role.as_str(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        allowance: role.allowance(),
    })
}

/// Reads the whole body, refusing more than `limit` bytes: up front when Content-Length says so,
/// otherwise as soon as the limit is crossed. Buffering makes the retry after a 401 possible.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge {
            limit,
            limited_by: "server.max_body_bytes",
        });
    }
    if hyper::body::Body::is_end_stream(&body) {
        // A read without a body (most calls): nothing to wait for.
        return Ok(Bytes::new());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(GatewayError::PayloadTooLarge {
            limit,
            limited_by: "server.max_body_bytes",
        }),
        Err(_) => Err(GatewayError::BadRequest(
            "the request body could not be read completely; send it again".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        for bad in [
            "/v1/users/..",
            "/v1/./users",
            "/v1/users/%2e%2E/roles",
            "/v1/users/.%2e",
            "/v1/users%2Fclient",
            "/v1/users%5cclient",
            "/v1//users",
            "/v1//users/",
            "//v1/users",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for ok in [
            "/v1/users",
            "/v1/users/abc",
            "/v1/users/a.b",
            "/v1/users/..x",
            "/v1/users/",
            "/v1/users/100%25",
            "/v1/users/%2",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
    }
}
