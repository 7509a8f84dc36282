//! A child process under test: started with its stdout and stderr captured
//! line by line into one log (kept across restarts, so that a failing test
//! can print the whole story), its `listener ready` and `rookery ready` lines
//! read as they come, stopped with signals and bounded waits, and watched by
//! a small shell process that ends it if the test binary exits first (a
//! shared broker in a static is never dropped; a test binary may be killed).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::TIMEOUT;

/// A signal the harness sends to a process it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: a graceful stop.
    Term,
    /// SIGKILL: a crash.
    Kill,
    /// SIGHUP: reload the configuration.
    Hup,
    /// SIGSTOP: a pause (a stalled VM, a long GC), until [`Signal::Cont`].
    Stop,
    /// SIGCONT: the end of a pause.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Hup => "HUP",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// How the watchdog ends a process whose test binary has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watchdog {
    /// SIGKILL at once.
    Kill,
    /// SIGTERM, then SIGKILL if it still runs after the grace period.
    Term {
        /// How long the process may take to stop on its own.
        grace: Duration,
    },
}

/// Why a process is not running.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// It was never started, or has been stopped.
    #[error("not started")]
    NotStarted,
    /// It exited by itself.
    #[error("it exited with {0}")]
    Exited(ExitStatus),
    /// Its state could not be read.
    #[error("wait for it: {0}")]
    Wait(io::Error),
}

/// What the current run of a process has reported on its output.
#[derive(Debug, Default)]
struct Reported {
    listeners: Mutex<HashMap<String, SocketAddr>>,
    ready: AtomicBool,
}

impl Reported {
    fn listeners(&self) -> MutexGuard<'_, HashMap<String, SocketAddr>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A child process under test, or none while it is stopped; see the module.
/// Dropping it kills a process still running.
#[derive(Debug, Default)]
pub struct Process {
    child: Option<Child>,
    watchdog: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Replaced at every start, so that a line of a previous run is never
    /// taken for one of this run.
    reported: Arc<Reported>,
}

impl Process {
    /// A process not started yet, with an empty log.
    pub fn new() -> Process {
        Process::default()
    }

    /// Starts `command` with its output captured and a watchdog that ends it
    /// as `watchdog` says (and removes `dir`) if this test binary exits
    /// while it runs. Panics if it is already running or cannot start.
    pub fn spawn(&mut self, command: &mut Command, dir: &Path, watchdog: Watchdog) {
        assert!(self.child.is_none(), "start of a process that is running");
        self.reported = Arc::new(Reported::default());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        self.watchdog = spawn_watchdog(child.id(), dir, watchdog);
        if let Some(stdout) = child.stdout.take() {
            capture(stdout, Arc::clone(&self.log), Arc::clone(&self.reported));
        }
        if let Some(stderr) = child.stderr.take() {
            capture(stderr, Arc::clone(&self.log), Arc::clone(&self.reported));
        }
        self.child = Some(child);
    }

