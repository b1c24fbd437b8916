//! The binary's commands: `keys new`, `check-config`, `serve --sandbox` and SIGTERM handling.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_contabo-gateway");

fn gateway() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "GATEWAY_CONFIG",
        "GATEWAY_LISTEN",
        "CONTABO_API_URL",
        "CONTABO_AUTH_URL",
        "CONTABO_CLIENT_ID",
        "CONTABO_CLIENT_SECRET",
        "CONTABO_API_USER",
        "CONTABO_API_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command
}

fn output(command: &mut Command) -> (bool, String, String) {
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Starts `serve` and waits for the line with the listening URL.
fn serve(args: &[&str], envs: &[(&str, &str)]) -> (Child, String, Vec<String>) {
    let db = std::env::temp_dir().join(format!("cli-audit-{}.db", std::process::id()));
    let mut child = gateway()
        .arg("serve")
        .args(args)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_DATABASE_URL", format!("sqlite://{}", db.display()))
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("contabo-gateway listening on ") {
            let url = rest.split_whitespace().next().unwrap().to_string();
            return (child, url, seen);
        }
    }
    let status = child.wait();
    panic!("serve exited ({status:?}) before listening: {seen:?}");
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn new_key(name: &str, role: &str) -> (String, String) {
    let (ok, stdout, _) = output(gateway().args(["keys", "new", name, "--role", role]));
    assert!(ok);
    let key = stdout.lines().nth(1).unwrap().trim().to_string();
    let block = stdout[stdout.find("[[clients]]").unwrap()..].to_string();
    (key, block)
}

#[test]
fn keys_new_prints_a_strong_key_and_its_config_block() {
    let (key, block) = new_key("platform", "operator");
    assert!(
        key.len() >= 43,
        "32 random bytes need 43 base64 characters: {key}"
    );
    assert!(
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{key}"
    );
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    assert!(
        block.contains(&format!("key_sha256 = \"{digest}\"")),
        "{block}"
    );
    assert!(block.contains("name = \"platform\"") && block.contains("role = \"operator\""));
    let (other, _) = new_key("platform", "operator");
    assert_ne!(key, other);
    let (ok, _, stderr) = output(gateway().args(["keys", "new", "x", "--role", "root"]));
    assert!(
        !ok && stderr.contains("admin, operator, readonly, auditor"),
        "{stderr}"
    );
}

#[test]
fn check_config_explains_every_problem_and_honours_gateway_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[upstream]\ntimeout_secs = 0\n[[clients]]\nname = \"a\"\nkey_sha256 = \"xyz\"\nrole = \"admin\"\nburst = 0\n",
    )
    .unwrap();
    let (ok, _, stderr) = output(gateway().args(["check-config", "--config"]).arg(&bad));
    assert!(!ok);
    for needle in [
        "4 problem(s)",
        "server.listen",
        "timeout_secs",
        "key_sha256",
        "burst",
    ] {
        assert!(stderr.contains(needle), "{needle} missing in {stderr}");
    }
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[server]\nlisen = \"127.0.0.1:1\"\n[cache]\nttl = 5\n",
    )
    .unwrap();
    let (ok, _, stderr) = output(gateway().arg("check-config").env("GATEWAY_CONFIG", &typo));
    assert!(!ok, "{stderr}");
    // Both typos in one run, each with its line.
    assert!(stderr.contains("`server.lisen` (line 2)"), "{stderr}");
    assert!(stderr.contains("`cache.ttl` (line 4)"), "{stderr}");

    let good = dir.path().join("good.toml");
    let (_, block) = new_key("ops", "admin");
    std::fs::write(
        &good,
        format!(
            "[server]\nlisten = \"127.0.0.1:9999\"\nadmin_listen = \"localhost:9998\"\n\n{block}"
        ),
    )
    .unwrap();
    let (ok, stdout, _) = output(gateway().arg("check-config").env("GATEWAY_CONFIG", &good));
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("clients: 1") && stdout.contains("listen: 127.0.0.1:9999\n"),
        "{stdout}"
    );
    // A host name is shown with the address it resolved to.
    assert!(
        stdout.contains("(/_gateway/*): localhost:9998 (") && stdout.contains(":9998)"),
        "{stdout}"
    );
    // --config wins over GATEWAY_CONFIG.
    let (ok, _, _) = output(
        gateway()
            .args(["check-config", "--config"])
            .arg(&good)
            .env("GATEWAY_CONFIG", &bad),
    );
    assert!(ok);
    // The shipped default config is valid.
    let (ok, _, stderr) =
        output(gateway().args(["check-config", "--config", "config/default.toml"]));
    assert!(ok, "{stderr}");
}

