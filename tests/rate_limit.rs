//! Rate limits through real sockets: per team, the shared upstream budget with its fair queue,
//! upstream 429 pauses, route costs, and (on the real Redis of GATEWAY_TEST_REDIS_URL and a
//! private redis-server) limits shared by two gateway processes, fallback and recovery.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{
    PrivateRedis, TestGateway, announce_skip, free_port, http, json, spawn_gateway_process,
    test_redis_url,
};
use contabo_gateway::clients::{generate_key, sha256};
use contabo_gateway::config::Config;
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};

const INSTANCES: &str = "/v1/compute/instances";

/// Sets the limits of the test team with `name` (team-admin, team-operator, team-readonly).
fn team_limit(config: &mut Config, name: &str, per_second: f64, burst: u32) {
    let team = config.clients.iter_mut().find(|c| c.name == name).unwrap();
    team.per_second = per_second;
    team.burst = burst;
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// POST /v1/compute/instances with `key`.
async fn create_instance(gw: &TestGateway, key: &str) -> reqwest::Response {
    let body = serde_json::json!({"imageId": "afecbb85-e2fc-46f0-9684-b46b1faf00bb", "productId": "V45", "region": "EU", "period": 1});
    gw.request(reqwest::Method::POST, INSTANCES, key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_team_over_its_limit_gets_429_with_headers_and_nothing_reaches_upstream() {
    let gw = common::start_with(SandboxOptions::default(), |c| {
        team_limit(c, "team-operator", 1.0, 3)
    })
    .await;
    let operator = gw.keys.operator.clone();
    for remaining in [2, 1, 0] {
        let response = gw.get(INSTANCES, &operator).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-policy"), "\"team\";q=3;w=3");
        let state = header(&response, "ratelimit");
        assert!(
            state.starts_with(&format!("\"team\";r={remaining};t=")),
            "{state}"
        );
    }
    let upstream_before = gw.api_calls();
    let refused = gw.get(INSTANCES, &operator).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert!(header(&refused, "ratelimit").starts_with("\"team\";r=0;"));
    let request_id = header(&refused, "x-request-id").to_string();
    let body = json(refused).await;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], request_id.as_str());
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("team-operator") && message.contains("retry after 1 s"),
        "{message}"
    );
    // A refused write is audited as rejected and not forwarded either.
    let write = create_instance(&gw, &operator).await;
    assert_eq!(write.status(), 429);
    assert_eq!(
        gw.api_calls(),
        upstream_before,
        "a refused call reached upstream"
    );
    let audit = gw
        .get("/_gateway/audit?outcome=rejected", &gw.keys.auditor)
        .send()
        .await
        .unwrap();
    let records = json(audit).await;
    let rejected = &records["records"][0];
    assert_eq!(rejected["status"], 429);
    assert_eq!(rejected["client"], "team-operator");
    // Another team is not limited by this one, and the bucket refills.
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.readonly).await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.get_status(INSTANCES, &operator).await, 200);
}

#[tokio::test]
async fn a_route_cost_takes_several_tokens() {
    let gw = common::start_with(SandboxOptions::default(), |c| {
        team_limit(c, "team-operator", 0.5, 4);
        c.rate_limit
            .route_costs
            .insert("POST /v1/compute/instances".into(), 3);
    })
    .await;
    let first = create_instance(&gw, &gw.keys.operator).await;
    assert_eq!(first.status(), 201);
    assert!(header(&first, "ratelimit").starts_with("\"team\";r=1;"));
    assert_eq!(
        create_instance(&gw, &gw.keys.operator).await.status(),
        429,
        "1 token left, 3 needed"
    );
    assert_eq!(
        gw.get_status(INSTANCES, &gw.keys.operator).await,
        200,
        "a read costs 1"
    );
}

/// Sends `count` GETs at once with `key`; their statuses and the time they all took.
async fn concurrent_gets(gw: &TestGateway, key: &str, count: usize) -> (Vec<u16>, Duration) {
    let started = Instant::now();
    let calls = (0..count).map(|_| gw.get_status(INSTANCES, key));
    let statuses = futures_util::future::join_all(calls).await;
    (statuses, started.elapsed())
}

/// A gateway whose upstream budget is `per_second`, `burst`, with `max_wait_ms` in the queue.
async fn budget_gateway(per_second: f64, burst: u32, max_wait_ms: u64) -> TestGateway {
    common::start_with(SandboxOptions::default(), |c| {
        c.rate_limit.upstream_per_second = per_second;
        c.rate_limit.upstream_burst = burst;
        c.rate_limit.max_wait = Duration::from_millis(max_wait_ms);
    })
    .await
}

