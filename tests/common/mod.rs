//! Test fixture: a sandbox upstream and a gateway in front of it, each on its own loopback socket,
//! with one team key per role.
#![allow(dead_code)]

pub mod express;

use std::sync::Arc;

use contabo_gateway::app::Application;
use contabo_gateway::clients::{Role, generate_key, sha256};
use contabo_gateway::config::{ClientConfig, Config, Credentials};
use contabo_gateway::gateway::Gateway;
use contabo_gateway::sandbox::{Sandbox, SandboxOptions, SandboxState};

pub struct Keys {
    pub admin: String,
    pub operator: String,
    pub readonly: String,
    pub auditor: String,
}

pub struct TestGateway {
    pub url: String,
    /// Where /_gateway/* is served: `server.admin_listen` when a test set it, else `url`.
    pub admin_url: String,
    pub sandbox: Sandbox,
    pub gateway: Arc<Gateway>,
    pub keys: Keys,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Holds the gateway's own audit database.
    pub data_dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn sandbox(&self) -> &SandboxState {
        &self.sandbox.state
    }

    /// Asks the server to stop (as SIGTERM would) and returns its task.
    pub fn stop(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().expect("server running")
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        http().get(format!("{}{path}", self.url)).bearer_auth(key)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> reqwest::RequestBuilder {
        http()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key)
    }

    /// The status of a GET through the gateway with `key`.
    pub async fn get_status(&self, path: &str, key: &str) -> u16 {
        self.get(path, key).send().await.unwrap().status().as_u16()
    }

