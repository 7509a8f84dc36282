//! `rookery ctl`'s tables: columns padded to their widest cell, one row a
//! line, `-` for what is unknown.

use std::fmt::Write as _;

use serde_json::Value;

use super::text;

/// Rows under a header, each column as wide as its widest cell.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn cells(item: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| text(&item[*key])).collect()
}

/// `cluster status`.
pub fn cluster(status: &Value) -> String {
    let leader = match status["leader_id"].as_u64() {
        Some(id) => format!("leader: node {id} at {}", text(&status["leader_address"])),
        None => "leader: none known".to_owned(),
    };
    let mut out = format!(
        "{leader}, term {}, leader's last log index {} (answered by node {})\n",
        text(&status["term"]),
        text(&status["leader_last_log_index"]),
        text(&status["answered_by"]),
    );
    let rows: Vec<Vec<String>> = status["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|node| {
            let mut row = cells(
                node,
                &[
                    "node_id",
                    "address",
                    "role",
                    "state",
                    "term",
                    "applied_index",
                    "matched_index",
                    "lag",
                ],
            );
            if let Some(error) = node["error"].as_str() {
                row[3] = format!("unreachable: {error}");
            }
            row
        })
        .collect();
    out.push_str(&render(
        &[
            "NODE", "ADDRESS", "ROLE", "STATE", "TERM", "APPLIED", "MATCHED", "LAG",
        ],
        &rows,
    ));
    out.trim_end().to_owned()
}

/// `clients list`.
pub fn clients(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            cells(
                item,
                &[
                    "client_id",
                    "edge_id",
                    "address",
                    "protocol",
                    "keep_alive_s",
                    "connected_at",
                ],
            )
        })
        .collect();
    render(
        &[
            "CLIENT",
            "EDGE",
            "ADDRESS",
            "PROTOCOL",
            "KEEPALIVE",
            "CONNECTED",
        ],
        &rows,
    )
}

/// `sessions list`.
pub fn sessions(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut row = cells(
                item,
                &[
                    "client_id",
                    "online",
                    "edge_id",
                    "protocol",
                    "expiry_interval_s",
                    "expires_at",
                    "queue_len",
                ],
            );
            row[1] = if item["online"] == Value::Bool(true) {
                "online".into()
            } else {
                "offline".into()
            };
            row
        })
        .collect();
    render(
        &[
            "CLIENT", "STATE", "EDGE", "PROTOCOL", "EXPIRY", "EXPIRES", "QUEUED",
        ],
        &rows,
    )
}

/// `clients show` and `sessions show`: one field a line, then the
/// subscriptions.
pub fn client(details: &Value) -> String {
    let mut out = String::new();
    let online = details["online"] == Value::Bool(true);
    let fields: &[(&str, &str)] = &[
        ("client", "client_id"),
        ("edge", "edge_id"),
        ("edge address", "edge_address"),
        ("address", "address"),
        ("listener", "listener"),
        ("username", "username"),
        ("protocol", "protocol"),
        ("keep alive (s)", "keep_alive_s"),
        ("connected at", "connected_at"),
        ("disconnected at", "disconnected_at"),
        ("session expiry (s)", "expiry_interval_s"),
        ("expires at", "expires_at"),
        ("will topic", "will_topic"),
        ("in flight", "in_flight"),
        ("queued", "queued"),
        ("in flight (store)", "store_in_flight"),
        ("queued (store)", "store_queued"),
    ];
    let _ = writeln!(
        out,
        "{:<20}{}",
        "state",
        if online { "online" } else { "offline" }
    );
    for (label, key) in fields {
        let value = &details[*key];
        // Live figures only for a connected client; nothing to say of the
        // rest when it is absent.
        if details.get(*key).is_none() {
            continue;
        }
        let _ = writeln!(out, "{:<20}{}", label, text(value));
    }
    if let Some(error) = details["live_error"].as_str() {
        let _ = writeln!(out, "{:<20}{error}", "(live figures)");
    }
    let subscriptions = details["subscriptions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "subscriptions       {}", subscriptions.len());
    if !subscriptions.is_empty() {
        let rows: Vec<Vec<String>> = subscriptions
            .iter()
            .map(|s| {
                cells(
                    s,
                    &[
                        "filter",
                        "qos",
                        "no_local",
                        "retain_as_published",
                        "retain_handling",
                        "subscription_id",
                    ],
                )
            })
            .collect();
        for line in render(
            &[
                "FILTER",
                "QOS",
                "NO_LOCAL",
                "RETAIN_AS_PUBLISHED",
                "RETAIN_HANDLING",
                "ID",
            ],
            &rows,
        )
        .lines()
        {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.trim_end().to_owned()
}

/// `subscriptions list`.
pub fn subscriptions(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| cells(item, &["client_id", "filter", "qos", "edge_id"]))
        .collect();
    render(&["CLIENT", "FILTER", "QOS", "EDGE"], &rows)
}

/// A payload as one short line of text.
fn preview(item: &Value) -> String {
    let Some(payload) = item["payload"].as_str() else {
        return format!(
            "(binary, base64 {})",
            shorten(&text(&item["payload_base64"]), 40)
        );
    };
    let escaped: String = payload.escape_debug().collect();
    shorten(&escaped, 60)
}

fn shorten(text: &str, at: usize) -> String {
    if text.chars().count() <= at {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(at).collect();
    short.push('…');
    short
}

/// `retained list`.
pub fn retained(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut row = cells(item, &["topic", "qos", "payload_size"]);
            row.push(preview(item));
            row
        })
        .collect();
    render(&["TOPIC", "QOS", "BYTES", "PAYLOAD"], &rows)
}

/// `retained get`: the message's fields, then its payload whole.
pub fn message(message: &Value) -> String {
    let mut out = String::new();
    for (label, key) in [
        ("topic", "topic"),
        ("qos", "qos"),
        ("bytes", "payload_size"),
        ("expires at", "expires_at"),
        ("published by", "origin_client_id"),
    ] {
        let _ = writeln!(out, "{label:<14}{}", text(&message[key]));
    }
    match message["payload"].as_str() {
        Some(payload) => {
            let _ = write!(out, "payload\n{payload}");
        }
        None => {
            let _ = write!(
                out,
                "payload (base64)\n{}",
                text(&message["payload_base64"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up() {
        let table = render(
            &["A", "LONGER"],
            &[
                vec!["x".into(), "1".into()],
                vec!["yyyy".into(), "22".into()],
            ],
        );
        assert_eq!(table, "A     LONGER\nx     1\nyyyy  22\n");
    }

    #[test]
    fn sessions_show_their_state_in_words() {
        let table = sessions(&[json!({
            "client_id": "c1", "online": false, "edge_id": null, "protocol": "5.0",
            "expiry_interval_s": 60, "expires_at": "2026-12-04T20:41:13.123Z", "queue_len": 2
        })]);
        assert!(table.contains("c1      offline  -     5.0"), "{table}");
    }

    #[test]
    fn payloads_are_shortened_and_escaped() {
        let long = "x".repeat(100);
        assert_eq!(preview(&json!({ "payload": long })).chars().count(), 61);
        assert_eq!(preview(&json!({ "payload": "a\nb" })), "a\\nb");
        assert!(
            preview(&json!({ "payload": null, "payload_base64": "AAE=" })).starts_with("(binary")
        );
    }
}
