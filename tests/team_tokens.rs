//! The gateway's token endpoint, as Contabo's own tools and an independent OAuth 2 client use it:
//! grants, both client authentication styles, the token's shape as cntb and Terraform read it,
//! tokens as team bearers, refusals that never reach upstream, and replicas sharing one key.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{TestGateway, http, json, start_with};
use contabo_gateway::config::Config;
use contabo_gateway::sandbox::{Sandbox, SandboxOptions, SandboxState};
use contabo_gateway::team_token::{Claims, TokenSigner, Use};
use contabo_gateway::token_endpoint::TOKEN_PATH;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, ResourceOwnerPassword, ResourceOwnerUsername,
    TokenResponse, TokenUrl,
};

const SIGNING_KEY: &str = "a signing key every replica of this test shares, 48+ bytes";

fn with_token_endpoint(config: &mut Config) {
    config.auth.signing_key = Some(SIGNING_KEY.to_string().into());
}

async fn gateway() -> TestGateway {
    start_with(SandboxOptions::default(), with_token_endpoint).await
}

/// oauth2's HTTP client, over the tests' own reqwest client.
async fn send(request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, std::io::Error> {
    let (parts, body) = request.into_parts();
    let response = http()
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let mut answer = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    let body = response.bytes().await.map_err(std::io::Error::other)?;
    Ok(answer.body(body.to_vec()).unwrap())
}

fn oauth_client(
    url: &str,
    team: &str,
    key: &str,
    style: AuthType,
) -> oauth2::basic::BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new(team.into()))
        .set_client_secret(ClientSecret::new(key.into()))
        .set_token_uri(TokenUrl::new(format!("{url}{TOKEN_PATH}")).unwrap())
        .set_auth_type(style)
}

