//! Small value types that carry meaning through every layer above the codec.

use std::num::NonZeroU16;

/// The MQTT protocol revision a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT (MQTT-3.1.2-2).
    pub fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name of CONNECT (MQTT-3.1.2-1).
    pub fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// Whether packets carry properties and reason codes (5.0 only).
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// Delivered at most once, no acknowledgement.
    #[default]
    AtMostOnce = 0,
    /// Delivered at least once: PUBLISH, PUBACK.
    AtLeastOnce = 1,
    /// Delivered exactly once: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its two-bit wire value; `None` for 3, which no packet may carry.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never zero (MQTT-2.2.1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier for `value`, or `None` for zero.
    pub fn new(value: u16) -> Option<Self> {
        NonZeroU16::new(value).map(Self)
    }

    /// The identifier's wire value.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl From<NonZeroU16> for PacketId {
    fn from(value: NonZeroU16) -> Self {
        Self(value)
    }
}

/// Whether a payload is declared UTF-8 text (the Payload Format Indicator property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// When retained messages are sent for a new subscription (MQTT 5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not already exist.
    SendIfNew = 1,
    /// 2: never send retained messages for this subscription.
    DoNotSend = 2,
}

/// The options a subscriber sets for one topic filter in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// The maximum QoS at which the server sends messages for this filter.
    pub qos: QoS,
    /// 5.0: do not send the subscriber its own publishes.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag of forwarded messages as published.
    pub retain_as_published: bool,
    /// 5.0: when retained messages are sent for this subscription.
    pub retain_handling: RetainHandling,
}

/// The kind of a control packet: the high four bits of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Client to server: open a session.
    Connect = 1,
    /// Server to client: connect acknowledgement.
    ConnAck = 2,
    /// Either way: an application message.
    Publish = 3,
    /// QoS 1 acknowledgement.
    PubAck = 4,
    /// QoS 2 step 1: publish received.
    PubRec = 5,
    /// QoS 2 step 2: publish release.
    PubRel = 6,
    /// QoS 2 step 3: publish complete.
    PubComp = 7,
    /// Client to server: subscribe.
    Subscribe = 8,
    /// Server to client: subscribe acknowledgement.
    SubAck = 9,
    /// Client to server: unsubscribe.
    Unsubscribe = 10,
    /// Server to client: unsubscribe acknowledgement.
    UnsubAck = 11,
    /// Client to server: keep-alive ping.
    PingReq = 12,
    /// Server to client: ping response.
    PingResp = 13,
    /// Either way: the end of a connection.
    Disconnect = 14,
    /// 5.0, either way: enhanced authentication exchange.
    Auth = 15,
}

impl PacketType {
    /// The packet type for the high nibble of a fixed header; `None` for 0 (reserved).
    pub fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The fixed flag bits every packet but PUBLISH must carry (MQTT-2.1.3-1).
    pub(crate) fn required_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}
