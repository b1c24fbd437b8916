//! `server.admin_listen`: the gateway's own endpoints on a port of their own. The API port then
//! serves Contabo calls and the token endpoint only, the admin port /_gateway/* only, each saying
//! where the other's paths are; the admin port keeps answering while the API port is full.

mod common;

use std::time::{Duration, Instant};

use common::{http, json, start_with};
use contabo_gateway::config::Config;
use contabo_gateway::sandbox::SandboxOptions;

#[tokio::test]
async fn the_admin_endpoints_move_to_their_own_port_and_the_api_stays_on_listen() {
    let gw = start_with(SandboxOptions::default(), |c| {
        c.server.admin_listen = "127.0.0.1:0".into();
    })
    .await;
    assert_ne!(gw.admin_url, gw.url);

    // The API port: Contabo calls as before; /_gateway/* answered 404 naming the setting.
    assert_eq!(gw.get_status("/v1/users", &gw.keys.readonly).await, 200);
    for path in ["/_gateway/metrics", "/_gateway/health", "/_gateway/status"] {
        let response = http()
            .get(format!("{}{path}", gw.url))
            .bearer_auth(&gw.keys.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the API port");
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = json(response).await;
        assert_eq!(body["error"], "not_found", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("server.admin_listen"),
            "{body}"
        );
        assert_eq!(body["request_id"], request_id.as_str());
    }

    // The admin port: every gateway endpoint; no Contabo call.
    for path in ["/_gateway/health", "/_gateway/ready", "/_gateway/metrics"] {
        let response = http()
            .get(format!("{}{path}", gw.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} on the admin port");
    }
    let status = http()
        .get(format!("{}/_gateway/status", gw.admin_url))
        .bearer_auth(&gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let audit = http()
        .get(format!("{}/_gateway/audit", gw.admin_url))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(audit.status(), 200);
    let api_calls = gw.api_calls();
    let refused = http()
        .get(format!("{}/v1/users", gw.admin_url))
        .bearer_auth(&gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    let body = json(refused).await;
    assert!(
        body["message"].as_str().unwrap().contains("server.listen"),
        "{body}"
    );
    assert_eq!(
        gw.api_calls(),
        api_calls,
        "nothing forwarded from the admin port"
    );
    // The metrics the admin port shows count the API port's calls.
    let metrics = http()
        .get(format!("{}/_gateway/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("team-readonly"), "{metrics}");
}

#[tokio::test]
async fn the_admin_port_answers_while_the_api_port_has_no_free_connection() {
    let gw = start_with(SandboxOptions::default(), |c| {
        c.server.admin_listen = "127.0.0.1:0".into();
        c.server.max_connections = 4;
        c.server.workers = 1;
        c.server.header_timeout = Duration::from_secs(5);
    })
    .await;
    let api = gw.url.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(&api).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let ready = reqwest::Client::new()
        .get(format!("{}/_gateway/ready", gw.admin_url))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the probe waited {:?} behind the API port's connections",
        started.elapsed()
    );
    drop(silent);
}

#[test]
fn an_admin_port_equal_to_the_api_port_or_not_an_address_is_a_problem() {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:8080".into();
    config.server.admin_listen = "0.0.0.0:8080".into();
    let problems = config.problems().join("\n");
    assert!(problems.contains("server.admin_listen"), "{problems}");
    assert!(problems.contains("port of server.listen"), "{problems}");
    config.server.admin_listen = "nowhere".into();
    let problems = config.problems().join("\n");
    assert!(
        problems.contains("server.admin_listen = \"nowhere\" is not an address"),
        "{problems}"
    );
    config.server.admin_listen = "127.0.0.1:9090".into();
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    // Set from the environment, a problem names the variable.
    let mut config = Config::default();
    config.apply_env(|name| (name == "GATEWAY_ADMIN_LISTEN").then(|| "nowhere".into()));
    let problems = config.problems().join("\n");
    assert!(problems.contains("GATEWAY_ADMIN_LISTEN"), "{problems}");
}
