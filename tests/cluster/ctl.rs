//! `rookery ctl` (issue 16): every command, run as the real binary against
//! a live cluster, checked by what it prints and by what MQTT clients see.
//! Any node answers for the whole cluster, so each check asks a node other
//! than the one the client or the change went through where it can.
//!
//! A read on a node that did not make a write may lag it by a few entries:
//! such reads are polled ([`eventually`]); a write made through a node is
//! answered once that node has applied it, so a read there sees it at once.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rookery_codec::{Packet, QoS, ReasonCode};
use rookery_testkit::{
    Process, RawClient, Read, Watchdog, clean_v5, free_port, http_request, http_status,
    persistent_v5, publish_packet,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::harness::{Cluster, FAILOVER, QUIET, Roles, START_TIMEOUT, within};
use crate::traffic::await_route;

/// How long one `rookery ctl` may run.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// What one `rookery ctl` run did.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn binary() -> PathBuf {
    std::env::var_os("ROOKERY_CLUSTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rookery")))
}

/// Runs `rookery` with `args`, bounded.
async fn rookery(args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).kill_on_drop(true).env("NO_COLOR", "1");
    let output = tokio::time::timeout(CTL_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("rookery {args:?} did not end within {CTL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run rookery {args:?}: {e}"));
    let run = Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("$ rookery {}\n{}{}", args.join(" "), run.stdout, run.stderr);
    run
}

/// `rookery ctl --url URL args...`.
async fn ctl(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["ctl", "--url", url];
    all.extend_from_slice(args);
    rookery(&all).await
}

/// `rookery ctl`, which must succeed; its output.
async fn ctl_ok(url: &str, args: &[&str]) -> String {
    let run = ctl(url, args).await;
    assert!(run.ok, "rookery ctl {args:?} failed: {}", run.stderr);
    run.stdout
}

/// `rookery ctl`, which must fail with `status` (the API's HTTP status);
/// its error message.
async fn ctl_fails(url: &str, args: &[&str], status: u16) -> String {
    let run = ctl(url, args).await;
    assert!(!run.ok, "rookery ctl {args:?} succeeded: {}", run.stdout);
    assert!(
        run.stderr.contains(&format!("(HTTP {status})")),
        "rookery ctl {args:?}: expected HTTP {status}, got {}",
        run.stderr
    );
    run.stderr
}

