//! The operations API's JSON: how each store record is shown. Times are
//! RFC 3339 in UTC (`null` when unset) beside their milliseconds; empty
//! strings are `null`; payloads are UTF-8 text when they are text, and
//! always base64.

use base64::Engine as _;
use rookery_cluster::proto::InspectResponse;
use rookery_store::backup::BackupInfo;
use rookery_store::proto::{
    ClusterStatusResponse, GetSessionInfoResponse, Message, RetainedInfo, Session, SessionInfo,
    SubscriptionInfo, SubscriptionOptions,
};
use serde_json::{Value, json};

/// A page of a list: its items and the cursor of the next page (`null`
/// on the last one).
pub fn page(items: Vec<Value>, next_cursor: &str) -> Value {
    json!({ "items": items, "next_cursor": non_empty(next_cursor) })
}

/// A string, or `null` when empty.
pub fn non_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_owned())
    }
}

/// The MQTT version a protocol level stands for.
pub fn protocol(level: u32) -> &'static str {
    match level {
        3 => "3.1",
        4 => "3.1.1",
        5 => "5.0",
        _ => "unknown",
    }
}

/// ms since the Unix epoch as RFC 3339 in UTC, `null` for 0.
pub fn time(ms: u64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    Value::String(rfc3339(ms))
}

/// ms since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let of_day = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}

/// The Session Expiry Interval, `"never"` for 0xFFFFFFFF.
fn expiry(interval_s: u32) -> Value {
    if interval_s == u32::MAX {
        json!("never")
    } else {
        json!(interval_s)
    }
}

/// A session as lists show it.
pub fn session(info: &SessionInfo) -> Value {
    let default = Session::default();
    let session = info.session.as_ref().unwrap_or(&default);
    json!({
        "client_id": session.client_id,
        "online": !session.edge_id.is_empty(),
        "edge_id": non_empty(&session.edge_id),
        "protocol": protocol(session.protocol_version),
        "address": non_empty(&session.client_address),
        "listener": non_empty(&session.listener),
        "username": non_empty(&session.username),
        "keep_alive_s": session.keep_alive_s,
        "expiry_interval_s": expiry(session.expiry_interval_s),
        "expires_at": time(session.expires_at_ms),
        "connected_at": time(session.connected_at_ms),
        "connected_at_ms": session.connected_at_ms,
        "disconnected_at": time(session.disconnected_at_ms),
        "queue_len": session.queue_len,
        "will_topic": non_empty(&info.will_topic),
    })
}

fn options(options: Option<&SubscriptionOptions>) -> Value {
    let options = options.cloned().unwrap_or_default();
    json!({
        "qos": options.qos,
        "no_local": options.no_local,
        "retain_as_published": options.retain_as_published,
        "retain_handling": options.retain_handling,
        "subscription_id": (options.subscription_id != 0).then_some(options.subscription_id),
    })
}

/// A session with its subscriptions and the store's counts of its queue.
pub fn details(details: &GetSessionInfoResponse) -> Value {
    let mut answer = details.info.as_ref().map(session).unwrap_or_default();
    let subscriptions: Vec<Value> = details
        .subscriptions
        .iter()
        .map(|subscription| {
            let mut entry = options(subscription.options.as_ref());
            entry["filter"] = json!(subscription.filter);
            entry
        })
        .collect();
    if let Some(object) = answer.as_object_mut() {
        object.insert("subscriptions".into(), json!(subscriptions));
        object.insert(
            "subscriptions_truncated".into(),
            json!(details.subscriptions_truncated),
        );
        object.insert("store_in_flight".into(), json!(details.store_in_flight));
        object.insert("store_queued".into(), json!(details.store_queued));
        if let Some(edge) = &details.edge {
            object.insert("edge_address".into(), non_empty(&edge.address));
        }
    }
    answer
}

