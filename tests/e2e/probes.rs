//! The node's HTTP listener (issue 16): the probes `/healthz` and `/readyz`
//! answer with a JSON body naming each check, `/metrics` serves the
//! Prometheus text format, any other path is 404, and off loopback the
//! admin API needs the bearer token while the probes stay open.

use std::net::{Ipv4Addr, SocketAddr};

use rookery_testkit::{free_port, http_get, http_request, http_status};

use crate::harness::{Broker, Settings, skip_unless_rookery};

/// The body of a whole HTTP/1.1 response.
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn http(broker: &Broker) -> SocketAddr {
    broker
        .listener("metrics")
        .expect("the broker's HTTP listener")
}

#[tokio::test]
async fn a_serving_node_is_live_and_ready_and_says_which_checks_passed() {
    if skip_unless_rookery("Rookery's probes") {
        return;
    }
    let broker = Broker::start_with(Settings::default());
    let live = http_get(http(&broker), "/healthz").await.unwrap();
    assert_eq!(http_status(&live), 200, "{live}");
    assert!(body(&live).contains(r#""status":"ok""#), "{live}");
    assert!(live.contains("content-type: application/json"), "{live}");

    let ready = http_get(http(&broker), "/readyz").await.unwrap();
    assert_eq!(http_status(&ready), 200, "{ready}");
    // A node with both roles: the store replica knows its leader and the
    // edge reaches the store's quorum.
    for check in [
        r#""name":"store""#,
        r#""name":"edge""#,
        r#""name":"listeners""#,
    ] {
        assert!(body(&ready).contains(check), "{check} in {ready}");
    }
    assert!(!body(&ready).contains(r#""ok":false"#), "{ready}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_other_paths_are_not_found() {
    if skip_unless_rookery("Rookery's HTTP listener") {
        return;
    }
    let broker = Broker::start_with(Settings::default());
    let metrics = http_get(http(&broker), "/metrics").await.unwrap();
    assert_eq!(http_status(&metrics), 200, "{metrics}");
    assert!(
        metrics.contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    assert!(metrics.contains("rookery_build_info"), "{metrics}");

    // The exporter this replaced answered every path with 200.
    for path in ["/", "/metricsx", "/health", "/api/v1/no-such-thing"] {
        let answer = http_get(http(&broker), path).await.unwrap();
        assert_eq!(http_status(&answer), 404, "{path}: {answer}");
        assert!(body(&answer).contains(r#""error""#), "{path}: {answer}");
    }
}

/// A broker whose HTTP listener is on every interface, so off loopback.
fn broker_off_loopback(token: Option<&str>) -> (Broker, SocketAddr) {
    let port = free_port(Ipv4Addr::UNSPECIFIED);
    let mut settings = Settings {
        http_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        ..Settings::default()
    };
    if let Some(token) = token {
        settings.files = vec![("admin.token".into(), format!("{token}\n").into_bytes())];
        settings.extra_toml = Some("\n[http]\nadmin_token_file = \"{dir}/admin.token\"\n".into());
    }
    let broker = Broker::start_with(settings);
    (broker, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

#[tokio::test]
async fn off_loopback_the_admin_api_refuses_everything_without_a_token_configured() {
    if skip_unless_rookery("Rookery's admin API") {
        return;
    }
    let (_broker, http) = broker_off_loopback(None);
    let refused = http_get(http, "/api/v1/cluster").await.unwrap();
    assert_eq!(http_status(&refused), 403, "{refused}");
    assert!(refused.contains("admin_token_file"), "{refused}");
    // Kubernetes' probes and Prometheus need no credentials.
    let live = http_get(http, "/healthz").await.unwrap();
    assert_eq!(http_status(&live), 200, "{live}");
    let metrics = http_get(http, "/metrics").await.unwrap();
    assert_eq!(http_status(&metrics), 200, "{metrics}");
}

#[tokio::test]
async fn off_loopback_the_admin_api_needs_the_bearer_token() {
    if skip_unless_rookery("Rookery's admin API") {
        return;
    }
    let token = "e2e-admin-token-0123456789";
    let (_broker, http) = broker_off_loopback(Some(token));
    let anonymous = http_get(http, "/api/v1/cluster").await.unwrap();
    assert_eq!(http_status(&anonymous), 401, "{anonymous}");
    assert!(
        anonymous.contains("www-authenticate: Bearer"),
        "{anonymous}"
    );
    let wrong = http_request(
        http,
        "GET",
        "/api/v1/cluster",
        &[("Authorization", "Bearer e2e-admin-token-9876543210")],
    )
    .await
    .unwrap();
    assert_eq!(http_status(&wrong), 401, "{wrong}");
    let bearer = format!("Bearer {token}");
    let admitted = http_request(
        http,
        "GET",
        "/api/v1/cluster",
        &[("Authorization", bearer.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(http_status(&admitted), 200, "{admitted}");
    assert!(admitted.contains(r#""leader_id":1"#), "{admitted}");
}

/// `rookery ctl health [--ready]`, the container image's HEALTHCHECK: its
/// exit status and what it printed.
fn ctl_health(url: &str, ready: bool) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"));
    command.args(["ctl", "--url", url, "health"]);
    if ready {
        command.arg("--ready");
    }
    let output = command.output().expect("run rookery ctl health");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test]
async fn rookery_ctl_health_exits_0_for_a_live_ready_node_and_1_where_none_answers() {
    if skip_unless_rookery("rookery ctl health") {
        return;
    }
    let broker = Broker::start_with(Settings::default());
    let url = format!("http://{}", http(&broker));
    let (live, text) = ctl_health(&url, false);
    assert_eq!(live, Some(0), "{text}");
    assert!(text.starts_with("/healthz: ok"), "{text}");
    let (ready, text) = ctl_health(&url, true);
    assert_eq!(ready, Some(0), "{text}");
    assert!(text.starts_with("/readyz: ok"), "{text}");
    assert!(text.contains("  store: "), "each check is named: {text}");

    let nobody = format!("http://127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
    let (status, text) = ctl_health(&nobody, true);
    assert_eq!(status, Some(1), "{text}");
    assert!(text.contains("cannot reach"), "{text}");
}
