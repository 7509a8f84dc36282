//! The Prometheus recorder and the process-level metrics.
//!
//! Every crate records through the `metrics` facade; installing the recorder
//! here is what makes those records visible: the node's HTTP listener
//! renders the returned handle at `/metrics`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often `rookery_uptime_seconds` is refreshed.
const UPTIME_INTERVAL: Duration = Duration::from_secs(1);

/// How often histogram samples are folded into their buckets (the
/// exporter's own listener did this every 5 s).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global recorder and starts the process metrics. Must run
/// inside the Tokio runtime.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|error| error.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(UPKEEP_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            upkeep.run_upkeep();
        }
    });

    metrics::describe_gauge!(
        "rookery_build_info",
        "Always 1; the labels say which build of Rookery runs"
    );
    metrics::gauge!("rookery_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    metrics::describe_gauge!(
        "rookery_start_time_seconds",
        metrics::Unit::Seconds,
        "When this process started, in seconds since the Unix epoch"
    );
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("rookery_start_time_seconds").set(since_epoch.as_secs_f64());

    metrics::describe_gauge!(
        "rookery_uptime_seconds",
        metrics::Unit::Seconds,
        "Seconds since this process started"
    );
    let started = Instant::now();
    let uptime = metrics::gauge!("rookery_uptime_seconds");
    uptime.set(0.0);
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(UPTIME_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            uptime.set(started.elapsed().as_secs_f64());
        }
    });
    Ok(handle)
}
