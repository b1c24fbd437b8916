//! The token manager against the sandbox's Keycloak endpoint: single-flight grants, refresh before
//! expiry, password grant when the refresh token is dead, the retry after an upstream 401, secret
//! rotation, and backoff on a broken credential.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{json, start, start_gateway, start_with};
use contabo_gateway::config::Credentials;
use contabo_gateway::sandbox::{Sandbox, SandboxOptions, SandboxState};
use reqwest::Method;

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    SandboxState::count(c)
}

#[tokio::test]
async fn hundred_concurrent_calls_on_a_cold_gateway_cause_one_password_grant() {
    let gw = start().await;
    let calls = (0..100).map(|_| gw.get("/v1/compute/instances", &gw.keys.readonly).send());
    let responses = futures_util::future::join_all(calls).await;
    assert!(
        responses
            .iter()
            .all(|r| r.as_ref().unwrap().status() == 200)
    );
    let counters = &gw.sandbox().counters;
    assert_eq!(count(&counters.password_grants), 1);
    assert_eq!(count(&counters.refresh_grants), 0);
    assert_eq!(count(&counters.api_calls), 100);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_without_a_failed_call() {
    let options = SandboxOptions::lifetimes(2.0, 60.0);
    let gw = start_with(options, |_| {}).await;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let burst = (0..5).map(|_| gw.get("/v1/compute/instances", &gw.keys.readonly).send());
        for response in futures_util::future::join_all(burst).await {
            assert_eq!(
                response.unwrap().status(),
                200,
                "a call failed after {:?}",
                started.elapsed()
            );
            calls += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counters = &gw.sandbox().counters;
    assert!(calls > 100);
    assert_eq!(
        count(&counters.unauthorized),
        0,
        "no call may meet an expired token"
    );
    assert_eq!(count(&counters.password_grants), 1);
    assert!(
        count(&counters.refresh_grants) >= 3,
        "refreshes: {}",
        count(&counters.refresh_grants)
    );
}

#[tokio::test]
async fn a_dead_refresh_token_falls_back_to_the_password_grant_in_the_same_call() {
    let options = SandboxOptions::lifetimes(1.0, 1.0);
    let gw = start_with(options, |_| {}).await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    assert_eq!(count(&gw.sandbox().counters.password_grants), 2);
}

#[tokio::test]
async fn a_refused_refresh_token_falls_back_to_the_password_grant() {
    let gw = start().await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    // The auth server forgets every refresh token (as after a Keycloak restart), and upstream
    // refuses the current access token.
    gw.sandbox().refresh_tokens.lock().unwrap().clear();
    gw.sandbox()
        .faults
        .reject_next_calls
        .store(1, Ordering::SeqCst);
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    let counters = &gw.sandbox().counters;
    assert_eq!(count(&counters.refused_grants), 1);
    assert_eq!(count(&counters.password_grants), 2);
}

#[tokio::test]
async fn an_upstream_401_renews_the_token_and_retries_once_with_the_same_request_id() {
    let gw = start().await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    let before = gw.sandbox().recorded().len();
    gw.sandbox()
        .faults
        .reject_next_calls
        .store(1, Ordering::SeqCst);
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .header("x-request-id", common::VALID_REQUEST_ID)
        .json(&serde_json::json!({"period": 1, "displayName": "retry-me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], common::VALID_REQUEST_ID);
    let recorded = gw.sandbox().recorded();
    let attempts = &recorded[before..];
    assert_eq!(attempts.len(), 2, "one call and exactly one retry");
    for attempt in attempts {
        assert_eq!(attempt.headers["x-request-id"], common::VALID_REQUEST_ID);
        assert_eq!(attempt.body, attempts[0].body);
    }
    assert_ne!(
        attempts[0].headers["authorization"],
        attempts[1].headers["authorization"]
    );
    assert_eq!(count(&gw.sandbox().counters.refresh_grants), 1);

    // Refused twice: the caller sees upstream's 401 after a single retry.
    let before = gw.sandbox().recorded().len();
    gw.sandbox()
        .faults
        .reject_next_calls
        .store(2, Ordering::SeqCst);
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(gw.sandbox().recorded().len() - before, 2);
}

#[tokio::test]
async fn secret_rotation_through_the_gateway_keeps_later_grants_working() {
    let options = SandboxOptions::lifetimes(1.0, 1.0);
    let gw = start_with(options, |_| {}).await;
    let old_secret = gw.sandbox().credential().client_secret;
    let response = gw
        .request(Method::PUT, "/v1/users/client/secret", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let new_secret = json(response).await["data"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_secret, old_secret);
    assert_eq!(gw.sandbox().credential().client_secret, new_secret);
    // Both tokens die; the next call needs a password grant, which only the new secret passes.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counters = &gw.sandbox().counters;
    assert_eq!(count(&counters.refused_grants), 0);
    assert_eq!(count(&counters.password_grants), 2);
}

#[tokio::test]
async fn a_refused_credential_answers_502_without_the_secret_and_backs_off() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let good = sandbox.credentials();
    let wrong = Credentials {
        password: "wrong-password-s3cr3t".to_string().into(),
        ..good
    };
    let gw = start_gateway(sandbox, wrong, |_| {}).await;
    for _ in 0..5 {
        let response = gw
            .get("/v1/compute/instances", &gw.keys.readonly)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        assert!(response.headers().contains_key("retry-after"));
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = json(response).await;
        assert_eq!(body["error"], "upstream_credential_unusable");
        assert_eq!(body["request_id"], request_id.as_str());
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("credential"), "{message}");
        assert!(!message.contains("wrong-password-s3cr3t"));
        assert!(!message.contains(&gw.sandbox().credential().client_secret));
    }
    // Five calls within the backoff window: the auth server saw one attempt.
    assert_eq!(count(&gw.sandbox().counters.refused_grants), 1);
    assert_eq!(gw.api_calls(), 0);
    // Strict readiness requires a token; the default one only reports it.
    let ready = common::http()
        .get(format!("{}/_gateway/ready?strict=true", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn an_unavailable_auth_server_answers_502() {
    let gw = start().await;
    gw.sandbox().faults.auth_down.store(true, Ordering::SeqCst);
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        json(response).await["error"],
        "upstream_credential_unusable"
    );
    let ready = common::http()
        .get(format!("{}/_gateway/ready?strict=true", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = json(ready).await;
    assert!(
        body["checks"]["token"].as_str().unwrap().contains("503"),
        "{body}"
    );
    // After the backoff (1 s for the first failure) and recovery, calls work again.
    gw.sandbox().faults.auth_down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
}

/// Calls at `per_second` for `run`, returning (seconds since start, status) of each.
async fn drive(gw: &common::TestGateway, per_second: u32, run: Duration) -> Vec<(f64, u16)> {
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut calls = Vec::new();
    while started.elapsed() < run {
        every.tick().await;
        let request = gw.get("/v1/compute/instances", &gw.keys.readonly).send();
        calls.push(tokio::spawn(async move {
            request.await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut out = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        out.push((i as f64 / per_second as f64, call.await.unwrap()));
    }
    out
}

/// Seconds into a drive when the first call succeeded.
fn first_success(calls: &[(f64, u16)]) -> f64 {
    calls
        .iter()
        .find(|(_, status)| *status == 200)
        .map(|(at, _)| *at)
        .expect("no call succeeded after the token endpoint recovered")
}

#[tokio::test]
async fn an_outage_from_the_start_costs_one_attempt_per_step_and_calls_recover_within_seconds() {
    let gw = start_with(SandboxOptions::lifetimes(10.0, 60.0), |_| {}).await;
    let faults = &gw.sandbox().faults;
    faults.auth_down.store(true, Ordering::SeqCst);
    let during = drive(&gw, 20, Duration::from_secs(8)).await;
    assert!(during.iter().all(|(_, status)| *status == 502));
    let attempts = count(&gw.sandbox().counters.unavailable_grants);
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} grant attempts during an 8 s outage at 20 calls/s"
    );
    faults.auth_down.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    let first_ok = first_success(&drive(&gw, 20, Duration::from_secs(6)).await);
    assert!(
        first_ok <= 5.0,
        "the first call succeeded {first_ok:.1} s after recovery (measured from {:?})",
        recovered.elapsed()
    );
}

#[tokio::test]
async fn a_valid_token_serves_through_an_outage_of_renewals_without_hammering() {
    // Renewal is due at 8 s, the token expires (with its margin) at 9 s.
    let gw = start_with(SandboxOptions::lifetimes(10.0, 60.0), |_| {}).await;
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    let got_token = Instant::now();
    let faults = &gw.sandbox().faults;
    tokio::time::sleep(Duration::from_secs(7)).await;
    faults.auth_down.store(true, Ordering::SeqCst);
    let during = drive(&gw, 20, Duration::from_secs(8)).await;
    let attempts = count(&gw.sandbox().counters.unavailable_grants);
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} grant attempts during an 8 s outage at 20 calls/s"
    );
    // Until the token expires every call is served with it.
    let valid_for = 8.5 - 7.0 - 0.2;
    for (at, status) in &during {
        if *at < valid_for {
            assert_eq!(*status, 200, "a call {at:.2} s into the outage failed");
        }
    }
    faults.auth_down.store(false, Ordering::SeqCst);
    let first_ok = first_success(&drive(&gw, 20, Duration::from_secs(6)).await);
    assert!(
        first_ok <= 5.0,
        "the first call succeeded {first_ok:.1} s after recovery ({:?} after the first token)",
        got_token.elapsed()
    );
}

/// Contabo's auth down makes no replica unready: it still serves cache hits, audit reads and
/// writes once auth is back, and says why its token fails. `?strict=true` keeps the old meaning.
#[tokio::test]
async fn readiness_does_not_depend_on_contabos_auth_unless_strict() {
    let gw = start().await;
    let ready = |query: &'static str| {
        let request = common::http()
            .get(format!("{}/_gateway/ready{query}", gw.url))
            .send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), json(response).await)
        }
    };
    let (status, body) = ready("").await;
    assert_eq!(status, 200, "{body}");
    gw.sandbox().faults.auth_down.store(true, Ordering::SeqCst);
    assert_eq!(gw.get_status("/v1/users", &gw.keys.readonly).await, 502);
    let (status, body) = ready("").await;
    assert_eq!(
        status, 200,
        "auth down must not make the replica unready: {body}"
    );
    assert!(
        body["checks"]["token"]
            .as_str()
            .unwrap()
            .contains("not a readiness condition"),
        "{body}"
    );
    let (status, body) = ready("?strict=true").await;
    assert_eq!(status, 503, "{body}");
    gw.sandbox().faults.auth_down.store(false, Ordering::SeqCst);
}
