//! What a run measured: each process's [`ShardReport`] (serialisable, so a
//! child can send it to its parent), the merge of all shards into one
//! [`Report`], and the report as text and JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::{Mode, Settings};
use crate::client::new_histogram;
use crate::coord::{Sample, Sampler};
use crate::tracker::union_ranges;

/// One phase of connecting (subscribers, publishers or idle clients).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectPhase {
    /// `subscribers`, `publishers` or `clients`.
    pub name: String,
    /// Connections tried.
    pub attempted: u64,
    /// Connections that got CONNACK (and SUBACK).
    pub connected: u64,
    /// Connections that failed, and why.
    pub failed: u64,
    /// Failure kinds and their counts.
    pub errors: BTreeMap<String, u64>,
    /// First attempt, nanoseconds since the Unix epoch.
    pub first_ns: u64,
    /// Last outcome, nanoseconds since the Unix epoch.
    pub last_ns: u64,
}

/// Publisher totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubTotals {
    /// PUBLISH packets written.
    pub sent: u64,
    /// QoS 1/2 flows completed.
    pub acked: u64,
    /// Publishes refused with an error reason code.
    pub rejected: u64,
    /// QoS 1/2 publishes unacknowledged at the end.
    pub unacked: u64,
    /// Acknowledgements for identifiers not in flight.
    pub unexpected_acks: u64,
}

/// Receive totals of ordinary (not shared) subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvTotals {
    /// Benchmark messages received, duplicates included.
    pub received: u64,
    /// Different (publisher, sequence) pairs per subscriber.
    pub distinct: u64,
    /// Arrivals of a message already received.
    pub duplicated: u64,
    /// First arrivals after a later message of the same publisher.
    pub reordered: u64,
    /// Holes in each publisher's received sequence.
    pub gaps: u64,
}

/// What one shared group received from one publisher in one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedPart {
    /// The group's whole filter, `$share/{group}/{filter}`.
    pub key: String,
    /// The source (run and publisher, see `client::source_key`).
    pub source: u64,
    /// Union of the members' received sequence numbers.
    pub union: Vec<(u64, u64)>,
    /// Sum of each member's distinct count (above the union's size when two
    /// members got the same message).
    pub member_distinct: u64,
    /// Arrivals at the members, duplicates included.
    pub received: u64,
    /// Duplicates within a member.
    pub duplicated: u64,
    /// Reordering within a member.
    pub reordered: u64,
}

/// One process's measurements.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Connection phases.
    pub connect: Vec<ConnectPhase>,
    /// Publisher totals.
    pub publish: PubTotals,
    /// Deliveries expected from this process's publishers: what each sent
    /// times the subscribers and shared groups its topic matches (`run` only).
    pub expected: u64,
    /// Ordinary subscribers' totals.
    pub plain: RecvTotals,
    /// Shared groups, per publisher.
    pub shared: Vec<SharedPart>,
    /// PUBLISH packets delivered to subscribers, foreign ones included.
    pub received: u64,
    /// Of those, not from this run.
    pub foreign: u64,
    /// Latency histogram in nanoseconds as (value, count) pairs.
    pub latency: Vec<(u64, u64)>,
    /// Start of publishing (or receiving), nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// Its planned end.
    pub until_ns: u64,
    /// First message received (0: none).
    pub first_receive_ns: u64,
    /// Last message received.
    pub last_receive_ns: u64,
    /// Seconds spent draining.
    pub drain_s: f64,
    /// Session resumptions tried and found.
    pub reconnects: u64,
    /// Of those, with the session present.
    pub resumed: u64,
    /// Connections that ended early after they were ready, by error.
    pub dropped: BTreeMap<String, u64>,
}

/// The merged report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `conn`, `pub`, `sub` or `run`.
    pub scenario: &'static str,
    /// What was run.
    pub settings: SettingsSummary,
    /// Connecting.
    pub connections: Connections,
    /// Message accounting.
    pub messages: Messages,
    /// Rates.
    pub throughput: Throughput,
    /// End-to-end latency in milliseconds; absent when nothing was received.
    pub latency_ms: Option<Latency>,
    /// Session resumptions (--reconnect-at).
    pub sessions: Sessions,
    /// Connections that ended early, by error.
    pub dropped: BTreeMap<String, u64>,
    /// CPU and memory over the measured interval.
    pub cpu: Cpu,
    /// Readings at each phase boundary.
    pub samples: Vec<Sample>,
    /// Pass or fail, and why.
    pub verdict: Verdict,
}

