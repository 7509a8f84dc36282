//! Why a packet could not be decoded or encoded. Each decode error maps to the
//! one 5.0 reason code the broker sends before it closes the connection.

use rookery_topic::TopicError;

use crate::properties::PropertyId;
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion};

/// A packet that breaks the spec's rules of form. The connection that sent it
/// is closed, with a DISCONNECT (or CONNACK) carrying [`DecodeError::reason_code`]
/// where the protocol version allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Section 1.5.5, MQTT-1.5.5-1: a variable byte integer takes at most four
    /// bytes, and the fewest that hold its value.
    #[error("variable byte integer longer than four bytes or not in its shortest form")]
    MalformedVariableInteger,
    /// The packet is larger than the receiver's Maximum Packet Size (MQTT-3.1.2-24, MQTT-3.2.2-15).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// The whole packet's size in bytes, fixed header included.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0 is reserved; type 15 (AUTH) is reserved before 5.0.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// MQTT-2.1.3-1: fixed header flags other than those the packet type requires.
    #[error("invalid fixed header flags {flags:#06b} for {packet_type:?}")]
    InvalidFixedHeaderFlags {
        /// The packet type.
        packet_type: PacketType,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// MQTT-3.3.1-4: a PUBLISH with both QoS bits set.
    #[error("PUBLISH with QoS 3")]
    InvalidQoS,
    /// MQTT-3.3.1-2: the DUP flag is 0 on every QoS 0 message.
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// The remaining length ends before a field it must contain.
    #[error("packet ends before its contents")]
    Truncated,
    /// Bytes left over after the last field of a packet that has no payload.
    #[error("{0} unexpected bytes after the packet's contents")]
    TrailingBytes(usize),
    /// MQTT-1.5.4-1: a string that is not well-formed UTF-8.
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// MQTT-1.5.4-2: a string containing U+0000.
    #[error("string contains U+0000")]
    NullCharacter,
    /// MQTT-3.1.2-1: a protocol name other than `MQTT` (or `MQIsdp` for 3.1).
    #[error("unknown protocol name")]
    InvalidProtocolName,
    /// MQTT-3.1.2-2: a protocol level this server does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// MQTT-3.1.2-3: the reserved flag of CONNECT is not zero.
    #[error("reserved CONNECT flag set")]
    ReservedConnectFlag,
    /// MQTT-3.1.2-11, MQTT-3.1.2-12, MQTT-3.1.2-13: Will QoS 3, or Will QoS or
    /// Will Retain set without the Will Flag.
    #[error("invalid will flags in CONNECT")]
    InvalidWillFlags,
    /// MQTT-3.1.2-22 (3.1, 3.1.1): a password without a user name.
    #[error("password flag set without user name flag")]
    PasswordWithoutUserName,
    /// MQTT-3.2.2-1: CONNACK's reserved acknowledge flags are not zero.
    #[error("reserved CONNACK flags set")]
    InvalidConnAckFlags,
    /// MQTT-2.2.1-3: a packet identifier of zero.
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// MQTT-3.3.2-2, MQTT-4.7.3-1: a topic name that is empty or has wildcards.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// MQTT-3.3.2-7 (5.0): an empty topic name without a Topic Alias.
    #[error("empty topic name without a topic alias")]
    MissingTopicName,
    /// Section 2.2.2.2: a property identifier the spec does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// Section 2.2.2.2: a property not valid in this packet.
    #[error("property {property:?} is not allowed in {packet_type:?}")]
    PropertyNotAllowed {
        /// The property.
        property: PropertyId,
        /// The packet it appeared in.
        packet_type: PacketType,
    },
    /// A property that may appear once appears again (section 3, each property's text).
    #[error("property {0:?} appears more than once")]
    DuplicateProperty(PropertyId),
    /// A property value outside its defined range (e.g. Receive Maximum 0, Topic Alias 0).
    #[error("property {0:?} has a value outside its range")]
    InvalidPropertyValue(PropertyId),
    /// Sections 3.1.2.11.10 and 3.15.2.2.3: Authentication Data without an Authentication Method.
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
    /// A reason code the spec does not define, or one this packet may not carry.
    #[error("reason code {code:#04x} is not valid in {packet_type:?}")]
    InvalidReasonCode {
        /// The packet type.
        packet_type: PacketType,
        /// The byte received.
        code: u8,
    },
    /// MQTT-3.8.3-5 (5.0), MQTT-3.8.3-4 (3.1.1): reserved bits of the
    /// subscription options are not zero; in 3.1.1 also a requested QoS of 3.
    #[error("invalid subscription options byte {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    /// Section 3.8.3.1: Maximum QoS 3 in a 5.0 subscription's options.
    #[error("subscription requests QoS 3")]
    InvalidSubscriptionQoS,
    /// Section 3.8.3.1: Retain Handling 3.
    #[error("retain handling 3")]
    InvalidRetainHandling,
    /// MQTT-3.8.3-2: a SUBSCRIBE with no topic filter.
    #[error("SUBSCRIBE without a topic filter")]
    EmptySubscribe,
    /// MQTT-3.10.3-2: an UNSUBSCRIBE with no topic filter.
    #[error("UNSUBSCRIBE without a topic filter")]
    EmptyUnsubscribe,
}

