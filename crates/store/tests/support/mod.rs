//! What the store's integration tests share.

use rookery_store::proto::{self, Command, SetRetained, command::Kind};

/// A command that sets a retained message on `topic` (QoS 1, a fixed payload).
pub fn set_retained(topic: &str) -> Command {
    Command {
        kind: Some(Kind::SetRetained(SetRetained {
            message: Some(proto::Message {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(b"payload"),
                qos: 1,
                retain: true,
                ..proto::Message::default()
            }),
            ..SetRetained::default()
        })),
    }
}