#[tokio::test]
async fn calls_without_upstream_budget_wait_in_the_queue_then_get_429() {
    let gw = budget_gateway(5.0, 1, 3000).await;
    let (statuses, took) = concurrent_gets(&gw, &gw.keys.admin, 6).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // One at once, then one every 200 ms.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_eq!(gw.api_calls(), 6);

    // One token a second, a wait of 300 ms: one call is served, the others give up.
    let gw = budget_gateway(1.0, 1, 300).await;
    let (statuses, took) = concurrent_gets(&gw, &gw.keys.admin, 6).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        5,
        "{statuses:?}"
    );
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(900));
    assert_eq!(gw.api_calls(), 1, "only the served call reached upstream");
    let refused = gw.get(INSTANCES, &gw.keys.admin).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!(retry >= 1);
    let body = json(refused).await;
    assert_eq!(body["error"], "upstream_budget_exhausted");
    assert!(body["message"].as_str().unwrap().contains("300 ms"));
}

#[tokio::test]
async fn a_flooding_team_does_not_starve_another() {
    let gw = Arc::new(budget_gateway(10.0, 1, 1500).await);
    let stop_at = Instant::now() + Duration::from_secs(3);
    let flood_refused = Arc::new(AtomicU32::new(0));
    let mut flood = Vec::new();
    for _ in 0..30 {
        let (gw, refused) = (gw.clone(), flood_refused.clone());
        flood.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                if gw.get_status(INSTANCES, &gw.keys.operator).await == 429 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut quiet = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let status = gw.get_status(INSTANCES, &gw.keys.readonly).await;
        quiet.push((status, started.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in flood {
        task.await.unwrap();
    }
    // First in first out, the quiet team would wait behind ~30 queued calls (3 s > max_wait) and
    // get 429; round-robin serves it after at most one call of the flood (100-300 ms here, more
    // when the one test thread is busy with the flood).
    assert!(
        quiet
            .iter()
            .all(|(s, took)| *s == 200 && *took < Duration::from_millis(1000)),
        "the quiet team was starved: {quiet:?}"
    );
    assert!(
        flood_refused.load(Ordering::Relaxed) > 0,
        "the flood was never limited, so the test proves nothing"
    );
}

/// A gateway whose upstream answers its next call 429 with `retry-after` (0 = none).
async fn throttled_gateway(max_wait_ms: u64, retry_after_secs: u64) -> TestGateway {
    let gw = common::start_with(SandboxOptions::default(), |c| {
        c.rate_limit.max_wait = Duration::from_millis(max_wait_ms);
    })
    .await;
    let faults = &gw.sandbox().faults;
    faults
        .throttle_retry_after_secs
        .store(retry_after_secs, Ordering::SeqCst);
    faults.throttle_next_calls.store(1, Ordering::SeqCst);
    gw
}

#[tokio::test]
async fn an_upstream_429_is_passed_back_and_holds_every_upstream_call() {
    let gw = throttled_gateway(5000, 2).await;
    let write = create_instance(&gw, &gw.keys.admin).await;
    let paused_at = Instant::now();
    assert_eq!(write.status(), 429, "Contabo's 429 goes back to the caller");
    assert_eq!(header(&write, "retry-after"), "2");
    assert_eq!(json(write).await["statusCode"], 429, "Contabo's own body");
    assert_eq!(gw.api_calls(), 1, "a write is never retried");

    // During the pause nothing is sent upstream; a read waits for its end and is then served.
    let gw = Arc::new(gw);
    let held = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get_status(INSTANCES, &gw.keys.readonly).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        gw.api_calls(),
        1,
        "an upstream call went out during the pause"
    );
    assert_eq!(held.await.unwrap(), 200);
    assert!(paused_at.elapsed() >= Duration::from_millis(1800));
    assert_eq!(gw.api_calls(), 2);
}

#[tokio::test]
async fn a_read_is_retried_once_after_the_pause_when_it_fits_in_max_wait() {
    let gw = throttled_gateway(3000, 1).await;
    let started = Instant::now();
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.readonly).await, 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(gw.api_calls(), 2, "the 429 and the retry");

    // The same with a pause longer than max_wait: the 429 goes back, no retry.
    let gw = throttled_gateway(500, 1).await;
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.readonly).await, 429);
    assert_eq!(gw.api_calls(), 1);
    // Still paused: the next call is refused by the gateway without reaching upstream.
    let refused = gw.get(INSTANCES, &gw.keys.readonly).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(json(refused).await["error"], "upstream_budget_exhausted");
    assert_eq!(gw.api_calls(), 1);
}

