//! The command line: `serve`, `keys new`, `check-config`, `health`, `migrate` and `audit`, each a
//! small function.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Parser, Subcommand};

use std::collections::HashMap;

use crate::app::Application;
use crate::audit::query::{Filter, Format, csv_line, parse_time, table_header, table_line};
use crate::audit::reconcile::{reconcile, unpaced};
use crate::audit::store::{Anchors, Store};
use crate::clients::{Role, generate_key, sha256};
use crate::config::{ClientConfig, Config, Credentials, Source, ValidConfig};
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::signed_checkpoint::{CheckpointError, new_private_key, parse_file};
use crate::upstream::Upstream;
use crate::{shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "contabo-gateway",
    version,
    about = "One gateway in front of the Contabo API for every team"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default: $GATEWAY_CONFIG, else config/default.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Use the built-in Contabo sandbox as upstream; no credential needed.
        #[arg(long)]
        sandbox: bool,
    },
    /// Manage team keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate the configuration and explain every problem found.
    CheckConfig {
        /// Config file (default: $GATEWAY_CONFIG, else config/default.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Create or update the audit store's tables (serve does this at start too).
    Migrate {
        /// Config file (default: $GATEWAY_CONFIG, else config/default.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Probe a running gateway (for container health checks, where no curl exists): exit 0 when
    /// the URL answers 200, 1 otherwise.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/_gateway/health")]
        url: String,
    },
    /// Query, verify and reconcile the audit log.
    Audit {
        /// Config file (default: $GATEWAY_CONFIG, else config/default.toml if present).
        #[arg(long, value_name = "PATH", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, oldest first.
    Query {
        /// A team's name, as in its [[clients]] block.
        #[arg(long)]
        client: Option<String>,
        /// An HTTP method: POST, PUT, PATCH, DELETE (only mutating calls are audited).
        #[arg(long)]
        method: Option<String>,
        /// The start of the path, e.g. /v1/compute/instances.
        #[arg(long)]
        path_prefix: Option<String>,
        /// The HTTP status the caller got, e.g. 201.
        #[arg(long)]
        status: Option<String>,
        /// pending | forwarded | rejected | upstream_error | gateway_error | interrupted
        #[arg(long)]
        outcome: Option<String>,
        /// RFC 3339 or epoch seconds (inclusive).
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 or epoch seconds (exclusive).
        #[arg(long)]
        until: Option<String>,
        /// A request id (x-request-id), any case.
        #[arg(long)]
        request_id: Option<String>,
        /// Records to show at most (1-1000); the next page's --cursor is printed after them.
        #[arg(long)]
        limit: Option<String>,
        /// Show records after this id (printed as "more records follow: --cursor N").
        #[arg(long)]
        cursor: Option<String>,
        /// table | json | csv
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Walk the hash chain; exit 1 at the first broken record. With --checkpoints and
    /// --public-key, also hold the store against signed checkpoints: exit 1 when a record they
    /// cover was changed (even with the chain recomputed), records they counted are missing, or a
    /// checkpoint's signature or link is broken.
    Verify {
        /// A checkpoint file (audit.checkpoint_file's copy, one JSON line per checkpoint).
        #[arg(long, value_name = "FILE", requires = "public_key")]
        checkpoints: Option<PathBuf>,
        /// The signing key's public key, base64 (as `keys new-signing` printed it), or a file
        /// holding it.
        #[arg(long, value_name = "KEY", requires = "checkpoints")]
        public_key: Option<String>,
    },
    /// List changes in Contabo's own audit whose request id has no gateway record; exit 2 if any.
    Reconcile {
        /// RFC 3339 or epoch seconds.
        #[arg(long)]
        since: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key once, and the [[clients]] block to paste into the config.
    New {
        /// The team's name.
        name: String,
        /// admin | operator | readonly | auditor
        #[arg(long, default_value = "readonly", value_parser = parse_role)]
        role: Role,
    },
    /// Write a new Ed25519 key that signs audit checkpoints to PATH (mode 0600, never
    /// overwritten) and print its public key, base64, on the last line: give that to reviewers.
    NewSigning {
        /// Where the private key goes (set audit.signing_key_file to it).
        path: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "admin" => Ok(Role::Admin),
        "operator" => Ok(Role::Operator),
        "readonly" => Ok(Role::Readonly),
        "auditor" => Ok(Role::Auditor),
        _ => Err("expected one of admin, operator, readonly, auditor".into()),
    }
}

/// Runs a command: its exit code (2 when `audit reconcile` found changes made around the gateway),
/// or the error `main` prints (exit code 1).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Serve { config, sandbox } => {
            let (config, source) = load_valid(config)?;
            let telemetry = telemetry::init(&config.log, &config.telemetry)?;
            let served = block_on(serve(config, source, sandbox));
            telemetry.shutdown();
            done(served)
        }
        Command::Keys {
            command: KeysCommand::New { name, role },
        } => {
            print!("{}", new_key(&name, role));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::NewSigning { path },
        } => done(new_signing_key(&path)),
        Command::CheckConfig { config } => done(check_config(config)),
        Command::Health { url } => done(probe(&url)),
        Command::Migrate { config } => done(block_on(migrate(config))),
        Command::Audit { config, command } => block_on(audit(config, command)),
    }
}

