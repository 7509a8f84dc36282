//! Topic matching benchmarks: the subscription index on the broker's
//! per-message path, and the retained index on the per-subscribe path.
//!
//! Run with `cargo bench -p rookery-benches --bench topic`; figures and the
//! machine they came from are in `docs/benchmarks.md`.
//!
//! The subscription shape is an IoT fleet: every device subscribes to its own
//! command topic, some devices also to a config subtree, and a few backend
//! applications hold the wildcard filters (dashboards on `devices/+/status`,
//! alert handlers on `devices/+/alerts/#`, an audit client on `#`, and a shared
//! ingest group on `$share/ingest/devices/+/telemetry`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rookery_topic::{Match, RetainedIndex, SubscriptionIndex, topic_matches};

/// A broker would intern client ids; a dense number stands in for one.
type ClientId = u32;

/// Topics matched per iteration, so that one sample is long enough to time.
const BATCH: usize = 1024;

/// Devices whose config subtree is also subscribed: one in this many.
const CONFIG_WATCHERS_EVERY: u32 = 100;
const DASHBOARDS: u32 = 100;
const ALERT_HANDLERS: u32 = 10;
const INGEST_WORKERS: u32 = 8;

/// Builds the fleet's subscriptions for `devices` devices.
fn fleet(devices: u32) -> SubscriptionIndex<ClientId, u8> {
    let mut index = SubscriptionIndex::new();
    for id in 0..devices {
        index.insert(&format!("devices/{id}/cmd"), id, 1);
        if id % CONFIG_WATCHERS_EVERY == 0 {
            index.insert(&format!("devices/{id}/config/#"), id, 1);
        }
    }
    let mut backend = devices;
    let mut next_backend = || {
        backend += 1;
        backend
    };
    for _ in 0..DASHBOARDS {
        index.insert("devices/+/status", next_backend(), 0);
    }
    for _ in 0..ALERT_HANDLERS {
        index.insert("devices/+/alerts/#", next_backend(), 1);
    }
    index.insert("#", next_backend(), 0);
    for _ in 0..INGEST_WORKERS {
        index.insert("$share/ingest/devices/+/telemetry", next_backend(), 1);
    }
    index
}

/// A deterministic stream of device ids (xorshift), so that lookups land all
/// over the index rather than on a few hot, cached nodes.
fn ids(devices: u32) -> impl Iterator<Item = u32> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some((state % u64::from(devices)) as u32)
    })
}

fn topics(devices: u32, shape: &str) -> Vec<String> {
    ids(devices)
        .take(BATCH)
        .map(|id| shape.replace("{id}", &id.to_string()))
        .collect()
}

/// Matches every topic and delivers as a broker would: each plain match
/// counts, and each shared group gives one member, picked round-robin.
fn deliver(index: &SubscriptionIndex<ClientId, u8>, topics: &[String], turn: &mut usize) -> usize {
    let mut delivered = 0;
    for topic in topics {
        index.for_each_match(topic, |m| match m {
            Match::Plain { subscriber, .. } => {
                black_box(subscriber);
                delivered += 1;
            }
            Match::Shared(group) => {
                *turn = turn.wrapping_add(1);
                black_box(group.members().nth(*turn % group.len()));
                delivered += 1;
            }
        });
    }
    delivered
}

fn resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn subscription_matching(c: &mut Criterion) {
    let shapes = [
        // exact own filter + `#`
        ("cmd", "devices/{id}/cmd"),
        // shared ingest group + `#`
        ("telemetry", "devices/{id}/telemetry"),
        // 100 dashboards + `#`
        ("status", "devices/{id}/status"),
        // alert handlers `devices/+/alerts/#` + `#`
        ("alert", "devices/{id}/alerts/battery/low"),
        // nothing but `#`
        ("unrelated", "factory/{id}/line/3/temperature"),
    ];
    for devices in [100_000u32, 1_000_000] {
        let before = resident_mib();
        let started = std::time::Instant::now();
        let index = fleet(devices);
        let built = started.elapsed();
        let after = resident_mib();
        eprintln!(
            "fleet of {devices} devices: {} subscriptions, built in {built:.2?}, \
             resident {before:?} -> {after:?} MiB",
            index.len()
        );
        let mut group = c.benchmark_group(format!("match/{}_subscriptions", index.len()));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Elements(BATCH as u64));
        for (name, shape) in shapes {
            let topics = topics(devices, shape);
            let mut turn = 0;
            let per_topic = deliver(&index, &topics, &mut turn) as f64 / BATCH as f64;
            eprintln!("  {name}: {per_topic:.1} deliveries per topic");
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| deliver(&index, black_box(&topics), &mut turn));
            });
        }
        group.finish();
    }
}

const SITES: u32 = 100;
const DEVICES_PER_SITE: u32 = 1_000;

fn retained_matching(c: &mut Criterion) {
    let mut index = RetainedIndex::new();
    let mut all = Vec::new();
    for site in 0..SITES {
        for device in 0..DEVICES_PER_SITE {
            let topic = format!("sites/{site}/devices/{device}/status");
            index.insert(&topic, site * DEVICES_PER_SITE + device);
            all.push(topic);
        }
    }
    let filters = [
        ("exact", "sites/42/devices/7/status"),
        ("one_site_plus", "sites/42/devices/+/status"),
        ("one_site_hash", "sites/42/#"),
        ("one_device_every_site", "sites/+/devices/7/status"),
        ("everything_plus", "sites/+/devices/+/status"),
    ];
    let mut group = c.benchmark_group(format!("retained/{}_topics", index.len()));
    // Ten samples: the widest filter and the scan take about 10 ms a call.
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for (name, filter) in filters {
        let mut hits = 0u64;
        index.for_each_match(filter, |_, _| hits += 1);
        eprintln!("  {name} ({filter}): {hits} retained topics");
        group.throughput(Throughput::Elements(hits));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut found = 0u64;
                index.for_each_match(black_box(filter), |topic, value| {
                    black_box((topic, value));
                    found += 1;
                });
                found
            });
        });
    }
    // The alternative the trie exists to avoid: test every retained topic.
    let filter = "sites/42/devices/+/status";
    group.throughput(Throughput::Elements(u64::from(DEVICES_PER_SITE)));
    group.bench_function(
        BenchmarkId::from_parameter("one_site_plus_by_scanning"),
        |b| {
            b.iter(|| {
                all.iter()
                    .filter(|topic| topic_matches(black_box(filter), topic))
                    .count()
            });
        },
    );
    group.finish();
}

criterion_group!(benches, subscription_matching, retained_matching);
criterion_main!(benches);
