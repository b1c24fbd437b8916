//! An upstream that routes like Contabo's (NestJS on Express) and is as generous as such a router
//! can be: literal segments match without regard to case, a trailing slash and `;params` are
//! ignored, percent escapes are decoded, `Range` is honoured. Every route of the spec answers;
//! a route that carries secrets answers them (values starting with `S3CR3T-`). Every request it
//! receives is logged, so a test can tell what reached it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use contabo_gateway::routes::{OPERATIONS, Operation};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub range: Option<String>,
}

pub struct ExpressUpstream {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ExpressUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The marker every secret value this upstream hands out starts with.
pub const SECRET_MARK: &str = "S3CR3T-";

impl ExpressUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(answer(request, &log).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The path as the generous router reads it: decoded, lower case, no `;params`, no trailing slash.
fn routed(path: &str) -> String {
    let decoded: String = {
        let bytes = path.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'%'
                && let Some(byte) = bytes
                    .get(at + 1..at + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                at += 3;
                continue;
            }
            out.push(bytes[at]);
            at += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut segments: Vec<String> = decoded
        .split('/')
        .map(|s| s.split(';').next().unwrap_or("").to_string())
        .collect();
    while segments.len() > 2 && segments.last().is_some_and(String::is_empty) {
        segments.pop();
    }
    segments.join("/")
}

/// The operation the path reaches: of those it matches, the one with literal segments first (a
/// route like `/v1/secrets/audits` is registered before `/v1/secrets/:secretId`).
fn reached(method: &str, path: &str) -> Option<&'static Operation> {
    let method = if method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        method
    };
    let path = routed(path);
    let actual: Vec<&str> = path.split('/').collect();
    OPERATIONS
        .iter()
        .filter(|op| op.method.eq_ignore_ascii_case(method))
        .filter(|op| {
            let template: Vec<&str> = op.path.split('/').collect();
            template.len() == actual.len()
                && template.iter().zip(&actual).all(|(t, a)| {
                    if t.starts_with('{') {
                        !a.is_empty()
                    } else {
                        t.eq_ignore_ascii_case(a)
                    }
                })
        })
        .min_by_key(|op| {
            op.path
                .split('/')
                .map(|s| s.starts_with('{'))
                .collect::<Vec<_>>()
        })
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Received>>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = parts.uri.path().to_string();
    log.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: path.clone(),
        request_id: header("x-request-id").unwrap_or_default(),
        range: header("range"),
    });
    let Some(operation) = reached(parts.method.as_str(), &path) else {
        return http::Response::builder()
            .status(404)
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(format!(
                "Cannot {} {path}",
                parts.method
            ))))
            .unwrap();
    };
    let mut item = serde_json::json!({"id": 1, "name": "thing"});
    for field in operation.secret_fields {
        item[*field] = serde_json::Value::String(format!("{SECRET_MARK}{field}-0123456789"));
    }
    let document = serde_json::json!({"data": [item], "_links": {"self": path}}).to_string();
    let query = parts.uri.query().unwrap_or("");
    // A misbehaving upstream, on request: a slice without being asked, or another media type.
    if query.contains("partial=1") {
        return sliced(&document, 10, document.len() - 10);
    }
    if query.contains("as=text") {
        return http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(document)))
            .unwrap();
    }
    if let Some(range) = header("range").and_then(|r| {
        let (from, to) = r.strip_prefix("bytes=")?.split_once('-')?;
        Some((from.parse::<usize>().ok()?, to.parse::<usize>().ok()?))
    }) {
        let (from, to) = (
            range.0.min(document.len()),
            (range.1 + 1).min(document.len()),
        );
        return sliced(&document, from, to);
    }
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(document)))
        .unwrap()
}

fn sliced(document: &str, from: usize, to: usize) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(206)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "content-range",
            format!("bytes {from}-{}/{}", to.saturating_sub(1), document.len()),
        )
        .body(Full::new(Bytes::copy_from_slice(
            &document.as_bytes()[from..to],
        )))
        .unwrap()
}