/// The checkpoint file and public key `audit verify` holds the store against.
fn read_anchors(file: &std::path::Path, key: &str) -> anyhow::Result<Anchors> {
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| CheckpointError::FileUnreadable {
        path: path.clone(),
        source,
    })?;
    let checkpoints = parse_file(&path, &text)?;
    let public_key = match std::fs::read_to_string(key) {
        Ok(text) => text.trim().to_string(),
        Err(_) => key.trim().to_string(),
    };
    Ok(Anchors {
        checkpoints,
        public_key,
        source: file.display().to_string(),
    })
}

fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(future: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the runtime: {e}"))?
        .block_on(future)
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::open(&config.audit.database_url).await?)
}

async fn migrate(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, _) = load_valid(path)?;
    open_store(&config).await?;
    println!(
        "audit store migrated ({})",
        redact_url(&config.audit.database_url)
    );
    Ok(())
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// An audit command; `Reconcile` ends with exit code 2 when it found unmatched changes.
async fn audit(path: Option<PathBuf>, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let (config, _) = load_valid(path)?;
    let store = open_store(&config).await?;
    match command {
        AuditCommand::Query {
            client,
            method,
            path_prefix,
            status,
            outcome,
            since,
            until,
            request_id,
            limit,
            cursor,
            format,
        } => {
            let params: HashMap<String, String> = [
                ("client", client),
                ("method", method),
                ("path_prefix", path_prefix),
                ("status", status),
                ("outcome", outcome),
                ("since", since),
                ("until", until),
                ("request_id", request_id),
                ("limit", limit),
                ("cursor", cursor),
                ("format", Some(format)),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
            let (filter, format) = Filter::from_params(&params, false)?;
            if format == Format::Ndjson {
                bail!("--format must be table, json or csv");
            }
            let records = store.page(&filter).await?;
            let shown = match filter.limit {
                Some(limit) => &records[..records.len().min(limit as usize)],
                None => &records[..],
            };
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(shown).unwrap_or_default()
                ),
                Format::Csv => print!("{}", String::from_utf8_lossy(&csv_line(shown, true))),
                _ => {
                    println!("{}", table_header());
                    for record in shown {
                        println!("{}", table_line(record));
                    }
                }
            }
            if let (Some(limit), Some(last)) = (filter.limit, shown.last())
                && records.len() as i64 > limit
            {
                eprintln!("more records follow: --cursor {}", last.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            checkpoints,
            public_key,
        } => {
            let anchors = match (checkpoints, public_key) {
                (Some(file), Some(key)) => Some(read_anchors(&file, &key)?),
                _ => None,
            };
            let report = store.verify(anchors.as_ref()).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.ok {
                return Ok(ExitCode::SUCCESS);
            }
            let reason = report.reason.unwrap_or_default();
            Err(match report.first_broken_id {
                Some(id) => anyhow!("the audit chain is broken at record {id}: {reason}"),
                None => anyhow!("the audit log does not verify: {reason}"),
            })
        }
        AuditCommand::Reconcile { since } => {
            let since = parse_time("--since", &since)?;
            let upstream = Upstream::new(
                &config.upstream,
                config.contabo(),
                Credentials::from_env()?,
                1,
            )?;
            let report = reconcile(&upstream, &store, &since, unpaced()).await?;
            for (endpoint, reason) in &report.skipped {
                eprintln!("skipped {endpoint}: {reason}");
            }
            for u in &report.unmatched {
                println!(
                    "{}  {:<8} {:<40} requestId={} changedBy={}",
                    u.timestamp, u.action, u.endpoint, u.request_id, u.changed_by
                );
            }
            eprintln!(
                "{} changes in Contabo's audit since {since}; {} without a gateway record",
                report.checked,
                report.unmatched.len()
            );
            if report.unmatched.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(2))
            }
        }
    }
}