/// The settings a reader needs to repeat the run.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsSummary {
    /// Broker address.
    pub broker: String,
    /// Transport.
    pub transport: String,
    /// MQTT version.
    pub mqtt: String,
    /// QoS.
    pub qos: u8,
    /// Publishers.
    pub publishers: u32,
    /// Subscribers.
    pub subscribers: u32,
    /// Idle connections (`conn`).
    pub idle_clients: u32,
    /// Topic pattern.
    pub topic: String,
    /// Filter pattern.
    pub filter: String,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher; `null` is unbounded.
    pub rate_per_publisher: Option<f64>,
    /// QoS 1/2 window.
    pub inflight: u16,
    /// Seconds of publishing, receiving or holding.
    pub duration_s: f64,
    /// Persistent sessions.
    pub persistent: bool,
    /// Processes.
    pub processes: u32,
    /// Worker threads per process.
    pub threads: usize,
}

/// Connection totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Tried.
    pub attempted: u64,
    /// Succeeded.
    pub connected: u64,
    /// Failed.
    pub failed: u64,
    /// Seconds from first attempt to last outcome, summed over phases.
    pub seconds: f64,
    /// Connections per second.
    pub rate_per_s: f64,
    /// Failure kinds.
    pub errors: BTreeMap<String, u64>,
}

/// Message accounting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Messages {
    /// Published.
    pub sent: u64,
    /// QoS 1/2 flows completed.
    pub acked: u64,
    /// Refused by the broker.
    pub rejected: u64,
    /// Unacknowledged at the end.
    pub unacked: u64,
    /// Acknowledgements for identifiers not in flight.
    pub unexpected_acks: u64,
    /// Deliveries expected (`run`): sent × matching subscribers, shared
    /// groups counted once.
    pub expected: Option<u64>,
    /// PUBLISH packets delivered, duplicates and foreign included.
    pub received: u64,
    /// Different messages per receiver (a shared group is one receiver).
    pub distinct: u64,
    /// Expected minus distinct (`run`), or the holes in each publisher's
    /// sequence (`sub`).
    pub lost: Option<u64>,
    /// How `lost` was counted: `expected` or `gaps`.
    pub lost_basis: Option<&'static str>,
    /// Distinct deliveries beyond those expected.
    pub unexpected: u64,
    /// Arrivals of a message the receiver already had.
    pub duplicated: u64,
    /// Arrivals after a later message of the same publisher.
    pub reordered: u64,
    /// Messages of other runs or not from this tool.
    pub foreign: u64,
}

/// Rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Seconds of publishing.
    pub publish_window_s: f64,
    /// Sent per second over the publishing window.
    pub sent_per_s: f64,
    /// Seconds from the start of publishing (`sub`: from the first message
    /// received) to the last message received.
    pub receive_window_s: f64,
    /// Received per second over the receive window.
    pub received_per_s: f64,
    /// Seconds spent draining after publishing (longest process).
    pub drain_s: f64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Highest.
    pub max: f64,
}

/// Session resumption.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sessions {
    /// Reconnections to resume.
    pub reconnects: u64,
    /// Of those, with the session present.
    pub resumed: u64,
}

/// CPU of the generator and the broker over the measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    /// The phase boundaries the interval runs between.
    pub interval: (String, String),
    /// Its length in seconds.
    pub seconds: f64,
    /// Generator processes (parent and children).
    pub generator_processes: usize,
    /// Generator CPU seconds, all processes.
    pub generator_cpu_s: f64,
    /// Generator CPU as a percentage of one core.
    pub generator_percent: f64,
    /// The broker, with --broker-pid.
    pub broker: Option<BrokerUse>,
}

/// The broker's share.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerUse {
    /// Its process id.
    pub pid: u32,
    /// CPU seconds over the interval.
    pub cpu_s: f64,
    /// As a percentage of one core.
    pub percent: f64,
    /// Resident set at the start, KiB.
    pub rss_kib_start: u64,
    /// At the end, KiB.
    pub rss_kib_end: u64,
    /// Peak (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// (end − start) / connections, bytes (`conn`).
    pub rss_bytes_per_connection: Option<f64>,
}

