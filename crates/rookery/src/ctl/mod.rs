//! `rookery ctl`: the operations API's client. Each command is one API call
//! (lists: as many pages as `--limit` or `--all` ask), printed as a table
//! or, with `--json`, as the API's JSON.

mod client;
mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde_json::{Value, json};

use crate::cli::{
    CtlArgs, CtlClients, CtlCluster, CtlCommand, CtlLogLevel, CtlRetained, CtlSessions,
    CtlSubscriptions, Paging, ServeArgs,
};
use client::{CallError, Client, encode, query};

/// The API's URL when neither --url nor a configuration says.
const DEFAULT_URL: &str = "http://127.0.0.1:9883";
/// How long `rookery ctl health` waits for the probe's answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Items one API page holds at most.
const MAX_PAGE: usize = 1000;

/// Runs one `rookery ctl` command; what went wrong otherwise.
pub async fn run(args: &CtlArgs) -> Result<(), String> {
    let client = client(args)?;
    let out = Output { json: args.json };
    let failed = |error: CallError| error.to_string();
    match &args.command {
        CtlCommand::Cluster(command) => cluster(&client, &out, command).await.map_err(failed),
        CtlCommand::Clients(command) => clients(&client, &out, command).await.map_err(failed),
        CtlCommand::Sessions(command) => sessions(&client, &out, command).await.map_err(failed),
        CtlCommand::Subscriptions(CtlSubscriptions::List {
            topic,
            client: of_client,
            paging,
        }) => {
            let params = [
                ("topic", topic.as_deref()),
                ("client", of_client.as_deref()),
            ];
            let page = list(&client, "/api/v1/subscriptions", &params, paging)
                .await
                .map_err(failed)?;
            out.page(&page, table::subscriptions);
            Ok(())
        }
        CtlCommand::Retained(command) => retained(&client, &out, command).await.map_err(failed),
        CtlCommand::LogLevel(CtlLogLevel::Set { filter }) => {
            let answer = client
                .put("/api/v1/log-level", &json!({ "filter": filter }))
                .await
                .map_err(failed)?;
            out.print(&answer, |answer| {
                format!(
                    "log filter: {} (was {})",
                    text(&answer["filter"]),
                    text(&answer["previous"])
                )
            });
            Ok(())
        }
        CtlCommand::LogLevel(CtlLogLevel::Get) => {
            let answer = client.get("/api/v1/log-level").await.map_err(failed)?;
            out.print(&answer, |answer| {
                format!("log filter: {}", text(&answer["filter"]))
            });
            Ok(())
        }
        CtlCommand::Health { ready } => {
            let path = if *ready { "/readyz" } else { "/healthz" };
            let answer = tokio::time::timeout(PROBE_TIMEOUT, client.get(path))
                .await
                .map_err(|_| format!("{path}: no answer within {PROBE_TIMEOUT:?}"))?
                .map_err(failed)?;
            out.print(&answer, |answer| {
                let checks = answer["checks"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut lines = vec![format!("{path}: {}", text(&answer["status"]))];
                lines.extend(checks.iter().map(|check| {
                    format!("  {}: {}", text(&check["name"]), text(&check["detail"]))
                }));
                lines.join("\n")
            });
            Ok(())
        }
        CtlCommand::Backup { dir } => {
            let answer = client
                .post("/api/v1/backup", &json!({ "dir": dir }))
                .await
                .map_err(failed)?;
            out.print(&answer, |answer| {
                format!(
                    "backup of node {} (applied index {}, term {}) written to {} on that node",
                    text(&answer["node_id"]),
                    text(&answer["applied_index"]),
                    text(&answer["applied_term"]),
                    text(&answer["dir"])
                )
            });
            Ok(())
        }
    }
}

/// The client the flags and the configuration describe.
fn client(args: &CtlArgs) -> Result<Client, String> {
    let config = match &args.config {
        Some(path) => Some(
            crate::config::load(&ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
            .map_err(|error| format!("configuration error:\n{error}"))?
            .config,
        ),
        None => None,
    };
    let url = match (&args.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => api_url(config).unwrap_or_else(|| DEFAULT_URL.to_owned()),
        (None, None) => DEFAULT_URL.to_owned(),
    };
    let token_file = args.token_file.clone().or_else(|| {
        let config = config.as_ref()?;
        // As the node reads it: the HTTP token, else the cluster's.
        (config.http.admin_token_file.clone()).or(config.cluster.admin_token_file.clone())
    });
    let token = token_file.as_deref().map(read_token).transpose()?;
    Client::new(&url, token)
}

/// The API's URL on the node `config` describes: its HTTP listener, on
/// loopback when it listens on every address; `None` when it is off.
fn api_url(config: &crate::config::Config) -> Option<String> {
    let mut address = config.http.listen.0?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(format!("http://{address}"))
}

/// The first line of a token file.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("the token file {}: {error}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token)
}

/// Tables or JSON.
struct Output {
    json: bool,
}

impl Output {
    /// One answer: its JSON, or what `describe` makes of it.
    fn print(&self, answer: &Value, describe: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{}", pretty(answer));
        } else {
            println!("{}", describe(answer));
        }
    }

    /// A list: its JSON (one page object), or a table of its items and
    /// where the next page starts.
    fn page(&self, page: &Value, render: impl FnOnce(&[Value]) -> String) {
        if self.json {
            println!("{}", pretty(page));
            return;
        }
        let items = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if items.is_empty() {
            println!("(none)");
        } else {
            print!("{}", render(items));
        }
        if let Some(next) = page["next_cursor"].as_str() {
            println!("more: --cursor {next}");
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A JSON value as plain text (strings without quotes, `null` as `-`).
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The items of a list, fetched a page at a time until `paging` has what it
/// asks for; one page object with every item and the cursor after them.
async fn list(
    client: &Client,
    path: &str,
    params: &[(&str, Option<&str>)],
    paging: &Paging,
) -> Result<Value, CallError> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor = paging.cursor.clone();
    loop {
        let wanted = if paging.all {
            MAX_PAGE
        } else {
            paging.limit.saturating_sub(items.len()).clamp(1, MAX_PAGE)
        };
        let limit = wanted.to_string();
        let mut all_params = params.to_vec();
        all_params.push(("limit", Some(&limit)));
        all_params.push(("cursor", cursor.as_deref()));
        let page = client.get(&format!("{path}{}", query(&all_params))).await?;
        if let Some(page_items) = page["items"].as_array() {
            items.extend(page_items.iter().cloned());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        let done = cursor.is_none() || (!paging.all && items.len() >= paging.limit);
        if done {
            return Ok(json!({ "items": items, "next_cursor": cursor }));
        }
    }
}

async fn cluster(client: &Client, out: &Output, command: &CtlCluster) -> Result<(), CallError> {
    match command {
        CtlCluster::Status => {
            let status = client.get("/api/v1/cluster").await?;
            out.print(&status, table::cluster);
        }
        CtlCluster::AddVoter { node, address } => {
            let answer = client
                .post(
                    "/api/v1/cluster/voters",
                    &json!({ "node_id": node, "address": address }),
                )
                .await?;
            out.print(&answer, |answer| {
                format!(
                    "node {node} is a voter (log index {})",
                    text(&answer["log_index"])
                )
            });
        }
        CtlCluster::AddLearner { node, address } => {
            let answer = client
                .post(
                    "/api/v1/cluster/learners",
                    &json!({ "node_id": node, "address": address }),
                )
                .await?;
            out.print(&answer, |answer| {
                format!(
                    "node {node} is a learner (log index {})",
                    text(&answer["log_index"])
                )
            });
        }
        CtlCluster::TransferLeader { node } => {
            let answer = client
                .post("/api/v1/cluster/leader", &json!({ "node_id": node }))
                .await?;
            out.print(&answer, |answer| {
                format!(
                    "node {} leads now, at {} (term {})",
                    text(&answer["leader_id"]),
                    text(&answer["leader_address"]),
                    text(&answer["term"])
                )
            });
        }
        CtlCluster::Remove { node } => {
            let answer = client
                .delete(&format!("/api/v1/cluster/nodes/{node}"))
                .await?;
            out.print(&answer, |answer| {
                format!(
                    "removed node {node} (log index {})",
                    text(&answer["log_index"])
                )
            });
        }
    }
    Ok(())
}

async fn clients(client: &Client, out: &Output, command: &CtlClients) -> Result<(), CallError> {
    match command {
        CtlClients::List {
            edge,
            pattern,
            paging,
        } => {
            let params = [("edge", edge.as_deref()), ("match", pattern.as_deref())];
            let page = list(client, "/api/v1/clients", &params, paging).await?;
            out.page(&page, table::clients);
        }
        CtlClients::Show { id } => {
            let answer = client
                .get(&format!("/api/v1/clients/{}", encode(id)))
                .await?;
            out.print(&answer, table::client);
        }
        CtlClients::Kick { id } => {
            let answer = client
                .delete(&format!("/api/v1/clients/{}", encode(id)))
                .await?;
            out.print(&answer, |answer| {
                format!(
                    "kicked client {id} (its edge {} closes the connection)",
                    text(&answer["edge_id"])
                )
            });
        }
    }
    Ok(())
}

async fn sessions(client: &Client, out: &Output, command: &CtlSessions) -> Result<(), CallError> {
    match command {
        CtlSessions::List { pattern, paging } => {
            let params = [("match", pattern.as_deref())];
            let page = list(client, "/api/v1/sessions", &params, paging).await?;
            out.page(&page, table::sessions);
        }
        CtlSessions::Show { id } => {
            let answer = client
                .get(&format!("/api/v1/sessions/{}", encode(id)))
                .await?;
            out.print(&answer, table::client);
        }
        CtlSessions::Delete { id } => {
            let answer = client
                .delete(&format!("/api/v1/sessions/{}", encode(id)))
                .await?;
            out.print(&answer, |answer| match answer["kicked_edge_id"].as_str() {
                Some(edge) => {
                    format!("deleted session {id} (it was online on {edge}, which disconnects it)")
                }
                None => format!("deleted session {id}"),
            });
        }
    }
    Ok(())
}

async fn retained(client: &Client, out: &Output, command: &CtlRetained) -> Result<(), CallError> {
    match command {
        CtlRetained::List { filter, paging } => {
            let params = [("filter", filter.as_deref())];
            let page = list(client, "/api/v1/retained", &params, paging).await?;
            out.page(&page, table::retained);
        }
        CtlRetained::Get { topic } => {
            let answer = client
                .get(&format!("/api/v1/retained/{}", encode(topic)))
                .await?;
            out.print(&answer, table::message);
        }
        CtlRetained::Delete { topic } => {
            let answer = client
                .delete(&format!("/api/v1/retained/{}", encode(topic)))
                .await?;
            out.print(&answer, |_| {
                format!("deleted the retained message of {topic}")
            });
        }
    }
    Ok(())
}
