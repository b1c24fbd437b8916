//! Configuration reload on SIGHUP: the teams (`[[clients]]`: keys, roles, limits, in the config
//! file and its `clients_file`) are read again and swapped in without dropping a connection, and
//! the TLS certificate and key are read again. Calls in flight keep the team they started with; a
//! team whose limits did not change keeps its bucket. A new configuration with any problem is
//! refused with a log line and the running one stays. Other sections need a restart.

use std::sync::Arc;

use crate::config::{ClientConfig, Config, ConfigError, Source};
use crate::gateway::Gateway;

pub use crate::gateway::Reloaded;

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    #[error("the gateway runs on built-in defaults: there is no file to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Reads `source` again (with the environment overrides), adds `extra` teams (the sandbox's admin)
/// and swaps the team registry; Err says why the new configuration was refused.
pub fn reload(
    gateway: &Gateway,
    source: &Source,
    extra: &[ClientConfig],
) -> Result<Reloaded, ReloadRefused> {
    let Source::File(path) = source else {
        return Err(ReloadRefused::NoFile);
    };
    let mut config = Config::from_file(path)?;
    config.apply_env(|name| std::env::var(name).ok());
    config.read_clients_file(path.parent())?;
    config.clients.extend(extra.iter().cloned());
    let config = config.validated(path.display())?;
    Ok(gateway.replace_clients(&config.clients))
}

/// Reloads on every SIGHUP until the process ends.
#[cfg(unix)]
pub fn on_sighup(
    gateway: Arc<Gateway>,
    source: Source,
    extra: Vec<ClientConfig>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload(&gateway, &source, &extra) {
                Ok(r) => tracing::info!(
                    teams = r.teams,
                    added = ?r.added,
                    removed = ?r.removed,
                    "SIGHUP: [[clients]] reloaded (other sections apply at the next restart)"
                ),
                Err(reason) => tracing::error!(
                    %reason,
                    "SIGHUP: the new configuration is refused; the running one stays"
                ),
            }
            if let Some(tls) = &gateway.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(reason) => tracing::error!(
                        %reason,
                        "SIGHUP: the TLS files do not load; the running certificate stays"
                    ),
                }
            }
        }
    }))
}