/// Whether the run passed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// No loss where loss is not allowed, no connect failure.
    pub ok: bool,
    /// What failed.
    pub reasons: Vec<String>,
}

/// The phase boundaries between which CPU is measured, per mode.
pub fn measured_interval(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Conn { .. } => ("start", "held"),
        Mode::Sub { .. } => ("subscribed", "received"),
        Mode::Pub { .. } | Mode::Run { .. } => ("ready", "published"),
    }
}

/// Merges shared-group parts by group and publisher: (union ranges,
/// member distinct, received, duplicated, reordered).
type SharedMerge = HashMap<(String, u64), (Vec<(u64, u64)>, u64, u64, u64, u64)>;

impl Report {
    /// Merges the shards and the CPU samples.
    pub fn build(settings: &Settings, shards: &[ShardReport], sampler: &Sampler) -> Self {
        let mode = settings.mode;
        let mut connections = Connections::default();
        let mut phases: BTreeMap<&str, ConnectPhase> = BTreeMap::new();
        let mut publish = PubTotals::default();
        let mut plain = RecvTotals::default();
        let mut shared: SharedMerge = HashMap::new();
        let mut expected = 0;
        let (mut received, mut foreign) = (0, 0);
        let mut latency = new_histogram();
        let mut sessions = Sessions::default();
        let mut dropped = BTreeMap::new();
        let (mut start_ns, mut until_ns, mut last_receive_ns) = (u64::MAX, 0, 0);
        let mut first_receive_ns = u64::MAX;
        let mut drain_s: f64 = 0.0;
        for shard in shards {
            for phase in &shard.connect {
                let merged = phases.entry(&phase.name).or_insert_with(|| ConnectPhase {
                    name: phase.name.clone(),
                    first_ns: u64::MAX,
                    ..ConnectPhase::default()
                });
                merged.attempted += phase.attempted;
                merged.connected += phase.connected;
                merged.failed += phase.failed;
                merged.first_ns = merged.first_ns.min(phase.first_ns);
                merged.last_ns = merged.last_ns.max(phase.last_ns);
                for (error, count) in &phase.errors {
                    *connections.errors.entry(error.clone()).or_default() += count;
                }
            }
            publish.sent += shard.publish.sent;
            publish.acked += shard.publish.acked;
            publish.rejected += shard.publish.rejected;
            publish.unacked += shard.publish.unacked;
            publish.unexpected_acks += shard.publish.unexpected_acks;
            expected += shard.expected;
            plain.received += shard.plain.received;
            plain.distinct += shard.plain.distinct;
            plain.duplicated += shard.plain.duplicated;
            plain.reordered += shard.plain.reordered;
            plain.gaps += shard.plain.gaps;
            for part in &shard.shared {
                let entry = shared.entry((part.key.clone(), part.source)).or_default();
                entry.0 = union_ranges([entry.0.as_slice(), part.union.as_slice()]);
                entry.1 += part.member_distinct;
                entry.2 += part.received;
                entry.3 += part.duplicated;
                entry.4 += part.reordered;
            }
            received += shard.received;
            foreign += shard.foreign;
            for (value, count) in &shard.latency {
                let _ = latency.record_n(*value, *count);
            }
            sessions.reconnects += shard.reconnects;
            sessions.resumed += shard.resumed;
            for (error, count) in &shard.dropped {
                *dropped.entry(error.clone()).or_default() += count;
            }
            if shard.start_ns > 0 {
                start_ns = start_ns.min(shard.start_ns);
            }
            until_ns = until_ns.max(shard.until_ns);
            last_receive_ns = last_receive_ns.max(shard.last_receive_ns);
            if shard.first_receive_ns > 0 {
                first_receive_ns = first_receive_ns.min(shard.first_receive_ns);
            }
            drain_s = drain_s.max(shard.drain_s);
        }
        for phase in phases.values() {
            connections.attempted += phase.attempted;
            connections.connected += phase.connected;
            connections.failed += phase.failed;
            if phase.attempted > 0 && phase.last_ns >= phase.first_ns {
                connections.seconds += (phase.last_ns - phase.first_ns) as f64 / 1e9;
            }
        }
        connections.rate_per_s = rate(connections.connected, connections.seconds);

        let mut messages = Messages {
            sent: publish.sent,
            acked: publish.acked,
            rejected: publish.rejected,
            unacked: publish.unacked,
            unexpected_acks: publish.unexpected_acks,
            received,
            foreign,
            distinct: plain.distinct,
            duplicated: plain.duplicated,
            reordered: plain.reordered,
            ..Messages::default()
        };
        let mut gaps = plain.gaps;
        for (union, member_distinct, _received, duplicated, reordered) in shared.values() {
            let distinct: u64 = union.iter().map(|(start, end)| end - start).sum();
            messages.distinct += distinct;
            messages.duplicated += duplicated + member_distinct.saturating_sub(distinct);
            messages.reordered += reordered;
            if let (Some(first), Some(last)) = (union.first(), union.last()) {
                gaps += (last.1 - first.0) - distinct;
            }
        }
        match mode {
            Mode::Run { .. } => {
                messages.expected = Some(expected);
                messages.lost = Some(expected.saturating_sub(messages.distinct));
                messages.unexpected = messages.distinct.saturating_sub(expected);
                messages.lost_basis = Some("expected");
            }
            Mode::Sub { .. } => {
                messages.lost = Some(gaps);
                messages.lost_basis = Some("gaps");
            }
            Mode::Pub { .. } | Mode::Conn { .. } => {}
        }

        let mut throughput = Throughput {
            drain_s,
            ..Throughput::default()
        };
        if start_ns != u64::MAX && until_ns > start_ns {
            throughput.publish_window_s = (until_ns - start_ns) as f64 / 1e9;
            throughput.sent_per_s = rate(messages.sent, throughput.publish_window_s);
            // `sub` hears publishers it did not start: its window runs from
            // the first message to the last; otherwise from the start of
            // publishing to the last message.
            let from = match mode {
                Mode::Sub { .. } => first_receive_ns,
                _ => start_ns,
            };
            throughput.receive_window_s = if last_receive_ns > from {
                (last_receive_ns - from) as f64 / 1e9
            } else {
                0.0
            };
            throughput.received_per_s = rate(received, throughput.receive_window_s);
        }

        let latency_ms = (!latency.is_empty()).then(|| {
            let ms = |ns: u64| ns as f64 / 1e6;
            Latency {
                count: latency.len(),
                mean: latency.mean() / 1e6,
                p50: ms(latency.value_at_quantile(0.5)),
                p99: ms(latency.value_at_quantile(0.99)),
                p999: ms(latency.value_at_quantile(0.999)),
                max: ms(latency.max()),
            }
        });

        let cpu = cpu_use(settings, sampler, connections.connected);
        let verdict = verdict(settings, &connections, &messages);
        Self {
            scenario: mode.name(),
            settings: summary(settings),
            connections,
            messages,
            throughput,
            latency_ms,
            sessions,
            dropped,
            cpu,
            samples: sampler.samples.clone(),
            verdict,
        }
    }

