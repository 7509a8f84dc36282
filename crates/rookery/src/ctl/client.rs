//! The operations API's HTTP client: one HTTP/1.1 request per connection
//! (hyper's client connection over a Tokio socket), JSON in and out.
//! Plain `http://` only: the API is served on the node's HTTP listener.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one request may take, connecting included (adding a voter
/// waits until it has caught up with the log).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);

/// Where the API is and how to call it.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port` of the node's HTTP listener.
    authority: String,
    /// A path prefix the URL carried (normally empty).
    base_path: String,
    token: Option<String>,
}

/// Why a call failed: the node's error (with its status) or the way to it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's `error`, or the body as text.
        message: String,
    },
    /// No answer.
    #[error("{0}")]
    Transport(String),
}

impl Client {
    /// A client of the API at `url` (`http://host:port`), sending `token`
    /// as a bearer token when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Client, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: the API's URL starts with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            authority,
            base_path: path.to_owned(),
            token,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call("GET", path, None).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, CallError> {
        self.call("DELETE", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call("POST", path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call("PUT", path, Some(body)).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| {
                CallError::Transport(format!(
                    "{} did not answer within {REQUEST_TIMEOUT:?}",
                    self.authority
                ))
            })?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let transport = |what: &str, error: &dyn std::fmt::Display| {
            CallError::Transport(format!("{what} {}: {error}", self.authority))
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|error| transport("cannot reach the node's HTTP API at", &error))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| transport("no HTTP from", &error))?;
        // The connection is driven beside the request, and ends with it.
        let driver = tokio::spawn(connection);
        let bytes = match body {
            Some(body) => Bytes::from(body.to_string()),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(HOST, &self.authority);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(bytes))
            .map_err(|error| transport("a bad request to", &error))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| transport("the request failed at", &error))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| transport("the answer broke off at", &error))?
            .to_bytes();
        driver.abort();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| {
                CallError::Transport(format!(
                    "{} answered {status} without JSON: {}",
                    self.authority,
                    String::from_utf8_lossy(&body)
                ))
            });
        }
        let message = json
            .as_ref()
            .and_then(|json| json.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        Err(CallError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

/// `text` percent-encoded for a path segment or a query value: everything
/// but RFC 3986's unreserved characters (so `/`, `+` and `#` too).
pub fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A query string from the parameters that have a value.
pub fn query(params: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| value.map(|value| format!("{key}={}", encode(value))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        let client = Client::new("http://127.0.0.1:9883", None).unwrap();
        assert_eq!(client.authority, "127.0.0.1:9883");
        assert_eq!(client.base_path, "");
        let client = Client::new("http://node-1/prefix/", None).unwrap();
        assert_eq!(client.authority, "node-1:80");
        assert_eq!(client.base_path, "/prefix");
        assert!(Client::new("https://node-1:9883", None).is_err());
        assert!(Client::new("http://", None).is_err());
    }

    #[test]
    fn topics_and_filters_are_encoded_whole() {
        assert_eq!(encode("a/b c/+/#"), "a%2Fb%20c%2F%2B%2F%23");
        assert_eq!(encode("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(
            query(&[("match", Some("s*")), ("edge", None), ("limit", Some("5"))]),
            "?match=s%2A&limit=5"
        );
        assert_eq!(query(&[("edge", None)]), "");
    }
}