/// A token request as Terraform's provider hand-builds it: a form that is not URL-encoded.
async fn token_form(url: &str, form: String) -> reqwest::Response {
    http()
        .post(format!("{url}{TOKEN_PATH}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
}

fn password_form(team: &str, key: &str) -> String {
    format!(
        "client_id={team}&client_secret={key}&username=ops@example.com&password=x&grant_type=password"
    )
}

async fn access_token(url: &str, team: &str, key: &str) -> serde_json::Value {
    let response = token_form(url, password_form(team, key)).await;
    assert_eq!(response.status(), 200);
    json(response).await
}

#[tokio::test]
async fn an_oauth2_client_gets_tokens_with_either_client_authentication_and_calls_with_them() {
    let gw = gateway().await;
    let username = ResourceOwnerUsername::new("ops@example.com".into());
    let password = ResourceOwnerPassword::new("anything".into());
    for style in [AuthType::BasicAuth, AuthType::RequestBody] {
        let client = oauth_client(&gw.url, "team-operator", &gw.keys.operator, style.clone());
        let token = client
            .exchange_password(&username, &password)
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{style:?}: {e:?}"));
        assert_eq!(token.expires_in(), Some(Duration::from_secs(300)));
        let bearer = token.access_token().secret();
        assert_ne!(bearer, &gw.keys.operator, "a token is never the team key");
        assert_eq!(gw.get_status("/v1/users", bearer).await, 200, "{style:?}");

        // Refresh, twice with the same refresh token: concurrent runs share one cached token.
        let refresh = token.refresh_token().unwrap().clone();
        for _ in 0..2 {
            let renewed = client
                .exchange_refresh_token(&RefreshToken::new(refresh.secret().clone()))
                .request_async(&send)
                .await
                .unwrap();
            let bearer = renewed.access_token().secret();
            assert_eq!(gw.get_status("/v1/compute/instances", bearer).await, 200);
        }
        let service = client
            .exchange_client_credentials()
            .request_async(&send)
            .await
            .unwrap();
        assert_eq!(
            gw.get_status("/v1/users", service.access_token().secret())
                .await,
            200
        );
    }
}

#[tokio::test]
async fn a_token_is_the_team_for_roles_limits_and_audit() {
    let gw = gateway().await;
    let readonly = access_token(&gw.url, "team-readonly", &gw.keys.readonly).await;
    let readonly = readonly["access_token"].as_str().unwrap();
    let refused = gw
        .request(reqwest::Method::POST, "/v1/compute/instances", readonly)
        .json(&serde_json::json!({"imageId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "a readonly team's token is readonly");

    let operator = access_token(&gw.url, "team-operator", &gw.keys.operator).await;
    let operator = operator["access_token"].as_str().unwrap();
    let created = gw
        .request(reqwest::Method::POST, "/v1/compute/instances", operator)
        .header("x-request-id", common::VALID_REQUEST_ID)
        .json(&serde_json::json!({"imageId": "x", "productId": "V45"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let audit =
        common::audit_records(&gw, &format!("request_id={}", common::VALID_REQUEST_ID)).await;
    let rows = audit["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{audit}");
    assert_eq!(rows[0]["client"], "team-operator");
    let stored = audit.to_string();
    assert!(
        !stored.contains(operator),
        "the token reached the audit log"
    );
    // The gateway endpoints take tokens too: an auditor's token reads the audit.
    let auditor = access_token(&gw.url, "team-auditor", &gw.keys.auditor).await;
    let status = http()
        .get(format!("{}/_gateway/audit", gw.url))
        .bearer_auth(auditor["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_answer_and_token_read_as_keycloak_cntb_and_terraform_read_them() {
    let gw = gateway().await;
    // A user name with characters whose base64url spelling differs from standard base64.
    let username = "ops~team?>@example.com";
    let response = token_form(
        &gw.url,
        format!(
            "client_id=team-operator&client_secret={}&username={username}&password=pw&grant_type=password",
            gw.keys.operator
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().contains_key("x-request-id"));

    /// Terraform's provider decodes the answer into these types.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct TerraformToken {
        access_token: String,
        expires_in: i64,
        refresh_expires_in: i64,
        refresh_token: String,
        token_type: String,
        #[serde(rename = "not-before-policy")]
        not_before_policy: i64,
        session_state: String,
        scope: String,
    }
    let token: TerraformToken = response.json().await.unwrap();
    assert_eq!((token.expires_in, token.refresh_expires_in), (300, 1800));
    assert_eq!(
        (token.token_type.as_str(), token.not_before_policy),
        ("Bearer", 0)
    );

    // cntb: split on ".", part 1 in standard base64 without padding, preferred_username.
    let parts: Vec<&str> = token.access_token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(parts[1])
        .expect("cntb decodes the payload with the standard alphabet");
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["preferred_username"], username);

    // Terraform: parse as a JWT without checking the signature, a string sub, the S3 call.
    let claims =
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&token.access_token)
            .unwrap();
    let sub = claims["sub"].as_str().expect("a string sub");
    assert_eq!(sub, gw.sandbox().owner_id());
    let credentials = gw
        .get(
            &format!("/v1/users/{sub}/object-storages/credentials"),
            &token.access_token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(credentials.status(), 200);
}

#[tokio::test]
async fn a_team_sees_the_secret_fields_it_may_reveal_and_the_audit_still_redacts_them() {
    let (s3_key, s3_team) = common::team_block("team-s3", "operator", &["secretKey"]);
    let gw = start_with(SandboxOptions::default(), |config| {
        with_token_endpoint(config);
        config.clients.push(s3_team);
    })
    .await;
    let owner = gw.sandbox().owner_id();
    let path = format!("/v1/users/{owner}/object-storages/os-1/credentials/1");
    let secret_key = |body: serde_json::Value| body["data"][0]["secretKey"].clone();
    let clear = secret_key(json(gw.get(&path, &gw.keys.admin).send().await.unwrap()).await);
    assert_ne!(clear, "[REDACTED]");
    let revealed = secret_key(json(gw.get(&path, &s3_key).send().await.unwrap()).await);
    assert_eq!(revealed, clear, "reveal = [\"secretKey\"] shows it");
    let other = secret_key(json(gw.get(&path, &gw.keys.operator).send().await.unwrap()).await);
    assert_eq!(other, "[REDACTED]", "other operators still see it redacted");

    // Regenerating it (an admin's call) is audited with the key redacted.
    let regenerated = gw
        .request(reqwest::Method::PATCH, &path, &gw.keys.admin)
        .header("x-request-id", common::VALID_REQUEST_ID)
        .send()
        .await
        .unwrap();
    assert_eq!(regenerated.status(), 200);
    let new_key = secret_key(json(regenerated).await);
    assert_ne!(new_key, "[REDACTED]");
    gw.gateway.audit.flush().await;
    let audit = http()
        .get(format!("{}/_gateway/audit?format=ndjson", gw.url))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("regenerateObjectStorageCredentials") || audit.contains("credentials/1"),
        "{audit}"
    );
    assert!(!audit.contains(new_key.as_str().unwrap()), "{audit}");
}

#[tokio::test]
async fn bad_credentials_and_dead_tokens_are_refused_and_never_forwarded() {
    let gw = gateway().await;
    let calls_before = gw.api_calls();
    let refused = |status: u16, error: &'static str| (status, error);
    let oauth_error = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body = json(response).await;
        (status, body["error"].as_str().unwrap_or("").to_string())
    };
    let cases = [
        (
            password_form("team-operator", "wrong-key"),
            refused(401, "invalid_client"),
        ),
        (
            password_form("no-such-team", &gw.keys.operator),
            refused(401, "invalid_client"),
        ),
        (
            password_form("team-readonly", &gw.keys.operator),
            refused(401, "invalid_client"),
        ),
        (
            format!(
                "client_id=team-operator&client_secret={}&username=&password=x&grant_type=password",
                gw.keys.operator
            ),
            refused(400, "invalid_grant"),
        ),
        (
            format!(
                "client_id=team-operator&client_secret={}&grant_type=authorization_code",
                gw.keys.operator
            ),
            refused(400, "unsupported_grant_type"),
        ),
    ];
    for (form, (status, error)) in cases {
        let got = oauth_error(token_form(&gw.url, form.clone()).await).await;
        assert_eq!(got, (status, error.to_string()), "{form}");
    }

    // Another team's refresh token.
    let readonly = access_token(&gw.url, "team-readonly", &gw.keys.readonly).await;
    let stolen = token_form(
        &gw.url,
        format!(
            "client_id=team-operator&client_secret={}&grant_type=refresh_token&refresh_token={}",
            gw.keys.operator,
            readonly["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        oauth_error(stolen).await,
        (400, "invalid_grant".to_string())
    );

    // Bearers that must not work: a refresh token, an expired token, one signed with another key,
    // one whose team's key was removed.
    let operator = access_token(&gw.url, "team-operator", &gw.keys.operator).await;
    let signer = TokenSigner::new(SIGNING_KEY.as_bytes()).unwrap();
    let mut claims: Claims = signer
        .verify(operator["access_token"].as_str().unwrap(), Use::Access)
        .unwrap();
    claims.exp = jsonwebtoken::get_current_timestamp() - 31;
    let expired = signer.sign(&claims);
    let foreign = TokenSigner::new(&[9u8; 32]).unwrap().sign(&Claims {
        exp: jsonwebtoken::get_current_timestamp() + 300,
        ..claims.clone()
    });
    for (bearer, what) in [
        (operator["refresh_token"].as_str().unwrap(), "refresh token"),
        (expired.as_str(), "expired"),
        (foreign.as_str(), "signed with another key"),
        ("x.y.z", "malformed"),
    ] {
        let response = gw.get("/v1/users", bearer).send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let body = json(response).await;
        assert!(
            body["message"].as_str().unwrap().contains("token"),
            "{what}: {body}"
        );
    }
    let readonly_bearer = readonly["access_token"].as_str().unwrap();
    assert_eq!(gw.get_status("/v1/users", readonly_bearer).await, 200);
    let remaining: Vec<_> = gw
        .gateway
        .config
        .clients
        .iter()
        .filter(|c| c.name != "team-readonly")
        .cloned()
        .collect();
    gw.gateway.replace_clients(&remaining);
    assert_eq!(gw.get_status("/v1/users", readonly_bearer).await, 401);
    assert_eq!(
        gw.api_calls(),
        calls_before + 1,
        "only the one valid call went upstream"
    );
}

#[tokio::test]
async fn a_rotated_key_kills_the_teams_tokens_at_once() {
    let gw = gateway().await;
    let token = access_token(&gw.url, "team-operator", &gw.keys.operator).await;
    let bearer = token["access_token"].as_str().unwrap();
    assert_eq!(gw.get_status("/v1/users", bearer).await, 200);
    let (new_key, rotated) = common::team_block("team-operator", "operator", &[]);
    let mut clients = gw.gateway.config.clients.clone();
    clients.retain(|c| c.name != "team-operator");
    clients.push(rotated);
    gw.gateway.replace_clients(&clients);
    assert_eq!(gw.get_status("/v1/users", bearer).await, 401);
    let refreshed = token_form(
        &gw.url,
        format!(
            "client_id=team-operator&client_secret={new_key}&grant_type=refresh_token&refresh_token={}",
            token["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        refreshed.status(),
        400,
        "the old key's refresh token is dead"
    );
    let fresh = access_token(&gw.url, "team-operator", &new_key).await;
    let fresh = fresh["access_token"].as_str().unwrap();
    assert_eq!(gw.get_status("/v1/users", fresh).await, 200);
}

#[tokio::test]
async fn failed_token_requests_count_toward_the_address_throttle() {
    let gw = start_with(SandboxOptions::default(), |config| {
        with_token_endpoint(config);
        config.server.auth_failures_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        let wrong = token_form(&gw.url, password_form("team-operator", "guess")).await;
        assert_eq!(wrong.status(), 401);
    }
    let right = token_form(&gw.url, password_form("team-operator", &gw.keys.operator)).await;
    assert_eq!(right.status(), 429);
    assert!(right.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn without_a_signing_key_the_endpoint_is_off_and_says_which_setting_turns_it_on() {
    let gw = common::start().await;
    let response = token_form(&gw.url, password_form("team-operator", &gw.keys.operator)).await;
    assert_eq!(response.status(), 404);
    let body = json(response).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("auth.token_signing_key_file"),
        "{body}"
    );
    assert!(!body.to_string().contains(&gw.keys.operator));
}

#[tokio::test]
async fn two_replicas_with_one_signing_key_accept_each_others_tokens() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, block) = common::admin_client_block("team-shared");
    let env = [("GATEWAY_TOKEN_SIGNING_KEY", SIGNING_KEY)];
    let a = common::spawn_gateway_process_with_env(&sandbox, &block, dir.path(), None, &env);
    let b = common::spawn_gateway_process_with_env(&sandbox, &block, dir.path(), None, &env);
    let token = access_token(&a.url, "team-shared", &key).await;
    let bearer = token["access_token"].as_str().unwrap();
    let status = http()
        .get(format!("{}/v1/users", b.url))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // A replica with another key does not.
    let other_env = [(
        "GATEWAY_TOKEN_SIGNING_KEY",
        "another key, not shared with the other replicas, 48+ bytes long",
    )];
    let c = common::spawn_gateway_process_with_env(&sandbox, &block, dir.path(), None, &other_env);
    let status = http()
        .get(format!("{}/v1/users", c.url))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    assert!(SandboxState::count(&sandbox.state.counters.api_calls) >= 1);

    // The team removed from replica B's configuration and B reloaded (SIGHUP): B refuses the token
    // at once, A (not reloaded) still takes it.
    let (_, other_block) = common::admin_client_block("team-other");
    std::fs::write(&b.config_path, other_block).unwrap();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b.log().contains("[[clients]] reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload in the log: {}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status_at = |url: String| {
        let request = http()
            .get(format!("{url}/v1/users"))
            .bearer_auth(bearer)
            .send();
        async move { request.await.unwrap().status() }
    };
    assert_eq!(status_at(b.url.clone()).await, 401);
    assert_eq!(status_at(a.url.clone()).await, 200);
    assert!(
        !b.log().contains('\u{1b}'),
        "a log written to a file carries no colour codes"
    );
}
