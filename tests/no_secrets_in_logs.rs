//! Secrets never reach the logs: every log line of a busy session (grants, refreshes, a 401 retry,
//! a refused key, secret rotation, redaction), captured at TRACE level for every crate including the
//! HTTP stacks, is searched for the team keys, the Contabo password and client secrets, and every
//! access and refresh token the sandbox and the gateway's own token endpoint issued.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::start_with;
use contabo_gateway::sandbox::SandboxOptions;
use reqwest::Method;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_key_token_or_secret_appears_in_any_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .init();

    let options = SandboxOptions::lifetimes(1.0, 30.0);
    let gw = start_with(options, |config| {
        config.auth.signing_key = Some("the signing key of the log test, 32 bytes or more".into());
    })
    .await;
    let first_secret = gw.sandbox().credential().client_secret;
    let password = gw.sandbox().credential().password;
    let keys = [
        &gw.keys.admin,
        &gw.keys.operator,
        &gw.keys.readonly,
        &gw.keys.auditor,
    ];

    for key in keys {
        gw.get("/v1/users/client", key).send().await.unwrap();
        gw.get("/v1/compute/instances", key).send().await.unwrap();
    }
    gw.request(Method::POST, "/v1/users", &gw.keys.admin)
        .json(&serde_json::json!({"email": "x@example.com", "enabled": true, "totp": false, "locale": "en"}))
        .send()
        .await
        .unwrap();
    gw.get("/v1/users", "not-a-key-but-secret-looking")
        .send()
        .await
        .unwrap();
    gw.sandbox()
        .faults
        .reject_next_calls
        .store(1, Ordering::SeqCst);
    gw.get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await; // past 80% of the token's life: refresh
    gw.get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    let rotated = gw
        .request(Method::PUT, "/v1/users/client/secret", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let second_secret = gw.sandbox().credential().client_secret;
    tokio::time::sleep(Duration::from_millis(1100)).await; // expired: a grant with the new secret
    gw.get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();

    // The gateway's token endpoint: a grant, a refresh, a call with the token, a refused secret.
    let token_url = format!("{}{}", gw.url, contabo_gateway::token_endpoint::TOKEN_PATH);
    let form = |fields: &[(&str, &str)]| {
        common::http()
            .post(&token_url)
            .form(&fields.to_vec())
            .send()
    };
    let granted: serde_json::Value = form(&[
        ("grant_type", "password"),
        ("client_id", "team-operator"),
        ("client_secret", &gw.keys.operator),
        ("username", "ops@example.com"),
        ("password", "the-tools-password"),
    ])
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refreshed: serde_json::Value = form(&[
        ("grant_type", "refresh_token"),
        ("client_id", "team-operator"),
        ("client_secret", &gw.keys.operator),
        ("refresh_token", granted["refresh_token"].as_str().unwrap()),
    ])
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let gateway_tokens: Vec<String> = [&granted, &refreshed]
        .iter()
        .flat_map(|answer| {
            ["access_token", "refresh_token"].map(|f| answer[f].as_str().unwrap().to_string())
        })
        .collect();
    gw.get("/v1/users", &gateway_tokens[2])
        .send()
        .await
        .unwrap();
    let forged = format!("{}x", gateway_tokens[0]);
    gw.get("/v1/users", &forged).send().await.unwrap();
    form(&[
        ("grant_type", "password"),
        ("client_id", "team-operator"),
        ("client_secret", "a-wrong-secret-looking-value"),
        ("username", "ops@example.com"),
        ("password", "the-tools-password"),
    ])
    .await
    .unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.lines().count() > 50,
        "the capture holds the session's logs"
    );
    assert!(log.contains("request_id"), "log lines carry the request id");
    assert!(log.contains("rotated"), "the rotation warning was logged");

    let mut secrets: Vec<(String, String)> = vec![
        ("first client secret".into(), first_secret),
        ("second client secret".into(), second_secret),
        ("password".into(), password),
        ("unknown key".into(), "not-a-key-but-secret-looking".into()),
    ];
    for key in keys {
        secrets.push(("team key".into(), key.clone()));
    }
    let issued = gw.sandbox().issued.lock().unwrap().clone();
    assert!(
        issued.len() >= 6,
        "grants happened: {} tokens",
        issued.len()
    );
    for token in issued {
        secrets.push(("token".into(), token));
    }
    for token in gateway_tokens {
        let signature = token.rsplit('.').next().unwrap().to_string();
        secrets.push(("gateway token".into(), token));
        secrets.push(("gateway token's signature".into(), signature));
    }
    secrets.push(("tool's password".into(), "the-tools-password".into()));
    secrets.push((
        "wrong client secret".into(),
        "a-wrong-secret-looking-value".into(),
    ));
    secrets.push(("forged token".into(), forged));
    for (what, value) in secrets {
        assert!(!log.contains(&value), "a {what} appears in the log");
    }
}
