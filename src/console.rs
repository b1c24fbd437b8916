//! The reviewers' console at /_gateway/console: a static page, its stylesheet and its script,
//! embedded in the binary (no CDN, no build step). The page holds no data and needs no key; its
//! script signs in with an auditor or admin key kept in the tab's session storage and reads the
//! audit endpoints with it. Every answer forbids inline script, framing and sniffing.

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only the gateway's own script, style and endpoints; no inline script or style, no plugins, no
/// framing, no form posting anywhere (the sign-in form is handled by the script).
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let fixed = [
        (CONTENT_TYPE, content_type),
        (CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_VALUE),
        (X_FRAME_OPTIONS, "DENY"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        // A new binary's page must not be mixed with an old script from a cache.
        (CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The console's page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The console's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's stylesheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
