//! OpenTelemetry: the gateway binary with `[telemetry] otlp_endpoint` pointed at an OTLP/HTTP
//! receiver in this test (decoding with opentelemetry-proto). The caller's W3C traceparent becomes
//! the call span's parent, the exchange with Contabo (the sandbox) carries the context on, the
//! spans of the call, the exchange, the token grant, the cache fill and the audit writes arrive as
//! one tree, a call without a traceparent starts a trace of its own, and the audit record keeps
//! the trace id.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{admin_client_block, http, json, spawn_gateway_process};
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    service: String,
}

/// An OTLP/HTTP (protobuf) trace receiver on loopback; what it received.
async fn receiver() -> (
    String,
    Arc<Mutex<Vec<ReceivedSpan>>>,
    Arc<Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let (kept, kept_paths) = (spans.clone(), paths.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (spans, paths) = (kept.clone(), kept_paths.clone());
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (spans, paths) = (spans.clone(), paths.clone());
                    async move {
                        paths.lock().unwrap().push(request.uri().path().to_string());
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| r.attributes.iter())
                                .find(|a| a.key == "service.name")
                                .and_then(|a| a.value.as_ref())
                                .map(|v| format!("{:?}", v.value))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    spans.lock().unwrap().push(ReceivedSpan {
                                        name: span.name,
                                        trace_id: hex::encode(span.trace_id),
                                        span_id: hex::encode(span.span_id),
                                        parent_span_id: hex::encode(span.parent_span_id),
                                        service: service.clone(),
                                    });
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::new()),
                        ))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (url, spans, paths)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

// Two threads: the receiver answers the export while the test waits for the process to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_as_one_tree_and_the_context_reaches_contabo() {
    let (endpoint, spans, paths) = receiver().await;
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, team) = admin_client_block("traced-team");
    let config = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n\n{team}");
    let mut process = spawn_gateway_process(&sandbox, &config, dir.path(), None);

    // A write with the caller's trace context.
    let created = http()
        .post(format!("{}/v1/compute/instances", process.url))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({"imageId": "afecbb85-e2fc-46f0-9684-b46b1faf00bb", "productId": "V45"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // A read without one: a trace of its own.
    let users = http()
        .get(format!("{}/v1/users", process.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);

    // What Contabo (the sandbox) received: the same trace, with the gateway's span as parent.
    let recorded = sandbox.state.recorded.lock().unwrap().clone();
    let traceparent = |method: &str, path: &str| -> Vec<String> {
        recorded
            .iter()
            .find(|r| r.method == method && r.path_and_query.starts_with(path))
            .and_then(|r| r.headers.get("traceparent"))
            .map(|v| v.to_str().unwrap().split('-').map(str::to_string).collect())
            .unwrap_or_else(|| panic!("{method} {path} reached the sandbox without a traceparent"))
    };
    let upstream_write = traceparent("POST", "/v1/compute/instances");
    assert_eq!(
        upstream_write[1], TRACE,
        "the caller's trace goes on to Contabo"
    );
    assert_ne!(
        upstream_write[2], CALLER_SPAN,
        "under the gateway's own span"
    );
    let upstream_read = traceparent("GET", "/v1/users");
    assert_ne!(
        upstream_read[1], TRACE,
        "a call without a traceparent starts a trace"
    );

    // The audit record keeps the trace id.
    let records = http()
        .get(format!("{}/_gateway/audit?client=traced-team", process.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let records = json(records).await;
    assert_eq!(records["records"][0]["trace_id"], TRACE, "{records}");

    // At shutdown the last spans are flushed.
    assert!(process.signal_and_wait("-TERM").success());
    let spans = spans.lock().unwrap().clone();
    assert!(
        paths.lock().unwrap().iter().all(|p| p == "/v1/traces"),
        "{:?}",
        paths.lock().unwrap()
    );
    let named = |name: &str, trace: &str| -> ReceivedSpan {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id == trace)
            .cloned()
            .unwrap_or_else(|| panic!("no {name:?} span in trace {trace}: {spans:#?}"))
    };
    let call = named("call", TRACE);
    assert_eq!(
        call.parent_span_id, CALLER_SPAN,
        "the caller's span is the call's parent"
    );
    assert!(call.service.contains("contabo-gateway"), "{}", call.service);
    let exchange = named("contabo exchange", TRACE);
    assert_eq!(exchange.parent_span_id, call.span_id);
    assert_eq!(
        upstream_write[2], exchange.span_id,
        "Contabo's parent is the gateway's exchange span"
    );
    let grant = named("token grant", TRACE);
    assert_eq!(
        grant.parent_span_id, exchange.span_id,
        "the first call got the token"
    );
    let pending = named("audit write (pending record)", TRACE);
    assert_eq!(pending.parent_span_id, call.span_id);
    assert!(
        spans.iter().any(|s| s.name == "audit write (batch)"),
        "the writer's batches are traced: {spans:#?}"
    );
    let read_call = named("call", &upstream_read[1]);
    assert!(read_call.parent_span_id.is_empty() || read_call.parent_span_id == "0000000000000000");
    let fill = named("cache fill (coalesced)", &upstream_read[1]);
    assert_eq!(fill.parent_span_id, read_call.span_id);
    let read_exchange = named("contabo exchange", &upstream_read[1]);
    assert_eq!(read_exchange.parent_span_id, fill.span_id);
    assert_eq!(upstream_read[2], read_exchange.span_id);
}

#[tokio::test]
async fn without_an_endpoint_the_callers_traceparent_passes_through_untouched() {
    let gw = common::start().await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let response = gw
        .get("/v1/users", &gw.keys.readonly)
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let recorded = gw.sandbox().recorded.lock().unwrap().clone();
    let sent = recorded
        .iter()
        .rev()
        .find(|r| r.path_and_query.starts_with("/v1/users"))
        .unwrap();
    assert_eq!(sent.headers["traceparent"], traceparent.as_str());
    tokio::time::sleep(Duration::from_millis(10)).await;
}
