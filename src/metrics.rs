//! Prometheus metrics (the `metrics` facade, rendered by `metrics-exporter-prometheus` at
//! GET /_gateway/metrics): what operators need to see the gateway at work.
//!
//! Events are recorded where they happen (a call finished, an upstream answer, a rate-limit
//! refusal, an audit batch); levels kept elsewhere (cache size, token life, queue depths, grant
//! counts) are read at scrape time. Names follow Prometheus conventions: units in the name,
//! `_total` for counters.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use metrics::{Counter, Histogram, Label, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;

/// Latency buckets (seconds): sub-millisecond gateway work up to Contabo's slowest calls.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (one per process, shared by every gateway in
/// it, as the `metrics` facade has one global recorder).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's): then the gateway's
        // events go there and this handle renders only the scrape-time levels.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /_gateway/metrics is partial"
            );
        }
        handle
    })
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One /v1 call answered by the gateway (whatever answered it: cache, upstream or a refusal).
pub fn call_finished(
    route: &'static str,
    method: &Method,
    status: u16,
    client: &Arc<str>,
    took: Duration,
) {
    let method = method_label(method);
    // The client's name is told apart by its allocation; the entry keeps that allocation alive,
    // so its address is never reused for another name while the entry exists.
    let key = (
        route,
        method,
        status,
        Arc::as_ptr(client).cast::<u8>() as usize,
    );
    CALL_HANDLES.with_borrow_mut(|handles| {
        let (calls, durations, _) = handles.entry(key).or_insert_with(|| {
            let labels = [
                Label::from_static_parts("route", route),
                Label::from_static_parts("method", method),
                Label::new("status", status.to_string()),
                Label::new("client", client.clone()),
            ];
            (
                counter!("gateway_calls_total", labels.iter()),
                histogram!("gateway_call_duration_seconds", labels.iter()),
                client.clone(),
            )
        });
        calls.increment(1);
        durations.record(took.as_secs_f64());
    });
}

/// One exchange with Contabo's API (the 401 retry counts as a second one).
pub fn upstream_answered(route: &'static str, method: &Method, status: u16, took: Duration) {
    let method = method_label(method);
    UPSTREAM_HANDLES.with_borrow_mut(|handles| {
        let (requests, durations) = handles.entry((route, method, status)).or_insert_with(|| {
            let labels = [
                Label::from_static_parts("route", route),
                Label::from_static_parts("method", method),
                Label::new("status", status.to_string()),
            ];
            (
                counter!("gateway_upstream_requests_total", labels.iter()),
                histogram!("gateway_upstream_duration_seconds", labels.iter()),
            )
        });
        requests.increment(1);
        durations.record(took.as_secs_f64());
    });
}

/// Route, method, status and the client name's address.
type CallKey = (&'static str, &'static str, u16, usize);
/// The counter and histogram of one label set, and the client name they were registered for.
type CallHandles = (Counter, Histogram, Arc<str>);
/// Route, method and status.
type UpstreamKey = (&'static str, &'static str, u16);

thread_local! {
    /// The per-call metrics' handles, registered once per label set on each thread: looking them
    /// up in the recorder's registry on every call (building and hashing the key) cost more than
    /// recording, and the benchmark sees it (bench/README.md, 2026-12-04). As many entries as
    /// the label sets the exported series already have; the recorder is built without an idle
    /// timeout, so a series behind a kept handle is never dropped.
    /// Hashed with FxHash: the keys are the gateway's own labels, not a caller's input to flood a
    /// table with, and SipHash cost more than the lookup.
    static CALL_HANDLES: std::cell::RefCell<FxHashMap<CallKey, CallHandles>> =
        std::cell::RefCell::new(FxHashMap::default());
    static UPSTREAM_HANDLES: std::cell::RefCell<FxHashMap<UpstreamKey, (Counter, Histogram)>> =
        std::cell::RefCell::new(FxHashMap::default());
}

/// A team over its own limit got 429.
pub fn team_rate_limited(client: &str) {
    counter!("gateway_rate_limited_total", "client" => client.to_string(), "limit" => "team")
        .increment(1);
}

/// A call gave up waiting for the upstream budget and got 429.
pub fn upstream_budget_exhausted(client: &str) {
    counter!("gateway_rate_limited_total", "client" => client.to_string(), "limit" => "upstream")
        .increment(1);
}

/// Contabo answered 429 and upstream calls were paused.
pub fn upstream_paused(pause: Duration) {
    counter!("gateway_upstream_pauses_total").increment(1);
    counter!("gateway_upstream_paused_seconds_total").increment(pause.as_secs());
}

/// One audit batch committed (or not).
pub fn audit_batch(records: usize, took: Duration, ok: bool) {
    histogram!("gateway_audit_write_duration_seconds").record(took.as_secs_f64());
    if ok {
        counter!("gateway_audit_records_written_total").increment(records as u64);
    } else {
        counter!("gateway_audit_write_failures_total").increment(1);
    }
}

/// Folds recorded histogram samples into their buckets. Run every few seconds: between scrapes
/// the samples would otherwise pile up in memory.
pub fn run_upkeep() {
    handle().run_upkeep();
}

/// What the gateway's parts report at scrape time (counters they keep themselves, and levels).
#[derive(Debug, Default)]
pub struct Levels {
    pub cache_hits: u64,
    pub cache_stale_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub cache_bytes: u64,
    pub cache_entries: u64,
    pub token_password_grants: u64,
    pub token_refresh_grants: u64,
    pub token_failures: u64,
    pub token_remaining_secs: f64,
    pub upstream_queue_depth: usize,
    pub upstream_paused_secs: f64,
    pub audit_queue_depth: usize,
    pub audit_store_up: bool,
    pub calls_in_flight: usize,
}

/// The Prometheus text: the levels read now, then everything recorded.
pub fn render(levels: &Levels) -> String {
    counter!("gateway_cache_hits_total", "kind" => "fresh").absolute(levels.cache_hits);
    counter!("gateway_cache_hits_total", "kind" => "stale").absolute(levels.cache_stale_hits);
    counter!("gateway_cache_misses_total").absolute(levels.cache_misses);
    counter!("gateway_cache_evictions_total").absolute(levels.cache_evictions);
    gauge!("gateway_cache_bytes").set(levels.cache_bytes as f64);
    gauge!("gateway_cache_entries").set(levels.cache_entries as f64);

    counter!("gateway_token_grants_total", "grant" => "password")
        .absolute(levels.token_password_grants);
    counter!("gateway_token_grants_total", "grant" => "refresh")
        .absolute(levels.token_refresh_grants);
    counter!("gateway_token_failures_total").absolute(levels.token_failures);
    gauge!("gateway_token_remaining_seconds").set(levels.token_remaining_secs);

    gauge!("gateway_upstream_queue_depth").set(levels.upstream_queue_depth as f64);
    gauge!("gateway_upstream_paused_remaining_seconds").set(levels.upstream_paused_secs);
    gauge!("gateway_audit_queue_depth").set(levels.audit_queue_depth as f64);
    gauge!("gateway_audit_store_up").set(if levels.audit_store_up { 1.0 } else { 0.0 });
    gauge!("gateway_calls_in_flight").set(levels.calls_in_flight as f64);

    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