/// Adds what the client's edge said of its connection (`in_flight`,
/// `queued`), or why it could not say.
pub fn add_live(answer: &mut Value, live: Result<InspectResponse, String>) {
    let Some(object) = answer.as_object_mut() else {
        return;
    };
    match live {
        Ok(live) if live.online => {
            object.insert("in_flight".into(), json!(live.in_flight));
            object.insert("queued".into(), json!(live.queued));
            object.insert("edge_store_queue".into(), json!(live.stored));
        }
        Ok(_) => {
            object.insert("in_flight".into(), Value::Null);
            object.insert("queued".into(), Value::Null);
            object.insert(
                "live_error".into(),
                json!("the edge no longer holds the connection"),
            );
        }
        Err(error) => {
            object.insert("in_flight".into(), Value::Null);
            object.insert("queued".into(), Value::Null);
            object.insert("live_error".into(), json!(error));
        }
    }
}

/// A subscription in a list.
pub fn subscription_info(info: &SubscriptionInfo) -> Value {
    let mut entry = options(info.options.as_ref());
    entry["client_id"] = json!(info.client_id);
    entry["filter"] = json!(info.filter);
    entry["edge_id"] = non_empty(&info.edge_id);
    entry
}

/// A message: its payload as text when it is UTF-8, and base64.
pub fn message(message: &Message, payload_size: usize) -> Value {
    let text = std::str::from_utf8(&message.payload).ok();
    json!({
        "topic": message.topic,
        "qos": message.qos,
        "payload": text,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&message.payload),
        "payload_size": payload_size,
        "truncated": message.payload.len() < payload_size,
        "expires_at": time(message.expires_at_ms),
        "origin_client_id": non_empty(&message.origin_client_id),
    })
}

/// A retained message in a list (its payload a preview).
pub fn retained_info(info: &RetainedInfo) -> Value {
    let default = Message::default();
    let shown = info.message.as_ref().unwrap_or(&default);
    message(shown, info.payload_size as usize)
}

/// The cluster: each member's status and lag.
pub fn cluster(status: &ClusterStatusResponse) -> Value {
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|node| {
            let member = node.member.clone().unwrap_or_default();
            let own = node.status.as_ref();
            json!({
                "node_id": member.node_id,
                "address": member.address,
                "role": if node.voter { "voter" } else { "learner" },
                "reachable": own.is_some(),
                "error": non_empty(&node.error),
                "state": own.map(|s| s.state.clone()),
                "term": own.map(|s| s.term),
                "last_log_index": own.map(|s| s.last_log_index),
                "applied_index": own.map(|s| s.applied_index),
                "matched_index": node.matched_known.then_some(node.matched_index),
                "lag": node.matched_known.then_some(node.lag),
            })
        })
        .collect();
    json!({
        "answered_by": status.node_id,
        "leader_id": (status.leader_id != 0).then_some(status.leader_id),
        "leader_address": non_empty(&status.leader_address),
        "term": status.term,
        "leader_last_log_index": status.leader_last_log_index,
        "nodes": nodes,
    })
}

/// A backup written.
pub fn backup(info: &BackupInfo) -> Value {
    json!({
        "dir": info.dir.display().to_string(),
        "node_id": info.node_id,
        "applied_index": info.applied_index,
        "applied_term": info.applied_term,
        "voters": info.voters,
        "created_at": time(info.created_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_416_873_123), "2026-12-04T20:41:13.123Z");
        assert_eq!(time(0), Value::Null);
    }

    #[test]
    fn payloads_show_as_text_and_base64() {
        let shown = message(
            &Message {
                topic: "a/b".into(),
                payload: b"hi".to_vec().into(),
                ..Message::default()
            },
            10,
        );
        assert_eq!(shown["payload"], "hi");
        assert_eq!(shown["payload_base64"], "aGk=");
        assert_eq!(shown["truncated"], true);
        let binary = message(
            &Message {
                payload: vec![0xFF, 0].into(),
                ..Message::default()
            },
            2,
        );
        assert_eq!(binary["payload"], Value::Null);
        assert_eq!(binary["truncated"], false);
    }
}