    /// The report as human text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let (publishes, subscribes) = match self.scenario {
            "conn" => (false, false),
            "pub" => (true, false),
            "sub" => (false, true),
            _ => (true, true),
        };
        let mut what = Vec::new();
        if self.scenario == "conn" {
            what.push(format!(
                "{} idle connections",
                group(u64::from(s.idle_clients))
            ));
        }
        if publishes {
            what.push(format!(
                "{} publishers to {} ({} B, {})",
                group(u64::from(s.publishers)),
                s.topic,
                s.payload_bytes,
                s.rate_per_publisher
                    .map_or("unbounded".to_owned(), |r| format!("{r} msg/s each")),
            ));
        }
        if subscribes {
            what.push(format!(
                "{} subscribers to {}",
                group(u64::from(s.subscribers)),
                s.filter
            ));
        }
        let _ = writeln!(
            out,
            "rookery-bench {}: {}{}, MQTT {} over {} to {}, {} s{}, {} process(es)",
            self.scenario,
            what.join(" -> "),
            if publishes || subscribes {
                format!(", QoS {}", s.qos)
            } else {
                String::new()
            },
            s.mqtt,
            s.transport,
            s.broker,
            s.duration_s,
            if s.persistent {
                ", persistent sessions"
            } else {
                ""
            },
            s.processes
        );
        let c = &self.connections;
        let _ = writeln!(
            out,
            "connections  {} of {} in {:.2} s ({} conn/s), {} failed",
            group(c.connected),
            group(c.attempted),
            c.seconds,
            group(c.rate_per_s.round() as u64),
            group(c.failed)
        );
        for (error, count) in &c.errors {
            let _ = writeln!(out, "             {} x {error}", group(*count));
        }
        let m = &self.messages;
        let t = &self.throughput;
        if publishes {
            let _ = write!(out, "messages     sent {}", group(m.sent));
            if s.qos > 0 {
                let _ = write!(
                    out,
                    " (acked {}, unacked {}, rejected {}",
                    group(m.acked),
                    group(m.unacked),
                    group(m.rejected)
                );
                if m.unexpected_acks > 0 {
                    let _ = write!(out, ", unexpected acks {}", group(m.unexpected_acks));
                }
                let _ = write!(out, ")");
            }
            if let Some(expected) = m.expected {
                let _ = write!(out, "   expected deliveries {}", group(expected));
            }
            let _ = writeln!(out);
        }
        if subscribes {
            let _ = write!(
                out,
                "{}received {}   distinct {}",
                if publishes {
                    "             "
                } else {
                    "messages     "
                },
                group(m.received),
                group(m.distinct)
            );
            if let Some(lost) = m.lost {
                let base = m.expected.unwrap_or(m.distinct + lost).max(1);
                let _ = write!(
                    out,
                    "   lost {} ({:.3}%{})",
                    group(lost),
                    lost as f64 * 100.0 / base as f64,
                    if m.lost_basis == Some("gaps") {
                        ", from sequence gaps"
                    } else {
                        ""
                    }
                );
            }
            let _ = write!(
                out,
                "   duplicated {}   reordered {}   foreign {}",
                group(m.duplicated),
                group(m.reordered),
                group(m.foreign)
            );
            if m.unexpected > 0 {
                let _ = write!(out, "   unexpected {}", group(m.unexpected));
            }
            let _ = writeln!(out);
        }
        if publishes || subscribes {
            let _ = write!(out, "throughput  ");
            if publishes {
                let _ = write!(
                    out,
                    " sent {} msg/s over {:.2} s  ",
                    group(t.sent_per_s.round() as u64),
                    t.publish_window_s
                );
            }
            if subscribes {
                let _ = write!(
                    out,
                    " received {} msg/s over {:.2} s  ",
                    group(t.received_per_s.round() as u64),
                    t.receive_window_s
                );
            }
            if publishes {
                let _ = write!(out, " (drain {:.2} s)", t.drain_s);
            }
            let _ = writeln!(out);
        }
        if subscribes {
            match &self.latency_ms {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "latency      p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms   \
                         mean {:.3} ms   ({} samples)",
                        l.p50,
                        l.p99,
                        l.p999,
                        l.max,
                        l.mean,
                        group(l.count)
                    );
                }
                None => {
                    let _ = writeln!(out, "latency      no benchmark messages received");
                }
            }
        }
        if self.sessions.reconnects > 0 {
            let _ = writeln!(
                out,
                "sessions     {} reconnections, {} resumed with the session present",
                group(self.sessions.reconnects),
                group(self.sessions.resumed)
            );
        }
        for (error, count) in &self.dropped {
            let _ = writeln!(out, "dropped      {} x {error}", group(*count));
        }
        let cpu = &self.cpu;
        let _ = writeln!(
            out,
            "cpu          generator {:.1}% of a core ({:.2} s over {:.2} s, {} process(es), {} to {})",
            cpu.generator_percent,
            cpu.generator_cpu_s,
            cpu.seconds,
            cpu.generator_processes,
            cpu.interval.0,
            cpu.interval.1
        );
        if let Some(b) = &cpu.broker {
            let _ = write!(
                out,
                "             broker pid {} {:.1}% of a core ({:.2} s), RSS {:.1} -> {:.1} MiB \
                 (peak {:.1} MiB)",
                b.pid,
                b.percent,
                b.cpu_s,
                b.rss_kib_start as f64 / 1024.0,
                b.rss_kib_end as f64 / 1024.0,
                b.peak_rss_kib as f64 / 1024.0
            );
            if let Some(per) = b.rss_bytes_per_connection {
                let _ = write!(out, ", {:.2} KiB per connection", per / 1024.0);
            }
            let _ = writeln!(out);
        }
        let v = &self.verdict;
        if v.ok {
            let _ = writeln!(out, "verdict      ok");
        } else {
            let _ = writeln!(out, "verdict      FAILED: {}", v.reasons.join("; "));
        }
        out
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn summary(settings: &Settings) -> SettingsSummary {
    let (mode, idle) = match settings.mode {
        Mode::Conn { count } => (settings.mode, count),
        other => (other, 0),
    };
    SettingsSummary {
        broker: format!("{}:{}", settings.host, settings.port),
        transport: format!("{:?}", settings.transport).to_lowercase(),
        mqtt: if settings.version.is_v5() {
            "5".to_owned()
        } else {
            "3.1.1".to_owned()
        },
        qos: settings.qos as u8,
        publishers: mode.pubs(),
        subscribers: mode.subs(),
        idle_clients: idle,
        topic: settings.topic.clone(),
        filter: settings.filter.clone(),
        payload_bytes: settings.size,
        rate_per_publisher: settings.rate,
        inflight: settings.inflight,
        duration_s: settings.duration.as_secs_f64(),
        persistent: settings.persistent,
        processes: settings.processes,
        threads: settings.threads,
    }
}