fn load_valid(path: Option<PathBuf>) -> anyhow::Result<(ValidConfig, Source)> {
    let (config, source) = Config::load(path.as_deref())?;
    let config = config.validated(format!("the configuration ({source})"))?;
    Ok((config, source))
}

/// One plain HTTP/1.0 GET with a 3 s budget; Ok when the answer is 200.
fn probe(url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow!("--url {url:?}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(anyhow!("--url {url:?}: only http:// is probed"));
    }
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port_or_known_default().unwrap_or(80);
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| anyhow!("{url}: {e}"))?
        .next()
        .ok_or_else(|| anyhow!("{url}: no address"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| anyhow!("{url}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    let target = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let request = format!("GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| anyhow!("{url}: {e}"))?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).map_err(|e| anyhow!("{url}: {e}"))?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    if status_line.starts_with("HTTP/1.0 200") || status_line.starts_with("HTTP/1.1 200") {
        println!("ok: {url}");
        Ok(())
    } else {
        Err(anyhow!(
            "{url} answered {:?}",
            status_line.lines().next().unwrap_or("")
        ))
    }
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source) = load_valid(path)?;
    println!("configuration OK ({source})");
    // A host name is shown with the address it resolved to, the one `serve` binds.
    let shown = |text: &str, resolved: std::net::SocketAddr| match resolved.to_string() == text {
        true => text.to_string(),
        false => format!("{text} ({resolved})"),
    };
    println!(
        "  listen: {}",
        shown(&config.server.listen, config.listen())
    );
    if let Some(admin) = config.admin_listen() {
        println!(
            "  admin endpoints (/_gateway/*): {}",
            shown(&config.server.admin_listen, admin)
        );
    }
    // The certificate files are read here too, so a broken pair shows before a start.
    if crate::tls::Tls::from_settings(&config.server)?.is_some() {
        println!(
            "  TLS: on ({}){}",
            config.server.tls_cert_file,
            if config.server.tls_client_ca_file.is_empty() {
                String::new()
            } else {
                format!(
                    ", client certificates verified against {}",
                    config.server.tls_client_ca_file
                )
            }
        );
    }
    println!(
        "  upstream: {} (token: {})",
        config.upstream.api_url, config.upstream.auth_url
    );
    println!("  clients: {}", config.clients.len());
    let signing_key = config.auth.signing_key_bytes()?;
    println!(
        "  token endpoint: {}",
        if signing_key.is_some() {
            "on (auth: a signing key is set)"
        } else {
            "off (set auth.token_signing_key_file or GATEWAY_TOKEN_SIGNING_KEY to turn it on)"
        }
    );
    match config.audit.checkpoint_signer()? {
        Some(signer) => println!(
            "  audit checkpoints: signed every {} s, public key {}{}",
            config.audit.checkpoint_interval.as_secs(),
            signer.public_key(),
            if config.audit.checkpoint_file.is_empty() {
                " (no audit.checkpoint_file: kept in the database and the log only)".to_string()
            } else {
                format!(", appended to {}", config.audit.checkpoint_file)
            }
        ),
        None => println!(
            "  audit checkpoints: off (set audit.signing_key_file; `keys new-signing PATH` writes one)"
        ),
    }
    match Credentials::from_env() {
        Ok(c) => println!("  credential: client {} as {}", c.client_id, c.username),
        Err(e) => println!("  note: {e}"),
    }
    if config.clients.is_empty() {
        println!("  note: no [[clients]] configured: every /v1 call will get 401");
    }
    Ok(())
}

