//! `rookery`: the binary of the Rookery MQTT broker.
//!
//! It reads the configuration ([`config`]: defaults, TOML file, environment,
//! flags from [`cli`]), sets up logging ([`logging`]), the metrics recorder
//! ([`exporter`]) and the HTTP listener with the probes and the operations
//! API ([`http`], [`health`]), and wires the store and the edge together
//! ([`serve`]); `rookery passwd` edits password files ([`passwd`]),
//! `rookery ctl` is the operations API's client ([`ctl`]) and `rookery
//! restore` starts a new group from a backup ([`restore`]). It holds no
//! protocol logic: that lives in the library crates.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the node cannot start or a
//! second signal cuts shutdown short, 2 for a usage or configuration error.

mod admin;
mod catalog;
mod cli;
mod config;
mod ctl;
mod exporter;
mod health;
mod http;
mod logging;
mod passwd;
mod process;
mod restore;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// The node could not start, or failed while running.
const EXIT_FAILURE: u8 = 1;
/// The command line or the configuration is wrong (as clap's usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Help, version and usage errors exit here (usage errors with 2).
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Cluster(args) => cluster(&args),
        Command::Ctl(args) => ctl(&args),
        Command::Restore(args) => restore(&args),
        Command::Passwd(args) => passwd(&args),
    }
}

fn ctl(args: &cli::CtlArgs) -> ExitCode {
    match block_on(ctl::run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("rookery ctl: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(code) => code,
    }
}

/// Runs a command's future on a single-threaded runtime; the exit code
/// when the runtime cannot start.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(future)),
        Err(error) => {
            eprintln!("rookery: cannot start the Tokio runtime: {error}");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

fn restore(args: &cli::RestoreArgs) -> ExitCode {
    match restore::run(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("rookery restore: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn passwd(args: &cli::PasswdArgs) -> ExitCode {
    match passwd::run(args) {
        Ok(done) => {
            eprintln!("rookery: {done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("rookery passwd: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn cluster(args: &cli::ClusterArgs) -> ExitCode {
    match block_on(admin::run(args)) {
        Ok(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("rookery: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(code) => code,
    }
}

fn serve(args: &cli::ServeArgs) -> ExitCode {
    let loaded = match config::load(args) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("rookery: configuration error:\n{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = logging::init(&loaded.config.log) {
        eprintln!("rookery: cannot set up logging: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rookery")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the Tokio runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(serve::run(loaded.config, || {
        config::load(args).map(|loaded| loaded.config)
    }));
    // Tasks still running (a stalled connection, the metrics server) must
    // not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