fn cpu_use(settings: &Settings, sampler: &Sampler, connected: u64) -> Cpu {
    let (from, to) = measured_interval(settings.mode);
    let mut cpu = Cpu {
        interval: (from.to_owned(), to.to_owned()),
        generator_processes: sampler.generator_processes(),
        ..Cpu::default()
    };
    let (Some(start), Some(end)) = (sampler.find(from), sampler.find(to)) else {
        return cpu;
    };
    cpu.seconds = end.at_s - start.at_s;
    cpu.generator_cpu_s = end.generator_cpu_s - start.generator_cpu_s;
    cpu.generator_percent = percent(cpu.generator_cpu_s, cpu.seconds);
    if let (Some(&pid), Some(b0), Some(b1)) =
        (settings.broker_pid.first(), &start.broker, &end.broker)
    {
        let cpu_s = b1.cpu_s - b0.cpu_s;
        cpu.broker = Some(BrokerUse {
            pid,
            cpu_s,
            percent: percent(cpu_s, cpu.seconds),
            rss_kib_start: b0.rss_kib,
            rss_kib_end: b1.rss_kib,
            peak_rss_kib: b1.peak_rss_kib,
            rss_bytes_per_connection: (matches!(settings.mode, Mode::Conn { .. }) && connected > 0)
                .then(|| (b1.rss_kib as f64 - b0.rss_kib as f64) * 1024.0 / connected as f64),
        });
    }
    cpu
}

