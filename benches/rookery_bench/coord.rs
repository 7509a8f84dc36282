//! Keeping processes in step. A run passes named barriers (`subscribed`,
//! `ready`, `published`, ...). Alone, a process just samples CPU and memory
//! at each. With `--processes N` the parent starts N children of itself,
//! each with a shard of the client indexes; a child prints one JSON line per
//! barrier on its standard output and waits for `go` on its standard input;
//! the parent answers when all N are there, sampling CPU at that moment, and
//! merges the reports they print at the end.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write as _};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, Stdin};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

use crate::cli::Settings;
use crate::payload::now_ns;
use crate::procstat::{self, Proc};
use crate::report::ShardReport;

/// Why a run could not complete (as opposed to completing with bad numbers).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The broker address or TLS settings are unusable.
    #[error("{0}")]
    Dial(#[from] crate::transport::DialError),
    /// Starting or talking to child processes failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The run took far longer than its settings allow.
    #[error("the run did not finish within {0:?}; stopped")]
    Timeout(Duration),
    /// A child process ended without a report.
    #[error("child process {0} ended without a report")]
    ChildFailed(usize),
    /// The parent process went away.
    #[error("the parent process went away")]
    ParentGone,
}

/// One line from a child to its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildMessage {
    /// The child reached a barrier and waits for `go`.
    Barrier(String),
    /// The child's measurements; it exits after this.
    Report(Box<ShardReport>),
}

/// Writes one message to standard output as a JSON line.
pub fn emit(message: &ChildMessage) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut stdout = io::stdout().lock();
    stdout.write_all(&line)?;
    stdout.flush()
}

/// A broker reading at a barrier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BrokerSample {
    /// CPU seconds since it started.
    pub cpu_s: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
}

/// Readings at one barrier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The barrier.
    pub barrier: String,
    /// Seconds since the run began.
    pub at_s: f64,
    /// CPU seconds of all generator processes since they started.
    pub generator_cpu_s: f64,
    /// The broker, with --broker-pid (its processes summed).
    pub broker: Option<BrokerSample>,
}

/// Reads the generator's and the broker's CPU and memory at each barrier.
#[derive(Debug)]
pub struct Sampler {
    generator: Vec<Proc>,
    brokers: Vec<u32>,
    began: Instant,
    /// Readings so far, in order.
    pub samples: Vec<Sample>,
}

impl Sampler {
    /// A sampler of these generator processes and these broker processes.
    pub fn new(generator: Vec<Proc>, brokers: Vec<u32>) -> Self {
        Self {
            generator,
            brokers,
            began: Instant::now(),
            samples: Vec::new(),
        }
    }

    /// How many generator processes are summed.
    pub fn generator_processes(&self) -> usize {
        self.generator.len()
    }

    /// Takes the readings of a barrier. A process that cannot be read (it
    /// exited) counts as zero; a broker process that cannot be read is left
    /// out (with none read, the broker is).
    pub fn take(&mut self, barrier: &str) {
        let generator_ticks: u64 = self
            .generator
            .iter()
            .filter_map(|proc| procstat::sample(*proc).ok())
            .map(|sample| sample.cpu_ticks)
            .sum();
        let broker = self
            .brokers
            .iter()
            .filter_map(|pid| procstat::sample(Proc::Pid(*pid)).ok())
            .map(|sample| BrokerSample {
                cpu_s: sample.cpu_seconds(),
                rss_kib: sample.rss_kib,
                peak_rss_kib: sample.peak_rss_kib,
            })
            .reduce(|sum, one| BrokerSample {
                cpu_s: sum.cpu_s + one.cpu_s,
                rss_kib: sum.rss_kib + one.rss_kib,
                peak_rss_kib: sum.peak_rss_kib + one.peak_rss_kib,
            });
        self.samples.push(Sample {
            barrier: barrier.to_owned(),
            at_s: self.began.elapsed().as_secs_f64(),
            generator_cpu_s: generator_ticks as f64 / procstat::CLOCK_TICKS_PER_SECOND,
            broker,
        });
    }

    /// The readings of a barrier.
    pub fn find(&self, barrier: &str) -> Option<&Sample> {
        self.samples.iter().find(|sample| sample.barrier == barrier)
    }
}

/// How a process passes barriers.
#[derive(Debug)]
pub enum Coordinator {
    /// Alone: sample at each barrier.
    Solo(Sampler),
    /// A child: ask the parent.
    Child(Lines<BufReader<Stdin>>),
}

