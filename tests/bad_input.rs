//! Bad input and bad upstreams: each gets a clear JSON error and nothing reaches upstream that
//! should not; a caller that disconnects leaves nothing behind; shutdown drains calls in flight.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TestGateway, json, raw_request, start, start_with};
use contabo_gateway::sandbox::SandboxOptions;
use reqwest::Method;

#[tokio::test]
async fn a_body_over_the_limit_gets_413_before_anything_reaches_upstream() {
    let gw = start_with(SandboxOptions::default(), |c| {
        c.server.max_body_bytes = 1024
    })
    .await;
    // Declared length over the limit.
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body = json(response).await;
    assert_eq!(body["error"], "payload_too_large");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes (1024 bytes)")
    );
    // Chunked, no declared length: refused once the limit is crossed.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // The rest of the body was never read: the connection cannot carry another call, and the
    // client is told so (without it a pooled client sent its next call into a closing connection).
    assert_eq!(response.headers()["connection"], "close");
    // At the limit exactly: forwarded.
    let fits = format!(
        "{{\"period\":1,\"displayName\":\"{}\"}}",
        "z".repeat(1024 - 29)
    );
    assert_eq!(fits.len(), 1024);
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .body(fits)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        gw.sandbox().recorded().len(),
        1,
        "only the call within the limit went upstream"
    );
}

#[tokio::test]
async fn dot_segments_encoded_slashes_and_foreign_paths_are_refused() {
    let gw = start().await;
    let key = &gw.keys.admin;
    let cases = [
        ("/v1/users/../roles", "400", "dot segment"),
        ("/v1/users/%2e%2e/roles", "400", "dot segment"),
        ("/v1/./users", "400", "dot segment"),
        ("/v1/users%2Fclient", "400", "encoded slash"),
        ("/v1/users/%5c..", "400", "backslash"),
        ("/v1//users", "400", "empty segment"),
        ("/v2/users", "404", "not served here"),
        ("/admin", "404", "not served here"),
        ("/_gateway/../v1/users", "400", "dot segment"),
    ];
    for (path, status, needle) in cases {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        let response = raw_request(&gw.url, request.as_bytes()).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {response}"
        );
        assert!(response.contains(needle), "{path}: {response}");
        assert!(response.contains("\"request_id\""), "{path}: {response}");
    }
    assert!(gw.sandbox().recorded().is_empty());
}

#[tokio::test]
async fn invalid_header_values_get_400() {
    let gw = start().await;
    let mut request = format!(
        "GET /v1/users HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nConnection: close\r\nx-team-note: caf",
        gw.keys.readonly
    )
    .into_bytes();
    request.extend_from_slice(b"\xff\xfe\r\n\r\n");
    let response = raw_request(&gw.url, &request).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("x-team-note"), "{response}");
    assert!(gw.sandbox().recorded().is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let message = unreachable_answer(closed_url).await;
    assert!(message.contains("connection failed"), "{message}");
}

/// A gateway whose upstream is `api_url` answers a read with 502 `upstream_unreachable`; gives the
/// message.
async fn unreachable_answer(api_url: String) -> String {
    let gw = start_with(SandboxOptions::default(), |c| c.upstream.api_url = api_url).await;
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json(response).await;
    assert_eq!(body["error"], "upstream_unreachable");
    body["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_slow_upstream_gets_504_within_the_timeout() {
    let gw = start_with(SandboxOptions::default(), |c| {
        c.upstream.timeout = Duration::from_secs(1)
    })
    .await;
    // Warm the token first so only the API call is slow.
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    gw.sandbox().faults.delay_ms.store(5000, Ordering::SeqCst);
    let started = Instant::now();
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    let body = json(response).await;
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("timeout_secs (1 s)")
    );
}

/// A TLS upstream on loopback whose certificate (tests/fixtures, self-signed for 127.0.0.1) no trust
/// store holds. Returns its URL and how the first handshake ended.
async fn upstream_with_untrusted_certificate() -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixture = |name: &str| format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let certificate = CertificateDer::from_pem_file(fixture("untrusted-upstream.crt")).unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("untrusted-upstream.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (ended, handshake) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let outcome = match acceptor.accept(socket).await {
            Ok(_) => "completed".to_string(),
            Err(error) => error.to_string(),
        };
        let _ = ended.send(outcome);
    });
    (url, handshake)
}

#[tokio::test]
async fn an_upstream_whose_certificate_is_not_trusted_is_refused() {
    let (untrusted, handshake) = upstream_with_untrusted_certificate().await;
    let message = unreachable_answer(untrusted.clone()).await;
    assert!(message.contains(&untrusted), "{message}");
    // The gateway spoke TLS and rejected the certificate: the handshake ended with its alert, and
    // no request (with the bearer token) was ever sent.
    let handshake = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .unwrap()
        .unwrap();
    assert!(
        ["UnknownCA", "CertificateUnknown", "BadCertificate"]
            .iter()
            .any(|alert| handshake == format!("received fatal alert: {alert}")),
        "{handshake}"
    );
}

/// A gateway (upstream timeout 1 s) in front of an upstream that answers every request with
/// `head` (status, headers and the start of a body), then stalls for 30 s.
async fn gateway_before_upstream_stalling_mid_body(head: &'static [u8]) -> TestGateway {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    start_with(SandboxOptions::default(), |c| {
        c.upstream.api_url = url;
        c.upstream.timeout = Duration::from_secs(1);
    })
    .await
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_off_after_the_timeout() {
    // A chunked answer is streamed: the status went out, the body breaks off.
    let gw = gateway_before_upstream_stalling_mid_body(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\n9\r\n{\"data\":[\r\n",
    )
    .await;
    let started = Instant::now();
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "the body must not complete"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upstream_stalling_in_a_short_answer_gets_a_504() {
    // A short answer of declared length is read whole before it is passed on (and a cached
    // route always reads whole): the caller gets a 504 in JSON, not half an answer.
    let gw = gateway_before_upstream_stalling_mid_body(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"data\":[",
    )
    .await;
    for path in [
        "/v1/compute/instances",
        "/v1/users/6cdf5968-f9fe-4192-97c2-f349e813c5e8",
    ] {
        let started = Instant::now();
        let response = gw.get(path, &gw.keys.readonly).send().await.unwrap();
        assert_eq!(response.status(), 504, "{path}");
        assert_eq!(json(response).await["error"], "upstream_timeout", "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_caller_that_disconnects_leaves_no_call_in_flight() {
    let gw = start().await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    gw.sandbox().faults.delay_ms.store(3000, Ordering::SeqCst);
    let impatient = common::http()
        .get(format!("{}/v1/compute/instances", gw.url))
        .bearer_auth(&gw.keys.readonly)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw.gateway.in_flight.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned call is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish_and_stops_accepting() {
    let mut gw = start().await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    gw.sandbox().faults.delay_ms.store(800, Ordering::SeqCst);
    let in_flight = tokio::spawn(gw.get("/v1/compute/instances", &gw.keys.readonly).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = gw.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = common::http()
        .get(format!("{}/_gateway/health", gw.url))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        late.is_err(),
        "a new connection was accepted during shutdown"
    );
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the call in flight was cut");
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
}
