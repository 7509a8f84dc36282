//! MQTT control packets for Rookery: parse and encode every packet of MQTT 3.1
//! (`MQIsdp`, level 3), 3.1.1 (level 4) and 5.0 (level 5).
//!
//! The codec does no I/O and never panics on input: [`decode`] takes bytes as
//! they arrive (a partial packet, or several), enforces the spec's rules of
//! form, and answers a broken packet with a [`DecodeError`] whose
//! [`DecodeError::reason_code`] is the reason code the broker sends before it
//! closes the connection. [`Packet::encode`] writes into a `BytesMut`.
//! Payloads and strings are slices of the received buffer (`Bytes`), never
//! copies.
//!
//! Start reading at [`packet`](crate::Packet) and [`decode`]; the wire formats
//! of integers and strings are in `wire.rs`, properties in `properties.rs`.
//! The codec checks form, not meaning: state rules (a second CONNECT, a Topic
//! Alias above the maximum, No Local on a shared subscription) belong to the
//! broker, which knows the session.

mod connect;
mod control;
mod error;
mod packet;
mod properties;
mod publish;
mod reason;
mod subscribe;
mod types;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use packet::{Packet, decode};
pub use properties::{
    AckProperties, AuthProperties, Authentication, ConnAckProperties, ConnectProperties,
    DisconnectProperties, MessageProperties, PropertyId, PublishProperties, SubscribeProperties,
    UnsubscribeProperties, UserProperty, WillProperties,
};
pub use publish::{Ack, Publish};
pub use reason::ReasonCode;
pub use subscribe::{SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe};
pub use types::{
    PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};
pub use wire::MAX_VARIABLE_INTEGER;

/// The largest packet MQTT can express: a five-byte fixed header and the
/// largest remaining length.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VARIABLE_INTEGER;

/// Re-exported so callers name the same string type the packets carry.
pub use bytestring::ByteString;
