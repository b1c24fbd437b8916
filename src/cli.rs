//! The command line: `serve`, `keys new` and `check-config`, each a small function.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::{self, Gateway};
use crate::clients::{Role, generate_key, sha256};
use crate::config::{ClientConfig, Config, Credentials, Source};
use crate::sandbox::{Sandbox, SandboxOptions};
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
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
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

/// Runs a command; the error is printed by `main` and makes the exit code non-zero.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config, sandbox } => {
            let (config, source) = load_valid(config)?;
            telemetry::init(&config.log);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?
                .block_on(serve(config, source, sandbox))
        }
        Command::Keys {
            command: KeysCommand::New { name, role },
        } => {
            print!("{}", new_key(&name, role));
            Ok(())
        }
        Command::CheckConfig { config } => check_config(config),
    }
}

fn load_valid(path: Option<PathBuf>) -> Result<(Config, Source), String> {
    let (config, source) = Config::load(path.as_deref())?;
    let problems = config.problems();
    if problems.is_empty() {
        Ok((config, source))
    } else {
        Err(format!(
            "the configuration ({source}) has {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        ))
    }
}

fn check_config(path: Option<PathBuf>) -> Result<(), String> {
    let (config, source) = load_valid(path)?;
    println!("configuration OK ({source})");
    println!("  listen: {}", config.server.listen);
    println!(
        "  upstream: {} (token: {})",
        config.upstream.api_url, config.upstream.auth_url
    );
    println!("  clients: {}", config.clients.len());
    match Credentials::from_env() {
        Ok(c) => println!("  credential: client {} as {}", c.client_id, c.username),
        Err(e) => println!("  note: {e}"),
    }
    if config.clients.is_empty() {
        println!("  note: no [[clients]] configured: every /v1 call will get 401");
    }
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

async fn serve(mut config: Config, source: Source, use_sandbox: bool) -> Result<(), String> {
    let mut sandbox = None;
    let credentials = if use_sandbox {
        let sb = Sandbox::start(SandboxOptions::default())
            .await
            .map_err(|e| format!("cannot start the sandbox: {e}"))?;
        config.upstream.api_url = sb.api_url();
        config.upstream.auth_url = sb.auth_url();
        let (key, client) = sandbox_admin_client();
        config.clients.push(client);
        println!("sandbox upstream: {}", sb.api_url());
        println!("sandbox admin key (this run only): {key}");
        let credentials = sb.credentials();
        sandbox = Some(sb);
        credentials
    } else {
        Credentials::from_env()?
    };
    let workers = config.worker_count();
    let listeners = app::bind_workers(config.listen_addr(), workers)
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let gateway = Arc::new(Gateway::new(config, credentials)?);
    println!("contabo-gateway listening on http://{addr} (config: {source})");
    tracing::info!(%addr, config = %source, sandbox = use_sandbox, workers, "gateway started");
    app::serve_workers(gateway, listeners, shutdown::signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
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
    };
    (key, client)
}
