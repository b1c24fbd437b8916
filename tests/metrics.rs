//! GET /_gateway/metrics: the Prometheus text is there without a key, and its series move with
//! calls (calls, latency histograms, upstream, cache, token, rate limits, audit). One test per
//! binary: the metrics recorder is process-wide.

mod common;

use std::time::Duration;

use common::{http, json};
use contabo_gateway::sandbox::SandboxOptions;

/// The value of the first series named `name` whose labels contain every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(url: &str) -> String {
    let response = http()
        .get(format!("{url}/_gateway/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_are_exposed_and_move_with_calls() {
    let gw = common::start_with(SandboxOptions::default(), |c| {
        let readonly = c
            .clients
            .iter_mut()
            .find(|t| t.name == "team-readonly")
            .unwrap();
        readonly.per_second = 0.1;
        readonly.burst = 1;
    })
    .await;
    let admin = gw.keys.admin.clone();
    let calls = "gateway_calls_total";
    let instances = [
        "route=\"retrieveInstancesList\"",
        "method=\"GET\"",
        "status=\"200\"",
        "client=\"team-admin\"",
    ];
    let before = scrape(&gw.url).await;
    assert_eq!(value(&before, calls, &instances), None);

    for _ in 0..3 {
        assert_eq!(gw.get_status("/v1/compute/instances", &admin).await, 200);
    }
    assert_eq!(gw.get_status("/v1/users", &admin).await, 200);
    assert_eq!(gw.get_status("/v1/users", &admin).await, 200);
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        429
    );
    let created = gw
        .request(reqwest::Method::POST, "/v1/compute/instances", &admin)
        .json(&serde_json::json!({"imageId": "afecbb85-e2fc-46f0-9684-b46b1faf00bb", "productId": "V45"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    gw.gateway.audit.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let after = scrape(&gw.url).await;
    assert_eq!(value(&after, calls, &instances), Some(3.0), "{after}");
    let histogram_count = value(&after, "gateway_call_duration_seconds_count", &instances);
    assert_eq!(histogram_count, Some(3.0));
    assert!(
        after.contains("gateway_call_duration_seconds_bucket{") && after.contains("le=\"0.005\""),
        "latency is a histogram with buckets"
    );
    let upstream = value(
        &after,
        "gateway_upstream_duration_seconds_count",
        &["route=\"retrieveInstancesList\"", "status=\"200\""],
    );
    assert!(
        upstream.unwrap() >= 4.0,
        "3 admin calls and 1 readonly call went upstream"
    );
    assert!(value(&after, "gateway_cache_hits_total", &["kind=\"fresh\""]).unwrap() >= 1.0);
    assert!(value(&after, "gateway_cache_misses_total", &[]).unwrap() >= 1.0);
    assert!(value(&after, "gateway_cache_bytes", &[]).unwrap() > 0.0);
    assert!(
        value(
            &after,
            "gateway_token_grants_total",
            &["grant=\"password\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(value(&after, "gateway_token_remaining_seconds", &[]).unwrap() > 0.0);
    assert_eq!(
        value(
            &after,
            "gateway_rate_limited_total",
            &["client=\"team-readonly\"", "limit=\"team\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            calls,
            &["client=\"team-readonly\"", "status=\"429\""]
        ),
        Some(1.0)
    );
    assert!(value(&after, "gateway_audit_records_written_total", &[]).unwrap() >= 1.0);
    assert!(value(&after, "gateway_audit_write_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(value(&after, "gateway_audit_store_up", &[]), Some(1.0));
    assert!(value(&after, "gateway_audit_queue_depth", &[]).is_some());
    assert!(value(&after, "gateway_upstream_queue_depth", &[]).is_some());

    // An upstream 429 counts a pause.
    gw.sandbox()
        .faults
        .throttle_next_calls
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let paused = gw
        .request(reqwest::Method::DELETE, "/v1/compute/instances/1", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 429);
    let text = scrape(&gw.url).await;
    assert_eq!(
        value(&text, "gateway_upstream_pauses_total", &[]),
        Some(1.0)
    );
    // Scrapes need no key, and a status probe confirms the same gateway.
    let status = gw.get("/_gateway/status", &admin).send().await.unwrap();
    assert!(
        json(status).await["rate_limit"]["upstream_paused_ms"]
            .as_u64()
            .unwrap()
            > 0
    );
}
