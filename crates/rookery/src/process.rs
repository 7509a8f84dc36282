//! The process and data-directory metrics, read when `/metrics` is scraped:
//! CPU time, memory, file descriptors and threads from `/proc/self` (Linux;
//! elsewhere these series are left out), and the free and total space of
//! the filesystem holding the data directory.
//!
//! Read at scrape time rather than copied into the recorder on a timer, so
//! that they are as fresh as the scrape and the CPU time keeps its
//! fractions (the recorder's counters are whole numbers). The names are the
//! ones every Prometheus client library uses for its process (`process_*`),
//! so existing dashboards and alerts for them work unchanged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::catalog::{self, Kind};

/// Linux reports CPU times and start times in clock ticks of `USER_HZ`,
/// which its ABI fixes at 100 on every architecture with `/proc` as we read
/// it (Prometheus' own procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// Reads the process and data-directory figures at each scrape.
#[derive(Debug, Clone)]
pub struct Collector {
    data_dir: PathBuf,
}

impl Collector {
    /// Figures of this process, and of the filesystem holding `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Collector { data_dir }
    }

    /// Appends the figures that can be read now, in the text exposition
    /// format, with their HELP and TYPE lines.
    pub fn render(&self, out: &mut String) {
        if let Some(stat) = read("/proc/self/stat").and_then(|text| parse_stat(&text)) {
            sample(out, "process_cpu_seconds_total", stat.cpu_seconds);
            sample(
                out,
                "process_virtual_memory_bytes",
                stat.virtual_bytes as f64,
            );
            sample(out, "process_threads", stat.threads as f64);
            if let Some(boot) = read("/proc/stat").and_then(|text| parse_boot_time(&text)) {
                sample(
                    out,
                    "process_start_time_seconds",
                    boot as f64 + stat.start_ticks as f64 / USER_HZ,
                );
            }
        }
        if let Some(rss) = read("/proc/self/status").and_then(|text| parse_rss_bytes(&text)) {
            sample(out, "process_resident_memory_bytes", rss as f64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            sample(out, "process_open_fds", entries.count() as f64);
        }
        if let Some(max) = read("/proc/self/limits").and_then(|text| parse_max_fds(&text)) {
            sample(out, "process_max_fds", max);
        }
        if let Some((avail, size)) = filesystem_space(&self.data_dir) {
            sample(out, "rookery_data_dir_filesystem_avail_bytes", avail as f64);
            sample(out, "rookery_data_dir_filesystem_size_bytes", size as f64);
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// One sample of a catalogued metric without labels, with its HELP and
/// TYPE lines.
fn sample(out: &mut String, name: &'static str, value: f64) {
    let Some(metric) = catalog::find(name) else {
        return;
    };
    let kind = match metric.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram(_) => return,
    };
    let _ = writeln!(out, "# HELP {name} {}", metric.help);
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}\n");
}

/// What `/proc/self/stat` says that is exported.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: u64,
    start_ticks: u64,
    virtual_bytes: u64,
}

/// Parses `/proc/[pid]/stat` (proc(5)): the command name is in parentheses
/// and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `VmRSS` from `/proc/self/status`, in bytes (the file says kB: KiB).
fn parse_rss_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of open files from `/proc/self/limits`; `+Inf` when
/// unlimited.
fn parse_max_fds(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(f64::INFINITY),
        soft => soft.parse::<u64>().ok().map(|soft| soft as f64),
    }
}

/// Free space for unprivileged users, and the size, of the filesystem
/// holding `path`, in bytes.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    let stats = rustix::fs::statvfs(path).ok()?;
    let block = stats.f_frsize;
    Some((
        stats.f_bavail.saturating_mul(block),
        stats.f_blocks.saturating_mul(block),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name holding a space and a parenthesis.
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2500 0 0 0 \
                    250 120 0 0 20 0 17 0 123456 987654321 4000 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 3.7,
                threads: 17,
                start_ticks: 123456,
                virtual_bytes: 987654321,
            }
        );
        assert_eq!(parse_stat("4242 (cut short) S 1"), None);
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\trookery\nVmPeak:\t  200000 kB\nVmRSS:\t   51200 kB\nThreads:\t17\n";
        assert_eq!(parse_rss_bytes(status), Some(51200 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_max_fds(limits), Some(20000.0));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), Some(f64::INFINITY));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796416044\nprocesses 9\n"),
            Some(1796416044)
        );
    }

    /// On Linux the whole set is there, each with HELP and TYPE, and the
    /// figures are plausible for this very test process.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = String::new();
        Collector::new(dir.path().to_path_buf()).render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|line| line.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{out}"));
            line.rsplit_once(' ').unwrap().1.parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");
        let size = value("rookery_data_dir_filesystem_size_bytes");
        let avail = value("rookery_data_dir_filesystem_avail_bytes");
        assert!(size > 0.0 && avail <= size);
        assert!(out.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(out.contains("# HELP process_open_fds "));
    }
}