/// `keys new-signing PATH`: a new checkpoint signing key, created with mode 0600 (an existing file
/// is refused, so a key in use is never replaced by accident).
fn new_signing_key(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (pem, public_key) = new_private_key()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!(
                "{} exists already; a signing key is never overwritten (move it aside first)",
                path.display()
            ),
            _ => anyhow!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    println!(
        "signing key written to {} (set audit.signing_key_file to it; every replica on one \
         database needs the same file)",
        path.display()
    );
    println!("public key (for `audit verify --public-key`):");
    println!("{public_key}");
    Ok(())
}

/// A fresh key (32 random bytes, URL-safe base64) and its config block.
pub fn new_key(name: &str, role: Role) -> String {
    let key = generate_key();
    let digest = hex::encode(sha256(key.as_bytes()));
    format!(
        "key (shown once; give it to the team, it is not stored anywhere):\n{key}\n\n\
         [[clients]]\nname = {name:?}\nkey_sha256 = \"{digest}\"\nrole = \"{}\"\nper_second = 5\nburst = 10\n",
        role.as_str()
    )
}

async fn serve(mut config: ValidConfig, source: Source, use_sandbox: bool) -> anyhow::Result<()> {
    let mut sandbox = None;
    let mut sandbox_clients = Vec::new();
    let credentials = if use_sandbox {
        let sb = Sandbox::start(SandboxOptions::default())
            .await
            .map_err(|e| anyhow!("cannot start the sandbox: {e}"))?;
        let mut settings = config.into_settings();
        settings.upstream.api_url = sb.api_url();
        settings.upstream.auth_url = sb.auth_url();
        let (key, client) = sandbox_admin_client();
        settings.clients.push(client.clone());
        sandbox_clients.push(client);
        println!("sandbox upstream: {}", sb.api_url());
        println!("sandbox admin key (this run only): {key}");
        if settings.auth.signing_key.is_none() && settings.auth.token_signing_key_file.is_empty() {
            // The token endpoint is always on in the sandbox: with a per-run key if none is set.
            settings.auth.signing_key = Some(generate_key().into());
        }
        if settings.audit.signing_key_pem.is_none() && settings.audit.signing_key_file.is_empty() {
            // Audit checkpoints are signed in the sandbox too: with a per-run key if none is set.
            let (pem, public_key) = new_private_key()?;
            settings.audit.signing_key_pem = Some(pem.into());
            println!("sandbox audit checkpoint public key (this run only): {public_key}");
        }
        config = settings.validated(format!("the configuration ({source}) with the sandbox"))?;
        let credentials = sb.credentials();
        sandbox = Some(sb);
        credentials
    } else {
        Credentials::from_env()?
    };
    let workers = config.worker_count();
    let application = Application::build(config, credentials).await?;
    let addr = application.address();
    let gateway = application.gateway().clone();
    let scheme = if gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if gateway.team_tokens.is_some() {
        println!(
            "token endpoint: {scheme}://{addr}{}",
            crate::token_endpoint::TOKEN_PATH
        );
    }
    if let Some(admin) = application.admin_address() {
        println!("admin endpoints (/_gateway/*) on http://{admin}");
    }
    // The last line printed: whoever waits for it may close stdout after reading it.
    println!("contabo-gateway listening on {scheme}://{addr} (config: {source})");
    tracing::info!(%addr, admin = ?application.admin_address(), config = %source, sandbox = use_sandbox, workers, "gateway started");
    #[cfg(unix)]
    let _reloader = crate::reload::on_sighup(gateway, source, sandbox_clients)
        .map_err(|e| anyhow!("cannot listen for SIGHUP: {e}"))?;
    application
        .run_until_stopped(shutdown::signal())
        .await
        .map_err(|e| anyhow!("server error: {e}"))?;
    drop(sandbox);
    tracing::info!("gateway stopped");
    Ok(())
}

fn sandbox_admin_client() -> (String, ClientConfig) {
    let key = generate_key();
    let client = ClientConfig {
        name: "sandbox-admin".into(),
        key_sha256: hex::encode(sha256(key.as_bytes())),
        role: Role::Admin,
        per_second: 1000.0,
        burst: 1000,
        reveal: vec![],
        cert_subject: None,
    };
    (key, client)
}
