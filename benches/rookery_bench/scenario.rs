//! One process's part of a run: launch its shard of the clients at the
//! connect rate, move them through the phases at the barriers, drain, and
//! fold their accounts into a [`ShardReport`].
//!
//! `run`: subscribers connect and subscribe (`subscribed`), publishers
//! connect (`ready`), everyone publishes for --duration (`published`), then
//! the drain waits for acknowledgements and late messages (`drained`).
//! `pub` and `sub` are the halves of it; `conn` connects (`start` →
//! `connected`) and holds (`held`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rookery_topic::{Match, SubscriptionIndex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use crate::cli::{Mode, Settings};
use crate::client::{ClientReport, ClientSpec, Phase, ReceiverKey, Role, Shared, run_client};
use crate::coord::{Coordinator, RunError};
use crate::payload::now_ns;
use crate::report::{
    ConnectPhase, PubTotals, RecvTotals, ShardReport, SharedPart, histogram_pairs,
};
use crate::tracker::{SeqTracker, union_ranges};
use crate::transport::Dialer;

/// How long clients get to say goodbye and report after the run.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often draining checks whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Runs this process's shard of the scenario.
pub async fn run_shard(
    settings: Arc<Settings>,
    coordinator: &mut Coordinator,
    run_id: u32,
) -> Result<ShardReport, RunError> {
    let dialer = Dialer::new(&settings).await?;
    let shared = Arc::new(Shared::new(settings.clone(), dialer, run_id));
    let mut phases = Phases::default();
    let mut tasks = Vec::new();
    let mut report = ShardReport::default();
    let mode = settings.mode;
    match mode {
        Mode::Conn { count } => {
            coordinator.barrier("start").await?;
            let specs = specs(&settings, count, 0, |_| Role::Idle, 'c');
            report
                .connect
                .push(launch(&shared, &mut phases, specs, "clients", &mut tasks).await);
            coordinator.barrier("connected").await?;
            sleep(settings.duration).await;
            coordinator.barrier("held").await?;
        }
        Mode::Pub { .. } | Mode::Sub { .. } | Mode::Run { .. } => {
            let (pubs, subs) = (mode.pubs(), mode.subs());
            if subs > 0 {
                let specs = specs(
                    &settings,
                    subs,
                    0,
                    |index| Role::Subscriber {
                        filter: settings.filter_of(index),
                    },
                    's',
                );
                report
                    .connect
                    .push(launch(&shared, &mut phases, specs, "subscribers", &mut tasks).await);
                coordinator.barrier("subscribed").await?;
            }
            if pubs > 0 {
                let specs = specs(
                    &settings,
                    pubs,
                    u64::from(subs),
                    |index| Role::Publisher {
                        topic: settings.topic_of(index),
                    },
                    'p',
                );
                report
                    .connect
                    .push(launch(&shared, &mut phases, specs, "publishers", &mut tasks).await);
                coordinator.barrier("ready").await?;
            }
            let start = Instant::now();
            let until = start + settings.duration;
            report.start_ns = now_ns();
            report.until_ns = report.start_ns + settings.duration.as_nanos() as u64;
            phases.set(Phase::Publish { start, until });
            sleep_until(until).await;
            if pubs > 0 {
                coordinator.barrier("published").await?;
                let drained = drain(&shared, &settings, subs > 0).await;
                report.drain_s = drained.as_secs_f64();
                coordinator.barrier("drained").await?;
            } else {
                coordinator.barrier("received").await?;
            }
        }
    }
    phases.set(Phase::Disconnect);
    let clients = collect(tasks, &mut report).await;
    fold(&settings, &shared, &clients, &mut report);
    Ok(report)
}

/// One phase channel per client: a client waits on its own channel, so
/// clients on different threads never contend for a shared one.
#[derive(Debug, Default)]
struct Phases {
    senders: Vec<watch::Sender<Phase>>,
    current: Option<Phase>,
}

impl Phases {
    /// A channel for a new client, at the current phase.
    fn join(&mut self) -> watch::Receiver<Phase> {
        let (tx, rx) = watch::channel(self.current.unwrap_or(Phase::Setup));
        self.senders.push(tx);
        rx
    }

    /// Moves every client to `phase`.
    fn set(&mut self, phase: Phase) {
        self.current = Some(phase);
        for sender in &self.senders {
            sender.send_replace(phase);
        }
    }
}

/// The clients of one role in this process's shard.
fn specs(
    settings: &Settings,
    count: u32,
    first_client_no: u64,
    role: impl Fn(u32) -> Role,
    letter: char,
) -> Vec<ClientSpec> {
    (0..count)
        .filter(|index| settings.shard.owns(*index))
        .map(|index| ClientSpec {
            index,
            client_no: first_client_no + u64::from(index),
            client_id: format!("{}{letter}{index}", settings.client_id_prefix),
            role: role(index),
        })
        .collect()
}