#[tokio::test]
async fn an_upstream_429_without_retry_after_gets_a_backoff() {
    let gw = throttled_gateway(2000, 0).await;
    let write = create_instance(&gw, &gw.keys.admin).await;
    assert_eq!(write.status(), 429);
    // The first backoff is 0.5-1 s, announced in whole seconds.
    assert_eq!(header(&write, "retry-after"), "1");
    let status = json(
        gw.get("/_gateway/status", &gw.keys.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(status["rate_limit"]["upstream_paused_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn cache_hits_need_no_upstream_budget() {
    let gw = budget_gateway(0.2, 1, 100).await;
    assert_eq!(gw.get_status("/v1/users", &gw.keys.admin).await, 200);
    for _ in 0..20 {
        let hit = gw.get("/v1/users", &gw.keys.admin).send().await.unwrap();
        assert_eq!(hit.status(), 200);
        assert_eq!(header(&hit, "cache-status"), "contabo-gateway; hit");
    }
    assert_eq!(gw.api_calls(), 1);
    // The budget is really used up: an uncached read is refused.
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.admin).await, 429);
}

/// A `[[clients]]` block with the given limits.
fn team_block(name: &str, per_second: u32, burst: u32) -> (String, String) {
    let key = generate_key();
    let block = format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nrole = \"admin\"\nper_second = {per_second}\nburst = {burst}\n",
        hex::encode(sha256(key.as_bytes()))
    );
    (key, block)
}

/// Hammers both gateways with `key` for `secs` from 4 loops each; the 200s and the window.
async fn hammer(urls: &[String], key: &str, secs: u64) -> (u32, Duration) {
    let ok = Arc::new(AtomicU32::new(0));
    // Built before the clock starts: building a client takes a while in a debug build.
    let client = http();
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(secs);
    let mut loops = Vec::new();
    for url in urls {
        for _ in 0..4 {
            let (url, key, ok, client) = (url.clone(), key.to_string(), ok.clone(), client.clone());
            loops.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let response = client
                        .get(format!("{url}{INSTANCES}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap();
                    if response.status() == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else if response.status() != 429 {
                        panic!("{}", response.status());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }
    for l in loops {
        l.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), started.elapsed())
}

fn assert_within_10_percent(what: &str, got: f64, expected: f64) {
    let report = format!("{what}: {got} allowed, expected {expected:.1} (within 10%)");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{report}");
    assert!((got - expected).abs() <= expected * 0.1, "{report}");
}

#[tokio::test]
async fn two_gateway_processes_on_redis_hold_one_combined_limit() {
    let Some(redis_url) = test_redis_url() else {
        announce_skip(
            "the two-replica rate-limit test on Redis",
            "GATEWAY_TEST_REDIS_URL is not set",
        );
        return;
    };
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (limited_key, limited) = team_block("limited", 20, 5);
    let (free_key, free) = team_block("free", 100_000, 100_000);
    let (busy_key, busy) = team_block("busy", 300, 30);
    let prefix = format!("test-ratelimit-{}", uuid::Uuid::new_v4());
    let config = format!(
        "[rate_limit]\nredis_url = \"{redis_url}\"\nredis_key_prefix = \"{prefix}\"\n\
         replicas = 2\nupstream_per_second = 30\nupstream_burst = 5\nmax_wait_ms = 0\n\n\
         {limited}\n{free}\n{busy}"
    );
    let a = spawn_gateway_process(&sandbox, &config, dir.path(), None);
    let b = spawn_gateway_process(&sandbox, &config, dir.path(), None);
    let urls = [a.url.clone(), b.url.clone()];
    // The first call of each gateway fetches its token; the measured window starts after that.
    for url in &urls {
        let warm = http()
            .get(format!("{url}{INSTANCES}"))
            .bearer_auth(&free_key);
        assert_eq!(warm.send().await.unwrap().status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The team limit (20/s, burst 5) across both: one replica alone would allow the same again.
    let (ok, took) = hammer(&urls, &limited_key, 3).await;
    let expected = 5.0 + 20.0 * took.as_secs_f64();
    assert_within_10_percent("team limit over two replicas", f64::from(ok), expected);

    // The upstream budget (30/s, burst 5) across both, counted at the upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = contabo_gateway::sandbox::SandboxState::count(&sandbox.state.counters.api_calls);
    let (ok, took) = hammer(&urls, &free_key, 3).await;
    let upstream =
        contabo_gateway::sandbox::SandboxState::count(&sandbox.state.counters.api_calls) - before;
    assert_eq!(u64::from(ok), upstream);
    let expected = 5.0 + 30.0 * took.as_secs_f64();
    assert_within_10_percent(
        "upstream budget over two replicas",
        upstream as f64,
        expected,
    );

    // A faster team limit (300/s): each replica now leases a few tokens per 20 ms from Redis
    // instead of asking for every call; the combined limit still holds. (The upstream budget is
    // the 30/s above, so count the team's admissions: everything but `rate_limited`.)
    let admitted = Arc::new(AtomicU32::new(0));
    let client = http();
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(2);
    let mut loops = Vec::new();
    for url in &urls {
        for _ in 0..6 {
            let (url, key, admitted, client) = (
                url.clone(),
                busy_key.clone(),
                admitted.clone(),
                client.clone(),
            );
            loops.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let response = client
                        .get(format!("{url}{INSTANCES}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap();
                    let body = response.text().await.unwrap();
                    if !body.contains("\"rate_limited\"") {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for l in loops {
        l.await.unwrap();
    }
    let expected = 30.0 + 300.0 * started.elapsed().as_secs_f64();
    assert_within_10_percent(
        "leased team limit over two replicas",
        f64::from(admitted.load(Ordering::Relaxed)),
        expected,
    );
}

async fn rate_limit_status(gw: &TestGateway) -> serde_json::Value {
    let status = gw
        .get("/_gateway/status", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    json(status).await["rate_limit"].clone()
}

async fn wait_for_backend(gw: &TestGateway, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Calls drive the reconnection; the status reports the result.
        gw.get_status(INSTANCES, &gw.keys.admin).await;
        if rate_limit_status(gw).await["backend"] == backend {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rate limits never reached backend {backend}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the team's bucket exists in Redis (it exists for a while after each take).
async fn team_key_exists(redis_url: &str, prefix: &str, team: &str) -> bool {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS")
        .arg(format!("{prefix}:team:{team}"))
        .query_async::<u32>(&mut connection)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn losing_redis_falls_back_to_a_local_share_and_recovers() {
    let port = free_port();
    let Some(mut redis) = PrivateRedis::start(port) else {
        announce_skip(
            "the Redis outage rate-limit test",
            "redis-server is not installed",
        );
        return;
    };
    let redis_url = format!("redis://127.0.0.1:{port}");
    let prefix = format!("outage-{}", uuid::Uuid::new_v4());
    let gw = common::start_with(SandboxOptions::default(), |c| {
        c.rate_limit.redis_url = redis_url.clone();
        c.rate_limit.redis_key_prefix = prefix.clone();
        c.rate_limit.replicas = 2;
        team_limit(c, "team-operator", 0.1, 10);
    })
    .await;
    wait_for_backend(&gw, "redis").await;
    let operator = gw.keys.operator.clone();
    assert_eq!(gw.get_status(INSTANCES, &operator).await, 200);
    assert!(team_key_exists(&redis_url, &prefix, "team-operator").await);

    redis.stop();
    // The first call after the loss notices it; none fails for it.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(gw.get_status(INSTANCES, &operator).await);
    }
    assert_eq!(rate_limit_status(&gw).await["backend"], "local-fallback");
    // Burst 10 over 2 replicas: this replica keeps 5 on its own.
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(served, 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    let ready = gw.get("/_gateway/ready", &operator).send().await.unwrap();
    assert_eq!(ready.status(), 200, "Redis is not needed to serve");
    assert!(
        json(ready).await["checks"]["rate_limit_redis"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );

    let _redis = PrivateRedis::start(port).expect("redis-server restarts");
    wait_for_backend(&gw, "redis").await;
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.readonly).await, 200);
    gw.get_status(INSTANCES, &operator).await;
    assert!(
        team_key_exists(&redis_url, &prefix, "team-operator").await,
        "limits are kept in Redis again"
    );
}

#[tokio::test]
async fn one_burst_of_concurrent_429s_makes_one_short_pause() {
    let gw = Arc::new(throttled_gateway(2000, 0).await);
    // Contabo answers the next 8 calls 429 without retry-after: one burst, all in flight at once.
    gw.sandbox()
        .faults
        .throttle_next_calls
        .store(8, Ordering::SeqCst);
    // Contabo takes 150 ms to answer, so all 8 are counted before the first 429 is back: a call
    // that reached the gateway only after that waits out the pause beside the retries, and on a
    // busy machine could be sent after one of them and take its 429 (a CI run saw two such).
    gw.sandbox().faults.delay_ms.store(150, Ordering::SeqCst);
    let started = Instant::now();
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.get_status(INSTANCES, &gw.keys.readonly).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in burst {
        statuses.push(call.await.unwrap());
    }
    let took = started.elapsed();
    // Each read was sent once more after the one pause, and served (a retry that met a second
    // 429 would be answered 429). The time: one pause (at most 1 s), two answers of 150 ms, the
    // upstream budget refilling for the eight retries.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        took < Duration::from_millis(2500),
        "the burst held traffic for {took:?}"
    );
    gw.sandbox().faults.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(gw.gateway.limits.budget().paused_for(), None);
    let next = Instant::now();
    assert_eq!(gw.get_status(INSTANCES, &gw.keys.readonly).await, 200);
    assert!(next.elapsed() < Duration::from_millis(500));
}
