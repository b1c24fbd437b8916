//! The real Python `pfruck-contabo` client, pointed at the gateway (host = gateway URL,
//! access_token = team key), parses every answer of the sandbox through the gateway.
//!
//! Needs a Python with `pfruck-contabo` installed: `PFRUCK_PYTHON` names it (.ci/run sets up a
//! virtualenv); without it the test says loudly that it did not run.

mod common;

use std::process::Command;

fn python() -> Option<String> {
    let python = std::env::var("PFRUCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let importable = Command::new(&python)
        .args(["-c", "import pfruck_contabo"])
        .output()
        .is_ok_and(|o| o.status.success());
    importable.then_some(python)
}

#[tokio::test]
async fn the_pfruck_contabo_client_works_through_the_gateway() {
    let Some(python) = python() else {
        common::announce_skip(
            "the pfruck-contabo client test",
            "no Python with pfruck-contabo installed (set PFRUCK_PYTHON; .ci/run does)",
        );
        if std::env::var_os("REQUIRE_PFRUCK").is_some() {
            panic!("REQUIRE_PFRUCK is set but pfruck-contabo is not importable");
        }
        return;
    };
    let gw = common::start().await;
    let url = gw.url.clone();
    let (admin, readonly) = (gw.keys.admin.clone(), gw.keys.readonly.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("tests/python/pfruck_users.py")
            .args([&url, &admin, &readonly])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all calls parsed and matched"));
}
