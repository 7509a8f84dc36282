//! The Prometheus recorder, the catalog's descriptions and buckets, and
//! the process-level metrics.
//!
//! Every crate records through the `metrics` facade; installing the recorder
//! here is what makes those records visible: the node's HTTP listener
//! renders the returned handle at `/metrics`. The catalog (`catalog.rs`)
//! gives every metric its HELP text and each histogram its buckets, and the
//! metrics of this node's roles are registered at start; the process and
//! data-directory figures (`process.rs`) are read at each scrape.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::catalog::{self, Kind, Owner};
use crate::process::Collector;

/// How often `rookery_uptime_seconds` is refreshed.
const UPTIME_INTERVAL: Duration = Duration::from_secs(1);

/// How often histogram samples are folded into their buckets (the
/// exporter's own listener did this every 5 s).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What `/metrics` renders: the recorder's metrics, then the process and
/// data-directory figures read now.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    recorder: PrometheusHandle,
    process: Collector,
}

impl MetricsHandle {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = self.recorder.render();
        self.process.render(&mut text);
        text
    }
}

/// Installs the global recorder, registers the metrics of `owners` (always
/// [`Owner::Node`], and the node's roles) and starts the node's own
/// metrics; `data_dir`'s filesystem is measured at each scrape. Must run
/// inside the Tokio runtime.
pub fn install(owners: &[Owner], data_dir: PathBuf) -> Result<MetricsHandle, String> {
    let handle = builder()?
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
    describe_and_register(owners);
    node_metrics();
    Ok(MetricsHandle {
        recorder: handle,
        process: Collector::new(data_dir),
    })
}

/// The recorder's settings: histograms with the catalog's buckets (never
/// summaries: only buckets aggregate across nodes).
fn builder() -> Result<PrometheusBuilder, String> {
    let mut builder = PrometheusBuilder::new()
        // A histogram missing from the catalog still gets buckets.
        .set_buckets(catalog::SECONDS)
        .map_err(|error| error.to_string())?;
    for metric in catalog::METRICS {
        if let Kind::Histogram(buckets) = metric.kind {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), buckets)
                .map_err(|error| error.to_string())?;
        }
    }
    Ok(builder)
}

/// Gives every metric of the catalog its HELP text, and registers at 0 the
/// counters and histograms of `owners` whose label values are all known, so
/// that they are exported before their first event.
fn describe_and_register(owners: &[Owner]) {
    for metric in catalog::METRICS {
        if metric.owner == Owner::Process {
            // Rendered with its HELP at each scrape, not by the recorder.
            continue;
        }
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram(_) => metrics::describe_histogram!(metric.name, metric.help),
        }
        if !owners.contains(&metric.owner) {
            continue;
        }
        for labels in catalog::label_sets(metric) {
            let labels: Vec<metrics::Label> = labels
                .into_iter()
                .map(|(name, value)| metrics::Label::new(name, value))
                .collect();
            match metric.kind {
                Kind::Counter => metrics::counter!(metric.name, labels).increment(0),
                // Gauges are set by their owners when they start.
                Kind::Gauge => {}
                Kind::Histogram(_) => drop(metrics::histogram!(metric.name, labels)),
            }
        }
    }
}

/// The build, start time and uptime of this process.
fn node_metrics() {
    metrics::gauge!("rookery_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("rookery_start_time_seconds").set(since_epoch.as_secs_f64());
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
}
