//! Logging: tracing events to stderr, as text or JSON lines, filtered by an
//! `EnvFilter` (`log.level`) that can be replaced while the node runs
//! (`PUT /api/v1/log-level`, `rookery ctl log-level set`).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// The installed filter's reload handle, and the text it was made from.
struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    text: Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Installs the global subscriber. Fails only if the filter does not parse
/// (validation has checked it) or a subscriber is already installed.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| e.to_string())?;
    let (filter, handle) = reload::Layer::new(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        // Colours only for a person at a terminal; a file or a pipe gets
        // plain `key=value` fields that tools (and the end-to-end tests) parse.
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
    }
    .map_err(|e| e.to_string())?;
    let _ = FILTER.set(Filter {
        handle,
        text: Mutex::new(config.level.clone()),
    });
    Ok(())
}

/// Why the filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The text is not a valid `EnvFilter`.
    #[error("invalid log filter {filter:?}: {reason}")]
    Invalid {
        /// The text given.
        filter: String,
        /// What the parser said.
        reason: String,
    },
    /// Logging was not set up by [`init`] (a test of the API).
    #[error("logging is not set up in this process")]
    NotInstalled,
    /// The subscriber is gone.
    #[error("the log filter cannot be replaced: {0}")]
    Reload(String),
}

/// The filter in force, as text.
pub fn current_filter() -> Option<String> {
    FILTER.get().map(|filter| {
        filter
            .text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    })
}

/// Replaces the filter of every later event (the configuration file keeps
/// its own: a restart goes back to it); returns the previous one.
pub fn set_filter(text: &str) -> Result<String, FilterError> {
    let parsed = EnvFilter::try_new(text).map_err(|error| FilterError::Invalid {
        filter: text.to_owned(),
        reason: error.to_string(),
    })?;
    let installed = FILTER.get().ok_or(FilterError::NotInstalled)?;
    let mut current = installed
        .text
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    installed
        .handle
        .reload(parsed)
        .map_err(|error| FilterError::Reload(error.to_string()))?;
    Ok(std::mem::replace(&mut *current, text.to_owned()))
}
