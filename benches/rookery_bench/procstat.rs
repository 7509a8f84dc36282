//! CPU time and memory of a process, from `/proc/PID/stat` and
//! `/proc/PID/status` (Linux): how a reader tells whether the generator or
//! the broker was the bottleneck.

use std::fs;
use std::io;

/// Clock ticks per second of the times in `/proc/PID/stat` (USER_HZ). Linux
/// reports 100 on every architecture it runs benchmarks on; `getconf
/// CLK_TCK` shows it.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

impl ProcSample {
    /// CPU seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks as f64 / CLOCK_TICKS_PER_SECOND
    }
}

/// Which process to read: this one, or another by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// `/proc/self`.
    Myself,
    /// `/proc/PID`.
    Pid(u32),
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Self::Myself => "/proc/self".to_owned(),
            Self::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Reads a process's CPU time and memory now.
pub fn sample(proc: Proc) -> io::Result<ProcSample> {
    let dir = proc.dir();
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let cpu_ticks = parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{dir}/stat: unexpected format"),
        )
    })?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let (rss_kib, peak_rss_kib) = parse_status(&status);
    Ok(ProcSample {
        cpu_ticks,
        rss_kib,
        peak_rss_kib,
    })
}

/// utime + stime from `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses, so fields are counted
/// from the last `)`: utime and stime are fields 14 and 15.
pub fn parse_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime is field 14.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS and VmHWM in KiB from `/proc/PID/status`; 0 when absent (a zombie).
pub fn parse_status(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    4 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(325));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_gives_rss_and_peak() {
        let status = "Name:\tmosquitto\nVmPeak:\t  99999 kB\nVmHWM:\t    8000 kB\n\
                      VmRSS:\t    7000 kB\nThreads:\t1\n";
        assert_eq!(parse_status(status), (7000, 8000));
        assert_eq!(parse_status("Name:\tzombie\n"), (0, 0));
    }

    #[test]
    fn this_process_can_be_read() {
        let sample = sample(Proc::Myself).unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_rss_kib >= sample.rss_kib);
    }
}
