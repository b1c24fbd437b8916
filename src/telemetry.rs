//! Logging, set up once: `[log] format` (pretty or json) and `level` (a tracing filter, which
//! RUST_LOG overrides). Every line of a call carries its request id through the call's span.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_wanted())
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if result.is_err() {
        tracing::debug!("logging was already set up");
    }
}

/// Colours only for a person at a terminal: never into a file or a pipe, never with `NO_COLOR`
/// (<https://no-color.org>).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