/// `rookery ctl --json`, parsed.
async fn ctl_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl_ok(url, &all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Polls `check` until it gives a value, for up to [`FAILOVER`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + FAILOVER;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {FAILOVER:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The API's URL on cluster node `i`.
fn url(cluster: &Cluster, i: usize) -> String {
    let http = cluster
        .node(i)
        .listener("http")
        .unwrap_or_else(|| panic!("node {i} reported no HTTP listener"));
    format!("http://{http}")
}

/// The rows of a table (without its header and the `more:` line) whose
/// first column is `first`.
fn rows_of<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(first))
        .collect()
}

/// Whether `clients show` / `sessions show` printed `label` with `value`.
fn has_field(text: &str, label: &str, value: &str) -> bool {
    let line = format!("{label:<20}{value}");
    text.lines().any(|printed| printed == line)
}

/// The first column of every row of a table, and the cursor it ends with.
fn first_column(table: &str) -> (Vec<String>, Option<String>) {
    let mut cursor = None;
    let mut items = Vec::new();
    for (n, line) in table.lines().enumerate() {
        if let Some(next) = line.strip_prefix("more: --cursor ") {
            cursor = Some(next.trim().to_owned());
        } else if n > 0
            && line != "(none)"
            && let Some(first) = line.split_whitespace().next()
        {
            items.push(first.to_owned());
        }
    }
    (items, cursor)
}

/// The `items` of a page printed with --json.
fn items(page: &Value) -> &[Value] {
    page["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Publishes a retained QoS 1 message and waits for its PUBACK.
async fn retain(client: &mut RawClient, id: u16, topic: &str, payload: &str) {
    let mut publish = publish_packet(topic, QoS::AtLeastOnce, id, payload.as_bytes());
    publish.retain = true;
    client.send(Packet::Publish(publish)).await;
    client.expect_puback().await;
}

/// Every PUBLISH that arrives within [`QUIET`]: (topic, payload).
async fn publishes_within_quiet(client: &mut RawClient) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.read(left).await {
            Read::Packet(Packet::Publish(publish)) => {
                client.ack(&publish).await;
                seen.push((
                    publish.topic.to_string(),
                    String::from_utf8_lossy(&publish.payload).into_owned(),
                ));
            }
            Read::Packet(_) => {}
            Read::Nothing => return seen,
            Read::Closed(why) => panic!("the subscriber was closed: {why}"),
        }
    }
}

/// Every command against a live cluster of three nodes (and a fourth, a
/// learner whose HTTP listener is off loopback): cluster status and
/// membership, clients (listed, shown with their edge's live figures,
/// kicked and reconnecting), sessions (an offline one listed and deleted),
/// subscriptions, retained messages (one deleted on every node), paging
/// that returns every item exactly once, the log filter, and the bearer
/// token off loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_runs_every_command_against_a_live_cluster() {
    let mut cluster = Cluster::start(3);
    let urls: Vec<String> = (1..=3).map(|i| url(&cluster, i)).collect();
    let (n1, n2, n3) = (urls[0].as_str(), urls[1].as_str(), urls[2].as_str());
    within(Duration::from_secs(300), async {
        // ---- cluster status ------------------------------------------
        let status = ctl_ok(n2, &["cluster", "status"]).await;
        assert!(status.starts_with("leader: node "), "{status}");
        assert!(status.contains("NODE  ADDRESS"), "{status}");
        for node in ["1", "2", "3"] {
            let rows = rows_of(&status, node);
            assert_eq!(rows.len(), 1, "node {node}: {status}");
            assert!(rows[0].contains(" voter "), "{status}");
        }
        let json = ctl_json(n3, &["cluster", "status"]).await;
        let nodes = json["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "{json}");
        for node in nodes {
            assert_eq!(node["reachable"], true, "{json}");
            assert!(node["applied_index"].as_u64().unwrap_or(0) > 0, "{json}");
            assert!(node["lag"].is_u64(), "{json}");
        }
        assert!(json["leader_id"].is_u64(), "{json}");

        // ---- clients ---------------------------------------------------
        let (mut kicked, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), persistent_v5("kick-me", 600)).await;
        kicked.subscribe_ok(1, "kick/#", QoS::AtLeastOnce).await;
        let (mut watcher, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v5("watch-me")).await;
        watcher.subscribe_ok(1, "w/#", QoS::AtLeastOnce).await;
        let (mut publisher, _) =
            RawClient::connect_ok(cluster.node(3).mqtt_addr(), clean_v5("publisher")).await;
        // Two QoS 1 messages the watcher reads and never acknowledges: in
        // flight at its edge.
        await_route(cluster.node(3).mqtt_addr(), &mut watcher, "w/probe").await;
        publisher.publish1(2, "w/1", b"one").await;
        publisher.publish1(3, "w/2", b"two").await;
        let mut unacknowledged = BTreeSet::new();
        while unacknowledged.len() < 2 {
            let publish = watcher.expect_publish().await;
            if publish.topic != "w/probe" {
                unacknowledged.insert(publish.topic.to_string());
            }
        }

        let listed = eventually("both clients listed on node 3", async || {
            let table = ctl_ok(n3, &["clients", "list"]).await;
            (table.contains("kick-me") && table.contains("watch-me")).then_some(table)
        })
        .await;
        assert!(listed.starts_with("CLIENT  "), "{listed}");
        let kick_row = rows_of(&listed, "kick-me");
        assert!(kick_row[0].contains("rookery-1."), "{listed}");
        assert!(kick_row[0].contains(" 5.0 "), "{listed}");
        let on_two = ctl_ok(n3, &["clients", "list", "--edge", "rookery-2"]).await;
        assert_eq!(rows_of(&on_two, "watch-me").len(), 1, "{on_two}");
        assert!(rows_of(&on_two, "kick-me").is_empty(), "{on_two}");
        // The connection flags may follow the command too.
        let matched = rookery(&["ctl", "clients", "list", "--match", "kick*", "--url", n3]).await;
        assert!(matched.ok, "{}", matched.stderr);
        assert_eq!(
            first_column(&matched.stdout).0,
            ["kick-me"],
            "{}",
            matched.stdout
        );

        // Node 1 asks node 2's edge, over its forwarding port, what only it
        // knows: two messages in flight.
        let shown = eventually("watch-me's two messages in flight", async || {
            let shown = ctl_json(n1, &["clients", "show", "watch-me"]).await;
            (shown["in_flight"] == 2).then_some(shown)
        })
        .await;
        assert_eq!(shown["online"], true, "{shown}");
        assert_eq!(shown["protocol"], "5.0", "{shown}");
        assert_eq!(shown["listener"], "tcp", "{shown}");
        assert_eq!(shown["keep_alive_s"], 60, "{shown}");
        assert!(
            shown["address"].as_str().is_some_and(|a| a.contains(':')),
            "{shown}"
        );
        assert!(shown["connected_at"].is_string(), "{shown}");
        assert_eq!(shown["subscriptions"][0]["filter"], "w/#", "{shown}");
        let table = ctl_ok(n1, &["clients", "show", "watch-me"]).await;
        assert!(has_field(&table, "in flight", "2"), "{table}");
        assert!(table.contains("w/#"), "{table}");
        ctl_fails(n1, &["clients", "show", "nobody"], 404).await;

        // A kick closes the connection with 0x98; the client comes back to
        // its session.
        let kick = ctl_ok(n3, &["clients", "kick", "kick-me"]).await;
        assert!(kick.starts_with("kicked client kick-me"), "{kick}");
        kicked
            .expect_disconnect(ReasonCode::AdministrativeAction)
            .await;
        let (mut back, connack) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), persistent_v5("kick-me", 600)).await;
        assert!(connack.session_present, "the kicked client's session stays");
        back.try_ping().await.expect("the kicked client is back");
        ctl_fails(n3, &["clients", "kick", "nobody"], 404).await;

        // ---- sessions ----------------------------------------------------
        let (offline, _) = RawClient::connect_ok(
            cluster.node(1).mqtt_addr(),
            persistent_v5("offline-1", 3600),
        )
        .await;
        let mut offline = offline;
        offline.subscribe_ok(1, "off/#", QoS::AtLeastOnce).await;
        offline.disconnect().await;
        // From the edge the session left: its routes there need no wait.
        let (mut local, _) =
            RawClient::connect_ok(cluster.node(1).mqtt_addr(), clean_v5("local")).await;
        local.publish1(1, "off/1", b"waiting").await;
        let listed = eventually("offline-1 listed with its queued message", async || {
            let table = ctl_ok(n2, &["sessions", "list", "--match", "offline"]).await;
            let row = rows_of(&table, "offline-1")
                .first()
                .map(|row| row.to_string())?;
            (row.contains("offline") && row.ends_with(" 1")).then_some(table)
        })
        .await;
        assert_eq!(first_column(&listed).0, ["offline-1"], "{listed}");
        let shown = ctl_ok(n2, &["sessions", "show", "offline-1"]).await;
        assert!(has_field(&shown, "state", "offline"), "{shown}");
        assert!(has_field(&shown, "queued (store)", "1"), "{shown}");
        assert!(shown.contains("off/#"), "{shown}");
        let deleted = ctl_ok(n2, &["sessions", "delete", "offline-1"]).await;
        assert_eq!(deleted.trim(), "deleted session offline-1");
        let after = ctl_ok(n2, &["sessions", "list", "--match", "offline"]).await;
        assert_eq!(after.trim(), "(none)");
        ctl_fails(n2, &["sessions", "show", "offline-1"], 404).await;
        ctl_fails(n2, &["sessions", "delete", "offline-1"], 404).await;
        // Its session and queue are gone everywhere.
        let (mut fresh, connack) = RawClient::connect_ok(
            cluster.node(3).mqtt_addr(),
            persistent_v5("offline-1", 3600),
        )
        .await;
        assert!(!connack.session_present, "the deleted session came back");
        fresh.expect_nothing().await;
        fresh.disconnect().await;
        // Deleting an online session disconnects its client.
        let deleted = ctl_ok(n1, &["sessions", "delete", "kick-me"]).await;
        assert!(
            deleted.starts_with("deleted session kick-me (it was online on rookery-2."),
            "{deleted}"
        );
        back.expect_disconnect(ReasonCode::AdministrativeAction)
            .await;

        // ---- subscriptions -----------------------------------------------
        let subscriptions = eventually("watch-me's subscription listed", async || {
            let table = ctl_ok(n1, &["subscriptions", "list", "--topic", "w/#"]).await;
            table.contains("watch-me").then_some(table)
        })
        .await;
        assert_eq!(
            first_column(&subscriptions).0,
            ["watch-me"],
            "{subscriptions}"
        );
        assert!(rows_of(&subscriptions, "watch-me")[0].contains("rookery-2."));
        let of_client = ctl_ok(n1, &["subscriptions", "list", "--client", "watch-me"]).await;
        assert!(
            rows_of(&of_client, "watch-me")[0].contains(" w/# "),
            "{of_client}"
        );
        let all = ctl_json(n1, &["subscriptions", "list", "--all"]).await;
        assert!(items(&all).iter().any(|s| s["filter"] == "w/#"), "{all}");

        // ---- retained messages -----------------------------------------
        retain(&mut publisher, 5, "ret/a", "alpha").await;
        retain(&mut publisher, 6, "ret/b", "beta").await;
        let listed = eventually("both retained messages on node 2", async || {
            let table = ctl_ok(n2, &["retained", "list", "ret/#"]).await;
            (first_column(&table).0.len() == 2).then_some(table)
        })
        .await;
        assert!(rows_of(&listed, "ret/a")[0].ends_with("alpha"), "{listed}");
        let got = ctl_ok(n2, &["retained", "get", "ret/a"]).await;
        assert!(got.ends_with("payload\nalpha\n"), "{got}");
        let deleted = ctl_ok(n2, &["retained", "delete", "ret/a"]).await;
        assert_eq!(deleted.trim(), "deleted the retained message of ret/a");
        ctl_fails(n2, &["retained", "get", "ret/a"], 404).await;
        ctl_fails(n2, &["retained", "delete", "ret/a"], 404).await;
        // Every edge dropped its copy: a new subscriber on node 3 gets
        // only ret/b.
        eventually("node 3 applied the deletion", async || {
            let page = ctl_json(n3, &["retained", "list", "ret/#"]).await;
            (items(&page).len() == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut late, _) =
            RawClient::connect_ok(cluster.node(3).mqtt_addr(), clean_v5("late")).await;
        late.subscribe_ok(1, "ret/#", QoS::AtLeastOnce).await;
        assert_eq!(
            publishes_within_quiet(&mut late).await,
            [("ret/b".to_owned(), "beta".to_owned())]
        );

        // ---- paging: every item once, over several pages ---------------
        for n in 0..25u16 {
            retain(&mut publisher, 100 + n, &format!("page/{n:02}"), "p").await;
        }
        eventually("25 retained pages on node 2", async || {
            let page = ctl_json(n2, &["retained", "list", "page/#", "--all"]).await;
            (items(&page).len() == 25).then_some(())
        })
        .await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut args = vec!["retained", "list", "page/#", "--limit", "7"];
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let table = ctl_ok(n2, &args).await;
            let (topics, next) = first_column(&table);
            assert!(topics.len() <= 7, "{table}");
            seen.extend(topics);
            pages += 1;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|n| format!("page/{n:02}")).collect();
        assert_eq!(seen, expected, "every topic exactly once, in order");
        assert_eq!(pages, 4);

        for n in 0..12 {
            let (client, _) = RawClient::connect_ok(
                cluster.node(3).mqtt_addr(),
                persistent_v5(&format!("pg-{n:02}"), 3600),
            )
            .await;
            client.disconnect().await;
        }
        eventually("12 sessions on node 1", async || {
            let page = ctl_json(n1, &["sessions", "list", "--match", "pg-*", "--all"]).await;
            (items(&page).len() == 12).then_some(())
        })
        .await;
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut args = vec!["sessions", "list", "--match", "pg-*", "--limit", "5"];
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let page = ctl_json(n1, &args).await;
            assert!(items(&page).len() <= 5, "{page}");
            ids.extend(
                items(&page)
                    .iter()
                    .map(|s| s["client_id"].as_str().unwrap_or_default().to_owned()),
            );
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{ids:?}");
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!((ids.len(), unique.len()), (12, 12), "{ids:?}");
        ctl_fails(n1, &["sessions", "list", "--cursor", "not-a-cursor"], 400).await;

        // ---- the log filter, on node 2 only --------------------------------
        let set = ctl_ok(n2, &["log-level", "set", "debug"]).await;
        assert!(set.starts_with("log filter: debug (was "), "{set}");
        assert_eq!(
            ctl_ok(n2, &["log-level", "get"]).await.trim(),
            "log filter: debug"
        );
        let (probe, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v5("debug-probe")).await;
        probe.disconnect().await;
        eventually("a debug line in node 2's log", async || {
            let log = cluster.node(2).log();
            log.lines()
                .any(|line| line.contains("DEBUG") && line.contains("debug-probe"))
                .then_some(())
        })
        .await;
        ctl_fails(n2, &["log-level", "set", "no[such"], 400).await;
        ctl_ok(n2, &["log-level", "set", "info,openraft=warn"]).await;
        let (quiet, _) =
            RawClient::connect_ok(cluster.node(2).mqtt_addr(), clean_v5("quiet-probe")).await;
        quiet.disconnect().await;
        tokio::time::sleep(QUIET).await;
        assert!(
            !cluster.node(2).log().contains("quiet-probe"),
            "debug lines after the filter went back to info"
        );

        // ---- errors are JSON with their status ---------------------------
        let http = cluster
            .node(1)
            .listener("http")
            .expect("node 1's HTTP listener");
        for (method, path, status) in [
            ("GET", "/api/v1/clients/%FF", 400),
            ("POST", "/api/v1/clients", 405),
            ("GET", "/api/v1/sessions?limit=many", 400),
            ("GET", "/api/v1/sessions?colour=blue", 400),
            ("GET", "/api/v1/retained?filter=a/%23/b", 400),
            ("GET", "/api/v1/no-such-route", 404),
        ] {
            let answer = http_request(http, method, path, &[]).await.unwrap();
            assert_eq!(http_status(&answer), status, "{method} {path}: {answer}");
            assert!(answer.contains(r#"{"error":"#), "{method} {path}: {answer}");
        }

        // ---- membership, and a node whose API is off loopback ------------
        let tokens = tempfile::tempdir().expect("a directory for token files");
        let token = tokens.path().join("admin.token");
        std::fs::write(&token, "ctl-test-token-0123456789\n").expect("write the token");
        let wrong = tokens.path().join("wrong.token");
        std::fs::write(&wrong, "ctl-test-token-9876543210\n").expect("write a wrong token");
        let http_port = free_port(Ipv4Addr::UNSPECIFIED);
        let extra = format!(
            "[http]\nlisten = \"0.0.0.0:{http_port}\"\nadmin_token_file = {:?}\n",
            token.display().to_string()
        );
        let four = cluster.add_node_with(Roles::Store, "voter = false", &extra);
        let n4 = format!("http://127.0.0.1:{http_port}");
        let refused = ctl_fails(&n4, &["cluster", "status"], 401).await;
        assert!(refused.contains("bearer token"), "{refused}");
        let token_arg = token.display().to_string();
        let wrong_arg = wrong.display().to_string();
        ctl_fails(&n4, &["--token-file", &wrong_arg, "cluster", "status"], 401).await;
        let status = ctl_ok(&n4, &["--token-file", &token_arg, "cluster", "status"]).await;
        assert!(rows_of(&status, "4")[0].contains(" learner "), "{status}");
        // --config gives both the URL and the token.
        let config = cluster.node(four).config_path().display().to_string();
        let status = rookery(&["ctl", "--config", &config, "cluster", "status"]).await;
        assert!(status.ok, "{}", status.stderr);
        assert!(status.stdout.contains(" learner "), "{}", status.stdout);

        let store4 = cluster.node(four).store_addr().to_string();
        let added = ctl_ok(n1, &["cluster", "add-voter", "4"]).await;
        assert!(added.starts_with("node 4 is a voter"), "{added}");
        let status = ctl_ok(n2, &["cluster", "status"]).await;
        assert!(rows_of(&status, "4")[0].contains(" voter "), "{status}");
        let removed = ctl_ok(n3, &["cluster", "remove", "4"]).await;
        assert!(removed.starts_with("removed node 4"), "{removed}");
        let status = ctl_ok(n3, &["cluster", "status"]).await;
        assert!(rows_of(&status, "4").is_empty(), "{status}");
        let added = ctl_ok(n1, &["cluster", "add-learner", "4", "--address", &store4]).await;
        assert!(added.starts_with("node 4 is a learner"), "{added}");
        let status = ctl_ok(n1, &["cluster", "status"]).await;
        assert!(rows_of(&status, "4")[0].contains(" learner "), "{status}");
        let refused = ctl_fails(n1, &["cluster", "add-voter", "9"], 400).await;
        assert!(refused.contains("not in the group"), "{refused}");
        ctl_fails(n1, &["cluster", "remove", "9"], 404).await;
        ctl_ok(n1, &["cluster", "remove", "4"]).await;
        cluster.node_mut(four).sigterm();

        // ---- the leadership handed to another voter ---------------------
        let status = ctl_json(n1, &["cluster", "status"]).await;
        let leader = status["leader_id"].as_u64().expect("a leader");
        let next = if leader == 3 { 2 } else { 3 };
        let next_arg = next.to_string();
        let moved = ctl_ok(n1, &["cluster", "transfer-leader", &next_arg]).await;
        assert!(
            moved.starts_with(&format!("node {next} leads now")),
            "{moved}"
        );
        eventually("every node names the new leader", async || {
            for url in [n1, n2, n3] {
                let status = ctl_json(url, &["cluster", "status"]).await;
                if status["leader_id"].as_u64() != Some(next) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        ctl_fails(n1, &["cluster", "transfer-leader", "9"], 409).await;
    })
    .await;
}

/// A `rookery serve` of its own, outside any [`Cluster`]: the restored
/// group's nodes.
struct Standalone {
    process: Process,
    _dir: tempfile::TempDir,
    http: SocketAddr,
    store: SocketAddr,
}

impl Standalone {
    /// Starts node `id` on `127.0.0.{id}` with `data_dir`, naming `seeds`,
    /// and waits until it is ready.
    fn start(id: u8, data_dir: &Path, seeds: &[SocketAddr]) -> Standalone {
        let ip = Ipv4Addr::new(127, 0, 0, id);
        Standalone::start_at(id, data_dir, free_port(ip), seeds)
    }

    /// [`Standalone::start`] with the store on `store_port`.
    fn start_at(id: u8, data_dir: &Path, store_port: u16, seeds: &[SocketAddr]) -> Standalone {
        let ip = Ipv4Addr::new(127, 0, 0, id);
        let dir = tempfile::Builder::new()
            .prefix(&format!("rookery-ctl-n{id}-"))
            .tempdir()
            .expect("the node's directory");
        let store = SocketAddr::from((ip, store_port));
        let http = SocketAddr::from((ip, free_port(ip)));
        let mut all_seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        all_seeds.push(format!("\"{store}\""));
        let toml = format!(
            "node_id = {id}\ndata_dir = {:?}\n\n[store]\nlisten = \"{store}\"\n\n[cluster]\n\
             seeds = [{}]\nbootstrap_expect = 1\nforward_listen = \"{ip}:0\"\n\n[http]\n\
             listen = \"{http}\"\n",
            data_dir.display().to_string(),
            all_seeds.join(", ")
        );
        let config = dir.path().join("rookery.toml");
        std::fs::write(&config, toml).expect("write rookery.toml");
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(SocketAddr::from((ip, 0)).to_string())
            .env("NO_COLOR", "1");
        let mut process = Process::new();
        process.spawn(&mut command, dir.path(), Watchdog::Kill);
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while !(process.is_ready() && process.listener("tcp").is_some()) {
            if let Err(why) = process.check_running() {
                panic!("node {id} did not start: {why}\n{}", process.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} was not ready within {START_TIMEOUT:?}:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Standalone {
            process,
            _dir: dir,
            http,
            store,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn mqtt(&self) -> SocketAddr {
        self.process
            .listener("tcp")
            .expect("the node's MQTT listener")
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- standalone node log ----\n{}", self.process.log());
        }
        self.process.sigterm();
    }
}

/// `rookery ctl backup` writes a checkpoint of a store replica;
/// `rookery restore` makes it a new group of one voter that serves the
/// backup's retained messages and sessions (with their queued messages),
/// and that another node joins (receiving the state as a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_group_that_others_join() {
    let work = tempfile::tempdir().expect("a work directory");
    let backup = work.path().join("backup");
    let backup_arg = backup.display().to_string();
    {
        let cluster = Cluster::start(3);
        let n2 = url(&cluster, 2);
        within(Duration::from_secs(120), async {
            let (mut keeper, _) =
                RawClient::connect_ok(cluster.node(1).mqtt_addr(), persistent_v5("keeper", 3600))
                    .await;
            keeper.subscribe_ok(1, "keep/#", QoS::AtLeastOnce).await;
            keeper.disconnect().await;
            let (mut publisher, _) =
                RawClient::connect_ok(cluster.node(3).mqtt_addr(), clean_v5("publisher")).await;
            publisher.publish1(1, "keep/1", b"queued for keeper").await;
            retain(&mut publisher, 2, "restore/me", "still here").await;
            // Node 2 backs up what it has applied: wait until that is all.
            eventually(
                "node 2 applied the session and the retained message",
                async || {
                    let session = ctl_json(&n2, &["sessions", "show", "keeper"]).await;
                    let retained = ctl(&n2, &["retained", "get", "restore/me"]).await;
                    (session["store_queued"] == 1 && retained.ok).then_some(())
                },
            )
            .await;
            let written = ctl_ok(&n2, &["backup", &backup_arg]).await;
            assert!(
                written.starts_with("backup of node 2 (applied index "),
                "{written}"
            );
            assert!(
                written
                    .trim_end()
                    .ends_with(&format!("written to {backup_arg} on that node"))
            );
            assert!(backup.join("BACKUP").is_file() && backup.join("rocksdb").is_dir());
            let again = ctl_fails(&n2, &["backup", &backup_arg], 409).await;
            assert!(again.contains("exists already"), "{again}");
        })
        .await;
    }

    // The old cluster is gone; node 1 of the new group starts from the
    // backup, at its own address.
    let data = work.path().join("restored");
    let ip = Ipv4Addr::new(127, 0, 0, 1);
    let store_port = free_port(ip);
    let store_address = SocketAddr::from((ip, store_port)).to_string();
    let restored = rookery(&[
        "restore",
        "--from",
        &backup_arg,
        "--data-dir",
        &data.display().to_string(),
        "--node-id",
        "1",
        "--store-address",
        &store_address,
    ])
    .await;
    assert!(restored.ok, "{}", restored.stderr);
    assert!(
        restored
            .stdout
            .starts_with("restored the backup of node 2 "),
        "{}",
        restored.stdout
    );
    assert!(
        restored.stdout.contains(" 1 retained topics"),
        "{}",
        restored.stdout
    );
    let data_arg = data.display().to_string();
    let again = rookery(&[
        "restore",
        "--from",
        &backup_arg,
        "--data-dir",
        &data_arg,
        "--node-id",
        "1",
        "--store-address",
        &store_address,
    ])
    .await;
    assert!(
        !again.ok && again.stderr.contains("not empty"),
        "{}",
        again.stderr
    );

    within(Duration::from_secs(120), async {
        // The restored node listens where it was restored for.
        let first = Standalone::start_at(1, &data, store_port, &[]);
        let status = ctl_ok(&first.url(), &["cluster", "status"]).await;
        assert!(status.starts_with("leader: node 1 at "), "{status}");
        let members: Vec<&str> = status
            .lines()
            .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert_eq!(members.len(), 1, "one voter: {status}");
        assert!(
            members[0].contains(" voter ") && members[0].contains(" leader "),
            "{status}"
        );
        let sessions = ctl_ok(&first.url(), &["sessions", "list"]).await;
        assert!(
            rows_of(&sessions, "keeper")[0].contains("offline"),
            "{sessions}"
        );

        let (mut reader, _) = RawClient::connect_ok(first.mqtt(), clean_v5("reader")).await;
        reader.subscribe_ok(1, "restore/#", QoS::AtLeastOnce).await;
        assert_eq!(
            publishes_within_quiet(&mut reader).await,
            [("restore/me".to_owned(), "still here".to_owned())]
        );
        let (mut keeper, connack) =
            RawClient::connect_ok(first.mqtt(), persistent_v5("keeper", 3600)).await;
        assert!(connack.session_present, "the restored session resumes");
        let queued = keeper.receive().await;
        assert_eq!(&queued.payload[..], b"queued for keeper");
        keeper.disconnect().await;

        // Another node joins the new group and serves the restored state.
        let second_data = work.path().join("second");
        let second = Standalone::start(2, &second_data, &[first.store]);
        let status = eventually("node 2 is a voter of the new group", async || {
            let status = ctl_ok(&second.url(), &["cluster", "status"]).await;
            let row = rows_of(&status, "2").first().map(|row| row.to_string())?;
            row.contains(" voter ").then_some(status)
        })
        .await;
        assert!(status.starts_with("leader: node 1 at "), "{status}");
        let (mut joined, _) = RawClient::connect_ok(second.mqtt(), clean_v5("joined")).await;
        joined.subscribe_ok(1, "restore/#", QoS::AtLeastOnce).await;
        assert_eq!(
            publishes_within_quiet(&mut joined).await,
            [("restore/me".to_owned(), "still here".to_owned())]
        );
    })
    .await;
}