    pub fn api_calls(&self) -> u64 {
        SandboxState::count(&self.sandbox().counters.api_calls)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The audit records matching `query` (the `/_gateway/audit` filters), read with the auditor key
/// once every record sent so far is committed.
pub async fn audit_records(gw: &TestGateway, query: &str) -> serde_json::Value {
    gw.gateway.audit.flush().await;
    let response = http()
        .get(format!("{}/_gateway/audit?{query}", gw.url))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    json(response).await
}

/// Changes the sandbox owner's first name directly against the sandbox "Contabo", with a token of
/// its own: a change Contabo's audit records under `request_id` and the gateway never saw.
pub async fn change_around_the_gateway(gw: &TestGateway, request_id: &str, first_name: &str) {
    let (token, _) = gw.sandbox().issue_tokens();
    let user = gw.sandbox().owner_id();
    let direct = http()
        .patch(format!("{}/v1/users/{user}", gw.sandbox.api_url()))
        .bearer_auth(token)
        .header("x-request-id", request_id)
        .json(&serde_json::json!({"firstName": first_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
}

/// One HTTP client per test thread (each test has its own thread and runtime, and a client's
/// pooled connections belong to the runtime that opened them): building a client loads the
/// platform's trust store, which takes tens of milliseconds, too long to do per call.
pub fn http() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = reqwest::Client::builder().no_proxy().build().unwrap();
    }
    CLIENT.with(reqwest::Client::clone)
}

fn client(name: &str, role: Role) -> (String, ClientConfig) {
    let key = generate_key();
    let cfg = ClientConfig {
        name: name.into(),
        key_sha256: hex::encode(sha256(key.as_bytes())),
        role,
        per_second: 1000.0,
        burst: 1000,
        reveal: vec![],
        cert_subject: None,
    };
    (key, cfg)
}

pub async fn start() -> TestGateway {
    start_with(SandboxOptions::default(), |_| {}).await
}

/// Starts a sandbox with `options` and a gateway whose config `tweak` may change.
pub async fn start_with(options: SandboxOptions, tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let sandbox = Sandbox::start(options).await.unwrap();
    let credentials = sandbox.credentials();
    start_gateway(sandbox, credentials, tweak).await
}

pub async fn start_gateway(
    sandbox: Sandbox,
    credentials: Credentials,
    tweak: impl FnOnce(&mut Config),
) -> TestGateway {
    let mut config = Config::default();
    config.upstream.api_url = sandbox.api_url();
    config.upstream.auth_url = sandbox.auth_url();
    let (admin, a) = client("team-admin", Role::Admin);
    let (operator, o) = client("team-operator", Role::Operator);
    let (readonly, r) = client("team-readonly", Role::Readonly);
    let (auditor, u) = client("team-auditor", Role::Auditor);
    config.clients = vec![a, o, r, u];
    let data_dir = tempfile::tempdir().unwrap();
    config.audit.database_url = format!("sqlite://{}/audit.db", data_dir.path().display());
    // Far above anything a test sends; the rate-limit tests set their own.
    config.rate_limit.upstream_per_second = 100_000.0;
    config.rate_limit.upstream_burst = 100_000;
    // The gateway's own serving path (worker runtimes, SO_REUSEPORT), as `serve` runs it; two
    // workers so calls from one test can land on different workers.
    config.server.listen = "127.0.0.1:0".into();
    config.server.workers = 2;
    tweak(&mut config);
    let config = config
        .validated("the test's configuration")
        .unwrap_or_else(|error| panic!("{error}"));
    let application = Application::build(config, credentials).await.unwrap();
    let url = format!("http://{}", application.address());
    let admin_url = application
        .admin_address()
        .map_or_else(|| url.clone(), |admin| format!("http://{admin}"));
    let gateway = application.gateway().clone();
    // The audit store opens in the background; give it a moment so tests start from a ready
    // gateway (tests of a broken store go on after the wait and see it broken).
    for _ in 0..100 {
        if gateway.audit.health().is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    TestGateway {
        url,
        admin_url,
        sandbox,
        gateway,
        keys: Keys {
            admin,
            operator,
            readonly,
            auditor,
        },
        stop: Some(stop_tx),
        server: Some(server),
        data_dir,
    }
}

pub async fn json(response: reqwest::Response) -> serde_json::Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

/// Sends raw bytes on a fresh TCP connection and returns the raw response head and body.
pub async fn raw_request(url: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Says on the terminal, past the test harness's output capture, that a test did not run. With
/// `GATEWAY_TEST_REQUIRE_ALL=1` (`.ci/run` sets it) a test that cannot run fails instead: in CI
/// no test may pass without having run.
pub fn announce_skip(what: &str, why: &str) {
    use std::io::Write;
    let require_all = std::env::var("GATEWAY_TEST_REQUIRE_ALL").ok();
    if let Err(failure) = may_skip(require_all.as_deref(), what, why) {
        panic!("{failure}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// Whether a test may skip, given the value of GATEWAY_TEST_REQUIRE_ALL; the failure otherwise.
pub fn may_skip(require_all: Option<&str>, what: &str, why: &str) -> Result<(), String> {
    match require_all {
        Some(v) if !v.is_empty() && v != "0" => Err(format!(
            "{what} cannot run: {why} (GATEWAY_TEST_REQUIRE_ALL is set: every test must run)"
        )),
        _ => Ok(()),
    }
}

pub const VALID_REQUEST_ID: &str = "04e0f898-37b4-48bc-a794-1a57abe6aa31";

/// A gateway binary running as its own process (killed on drop).
pub struct GatewayProcess {
    pub url: String,
    /// Where /_gateway/* is served when its config sets `server.admin_listen`.
    pub admin_url: Option<String>,
    pub child: std::process::Child,
    /// The config file it was started with (rewrite it and send SIGHUP to reload).
    pub config_path: std::path::PathBuf,
    /// Where its log (stderr) goes.
    pub log_path: std::path::PathBuf,
}

impl GatewayProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl GatewayProcess {
    /// Sends SIGTERM (or SIGKILL) and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `contabo-gateway` binary with `config_toml`, upstream = `sandbox`, on a free port.
pub fn spawn_gateway_process(
    sandbox: &Sandbox,
    config_toml: &str,
    dir: &std::path::Path,
    database_url: Option<&str>,
) -> GatewayProcess {
    spawn_gateway_process_with_env(sandbox, config_toml, dir, database_url, &[])
}

/// [`spawn_gateway_process`] with more environment variables (GATEWAY_REDIS_URL is removed unless
/// given here).
pub fn spawn_gateway_process_with_env(
    sandbox: &Sandbox,
    config_toml: &str,
    dir: &std::path::Path,
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> GatewayProcess {
    use std::io::BufRead;
    let id = uuid::Uuid::new_v4();
    let path = dir.join(format!("gateway-{id}.toml"));
    let log_path = dir.join(format!("gateway-{id}.log"));
    let mut config_toml = config_toml.to_string();
    if !config_toml.contains("[rate_limit]") {
        // Far above anything a test sends; the rate-limit tests set their own.
        config_toml
            .push_str("\n[rate_limit]\nupstream_per_second = 100000\nupstream_burst = 100000\n");
    }
    std::fs::write(&path, config_toml).unwrap();
    let database_url = database_url.map(str::to_string).unwrap_or_else(|| {
        format!(
            "sqlite://{}/audit-{}.db",
            dir.display(),
            uuid::Uuid::new_v4()
        )
    });
    let mut child = gateway_command(sandbox, &path, &database_url)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut admin_url = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("admin endpoints (/_gateway/*) on ") {
            admin_url = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("contabo-gateway listening on ") {
            let url = rest.split_whitespace().next().unwrap().to_string();
            return GatewayProcess {
                url,
                admin_url,
                child,
                config_path: path,
                log_path,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway process exited before listening");
}

/// `contabo-gateway serve --config <config>` against `sandbox`, writing its audit log to
/// `database_url`, with nothing from the test's own environment that would change its setup.
pub fn gateway_command(
    sandbox: &Sandbox,
    config: &std::path::Path,
    database_url: &str,
) -> std::process::Command {
    let credential = sandbox.state.credential();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("GATEWAY_DATABASE_URL", database_url)
        .env("CONTABO_API_URL", sandbox.api_url())
        .env("CONTABO_AUTH_URL", sandbox.auth_url())
        .env("CONTABO_CLIENT_ID", &credential.client_id)
        .env("CONTABO_CLIENT_SECRET", &credential.client_secret)
        .env("CONTABO_API_USER", &credential.username)
        .env("CONTABO_API_PASSWORD", &credential.password)
        .env_remove("GATEWAY_REDIS_URL")
        .env_remove("GATEWAY_TOKEN_SIGNING_KEY")
        .env_remove("GATEWAY_CONFIG");
    command
}

/// A team with a fresh key, for a config built in the test: its key and its config.
pub fn team_block(name: &str, role: &str, reveal: &[&str]) -> (String, ClientConfig) {
    let key = generate_key();
    let config = ClientConfig {
        name: name.into(),
        key_sha256: hex::encode(sha256(key.as_bytes())),
        role: serde_json::from_value(serde_json::json!(role)).unwrap(),
        per_second: 1000.0,
        burst: 1000,
        reveal: reveal.iter().map(|r| r.to_string()).collect(),
        cert_subject: None,
    };
    (key, config)
}

/// A `[[clients]]` block for a fresh admin key.
pub fn admin_client_block(name: &str) -> (String, String) {
    let key = generate_key();
    let block = format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nrole = \"admin\"\nper_second = 1000\nburst = 1000\n",
        hex::encode(sha256(key.as_bytes()))
    );
    (key, block)
}

/// The Redis of the backend tests, from GATEWAY_TEST_REDIS_URL (.ci/run sets it).
pub fn test_redis_url() -> Option<String> {
    std::env::var("GATEWAY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A private redis-server on a free port, so the test can stop and restart it.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Self {
            port,
            child: Some(child),
        })
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a frozen Redis accepts connections and
    /// answers nothing.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A connection to an audit store's database from outside the gateway, through sqlx's `Any`
/// driver: what someone with write access to the database (a DBA) works with.
pub async fn dba(database_url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(database_url)
        .await
        .expect("the audit store's database answers")
}

/// A fresh, empty schema in the PostgreSQL of GATEWAY_TEST_POSTGRES_URL (.ci/run sets it), as a
/// URL whose connections use it; None when no PostgreSQL is configured.
pub async fn fresh_postgres_url() -> Option<String> {
    let url = std::env::var("GATEWAY_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let schema = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
    let pool = dba(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// `contabo-gateway ARGS` with its audit store at `database_url` and no config from the test's
/// environment: whether it succeeded, its stdout and its stderr.
pub fn cli(args: &[&str], database_url: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"))
        .args(args)
        .env("GATEWAY_DATABASE_URL", database_url)
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `#[tokio::test]` per backend for each named `async fn(Backend)`, in modules `sqlite` and
/// `postgres` (the test file brings `Backend` into scope).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

/// The audit store's two backends, for tests run on both.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty audit database of `backend`, or None (announced) when it is not available.
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!(
            "sqlite://{}/audit-{}.db",
            dir.display(),
            uuid::Uuid::new_v4()
        )),
        Backend::Postgres => {
            let url = fresh_postgres_url().await;
            if url.is_none() {
                announce_skip(
                    "the PostgreSQL audit tests",
                    "GATEWAY_TEST_POSTGRES_URL is not set",
                );
            }
            url
        }
    }
}

/// Waits until the gateway's audit store is writable (at most 5 s).
pub async fn wait_ready(gw: &TestGateway) {
    for _ in 0..100 {
        if gw.gateway.audit.health().is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the audit store never became writable: {:?}",
        gw.gateway.audit.health()
    );
}

/// A private PostgreSQL server (its own data directory and port), so a test can freeze it with
/// SIGSTOP or stop it without touching the machine's. Needs the Debian server binaries and root
/// (the server runs as the `postgres` user).
pub struct PrivatePostgres {
    pub port: u16,
    _dir: tempfile::TempDir,
    /// The postmaster itself.
    child: std::process::Child,
}

impl PrivatePostgres {
    pub fn start() -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no PostgreSQL server binaries: {e}"))?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let id = |flag: &str| -> Result<u32, String> {
            let out = std::process::Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "no postgres user".to_string())
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let chowned = std::process::Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        if !chowned.success() {
            return Err("cannot hand the data directory to the postgres user (not root?)".into());
        }
        let as_postgres = |program: std::path::PathBuf| {
            let mut command = std::process::Command::new(program);
            command
                .uid(uid)
                .gid(gid)
                .env_clear()
                .stdin(std::process::Stdio::null());
            command
        };
        let init = as_postgres(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| e.to_string())?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let port = free_port();
        let child = as_postgres(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut server = Self {
            port,
            _dir: dir,
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline
                || matches!(server.child.try_wait(), Ok(Some(_)))
            {
                return Err("the private PostgreSQL did not start listening".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's processes: the postmaster and its children.
    fn processes(&self) -> Vec<String> {
        let postmaster = self.child.id().to_string();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        std::iter::once(postmaster)
            .chain(children.lines().map(str::to_string))
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// SIGSTOP (`-STOP`) or SIGCONT (`-CONT`) to every process of the server.
    pub fn signal(&self, signal: &str) {
        for pid in self.processes() {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid])
                .status();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if std::time::Instant::now() > deadline {
                self.signal("-KILL");
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
