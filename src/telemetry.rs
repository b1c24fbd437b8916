//! Logging and tracing, set up once. Log lines: `[log] format` (pretty or json) and `level` (a
//! tracing filter, which RUST_LOG overrides); every line of a call carries its request id through
//! the call's span. Traces: with `[telemetry] otlp_endpoint` the gateway's spans (the call, the
//! exchange with Contabo, token grants, cache coalescing, audit writes) are exported over
//! OTLP/HTTP, a caller's W3C `traceparent`/`tracestate` becomes the call's parent (a new trace is
//! started when it has none), and the exchange with Contabo carries the context on. Without an
//! endpoint nothing of this runs: headers pass through untouched.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Whether spans are exported (and so contexts extracted and injected).
static EXPORTING: AtomicBool = AtomicBool::new(false);

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The exporter, kept to flush what is left at shutdown.
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still waiting; call outside the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: the last spans could not be exported: {error}");
        }
    }
}

/// Why spans cannot be exported to `telemetry.otlp_endpoint`.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint {url}: {error}")]
pub struct ExporterError {
    url: String,
    #[source]
    error: opentelemetry_otlp::ExporterBuildError,
}

pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Result<Telemetry, ExporterError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colour_wanted())
        .with_writer(std::io::stderr);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => lines.with_filter(filter).boxed(),
    };
    let (provider, spans) = match telemetry.otlp_endpoint.as_str() {
        "" => (None, None),
        endpoint => {
            let provider = exporter(endpoint, &telemetry.service_name)?;
            let tracer = provider.tracer("contabo-gateway");
            // The gateway's own spans, whatever the log level says.
            let ours = Targets::new().with_target("contabo_gateway", tracing::Level::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(ours)
                .boxed();
            EXPORTING.store(true, Ordering::SeqCst);
            (Some(provider), Some(layer))
        }
    };
    if tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .try_init()
        .is_err()
    {
        tracing::debug!("logging was already set up");
    }
    Ok(Telemetry { provider })
}

fn exporter(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, ExporterError> {
    use opentelemetry_otlp::WithExportConfig;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|error| ExporterError { url, error })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span `make` builds when spans are exported; otherwise a disabled one (the per-call spans
/// of the exchange, the grant, the cache fill and the audit write exist for traces only).
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() {
        make()
    } else {
        tracing::Span::none()
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Makes the caller's W3C trace context the parent of `span` (the call's); without one, the span
/// starts a new trace.
pub fn adopt_caller_context(span: &tracing::Span, headers: &HeaderMap) {
    if !exporting() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let context = propagator().extract(&Headers(headers));
    let _ = span.set_parent(context);
}

/// Writes the current span's context as `traceparent` (and `tracestate`) into the headers of the
/// request to Contabo, in place of the caller's: Contabo's side of the trace hangs under the
/// gateway's exchange.
pub fn pass_on(headers: &mut HeaderMap) {
    if !exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    propagator().inject_context(&context, &mut HeadersMut(headers));
}

/// The W3C trace id of the call: the exported trace's, else the caller's `traceparent`'s.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    if exporting() {
        let context = tracing::Span::current().context();
        let span = context.span();
        let id = span.span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            return Some(id.to_string());
        }
    }
    // version-traceid-parentid-flags
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_ascii_lowercase())
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Colours only for a person at a terminal: never into a file or a pipe, never with `NO_COLOR`
/// (<https://no-color.org>).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_of_a_callers_traceparent() {
        let mut headers = HeaderMap::new();
        assert_eq!(trace_id(&headers), None);
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            trace_id(&headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        assert_eq!(trace_id(&headers), None, "the all-zero id is invalid");
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        assert_eq!(trace_id(&headers), None);
    }
}
