//! Operating the binary: team keys reloaded on SIGHUP without dropping calls, a refused reload
//! keeps the running teams, and JSON log lines carry the call's fields.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{GatewayProcess, VALID_REQUEST_ID, admin_client_block, http, spawn_gateway_process};
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};

/// The status of GET /v1/compute/instances on the gateway at `url`.
async fn status_at(url: &str, key: &str) -> u16 {
    http()
        .get(format!("{url}/v1/compute/instances"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn hangup(process: &GatewayProcess) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until the log holds `needle` `times` times (reloads are logged when done).
async fn wait_for_log(process: &GatewayProcess, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process.log().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_team_keys_without_dropping_calls() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (old_key, old_block) = admin_client_block("old-team");
    let (kept_key, kept_block) = admin_client_block("kept-team");
    let mut process = spawn_gateway_process(
        &sandbox,
        &format!("{old_block}\n{kept_block}"),
        dir.path(),
        None,
    );
    assert_eq!(status_at(&process.url, &old_key).await, 200);

    // A slow call is in flight with the key about to be removed.
    sandbox.state.faults.delay_ms.store(1500, Ordering::SeqCst);
    let in_flight = {
        let (url, key) = (process.url.clone(), old_key.clone());
        tokio::spawn(async move { status_at(&url, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (new_key, new_block) = admin_client_block("new-team");
    let config = std::fs::read_to_string(&process.config_path).unwrap();
    let config = config.replace(&old_block, &new_block);
    std::fs::write(&process.config_path, config).unwrap();
    hangup(&process);
    wait_for_log(&process, "[[clients]] reloaded", 1).await;
    sandbox.state.faults.delay_ms.store(0, Ordering::SeqCst);

    assert_eq!(in_flight.await.unwrap(), 200, "the call in flight finished");
    assert_eq!(
        status_at(&process.url, &new_key).await,
        200,
        "the added key works"
    );
    assert_eq!(
        status_at(&process.url, &old_key).await,
        401,
        "the removed key is refused"
    );
    assert_eq!(status_at(&process.url, &kept_key).await, 200);

    // A broken configuration is refused and the running teams stay.
    let good = std::fs::read_to_string(&process.config_path).unwrap();
    std::fs::write(
        &process.config_path,
        good.replace("role = \"admin\"", "role = \"root\""),
    )
    .unwrap();
    hangup(&process);
    wait_for_log(&process, "the new configuration is refused", 1).await;
    assert!(process.log().contains("root"), "the log says what is wrong");
    assert_eq!(status_at(&process.url, &new_key).await, 200);
    assert_eq!(status_at(&process.url, &kept_key).await, 200);

    // The process is still healthy and stops cleanly.
    assert!(process.signal_and_wait("-TERM").success());
}

#[tokio::test]
async fn json_log_lines_carry_the_call_fields() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, block) = admin_client_block("json-team");
    let mut process = spawn_gateway_process(
        &sandbox,
        &format!("[log]\nformat = \"json\"\nlevel = \"info\"\n\n{block}"),
        dir.path(),
        None,
    );
    let response = http()
        .get(format!("{}/v1/compute/instances", process.url))
        .bearer_auth(&key)
        .header("x-request-id", VALID_REQUEST_ID)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(process.signal_and_wait("-TERM").success());
    let log = process.log();
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "call finished")
        .unwrap_or_else(|| panic!("no JSON 'call finished' line in:\n{log}"));
    assert_eq!(finished["status"], 200);
    assert!(finished["duration_ms"].as_f64().is_some());
    let span = &finished["span"];
    assert_eq!(span["request_id"], VALID_REQUEST_ID);
    assert_eq!(span["client"], "json-team");
    assert_eq!(span["method"], "GET");
    assert_eq!(span["route"], "retrieveInstancesList");
    assert!(!log.contains(&key), "the team key is never logged");
}

#[tokio::test]
async fn teams_in_a_clients_file_are_read_at_start_and_again_on_sighup() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first_key, first_block) = admin_client_block("first-team");
    // Relative to the config file's directory.
    std::fs::write(dir.path().join("teams.toml"), &first_block).unwrap();
    let mut process = spawn_gateway_process(
        &sandbox,
        "clients_file = \"teams.toml\"\n",
        dir.path(),
        None,
    );
    assert_eq!(status_at(&process.url, &first_key).await, 200);

    let (second_key, second_block) = admin_client_block("second-team");
    std::fs::write(
        dir.path().join("teams.toml"),
        format!("{first_block}\n{second_block}"),
    )
    .unwrap();
    hangup(&process);
    wait_for_log(&process, "[[clients]] reloaded", 1).await;
    assert_eq!(status_at(&process.url, &second_key).await, 200);

    // A typo in the teams file is refused with its line; the running teams stay.
    std::fs::write(
        dir.path().join("teams.toml"),
        format!("{first_block}\nrol = \"admin\"\n"),
    )
    .unwrap();
    hangup(&process);
    wait_for_log(&process, "the new configuration is refused", 1).await;
    assert!(
        process.log().contains("teams.toml") && process.log().contains("rol"),
        "{}",
        process.log()
    );
    assert_eq!(status_at(&process.url, &second_key).await, 200);
    assert!(process.signal_and_wait("-TERM").success());
}

#[test]
fn a_missing_clients_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "clients_file = \"absent.toml\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env_remove("GATEWAY_CLIENTS_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("absent.toml") && stderr.contains("clients_file"),
        "{stderr}"
    );
    // Set by the environment, the message says so.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env("GATEWAY_CLIENTS_FILE", "/nonexistent/teams.toml")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEWAY_CLIENTS_FILE"), "{stderr}");
}
