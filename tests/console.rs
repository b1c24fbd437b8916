//! The reviewers' console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, from the `chromium-driver` package; `.ci/run` installs both). A reviewer signs
//! in, reads the chart, filters by typing and by clicking, pages, opens a record, exports, follows
//! a request id into Contabo's audit, reconciles, and sees a tampered chain reported. The test
//! takes the README's screenshot (`UPDATE_CONSOLE_SCREENSHOT=1` writes it to docs/console.png).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestGateway, announce_skip, http, start_with, wait_ready};
use contabo_gateway::sandbox::SandboxOptions;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::json;

const ADMIN_RID: &str = "5d0c7a8e-2f5b-4c61-9d3e-7a1b2c3d4e5f";
const AROUND_RID: &str = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4";

/// chromedriver and the Chromium it drives, for one test; both end on drop.
struct Browser {
    driver: Child,
    client: Option<Client>,
    downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Starts chromedriver on a free loopback port and a headless Chromium session through it; None
/// (after announcing the skip, which fails in CI) when either is not installed.
async fn browser() -> Option<Browser> {
    let (Some(driver), Some(chromium)) = (
        find_program(&["chromedriver"]),
        find_program(&["chromium", "chromium-browser"]),
    ) else {
        announce_skip(
            "the console's browser test",
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let downloads = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Browser {
        driver,
        client: None,
        downloads,
        _profile: profile,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The flags keep Chromium off the network (this machine has none but loopback) and in a
    // fresh profile; the download directory receives the console's exports.
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1500",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ],
            "prefs": {
                "download.default_directory": browser.downloads.path(),
                "download.prompt_for_download": false,
            },
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    browser.client = Some(client);
    Some(browser)
}

impl Browser {
    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn click(&self, css: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.c().find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Runs a script in the page and returns its value.
    async fn js(&self, script: &str) -> serde_json::Value {
        self.c()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn count(&self, css: &str) -> u64 {
        let script = format!("return document.querySelectorAll({}).length;", json!(css));
        self.js(&script).await.as_u64().unwrap()
    }

    async fn visible(&self, css: &str) -> bool {
        let script = format!(
            "const e = document.querySelector({}); return !!e && !e.closest('[hidden]');",
            json!(css)
        );
        self.js(&script).await.as_bool().unwrap()
    }

    /// Waits up to 10 s for `what` to hold of the page; fails naming it and what the page says.
    async fn until<F, Fut>(&self, what: &str, mut holds: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !holds().await {
            if Instant::now() > deadline {
                let alert = self.text("#alert").await;
                panic!("timed out waiting for: {what} (the page's alert: {alert:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn until_rows(&self, table: &str, rows: u64) {
        let css = format!("{table} tbody tr");
        self.until(&format!("{rows} rows in {table}"), || async {
            self.count(&css).await == rows
        })
        .await;
    }

    async fn until_text(&self, css: &str, wanted: &str) {
        self.until(&format!("{css} to contain {wanted:?}"), || async {
            self.text(css).await.contains(wanted)
        })
        .await;
    }

    /// The one finished download ending in `extension`.
    async fn download(&self, extension: &str) -> String {
        let dir = self.downloads.path().to_path_buf();
        let found = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == extension))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(path) = found(&dir) {
                return std::fs::read_to_string(path).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no .{extension} download arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn send(gw: &TestGateway, method: Method, path: &str, key: &str, rid: &str) -> u16 {
    let body = if method == Method::PATCH {
        json!({"firstName": "Reviewed"})
    } else {
        json!({"period": 1})
    };
    gw.request(method, path, key)
        .header("x-request-id", rid)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn rid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The page and its assets carry the console's security headers, need no key, and the page has
/// no inline script.
async fn check_headers(gw: &TestGateway) {
    for (path, content_type) in [
        ("/_gateway/console", "text/html"),
        ("/_gateway/console/console.js", "text/javascript"),
        ("/_gateway/console/console.css", "text/css"),
    ] {
        let response = http()
            .get(format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        if path == "/_gateway/console" {
            let page = response.text().await.unwrap();
            let scripts: Vec<&str> = page.split("<script").skip(1).collect();
            assert!(!scripts.is_empty());
            for script in scripts {
                let tag = &script[..script.find('>').unwrap()];
                assert!(tag.contains("src="), "an inline script: <script{tag}>");
                assert!(script[script.find('>').unwrap() + 1..].starts_with("</script>"));
            }
            let handler = page.split([' ', '\n']).find(|word| {
                word.strip_prefix("on").is_some_and(|rest| {
                    rest.split_once('=').is_some_and(|(name, _)| {
                        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
                    })
                })
            });
            assert_eq!(handler, None, "an inline event handler");
            assert!(!page.contains("style="), "no inline styles");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_signs_in_filters_reads_exports_follows_and_sees_tampering() {
    let Some(browser) = browser().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing.pem");
    let (pem, public_key) = contabo_gateway::signed_checkpoint::new_private_key().unwrap();
    std::fs::write(&key_file, pem).unwrap();
    let key = key_file.display().to_string();
    let checkpoints = dir.path().join("checkpoints.jsonl");
    let checkpoint_file = checkpoints.display().to_string();
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.signing_key_file = key;
        c.audit.checkpoint_file = checkpoint_file;
        c.audit.checkpoint_interval = Duration::from_secs(3600);
    })
    .await;
    wait_ready(&gw).await;
    check_headers(&gw).await;

    // 12 creations by the operator team, one refusal of the readonly team, one change by the
    // admin team (which Contabo's audit records under the same request id), and one change made
    // around the gateway with a token of its own.
    for n in 1..=12 {
        let status = send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
            &rid(n),
        )
        .await;
        assert_eq!(status, 201);
    }
    let refused = send(
        &gw,
        Method::POST,
        "/v1/compute/instances",
        &gw.keys.readonly,
        &rid(13),
    )
    .await;
    assert_eq!(refused, 403);
    let user = format!("/v1/users/{}", gw.sandbox().owner_id());
    let status = send(&gw, Method::PATCH, &user, &gw.keys.admin, ADMIN_RID).await;
    assert_eq!(status, 200);
    common::change_around_the_gateway(&gw, AROUND_RID, "AroundTheGateway").await;
    gw.gateway.audit.flush().await;
    gw.gateway
        .audit
        .checkpoint()
        .await
        .unwrap()
        .expect("signed");

    let b = &browser;
    let console = format!("{}/_gateway/console", gw.url);
    b.c().goto(&console).await.unwrap();
    // The stylesheet and the script loaded under the page's own policy.
    assert_eq!(
        b.js("return getComputedStyle(document.body).backgroundColor;")
            .await,
        json!("rgb(246, 248, 250)")
    );

    // A wrong key and a key without audit rights are refused with the gateway's own message.
    b.fill("#key", "not-a-key").await;
    b.click("#sign-in-button").await;
    b.until_text("#alert", "request id").await;
    assert!(b.visible("#sign-in").await);
    b.fill("#key", &gw.keys.operator).await;
    b.click("#sign-in-button").await;
    b.until_text("#alert", "operator").await;
    assert!(!b.visible("#records").await);

    // The auditor signs in: the key lives in session storage only, never in the address.
    b.fill("#key", &gw.keys.auditor).await;
    b.click("#sign-in-button").await;
    b.until_text("#who-role", "auditor").await;
    let stored = b
        .js("return sessionStorage.getItem('contabo-gateway-console-key');")
        .await;
    assert_eq!(stored, json!(gw.keys.auditor));
    assert_eq!(
        b.js("return localStorage.length + document.cookie.length;")
            .await,
        json!(0)
    );
    let address = b.c().current_url().await.unwrap().to_string();
    assert!(!address.contains(&gw.keys.auditor), "{address}");
    assert_eq!(
        b.js("return document.getElementById('key').value;").await,
        json!("")
    );
    assert!(
        !b.visible("#reconcile-panel").await,
        "reconcile is for admins"
    );

    // Every record, the chain's and checkpoints' state, and the 24 h chart per team.
    b.until_rows("#records", 14).await;
    b.until_text("#chain-status", "The chain verifies: 14 records checked")
        .await;
    b.until_text("#checkpoint-status", "1 signed checkpoint (")
        .await;
    assert!(
        b.text("#checkpoint-status")
            .await
            .contains("checkpoints.jsonl")
    );
    assert!(b.text("#checkpoint-status").await.contains("covers seq 14"));

    // The reviewer's own copy of the checkpoints, with the public key they trust, then with a
    // key that did not sign them.
    let upload = b.c().find(Locator::Css("#own-checkpoints")).await.unwrap();
    upload
        .send_keys(checkpoints.to_str().unwrap())
        .await
        .unwrap();
    b.fill("#own-public-key", &public_key).await;
    b.click("#verify-own-run").await;
    b.until_text("#checkpoint-status", "your file checkpoints.jsonl")
        .await;
    assert!(
        b.text("#chain-status")
            .await
            .contains("The chain verifies: 14 records")
    );
    let (_, other_key) = contabo_gateway::signed_checkpoint::new_private_key().unwrap();
    b.fill("#own-public-key", &other_key).await;
    b.click("#verify-own-run").await;
    b.until_text("#chain-status", "signed by another key").await;
    b.click("#verify").await;
    b.until_text("#chain-status", "The chain verifies").await;
    b.until_text("#activity", "team-operator: 12 calls, 0 refused")
        .await;
    assert!(
        b.text("#activity")
            .await
            .contains("team-readonly: 1 call, 1 refused")
    );
    assert_eq!(
        b.count("#activity svg[data-team='team-readonly'] rect.bar-refusals")
            .await,
        1
    );
    assert_eq!(
        b.count("#activity svg[data-team='team-operator'] rect.bar-calls")
            .await,
        1
    );

    // Filter by typing, then page through 10 at a time.
    b.fill("#f-client", "team-operator").await;
    b.click("#apply").await;
    b.until_rows("#records", 12).await;
    b.c()
        .find(Locator::Css("#f-limit"))
        .await
        .unwrap()
        .select_by_value("10")
        .await
        .unwrap();
    b.click("#apply").await;
    b.until_rows("#records", 10).await;
    assert!(b.text("#page-info").await.contains("more follow"));
    b.click("#next-page").await;
    b.until_rows("#records", 2).await;
    assert_eq!(b.text("#page-info").await, "records 11-12");
    b.click("#previous-page").await;
    b.until_rows("#records", 10).await;

    // Open a record: every field and both bodies.
    b.click("#records tbody tr:first-child").await;
    b.until("the record's detail", || async {
        b.visible("#detail-panel").await
    })
    .await;
    assert_eq!(
        b.text("#detail-fields dd[data-field='request_id']").await,
        rid(1)
    );
    assert!(b.text("#detail-request").await.contains("\"period\": 1"));
    assert!(!b.text("#detail-response").await.is_empty());

    // Export the current filter (the operator team's 12 records) as CSV and NDJSON.
    b.click("#export-csv").await;
    let csv = b.download("csv").await;
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert!(csv.starts_with("id,ts,client"), "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.contains("team-operator")));
    b.click("#export-ndjson").await;
    let ndjson = b.download("ndjson").await;
    assert_eq!(ndjson.lines().count(), 12);
    for line in ndjson.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["client"], "team-operator");
    }

    // Filter by clicking: the chart of a team, then an outcome in the table.
    // (Clear resets every filter, the page size included.)
    b.click("#clear").await;
    b.until_rows("#records", 14).await;
    b.click("#activity svg[data-team='team-readonly']").await;
    b.until_rows("#records", 1).await;
    b.click("#clear").await;
    b.until_rows("#records", 14).await;
    b.click("#records tbody td.outcome-rejected .pick").await;
    b.until_rows("#records", 1).await;
    assert_eq!(
        b.text("#records tbody td:nth-child(3)").await,
        "team-readonly"
    );

    // Signing out forgets the key.
    b.click("#sign-out").await;
    assert!(b.visible("#sign-in").await);
    assert_eq!(b.js("return sessionStorage.length;").await, json!(0));
    assert!(!b.visible("#records").await);
    assert_eq!(b.count("#records tbody tr, #activity svg").await, 0);

    // An admin follows the admin team's request id into Contabo's own audit.
    b.fill("#key", &gw.keys.admin).await;
    b.click("#sign-in-button").await;
    b.until_text("#who-role", "admin").await;
    b.fill("#f-request-id", ADMIN_RID).await;
    b.click("#apply").await;
    b.until_rows("#records", 1).await;
    b.click("#records tbody tr:first-child").await;
    b.click("#follow").await;
    b.until_rows("#trail-gateway", 1).await;
    b.until_rows("#trail-contabo", 1).await;
    let contabo_row = b.text("#trail-contabo tbody tr").await;
    assert!(contabo_row.contains("/v1/users/audits"), "{contabo_row}");
    assert!(contabo_row.contains("UPDATED"), "{contabo_row}");
    assert!(contabo_row.contains("Reviewed"), "{contabo_row}");

    // Reconcile: the change made around the gateway is the one without a gateway record.
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    b.js(&format!(
        "document.getElementById('r-since').value = {};",
        json!(an_hour_ago)
    ))
    .await;
    b.click("#reconcile-run").await;
    b.until_text("#reconcile-status", "1 made around the gateway")
        .await;
    assert!(
        b.text("#reconcile-status")
            .await
            .starts_with("2 changes checked")
    );
    assert!(
        b.text("#reconcile-unmatched tbody")
            .await
            .contains(AROUND_RID)
    );

    // The README's screenshot: the admin's view with a record open and its request followed.
    b.click("#clear").await;
    b.until_rows("#records", 14).await;
    b.js("window.scrollTo(0, 0);").await;
    let png = b.c().screenshot().await.unwrap();
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png"),
        &png,
    )
    .unwrap();
    if std::env::var_os("UPDATE_CONSOLE_SCREENSHOT").is_some() {
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png"),
            &png,
        )
        .unwrap();
    }

    // A DBA rewrites a record: the next verification in the console reports it.
    let dba = common::dba(&format!(
        "sqlite://{}/audit.db",
        gw.data_dir.path().display()
    ))
    .await;
    sqlx::query("UPDATE audit_records SET client = 'team-nobody' WHERE id = 3")
        .execute(&dba)
        .await
        .unwrap();
    b.click("#verify").await;
    b.until_text("#chain-status", "does not verify").await;
    assert!(b.text("#chain-status").await.contains("broken at record 3"));
    assert_eq!(
        b.js("return document.getElementById('chain-status').className;")
            .await,
        json!("status bad")
    );

    let client = browser.client.as_ref().unwrap().clone();
    client.close().await.unwrap();
}