/// Starts clients at this process's share of the connect rate and waits
/// until each has connected or failed.
async fn launch(
    shared: &Arc<Shared>,
    phases: &mut Phases,
    specs: Vec<ClientSpec>,
    name: &str,
    tasks: &mut Vec<JoinHandle<ClientReport>>,
) -> ConnectPhase {
    let settings = &shared.settings;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let total = specs.len() as u64;
    let mut phase_report = ConnectPhase {
        name: name.to_owned(),
        attempted: total,
        first_ns: now_ns(),
        ..ConnectPhase::default()
    };
    let began = Instant::now();
    let rate = settings.local_connect_rate();
    for (k, spec) in specs.into_iter().enumerate() {
        if let Some(rate) = rate {
            sleep_until(began + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        tasks.push(tokio::spawn(run_client(
            spec,
            shared.clone(),
            phases.join(),
            tx.clone(),
        )));
    }
    drop(tx);
    // Every client reports once; waiting is bounded in case one never does.
    let deadline = Instant::now() + settings.connect_timeout * 2 + Duration::from_secs(5);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut heard = 0;
    while heard < total {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(outcome)) => {
                heard += 1;
                phase_report.last_ns = phase_report.last_ns.max(outcome.at_ns);
                match outcome.error {
                    None => phase_report.connected += 1,
                    Some(error) => *errors.entry(error).or_default() += 1,
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if heard < total {
        *errors.entry("no outcome in time".to_owned()).or_default() += total - heard;
        phase_report.last_ns = now_ns();
    }
    phase_report.failed = total - phase_report.connected;
    phase_report.errors = errors;
    phase_report
}

/// Waits until every publish is acknowledged and (with subscribers here) no
/// message has arrived for --drain-idle, or --drain has passed.
async fn drain(shared: &Shared, settings: &Settings, has_subscribers: bool) -> Duration {
    let began = Instant::now();
    let began_ns = now_ns();
    let deadline = began + settings.drain;
    let idle_ns = settings.drain_idle.as_nanos() as u64;
    loop {
        let acked = shared.unacked.load(Ordering::Relaxed) <= 0;
        let quiet = !has_subscribers || {
            let last = shared.last_receive_ns.load(Ordering::Relaxed).max(began_ns);
            now_ns().saturating_sub(last) >= idle_ns
        };
        if (acked && quiet) || Instant::now() >= deadline {
            return began.elapsed();
        }
        sleep(DRAIN_POLL).await;
    }
}

/// Waits for every client's report; a client that does not finish in time
/// is stopped and counted as dropped.
async fn collect(
    tasks: Vec<JoinHandle<ClientReport>>,
    report: &mut ShardReport,
) -> Vec<ClientReport> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut clients = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match timeout_at(deadline, &mut task).await {
            Ok(Ok(client)) => clients.push(client),
            Ok(Err(_)) => {
                *report
                    .dropped
                    .entry("client task failed".to_owned())
                    .or_default() += 1
            }
            Err(_) => {
                task.abort();
                *report
                    .dropped
                    .entry("client did not finish".to_owned())
                    .or_default() += 1;
            }
        }
    }
    clients
}

/// Folds the clients' accounts into the shard report.
fn fold(settings: &Settings, shared: &Shared, clients: &[ClientReport], report: &mut ShardReport) {
    let mut publish = PubTotals::default();
    let mut plain = RecvTotals::default();
    let mut groups: HashMap<(&str, u64), Vec<&SeqTracker>> = HashMap::new();
    for client in clients {
        publish.sent += client.publish.sent;
        publish.acked += client.publish.acked;
        publish.rejected += client.publish.rejected;
        publish.unacked += client.publish.unacked;
        publish.unexpected_acks += client.publish.unexpected_acks;
        report.received += client.subscribe.received;
        report.foreign += client.subscribe.foreign;
        report.reconnects += client.reconnects;
        report.resumed += client.resumed;
        if let Some(error) = &client.error {
            *report.dropped.entry(error.clone()).or_default() += 1;
        }
        match &client.receiver {
            Some(ReceiverKey::Plain(_)) => {
                for (_, tracker) in &client.subscribe.trackers {
                    plain.received += tracker.received;
                    plain.distinct += tracker.distinct();
                    plain.duplicated += tracker.duplicated;
                    plain.reordered += tracker.reordered;
                    plain.gaps += tracker.gaps();
                }
            }
            Some(ReceiverKey::Shared(key)) => {
                for (source, tracker) in &client.subscribe.trackers {
                    groups.entry((key, *source)).or_default().push(tracker);
                }
            }
            None => {}
        }
    }
    report.publish = publish;
    report.plain = plain;
    report.shared = groups
        .into_iter()
        .map(|((key, source), members)| SharedPart {
            key: key.to_owned(),
            source,
            union: union_ranges(members.iter().map(|tracker| tracker.ranges())),
            member_distinct: members.iter().map(|tracker| tracker.distinct()).sum(),
            received: members.iter().map(|tracker| tracker.received).sum(),
            duplicated: members.iter().map(|tracker| tracker.duplicated).sum(),
            reordered: members.iter().map(|tracker| tracker.reordered).sum(),
        })
        .collect();
    report
        .shared
        .sort_by(|a, b| (&a.key, a.source).cmp(&(&b.key, b.source)));
    if let Mode::Run { subs, .. } = settings.mode {
        report.expected = expected_deliveries(settings, subs, clients);
    }
    report.first_receive_ns = clients
        .iter()
        .map(|client| client.first_receive_ns)
        .filter(|at| *at > 0)
        .min()
        .unwrap_or(0);
    report.last_receive_ns = clients
        .iter()
        .map(|client| client.last_receive_ns)
        .max()
        .unwrap_or(0);
    let histogram = shared
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    report.latency = histogram_pairs(&histogram);
}

/// Deliveries the broker owes for this process's publishers: each one's
/// sent count times the subscribers whose filter matches its topic, a
/// shared group counting once. Every process knows every subscriber's
/// filter, since filters follow from the settings.
fn expected_deliveries(settings: &Settings, subs: u32, clients: &[ClientReport]) -> u64 {
    let mut index: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
    for subscriber in 0..subs {
        index.insert(&settings.filter_of(subscriber), subscriber, ());
    }
    let mut receivers_of: HashMap<&str, u64> = HashMap::new();
    let mut expected = 0;
    for client in clients {
        let Role::Publisher { topic } = &client.role else {
            continue;
        };
        let receivers = *receivers_of.entry(topic).or_insert_with(|| {
            let mut count = 0;
            index.for_each_match(topic, |matched| match matched {
                Match::Plain { .. } | Match::Shared(_) => count += 1,
            });
            count
        });
        expected += client.publish.sent * receivers;
    }
    expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::client::{PubCounts, SubResult};
    use clap::Parser;

    fn settings(args: &str) -> Settings {
        Settings::from_cli(Cli::try_parse_from(args.split_whitespace()).unwrap()).unwrap()
    }

    fn publisher(topic: &str, sent: u64) -> ClientReport {
        ClientReport {
            role: Role::Publisher {
                topic: topic.to_owned(),
            },
            error: None,
            publish: PubCounts {
                sent,
                ..PubCounts::default()
            },
            receiver: None,
            subscribe: SubResult::default(),
            first_receive_ns: 0,
            last_receive_ns: 0,
            reconnects: 0,
            resumed: 0,
        }
    }

    #[test]
    fn pairs_expect_one_delivery_per_message() {
        let s = settings("rookery-bench run --pubs 3 --subs 3 -t bench/%i -f bench/%i");
        let clients = [publisher("bench/0", 10), publisher("bench/1", 20)];
        assert_eq!(expected_deliveries(&s, 3, &clients), 30);
    }

    #[test]
    fn fan_out_and_wildcards_multiply_by_matching_subscribers() {
        let s = settings("rookery-bench run --pubs 1 --subs 4 -t bench/x -f bench/#");
        assert_eq!(expected_deliveries(&s, 4, &[publisher("bench/x", 10)]), 40);
        // A filter that matches nothing expects nothing.
        let s = settings("rookery-bench run --pubs 1 --subs 4 -t other/x -f bench/#");
        assert_eq!(expected_deliveries(&s, 4, &[publisher("other/x", 10)]), 0);
    }

    #[test]
    fn a_shared_group_expects_one_delivery_whatever_its_size() {
        let s = settings("rookery-bench run --pubs 2 --subs 10 -f $share/g/bench/#");
        let clients = [publisher("bench/0", 100), publisher("bench/1", 100)];
        assert_eq!(expected_deliveries(&s, 10, &clients), 200);
        // A group per subscriber (`g%i`): ten groups, ten deliveries each.
        let s = settings("rookery-bench run --pubs 2 --subs 10 -f $share/g%i/bench/#");
        assert_eq!(expected_deliveries(&s, 10, &clients), 2000);
    }

    #[test]
    fn shards_split_each_role_by_index() {
        let mut s = settings("rookery-bench run --pubs 5 --subs 2 --shard 1/2");
        let pubs = specs(&s, 5, 2, |_| Role::Idle, 'p');
        let indexes: Vec<u32> = pubs.iter().map(|spec| spec.index).collect();
        assert_eq!(indexes, [1, 3]);
        assert_eq!(pubs[0].client_no, 3);
        assert_eq!(pubs[0].client_id, "bench-p1");
        s.shard = crate::cli::Shard::WHOLE;
        assert_eq!(specs(&s, 5, 0, |_| Role::Idle, 'c').len(), 5);
    }
}