#[test]
fn serve_without_a_credential_names_the_missing_variables() {
    let (ok, _, stderr) = output(
        gateway()
            .args(["serve", "--config", "config/default.toml"])
            .env("CONTABO_CLIENT_ID", "x"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("CONTABO_CLIENT_SECRET, CONTABO_API_USER, CONTABO_API_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("CONTABO_CLIENT_ID,"), "{stderr}");
}

#[tokio::test]
async fn serve_sandbox_works_with_the_printed_key_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    let (team_key, block) = new_key("team-a", "readonly");
    std::fs::write(&config, &block).unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let (mut child, url, lines) = serve(&["--sandbox", "--config", &config_arg], &[]);
    let admin_key = lines
        .iter()
        .find_map(|l| l.strip_prefix("sandbox admin key (this run only): "))
        .expect("the admin key is printed")
        .to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sandbox upstream: http://127.0.0.1:"))
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = http
        .get(format!("{url}/v1/users/client"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), 200);
    let body: serde_json::Value = client.json().await.unwrap();
    assert_ne!(body["data"][0]["secret"], "[REDACTED]");
    // The team key pasted from `keys new` works, with its role.
    let users = http
        .get(format!("{url}/v1/users"))
        .bearer_auth(&team_key)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    let refused = http
        .post(format!("{url}/v1/compute/instances"))
        .bearer_auth(&team_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let status = terminate(&mut child);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// The README's recipes for Contabo's own tools, against `serve --sandbox` with only URLs and a
/// team's name and key configured: the token requests `cntb` and the Terraform provider send, the
/// parts of the answer they read, and the calls they then make.
#[tokio::test]
async fn cntb_and_terraform_token_flows_work_against_serve_sandbox() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    let (team_key, block) = new_key("platform ops", "operator");
    std::fs::write(&config, &block).unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let (mut child, url, lines) = serve(&["--sandbox", "--config", &config_arg], &[]);
    let token_url = lines
        .iter()
        .find_map(|l| l.strip_prefix("token endpoint: "))
        .expect("the sandbox prints its token endpoint")
        .to_string();
    assert_eq!(
        token_url,
        format!("{url}/auth/realms/contabo/protocol/openid-connect/token")
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // cntb: Go's x/oauth2 password grant, client credentials by HTTP Basic, each part escaped as
    // url.QueryEscape escapes it.
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("platform+ops:{}", team_key.replace('-', "%2D")));
    let answer: serde_json::Value = http
        .post(&token_url)
        .header("authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "password"),
            ("username", "ops@example.com"),
            ("password", "unused"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = answer["access_token"].as_str().expect("an access token");
    let payload = access.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(payload)
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["preferred_username"], "ops@example.com");
    let instances = http
        .get(format!("{url}/v1/compute/instances"))
        .bearer_auth(access)
        .header("x-request-id", uuid::Uuid::new_v4().to_string())
        .header("x-trace-id", "arcus_cli")
        .send()
        .await
        .unwrap();
    assert_eq!(instances.status(), 200);

    // Terraform's provider: a hand-built form (not URL-encoded), integer lifetimes, the token
    // parsed as a JWT for its `sub`, then the S3 credentials of that user.
    let form = format!(
        "client_id=platform ops&client_secret={team_key}&username=ops@example.com&password=unused&grant_type=password"
    );
    let answer: serde_json::Value = http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in ["expires_in", "refresh_expires_in", "not-before-policy"] {
        assert!(answer[field].is_i64(), "{field}: {answer}");
    }
    let access = answer["access_token"].as_str().unwrap();
    let claims =
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(access).unwrap();
    let sub = claims["sub"].as_str().expect("a string sub");
    let credentials = http
        .get(format!("{url}/v1/users/{sub}/object-storages/credentials"))
        .bearer_auth(access)
        .header("x-request-id", uuid::Uuid::new_v4().to_string())
        .header("x-trace-id", "contabo_terraform_provider")
        .send()
        .await
        .unwrap();
    assert_eq!(credentials.status(), 200);
    let body: serde_json::Value = credentials.json().await.unwrap();
    assert_eq!(
        body["data"][0]["secretKey"], "[REDACTED]",
        "an operator without reveal sees the S3 secret redacted"
    );
    assert!(terminate(&mut child).success());
}
