//! Reading a process's Prometheus endpoint: a bounded HTTP/1.1 GET (no HTTP
//! client library: one request, `Connection: close`, read to the end) and
//! the lookup of one series in the text exposition.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// Why a GET gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection, the request or the response failed.
    #[error("{url}: {source}")]
    Io {
        /// What was asked for.
        url: String,
        /// What failed.
        source: io::Error,
    },
    /// No whole answer within the bound.
    #[error("{url}: no answer in {limit:?}")]
    Timeout {
        /// What was asked for.
        url: String,
        /// How long it waited.
        limit: Duration,
    },
    /// The answer was not `200 OK`.
    #[error("{url}: not 200 OK:\n{response}")]
    NotOk {
        /// What was asked for.
        url: String,
        /// The whole response.
        response: String,
    },
}

/// A plain HTTP/1.1 GET bounded by [`TIMEOUT`]; the whole response (status
/// line, headers, body), whatever its status.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String, HttpError> {
    http_request(addr, "GET", path, &[]).await
}

/// An HTTP/1.1 request without a body, with `headers` (`("Authorization",
/// "Bearer ...")`), bounded by [`TIMEOUT`]; the whole response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String, HttpError> {
    let url = format!("{method} http://{addr}{path}");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(source)) => Err(HttpError::Io { url, source }),
        Err(_) => Err(HttpError::Timeout {
            url,
            limit: TIMEOUT,
        }),
    }
}

/// The status code of a whole HTTP/1.1 response; 0 if it has none.
pub fn http_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The `/metrics` response of the exporter at `addr`, which must be
/// `200 OK`.
pub async fn scrape(addr: SocketAddr) -> Result<String, HttpError> {
    let response = http_get(addr, "/metrics").await?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(response)
    } else {
        Err(HttpError::NotOk {
            url: format!("GET http://{addr}/metrics"),
            response,
        })
    }
}

/// The value of one series on the exporter at `addr` ([`find_series`]),
/// e.g. `rookery_store_leader_id` or
/// `rookery_messages_dropped_total{reason="queue_full"}`; 0 when the process
/// has not reported it (yet).
pub async fn metric(addr: SocketAddr, series: &str) -> Result<f64, HttpError> {
    Ok(find_series(&scrape(addr).await?, series).unwrap_or(0.0))
}

/// The value of `series` in a Prometheus text exposition: the line whose
/// series is exactly `series`, or, for a name without labels that has no
/// such line, the sum of the lines of that name with labels (what
/// `sum(name)` gives: `rookery_messages_received_total` of every QoS).
pub fn find_series(body: &str, series: &str) -> Option<f64> {
    let samples = body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '));
    let mut labelled: Option<f64> = None;
    for (name, value) in samples {
        if name == series {
            return value.parse().ok();
        }
        if !series.contains('{')
            && name.split_once('{').is_some_and(|(bare, _)| bare == series)
            && let Ok(value) = value.parse::<f64>()
        {
            labelled = Some(labelled.unwrap_or(0.0) + value);
        }
    }
    labelled
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn metrics_are_found_with_and_without_labels() {
        let body = "HTTP/1.1 200 OK\r\n\r\n# TYPE rookery_store_leader_id gauge\n\
                    rookery_store_leader_id 3\n\
                    rookery_store_is_leader{node=\"2\"} 1\n\
                    rookery_connections{listener=\"tcp\"} 4\n";
        assert_eq!(find_series(body, "rookery_store_leader_id"), Some(3.0));
        assert_eq!(find_series(body, "rookery_store_is_leader"), Some(1.0));
        assert_eq!(
            find_series(body, "rookery_connections{listener=\"tcp\"}"),
            Some(4.0)
        );
        assert_eq!(
            find_series(body, "rookery_connections{listener=\"ws\"}"),
            None
        );
        assert_eq!(find_series(body, "rookery_missing"), None);
    }

    #[test]
    fn a_bare_name_sums_its_labelled_series() {
        let body = "rookery_m_total{qos=\"0\"} 1\nrookery_m_total{qos=\"1\"} 2\n\
                    rookery_m_total{qos=\"2\"} 4\nrookery_other 9\n";
        assert_eq!(find_series(body, "rookery_m_total"), Some(7.0));
        assert_eq!(find_series(body, "rookery_m_total{qos=\"1\"}"), Some(2.0));
    }

    #[test]
    fn an_exact_series_wins_over_a_labelled_one_before_it() {
        let body = "rookery_x{a=\"1\"} 7\nrookery_x 2\n";
        assert_eq!(find_series(body, "rookery_x"), Some(2.0));
    }

    /// Serves one connection at a fresh address with `response`.
    async fn serve_once(response: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            stream.write_all(response.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_metric_is_read_from_a_200_response_and_is_0_when_absent() {
        let body = "HTTP/1.1 200 OK\r\n\r\nrookery_up 1\n";
        assert_eq!(
            metric(serve_once(body).await, "rookery_up").await.unwrap(),
            1.0
        );
        assert_eq!(
            metric(serve_once(body).await, "rookery_down")
                .await
                .unwrap(),
            0.0
        );
    }

    #[tokio::test]
    async fn a_response_other_than_200_is_an_error() {
        let addr = serve_once("HTTP/1.1 404 Not Found\r\n\r\n").await;
        match scrape(addr).await {
            Err(HttpError::NotOk { response, .. }) => assert!(response.contains("404")),
            other => panic!("expected NotOk, got {other:?}"),
        }
    }
}