    /// The operating system's id of the running process, to read its
    /// `/proc` entries (memory, open files).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and has not been stopped or found
    /// exited.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `Ok` while the process runs. If it has exited, reaps it, notes the
    /// exit in the log and says how it ended.
    pub fn check_running(&mut self) -> Result<(), ProcessError> {
        let child = self.child.as_mut().ok_or(ProcessError::NotStarted)?;
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                self.stop_watchdog();
                self.note(&format!("---- exited with {status} ----"));
                Err(ProcessError::Exited(status))
            }
            Err(e) => Err(ProcessError::Wait(e)),
        }
    }

    /// Whether the current run has logged `rookery ready`.
    pub fn is_ready(&self) -> bool {
        self.reported.ready.load(Ordering::Acquire)
    }

    /// The address the current run reported for the listener `name`
    /// (`tcp`, `metrics`, ...), or one recorded with [`Process::set_listener`].
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.reported.listeners().get(name).copied()
    }

    /// Records a listener the process does not report itself (a port the
    /// harness chose).
    pub fn set_listener(&self, name: &str, addr: SocketAddr) {
        self.reported.listeners().insert(name.to_owned(), addr);
    }

    /// Everything the process has written, over all of its runs.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// The last `n` lines of [`Process::log`].
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Adds a line of the harness's own to the log (`---- restarted ----`).
    pub fn note(&self, line: &str) {
        self.lines().push(line.to_owned());
    }

    fn lines(&self) -> MutexGuard<'_, Vec<String>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `signal` to the process if it runs, without waiting.
    pub fn send(&self, signal: Signal) {
        if let Some(child) = &self.child {
            self::signal(child.id(), signal);
        }
    }

    /// Waits up to `limit` for the process to exit, SIGKILLs it if it has
    /// not, and stops its watchdog. Its exit status, or `None` if it was
    /// not running or had to be killed.
    pub fn reap(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = self
            .child
            .take()
            .and_then(|mut child| wait_bounded(&mut child, limit));
        self.stop_watchdog();
        status
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        if self.is_running() {
            self.send(Signal::Kill);
            self.reap(TIMEOUT);
            self.note("---- killed with SIGKILL ----");
        }
        self.stop_watchdog();
    }

    /// Stops the process with SIGTERM and returns how it exited; SIGKILL if
    /// it has not exited within [`TIMEOUT`]. `None` if it was not running.
    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        if !self.is_running() {
            return None;
        }
        self.send(Signal::Term);
        let status = self.reap(TIMEOUT);
        self.note(&format!("---- stopped with SIGTERM: {status:?} ----"));
        status
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The harness stops its processes itself; this only keeps one that
        // a panic left running from outliving the test.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_watchdog();
    }
}

/// Reads `stream` line by line into `log`, recording each `listener ready`
/// line's listener and address and the `rookery ready` line in `reported`.
fn capture(
    stream: impl io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    reported: Arc<Reported>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = strip_ansi(&String::from_utf8_lossy(&raw))
                .trim_end()
                .to_owned();
            if let Some((name, addr)) = parse_ready_line(&line) {
                reported.listeners().insert(name, addr);
            }
            if line.contains("rookery ready") {
                reported.ready.store(true, Ordering::Release);
            }
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
}

/// `... listener ready listener=tcp address=127.0.0.2:1883 ...` → (`tcp`,
/// address); the HTTP listener is `http`.
pub fn parse_ready_line(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listener ready") {
        return None;
    }
    let mut name = None;
    let mut addr = None;
    let unquote = |v: &str| {
        v.trim_matches(|c| c == '"' || c == '\'' || c == ',')
            .to_owned()
    };
    for token in line.split_whitespace() {
        if let Some(v) = token.strip_prefix("listener=") {
            name = Some(unquote(v));
        } else if let Some(v) = token.strip_prefix("address=") {
            addr = unquote(v).parse().ok();
        }
    }
    Some((name?, addr?))
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A port free on `ip` right now, for a process that cannot listen on port
/// 0 and report the port (Mosquitto, a Prometheus exporter, a store address
/// its peers must know in advance).
pub fn free_port(ip: impl Into<IpAddr>) -> u16 {
    let ip = ip.into();
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("find a free port on {ip}: {e}"))
}

