//! Logging: tracing events to stderr, as text or JSON lines, filtered by an
//! `EnvFilter` (`log.level`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Fails only if the filter does not parse
/// (validation has checked it) or a subscriber is already installed.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.format {
        // Colours only for a person at a terminal; a file or a pipe gets
        // plain `key=value` fields that tools (and the end-to-end tests) parse.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    }
    .map_err(|e| e.to_string())
}
