//! The Grafana dashboard (`deploy/grafana/rookery.json`) and the alerting
//! rules (`deploy/prometheus/rookery-rules.yml`) against what real nodes
//! export: every metric a panel, a dashboard variable or a rule names must
//! be on some node's `/metrics` from the start (a panel or an alert on a
//! metric that is missing shows nothing and never fires, silently). The
//! names are read out of the PromQL expressions by a small parser below.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, Node, Options, Roles};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// PromQL's functions and keywords: identifiers that are not metric names.
/// Functions are recognised by the `(` after them; these are the words that
/// can stand without one.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    // Aggregations, which take `by (...)` before their parenthesis.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (in `{...}` or in the
/// list after `by`, `on`, ...), durations (in `[...]`, or after `offset`),
/// numbers, strings or Grafana variables (`$name`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // After a keyword that takes a list of label names, the next
    // parenthesis is that list.
    let mut label_list_next = false;
    let skip_to = |from: usize, close: u8| -> usize {
        let mut j = from + 1;
        while j < bytes.len() && bytes[j] != close {
            if matches!(bytes[j], b'"' | b'\'' | b'`') {
                let quote = bytes[j];
                j += 1;
                while j < bytes.len() && bytes[j] != quote {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' | b'\'' | b'`' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != c {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                i = j + 1;
            }
            b'{' => i = skip_to(i, b'}'),
            b'[' => i = skip_to(i, b']'),
            b'(' if label_list_next => {
                label_list_next = false;
                i = skip_to(i, b')');
            }
            b'$' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' => {
                // A number or a duration (5m, 1e3, 0.99).
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().as_bytes().first().copied();
                if LABEL_LISTS.contains(&word) {
                    label_list_next = true;
                } else if word == "offset" {
                    // Its duration follows; a number is skipped anyway.
                } else if next == Some(b'(') || KEYWORDS.contains(&word) {
                    // A function or an aggregation.
                } else {
                    names.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` of the dashboard's panels, and the selector of each of its
/// variables (`label_values(SELECTOR, LABEL)`).
fn dashboard_expressions() -> Vec<String> {
    let path = workspace().join("deploy/grafana/rookery.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard's JSON");
    let mut exprs = Vec::new();
    fn walk(value: &serde_json::Value, exprs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                        ("definition", serde_json::Value::String(definition)) => {
                            let selector = definition
                                .strip_prefix("label_values(")
                                .and_then(|rest| rest.rsplit_once(','))
                                .map(|(selector, _)| selector.to_owned())
                                .unwrap_or_else(|| panic!("a variable's query: {definition}"));
                            exprs.push(selector);
                        }
                        _ => walk(value, exprs),
                    }
                }
            }
            serde_json::Value::Array(values) => {
                for value in values {
                    walk(value, exprs);
                }
            }
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    exprs
}

/// Every `expr:` of the rules file: a one-line value, or a block scalar
/// (`|` or `>`) whose lines are indented further.
fn rule_expressions() -> Vec<String> {
    let path = workspace().join("deploy/prometheus/rookery-rules.yml");
    let text = std::fs::read_to_string(&path).expect("read the rules");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((indent, value)) = line
            .find("expr:")
            .filter(|at| line[..*at].trim().is_empty())
            .map(|at| (at, line[at + "expr:".len()..].trim()))
        else {
            continue;
        };
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = String::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push_str(lines[i].trim());
                block.push(' ');
                i += 1;
            }
            exprs.push(block);
        } else {
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            exprs.push(unquoted.to_owned());
        }
    }
    exprs
}

/// The names of the samples of a text exposition (a histogram's `_bucket`,
/// `_sum` and `_count` each), and the metric families that have a TYPE line
/// but no HELP line.
fn exported(scrape: &str) -> (BTreeSet<String>, Vec<String>) {
    let body = scrape
        .split_once("\r\n\r\n")
        .map_or(scrape, |(_, body)| body);
    let mut samples = BTreeSet::new();
    let mut helped = BTreeSet::new();
    let mut typed = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_whitespace().next().unwrap_or("").to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split_whitespace().next().unwrap_or("").to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    let unhelped = typed
        .into_iter()
        .filter(|family| !helped.contains(family))
        .collect();
    (samples, unhelped)
}

#[test]
fn the_promql_parser_finds_selected_metrics_only() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(rookery_x_seconds_bucket{job=~"$job", instance=~"a|b"}[$__rate_interval])))"#
        ),
        ["rookery_x_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum by (instance) (rate(a_total[5m])) / ignoring(reason) group_left (le) b_total offset 5m > bool 0.5"
        ),
        ["a_total", "b_total"]
    );
    assert_eq!(
        names(
            r#"predict_linear(free_bytes[6h], 24 * 3600) < 0 and free_bytes / size_bytes < 0.4 or up{job="x"} == 0"#
        ),
        ["free_bytes", "size_bytes", "up"]
    );
    assert_eq!(
        names(r#"label_replace(m, "dst", "$1", "src", "(.*)") unless max without (x) (n)"#),
        ["m", "n"]
    );
    assert_eq!(
        names("count(rookery_build_info) * 1e3 - nan"),
        ["rookery_build_info"]
    );
}

#[test]
fn the_rules_and_the_dashboard_have_expressions() {
    let rules = rule_expressions();
    assert!(rules.len() >= 15, "{rules:?}");
    assert!(rules.iter().all(|expr| !expr.is_empty()));
    let dashboard = dashboard_expressions();
    assert!(dashboard.len() >= 100, "{}", dashboard.len());
}

/// A cluster of two store-and-edge nodes, a store-only node and an
/// edge-only node, scraped: every metric the dashboard or a rule names is
/// exported by some node before any traffic (the leader's per-follower lag
/// included), every exported metric has HELP text, and each node exports
/// only its roles' metrics.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let cluster = Cluster::start_with(
        4,
        Options {
            roles: vec![Roles::Both, Roles::Both, Roles::Store, Roles::Edge],
            ..Options::default()
        },
    );
    let mut used: BTreeSet<String> = BTreeSet::new();
    for expr in dashboard_expressions()
        .iter()
        .chain(rule_expressions().iter())
    {
        used.extend(metric_names(expr));
    }
    // Prometheus' own: whether the scrape succeeded.
    used.remove("up");
    assert!(used.len() > 80, "{used:?}");

    // The leader reports its followers' lag once it has replicated to them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (by_node, missing) = loop {
        let mut by_node = Vec::new();
        let mut all = BTreeSet::new();
        for i in 1..=4 {
            let http = cluster
                .node(i)
                .listener("metrics")
                .expect("the node's HTTP listener");
            let scrape = rookery_testkit::scrape(http)
                .await
                .unwrap_or_else(|error| panic!("node {i}: {error}"));
            let (samples, unhelped) = exported(&scrape);
            assert!(
                unhelped.is_empty(),
                "node {i} exports metrics without HELP: {unhelped:?}"
            );
            all.extend(samples.iter().cloned());
            by_node.push(samples);
        }
        let missing: Vec<&String> = used.iter().filter(|name| !all.contains(*name)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break (by_node, missing.into_iter().cloned().collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or the rules but exported by no node: {missing:?}"
    );

    // Roles: the store-only node (3) has no client metrics, the edge-only
    // node (4) no Raft metrics; both have the process's.
    let store_only = &by_node[2];
    let edge_only = &by_node[3];
    for samples in &by_node {
        for name in ["process_cpu_seconds_total", "rookery_build_info"] {
            assert!(samples.contains(name), "{name} missing: {samples:?}");
        }
    }
    assert!(store_only.contains("rookery_store_is_leader"));
    assert!(!store_only.contains("rookery_clients_connected"));
    assert!(!store_only.contains("rookery_messages_received_total"));
    assert!(edge_only.contains("rookery_clients_connected"));
    assert!(edge_only.contains("rookery_store_quorum_contact_age_seconds"));
    assert!(!edge_only.contains("rookery_store_is_leader"));
    assert!(!edge_only.contains("rookery_store_raft_applied_index"));
}

/// Polls a node's `series` until `accept` takes its value; panics with the
/// last value after [`FAILOVER`].
async fn until(node: &Node, series: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let value = node.metric(series).await;
        if accept(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is still {value} after {FAILOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rookery_store_is_leader` counts a leader only while a majority backs
/// it: a leader whose followers are gone keeps Raft's leader state but
/// reports 0 within the election timeout, its quorum acknowledgement age
/// and its edge's quorum contact age grow, and once the followers are back
/// exactly one node reports 1 again. (It stayed 1 before, so an alert on
/// "no leader" missed the outage.)
#[tokio::test]
async fn a_leader_that_lost_its_majority_stops_counting_as_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    assert_eq!(
        cluster.node(leader).metric("rookery_store_is_leader").await,
        1.0
    );
    let followers: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
    for &i in &followers {
        cluster.node_mut(i).kill9();
    }
    let node = cluster.node(leader);
    until(node, "rookery_store_is_leader", |v| v == 0.0).await;
    // Still the leader as far as it knows: no one else was elected.
    assert_eq!(
        node.metric("rookery_store_leader_id").await,
        leader as f64,
        "{}",
        node.log()
    );
    until(node, "rookery_store_quorum_ack_age_seconds", |v| v > 1.0).await;
    until(node, "rookery_store_quorum_contact_age_seconds", |v| {
        v > 2.0
    })
    .await;

    cluster.restart(&followers);
    let leader = cluster.leader().await;
    let node = cluster.node(leader);
    until(node, "rookery_store_quorum_contact_age_seconds", |v| {
        v < 2.0
    })
    .await;
    let mut leading = 0.0;
    for i in 1..=3 {
        leading += cluster.node(i).metric("rookery_store_is_leader").await;
    }
    assert_eq!(leading, 1.0);
}