/// Sends `signal` to the process `pid`, which this test started.
pub fn signal(pid: u32, signal: Signal) {
    let _ = Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `limit` for `child` to exit; kills it if it has not.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A shell process that ends `pid` as `how` says, and removes `dir`, once
/// this test binary has exited while `pid` still runs.
fn spawn_watchdog(pid: u32, dir: &Path, how: Watchdog) -> Option<Child> {
    // $1 the test binary, $2 the process, $3 its directory, $4 the grace
    // period in seconds (0: SIGKILL at once).
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.5; done
        if ! kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; then
            if [ "$4" != 0 ]; then kill -TERM "$2"; sleep "$4"; fi
            kill -KILL "$2" 2>/dev/null; sleep 0.2; rm -rf "$3"
        fi
    "#;
    let grace = match how {
        Watchdog::Kill => Duration::ZERO,
        Watchdog::Term { grace } => grace,
    };
    Command::new("sh")
        .args(["-c", SCRIPT, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .arg(grace.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn ready_lines_are_parsed_with_and_without_colour() {
        let plain = "2026-01-01T00:00:00Z  INFO rookery: listener ready listener=tcp address=127.0.0.2:4242";
        assert_eq!(
            parse_ready_line(plain),
            Some(("tcp".to_owned(), SocketAddr::from(([127, 0, 0, 2], 4242))))
        );
        let coloured = "\u{1b}[32m INFO\u{1b}[0m listener ready \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0mforward \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.3:9";
        assert_eq!(
            parse_ready_line(&strip_ansi(coloured)),
            Some(("forward".to_owned(), SocketAddr::from(([127, 0, 0, 3], 9))))
        );
        let http = "2026-01-01T00:00:00Z  INFO rookery::serve: listener ready listener=\"http\" address=127.0.0.2:9883";
        assert_eq!(
            parse_ready_line(http),
            Some(("http".to_owned(), SocketAddr::from(([127, 0, 0, 2], 9883))))
        );
        assert_eq!(parse_ready_line("rookery ready version=0.1.0"), None);
        assert_eq!(parse_ready_line("starting"), None);
    }

    #[test]
    fn a_ready_line_without_an_address_is_not_a_listener() {
        assert_eq!(parse_ready_line("listener ready listener=tcp"), None);
        assert_eq!(
            parse_ready_line("listener ready listener=tcp address=nowhere"),
            None
        );
    }

    #[test]
    fn the_log_keeps_every_run_and_the_listeners_only_the_current_one() {
        let mut process = Process::new();
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let mut first = Command::new("sh");
        first.args([
            "-c",
            "echo 'listener ready listener=tcp address=127.0.0.1:1'; echo 'rookery ready'",
        ]);
        process.spawn(&mut first, dir, Watchdog::Kill);
        let deadline = Instant::now() + TIMEOUT;
        while !process.is_ready() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(process.is_ready(), "log: {}", process.log());
        assert_eq!(
            process.listener("tcp"),
            Some(SocketAddr::from(([127, 0, 0, 1], 1)))
        );
        assert!(process.reap(TIMEOUT).is_some_and(|s| s.success()));
        process.note("---- restarted ----");

        let mut second = Command::new("sh");
        second.args(["-c", "echo again; exec sleep 30"]);
        process.spawn(&mut second, dir, Watchdog::Kill);
        assert_eq!(process.listener("tcp"), None);
        assert!(!process.is_ready());
        process.check_running().unwrap();
        process.kill9();
        assert!(!process.is_running());
        assert!(matches!(
            process.check_running(),
            Err(ProcessError::NotStarted)
        ));
        let log = process.log();
        assert!(log.starts_with("listener ready"), "{log}");
        assert!(log.contains("rookery ready\n---- restarted ----"), "{log}");
        assert!(log.ends_with("---- killed with SIGKILL ----"), "{log}");
        assert_eq!(process.log_tail(1), vec!["---- killed with SIGKILL ----"]);
    }

    #[test]
    fn an_exited_process_is_reaped_and_noted() {
        let mut process = Process::new();
        let mut command = Command::new("sh");
        command.args(["-c", "exit 3"]);
        let dir = tempfile::tempdir().unwrap();
        process.spawn(&mut command, dir.path(), Watchdog::Kill);
        let deadline = Instant::now() + TIMEOUT;
        let exited = loop {
            match process.check_running() {
                Ok(()) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                other => break other,
            }
        };
        match exited {
            Err(ProcessError::Exited(status)) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected an exit, got {other:?}"),
        }
        assert!(!process.is_running());
        assert!(process.log().contains("---- exited with"));
    }

    #[test]
    fn sigterm_stops_a_process_and_says_how() {
        let mut process = Process::new();
        let mut command = Command::new("sleep");
        command.arg("30");
        let dir = tempfile::tempdir().unwrap();
        process.spawn(
            &mut command,
            dir.path(),
            Watchdog::Term {
                grace: Duration::from_secs(1),
            },
        );
        let status = process.sigterm();
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        assert_eq!(process.sigterm(), None);
    }
}
