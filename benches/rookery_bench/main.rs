//! rookery-bench: an MQTT load generator in the spirit of emqtt-bench that
//! must never be the bottleneck.
//!
//! It drives `conn`, `pub`, `sub` and `run` (subscribers, publishers, drain,
//! report) scenarios against any MQTT 3.1.1 or 5.0 broker over TCP, TLS or
//! WebSocket, with a lean client built on Rookery's own codec. Every payload
//! carries its publisher, sequence number and send time, so the report
//! counts lost, duplicated and reordered messages and measures end-to-end
//! latency; it also shows the generator's CPU beside the broker's. It never
//! trusts the broker: a malformed or unexpected packet ends that one
//! connection and is counted, it does not panic.
//!
//! Start reading at `scenario.rs` (the phases of a run), then `client.rs`
//! (one connection's loop); `coord.rs` keeps several processes in step and
//! `report.rs` merges what they measured. Usage is in docs/benchmarks.md,
//! section "Load generator".

mod cli;
mod client;
mod coord;
mod payload;
mod procstat;
mod report;
mod scenario;
mod tracker;
mod transport;

use std::fs;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Settings};
use crate::coord::{ChildMessage, Coordinator, RunError, Sampler, emit, new_run_id, run_budget};
use crate::procstat::Proc;
use crate::report::{Report, ShardReport};

/// Exit status when the run completed but lost messages where loss is not
/// allowed, or connections failed.
const EXIT_FAILED_CHECKS: u8 = 1;
/// Exit status when the run could not be carried out (bad options, no broker).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let settings = match Settings::from_cli(Cli::parse()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("rookery-bench: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rookery-bench: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let code = runtime.block_on(run(Arc::new(settings)));
    // Standard input may still be read by a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn run(settings: Arc<Settings>) -> ExitCode {
    if settings.is_child {
        let run_id = settings.run_id.unwrap_or_else(new_run_id);
        let mut coordinator = Coordinator::child();
        let shard = scenario::run_shard(settings, &mut coordinator, run_id).await;
        return match shard.and_then(|report| Ok(emit(&ChildMessage::Report(Box::new(report)))?)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("rookery-bench child: {error}");
                ExitCode::from(EXIT_ERROR)
            }
        };
    }
    let outcome = if settings.processes > 1 {
        coord::run_parent(&settings).await
    } else {
        solo(&settings).await
    };
    let (shards, sampler) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("rookery-bench: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let report = Report::build(&settings, &shards, &sampler);
    if let Err(error) = output(&settings, &report) {
        eprintln!("rookery-bench: cannot write the report: {error}");
        return ExitCode::from(EXIT_ERROR);
    }
    if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_CHECKS)
    }
}

/// Runs the whole scenario in this process, bounded in time.
async fn solo(settings: &Arc<Settings>) -> Result<(Vec<ShardReport>, Sampler), RunError> {
    let run_id = settings.run_id.unwrap_or_else(new_run_id);
    let mut coordinator = Coordinator::Solo(Sampler::new(
        vec![Proc::Myself],
        settings.broker_pid.clone(),
    ));
    let budget = run_budget(settings);
    let shard = tokio::time::timeout(
        budget,
        scenario::run_shard(settings.clone(), &mut coordinator, run_id),
    )
    .await
    .map_err(|_| RunError::Timeout(budget))??;
    let sampler = coordinator
        .into_sampler()
        .unwrap_or_else(|| Sampler::new(Vec::new(), Vec::new()));
    Ok((vec![shard], sampler))
}

/// Prints the text report (to standard error when the JSON goes to standard
/// output) and writes the JSON where --json says.
fn output(settings: &Settings, report: &Report) -> std::io::Result<()> {
    let text = report.text();
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    match settings.json.as_deref() {
        Some("-") => {
            eprint!("{text}");
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}")?;
            stdout.flush()
        }
        Some(path) => {
            print!("{text}");
            fs::write(path, json + "\n")
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