impl DecodeError {
    /// The reason code a 5.0 receiver sends for this error (section 4.13).
    /// A packet that cannot be parsed is Malformed (0x81); one that parses but
    /// breaks a rule of the protocol is a Protocol Error (0x82).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Self::InvalidProtocolName | Self::UnsupportedProtocolVersion(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            Self::InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            Self::InvalidPropertyValue(PropertyId::TopicAlias) => ReasonCode::TopicAliasInvalid,
            Self::DupOnQoS0
            | Self::ZeroPacketId
            | Self::MissingTopicName
            | Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::AuthenticationDataWithoutMethod
            | Self::InvalidSubscriptionQoS
            | Self::InvalidRetainHandling
            | Self::EmptySubscribe
            | Self::EmptyUnsubscribe => ReasonCode::ProtocolError,
            Self::MalformedVariableInteger
            | Self::ReservedPacketType(_)
            | Self::InvalidFixedHeaderFlags { .. }
            | Self::InvalidQoS
            | Self::Truncated
            | Self::TrailingBytes(_)
            | Self::InvalidUtf8
            | Self::NullCharacter
            | Self::ReservedConnectFlag
            | Self::InvalidWillFlags
            | Self::PasswordWithoutUserName
            | Self::InvalidConnAckFlags
            | Self::UnknownProperty(_)
            | Self::PropertyNotAllowed { .. }
            | Self::InvalidReasonCode { .. }
            | Self::InvalidSubscriptionOptions(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// A packet that cannot be put on the wire as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet is larger than the peer's Maximum Packet Size; the sender
    /// must not send it (MQTT-3.1.2-24, MQTT-3.2.2-15).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// The whole packet's size in bytes.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// The body exceeds the largest remaining length, 268,435,455 bytes.
    #[error("remaining length {0} exceeds 268435455")]
    RemainingLengthTooLarge(usize),
    /// A string or binary field longer than 65,535 bytes.
    #[error("field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    /// A value the spec does not allow (e.g. a Subscription Identifier above 268,435,455).
    #[error("value out of range for {0}")]
    ValueOutOfRange(&'static str),
    /// QoS and packet identifier disagree: QoS 0 has none, QoS 1 and 2 need one.
    #[error("QoS and packet identifier do not agree")]
    PacketIdMismatch,
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet_type:?} does not exist in {version:?}")]
    UnsupportedInVersion {
        /// The packet type.
        packet_type: PacketType,
        /// The connection's protocol version.
        version: ProtocolVersion,
    },
}
