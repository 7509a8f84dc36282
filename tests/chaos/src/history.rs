//! What the clients of a run did and saw, in the order they recorded it.
//!
//! Every message a publisher sends carries its publisher's name and a
//! sequence number in its payload ([`payload`]), so that a delivery names
//! the publish it came from. Times are milliseconds since the run started,
//! from one clock: the harness's, never a broker node's.

use serde::{Deserialize, Serialize};

/// Milliseconds since the run started.
pub type Millis = u64;

/// One publish: who sent it and its number in that publisher's stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId {
    /// The publisher's client identifier.
    pub publisher: String,
    /// Its sequence number, from 0, in the order the publisher sent them.
    pub seq: u64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.publisher, self.seq)
    }
}

/// One recorded operation or observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    /// A client's CONNECT was accepted (CONNACK Success) by `edge`.
    Connected {
        /// When the CONNACK arrived.
        at: Millis,
        /// The client identifier.
        client: String,
        /// The node whose MQTT listener it connected to.
        edge: String,
        /// The session outlives the connection (Clean Session 0, or a
        /// non-zero Session Expiry Interval).
        persistent: bool,
        /// The CONNACK's Session Present flag.
        session_present: bool,
        /// The connection carries a will (see [`Event::WillPublished`]).
        will: bool,
    },
    /// A client's connection ended.
    Disconnected {
        /// When the client noticed.
        at: Millis,
        /// The client identifier.
        client: String,
        /// The client ended it with DISCONNECT 0x00 (no will).
        clean: bool,
    },
    /// A subscription is in place: its SUBACK granted it and, for a
    /// subscriber on another edge than some publisher, a probe showed the
    /// route reaches it. Messages sent after this must reach it.
    Subscribed {
        /// When it was in place.
        at: Millis,
        /// The subscriber's client identifier.
        client: String,
        /// The filter, `$share/{group}/...` for a shared subscription.
        filter: String,
        /// The QoS granted.
        qos: u8,
    },
    /// A PUBLISH left the publisher (the first time; resends are the
    /// protocol's business).
    Sent {
        /// When it was written.
        at: Millis,
        /// Which publish.
        id: MessageId,
        /// Its topic.
        topic: String,
        /// Its QoS.
        qos: u8,
        /// Its RETAIN flag.
        retain: bool,
    },
    /// The broker acknowledged a QoS 1/2 publish with a success code
    /// (PUBACK, or PUBREC then PUBCOMP): it must not be lost.
    Acked {
        /// When the acknowledgement arrived.
        at: Millis,
        /// Which publish.
        id: MessageId,
    },
    /// The broker answered a publish with an error reason code: it is not
    /// owed to anyone (it may still have reached some subscribers).
    Refused {
        /// When the answer arrived.
        at: Millis,
        /// Which publish.
        id: MessageId,
        /// The reason code.
        reason: u8,
    },
    /// A subscriber received a PUBLISH.
    Delivered {
        /// When it arrived.
        at: Millis,
        /// The subscriber's client identifier.
        client: String,
        /// Which publish its payload names; `None` when the payload names
        /// none (a message nobody sent).
        id: Option<MessageId>,
        /// Its topic.
        topic: String,
        /// The QoS it arrived with.
        qos: u8,
        /// Its DUP flag.
        dup: bool,
        /// The node whose connection delivered it.
        edge: String,
    },
    /// A will message arrived at the will watcher: `client`'s connection
    /// number `connection` (counted from 1 per client) ended without a
    /// normal DISCONNECT.
    WillPublished {
        /// When it arrived.
        at: Millis,
        /// Whose will.
        client: String,
        /// Which of its connections.
        connection: u64,
        /// Its DUP flag: set on a QoS 1 will sent again to the watcher (its
        /// connection failed before the acknowledgement was recorded).
        #[serde(default)]
        dup: bool,
    },
    /// At the end of the run, what one edge holds as the retained message
    /// of a topic (`None`: nothing).
    RetainedSeen {
        /// When it was read.
        at: Millis,
        /// The node read from.
        edge: String,
        /// The topic.
        topic: String,
        /// The publish it came from.
        id: Option<MessageId>,
    },
    /// The nemesis did something.
    Fault {
        /// When it began.
        at: Millis,
        /// When it was undone (a restart, a heal, SIGCONT); `None` for an
        /// instant fault.
        until: Option<Millis>,
        /// What kind: `kill`, `pause`, `partition`, ...
        kind: String,
        /// What it was done to, in words.
        target: String,
        /// The edges (named as in [`Event::Connected`]) it killed, paused
        /// or cut off from the store. What a client told such an edge may
        /// not reach the store before the edge's lease lapses.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        edges: Vec<String>,
    },
}

impl Event {
    /// When it happened.
    pub fn at(&self) -> Millis {
        match self {
            Event::Connected { at, .. }
            | Event::Disconnected { at, .. }
            | Event::Subscribed { at, .. }
            | Event::Sent { at, .. }
            | Event::Acked { at, .. }
            | Event::Refused { at, .. }
            | Event::Delivered { at, .. }
            | Event::WillPublished { at, .. }
            | Event::RetainedSeen { at, .. }
            | Event::Fault { at, .. } => *at,
        }
    }
}

/// A run's events, in the order they were recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Every event.
    pub events: Vec<Event>,
}

impl History {
    /// Records one event.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// The history as JSON lines, one event per line.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for event in &self.events {
            // An event always serializes: its fields are strings and numbers.
            if let Ok(line) = serde_json::to_string(event) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Reads a history written by [`History::to_json_lines`].
    pub fn from_json_lines(text: &str) -> Result<History, serde_json::Error> {
        let events = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok(History { events })
    }
}

/// The payload a publisher sends for `id`, at least `size` bytes long:
/// `{publisher} {seq}`, then padding, so that a delivery names its publish.
pub fn payload(id: &MessageId, size: usize) -> Vec<u8> {
    let mut payload = format!("{} {}", id.publisher, id.seq).into_bytes();
    if payload.len() < size {
        payload.push(b' ');
        payload.resize(size, b'.');
    }
    payload
}

/// The publish a payload made by [`payload`] names, if it names one.
pub fn named_publish(payload: &[u8]) -> Option<MessageId> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    let publisher = words.next().filter(|p| !p.is_empty())?;
    let seq = words.next()?.parse().ok()?;
    Some(MessageId {
        publisher: publisher.to_owned(),
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_publish_whatever_its_padding() {
        let id = MessageId {
            publisher: "pub-1".into(),
            seq: 42,
        };
        let padded = payload(&id, 64);
        assert_eq!(padded.len(), 64);
        assert_eq!(named_publish(&padded), Some(id.clone()));
        assert_eq!(named_publish(&payload(&id, 0)), Some(id));
        assert_eq!(named_publish(b"garbage"), None);
        assert_eq!(named_publish(b" 1"), None);
        assert_eq!(named_publish(&[0xff, 0x20, 0x31]), None);
    }

    #[test]
    fn a_history_survives_json_lines() {
        let mut history = History::default();
        history.push(Event::Sent {
            at: 1,
            id: MessageId {
                publisher: "p".into(),
                seq: 0,
            },
            topic: "t/1".into(),
            qos: 2,
            retain: false,
        });
        history.push(Event::Fault {
            at: 5,
            until: Some(9),
            kind: "kill".into(),
            target: "node 2".into(),
            edges: vec!["n2".into()],
        });
        let text = history.to_json_lines();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with(r#"{"op":"sent","at":1,"#), "{text}");
        assert_eq!(History::from_json_lines(&text).unwrap(), history);
    }
}