fn percent(cpu_s: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        cpu_s * 100.0 / seconds
    } else {
        0.0
    }
}

fn verdict(settings: &Settings, connections: &Connections, messages: &Messages) -> Verdict {
    let mut reasons = Vec::new();
    if connections.failed > 0 {
        reasons.push(format!("{} connections failed", connections.failed));
    }
    if settings.qos as u8 >= 1 {
        if let Some(lost) = messages.lost
            && lost > 0
        {
            reasons.push(format!(
                "{lost} messages lost at QoS {}",
                settings.qos as u8
            ));
        }
        if messages.unacked > 0 {
            reasons.push(format!("{} publishes never acknowledged", messages.unacked));
        }
        if messages.rejected > 0 {
            reasons.push(format!(
                "{} publishes refused by the broker",
                messages.rejected
            ));
        }
    }
    Verdict {
        ok: reasons.is_empty(),
        reasons,
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The histogram as (value, count) pairs, for a child to send its parent.
pub fn histogram_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|value| (value.value_iterated_to(), value.count_at_value()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(args: &str) -> Settings {
        Settings::from_cli(Cli::try_parse_from(args.split_whitespace()).unwrap()).unwrap()
    }

    fn shard(expected: u64, plain: RecvTotals, shared: Vec<SharedPart>) -> ShardReport {
        ShardReport {
            publish: PubTotals {
                sent: expected,
                acked: expected,
                ..PubTotals::default()
            },
            expected,
            plain,
            shared,
            received: plain.received,
            start_ns: 1_000_000_000,
            until_ns: 2_000_000_000,
            last_receive_ns: 2_000_000_000,
            ..ShardReport::default()
        }
    }

    #[test]
    fn lost_is_expected_minus_distinct_over_all_shards() {
        let s = settings("rookery-bench run -q 1");
        let plain = RecvTotals {
            received: 95,
            distinct: 90,
            duplicated: 5,
            reordered: 2,
            gaps: 3,
        };
        let shards = [
            shard(60, plain, vec![]),
            shard(40, RecvTotals::default(), vec![]),
        ];
        let report = Report::build(&s, &shards, &Sampler::new(vec![], Vec::new()));
        assert_eq!(report.messages.expected, Some(100));
        assert_eq!(report.messages.distinct, 90);
        assert_eq!(report.messages.lost, Some(10));
        assert_eq!(report.messages.duplicated, 5);
        assert_eq!(report.messages.reordered, 2);
        assert!(!report.verdict.ok, "loss at QoS 1 fails the run");
        assert_eq!(report.throughput.sent_per_s, 100.0);
    }

    #[test]
    fn loss_at_qos0_is_reported_but_passes() {
        let s = settings("rookery-bench run");
        let plain = RecvTotals {
            received: 50,
            distinct: 50,
            ..RecvTotals::default()
        };
        let report = Report::build(
            &s,
            &[shard(100, plain, vec![])],
            &Sampler::new(vec![], Vec::new()),
        );
        assert_eq!(report.messages.lost, Some(50));
        assert!(report.verdict.ok);
    }

    #[test]
    fn a_shared_group_spread_over_processes_counts_each_message_once() {
        let s = settings("rookery-bench run -q 1 -f $share/g/bench/#");
        // Process A's members got 0..6, process B's got 5..10: 5 twice.
        let part = |union: Vec<(u64, u64)>, n: u64| SharedPart {
            key: "$share/g/bench/#".to_owned(),
            source: 0,
            union,
            member_distinct: n,
            received: n,
            duplicated: 0,
            reordered: 0,
        };
        let shards = [
            shard(10, RecvTotals::default(), vec![part(vec![(0, 6)], 6)]),
            shard(0, RecvTotals::default(), vec![part(vec![(5, 10)], 5)]),
        ];
        let report = Report::build(&s, &shards, &Sampler::new(vec![], Vec::new()));
        assert_eq!(report.messages.distinct, 10);
        assert_eq!(report.messages.duplicated, 1);
        assert_eq!(report.messages.lost, Some(0));
        assert!(report.verdict.ok);
    }

    #[test]
    fn sub_mode_counts_loss_from_gaps() {
        let s = settings("rookery-bench sub -q 2");
        let plain = RecvTotals {
            received: 10,
            distinct: 10,
            gaps: 2,
            ..RecvTotals::default()
        };
        let report = Report::build(
            &s,
            &[shard(0, plain, vec![])],
            &Sampler::new(vec![], Vec::new()),
        );
        assert_eq!(report.messages.lost, Some(2));
        assert_eq!(report.messages.lost_basis, Some("gaps"));
        assert!(!report.verdict.ok);
    }

    #[test]
    fn connect_failures_fail_the_run_and_the_rate_spans_each_phase() {
        let s = settings("rookery-bench conn -c 10");
        let mut shard = ShardReport::default();
        shard.connect.push(ConnectPhase {
            name: "clients".to_owned(),
            attempted: 10,
            connected: 9,
            failed: 1,
            errors: BTreeMap::from([("I/O: connection refused".to_owned(), 1)]),
            first_ns: 0,
            last_ns: 500_000_000,
        });
        let report = Report::build(&s, &[shard], &Sampler::new(vec![], Vec::new()));
        assert_eq!(report.connections.rate_per_s, 18.0);
        assert!(!report.verdict.ok);
        assert!(report.text().contains("1 x I/O: connection refused"));
    }

    #[test]
    fn latency_pairs_merge_into_the_same_percentiles() {
        let mut histogram = new_histogram();
        for value in 1..=1000u64 {
            histogram.record(value * 1000).unwrap();
        }
        let s = settings("rookery-bench run");
        let mut report = shard(0, RecvTotals::default(), vec![]);
        report.latency = histogram_pairs(&histogram);
        let merged = Report::build(
            &s,
            &[report.clone(), report],
            &Sampler::new(vec![], Vec::new()),
        );
        let latency = merged.latency_ms.unwrap();
        assert_eq!(latency.count, 2000);
        assert!((latency.p50 - 0.5).abs() < 0.001, "{latency:?}");
        assert!((latency.max - 1.0).abs() < 0.001, "{latency:?}");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