impl Coordinator {
    /// A coordinator for a child process.
    pub fn child() -> Self {
        Self::Child(BufReader::new(tokio::io::stdin()).lines())
    }

    /// Passes the barrier `name`: at once alone, when the parent says so
    /// as a child.
    pub async fn barrier(&mut self, name: &str) -> Result<(), RunError> {
        match self {
            Self::Solo(sampler) => {
                sampler.take(name);
                Ok(())
            }
            Self::Child(lines) => {
                emit(&ChildMessage::Barrier(name.to_owned()))?;
                match lines.next_line().await? {
                    Some(line) if line.trim() == "go" => Ok(()),
                    _ => Err(RunError::ParentGone),
                }
            }
        }
    }

    /// The sampler of a solo run.
    pub fn into_sampler(self) -> Option<Sampler> {
        match self {
            Self::Solo(sampler) => Some(sampler),
            Self::Child(_) => None,
        }
    }
}

/// A run id for the payloads: differs between runs and processes.
pub fn new_run_id() -> u32 {
    // splitmix64 of the clock and the process id.
    let mut x = now_ns() ^ (u64::from(std::process::id()) << 32);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) as u32
}

/// The longest a run may take before it is stopped: connecting at the
/// configured rate, the duration, the drain and the resumption, plus a
/// minute of slack.
pub fn run_budget(settings: &Settings) -> Duration {
    let clients = f64::from(settings.mode.pubs() + settings.mode.subs())
        + match settings.mode {
            crate::cli::Mode::Conn { count } => f64::from(count),
            _ => 0.0,
        };
    let connecting = settings.connect_rate.map_or(0.0, |rate| clients / rate);
    Duration::from_secs_f64(connecting)
        + settings.connect_timeout * 3
        + settings.duration
        + settings.drain
        + settings.reconnect_pause
        + Duration::from_secs(60)
}

/// Runs the scenario in `settings.processes` children and collects their
/// reports, sampling CPU at each barrier.
pub async fn run_parent(settings: &Arc<Settings>) -> Result<(Vec<ShardReport>, Sampler), RunError> {
    let exe = std::env::current_exe()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let run_id = new_run_id();
    let count = settings.processes as usize;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Option<ChildMessage>)>();
    let mut children: Vec<Child> = Vec::with_capacity(count);
    let mut stdins: Vec<ChildStdin> = Vec::with_capacity(count);
    for index in 0..count {
        let mut child = Command::new(&exe)
            .args(&args)
            .arg("--processes")
            .arg("1")
            .arg("--shard")
            .arg(format!("{index}/{count}"))
            .arg("--run-id")
            .arg(run_id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RunError::ChildFailed(index));
        };
        stdins.push(stdin);
        children.push(child);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildMessage>(&line) {
                    Ok(message) => {
                        let _ = tx.send((index, Some(message)));
                    }
                    Err(error) => eprintln!("rookery-bench: child {index}: {error}: {line}"),
                }
            }
            let _ = tx.send((index, None));
        });
    }
    drop(tx);
    let mut generator = vec![Proc::Myself];
    generator.extend(children.iter().filter_map(Child::id).map(Proc::Pid));
    let mut sampler = Sampler::new(generator, settings.broker_pid.clone());
    let budget = run_budget(settings);
    let deadline = Instant::now() + budget;
    let mut arrived: HashMap<String, usize> = HashMap::new();
    let mut reports: Vec<Option<ShardReport>> = vec![None; count];
    let mut done = 0;
    while done < count {
        let (index, message) = timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| RunError::Timeout(budget))?
            .ok_or(RunError::ChildFailed(0))?;
        match message {
            Some(ChildMessage::Barrier(name)) => {
                let at = arrived.entry(name.clone()).or_default();
                *at += 1;
                if *at == count {
                    sampler.take(&name);
                    for stdin in &mut stdins {
                        stdin.write_all(b"go\n").await?;
                        stdin.flush().await?;
                    }
                }
            }
            Some(ChildMessage::Report(report)) => {
                done += usize::from(reports[index].replace(*report).is_none());
            }
            None if reports[index].is_none() => return Err(RunError::ChildFailed(index)),
            None => {}
        }
    }
    drop(stdins);
    for child in &mut children {
        if timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.start_kill();
        }
    }
    Ok((reports.into_iter().flatten().collect(), sampler))
}
