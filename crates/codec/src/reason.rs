//! MQTT 5.0 reason codes (section 2.4), which packets may carry each, and how
//! they map onto the return codes of 3.1 and 3.1.1. This is the one place that
//! knows the numbers.

use crate::error::DecodeError;
use crate::types::{PacketType, QoS};

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// A 5.0 reason code. Several codes share a number (0x00 is Success,
        /// Normal Disconnection and Granted QoS 0); the packet gives the meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The reason code for a wire byte, or `None` for a value the spec does not define.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00: Success, Normal disconnection, Granted QoS 0.
    #[default]
    Success = 0x00,
    /// 0x01: Granted QoS 1.
    GrantedQoS1 = 0x01,
    /// 0x02: Granted QoS 2.
    GrantedQoS2 = 0x02,
    /// 0x04: Disconnect with Will Message.
    DisconnectWithWillMessage = 0x04,
    /// 0x10: No matching subscribers.
    NoMatchingSubscribers = 0x10,
    /// 0x11: No subscription existed.
    NoSubscriptionExisted = 0x11,
    /// 0x18: Continue authentication.
    ContinueAuthentication = 0x18,
    /// 0x19: Re-authenticate.
    ReAuthenticate = 0x19,
    /// 0x80: Unspecified error.
    UnspecifiedError = 0x80,
    /// 0x81: Malformed Packet.
    MalformedPacket = 0x81,
    /// 0x82: Protocol Error.
    ProtocolError = 0x82,
    /// 0x83: Implementation specific error.
    ImplementationSpecificError = 0x83,
    /// 0x84: Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84,
    /// 0x85: Client Identifier not valid.
    ClientIdentifierNotValid = 0x85,
    /// 0x86: Bad User Name or Password.
    BadUserNameOrPassword = 0x86,
    /// 0x87: Not authorized.
    NotAuthorized = 0x87,
    /// 0x88: Server unavailable.
    ServerUnavailable = 0x88,
    /// 0x89: Server busy.
    ServerBusy = 0x89,
    /// 0x8A: Banned.
    Banned = 0x8A,
    /// 0x8B: Server shutting down.
    ServerShuttingDown = 0x8B,
    /// 0x8C: Bad authentication method.
    BadAuthenticationMethod = 0x8C,
    /// 0x8D: Keep Alive timeout.
    KeepAliveTimeout = 0x8D,
    /// 0x8E: Session taken over.
    SessionTakenOver = 0x8E,
    /// 0x8F: Topic Filter invalid.
    TopicFilterInvalid = 0x8F,
    /// 0x90: Topic Name invalid.
    TopicNameInvalid = 0x90,
    /// 0x91: Packet Identifier in use.
    PacketIdentifierInUse = 0x91,
    /// 0x92: Packet Identifier not found.
    PacketIdentifierNotFound = 0x92,
    /// 0x93: Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93,
    /// 0x94: Topic Alias invalid.
    TopicAliasInvalid = 0x94,
    /// 0x95: Packet too large.
    PacketTooLarge = 0x95,
    /// 0x96: Message rate too high.
    MessageRateTooHigh = 0x96,
    /// 0x97: Quota exceeded.
    QuotaExceeded = 0x97,
    /// 0x98: Administrative action.
    AdministrativeAction = 0x98,
    /// 0x99: Payload format invalid.
    PayloadFormatInvalid = 0x99,
    /// 0x9A: Retain not supported.
    RetainNotSupported = 0x9A,
    /// 0x9B: QoS not supported.
    QoSNotSupported = 0x9B,
    /// 0x9C: Use another server.
    UseAnotherServer = 0x9C,
    /// 0x9D: Server moved.
    ServerMoved = 0x9D,
    /// 0x9E: Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// 0x9F: Connection rate exceeded.
    ConnectionRateExceeded = 0x9F,
    /// 0xA0: Maximum connect time.
    MaximumConnectTime = 0xA0,
    /// 0xA1: Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// 0xA2: Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether the code reports a failure (0x80 and above, section 2.4).
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// The reason code that grants a subscription at `qos` in SUBACK.
    pub fn granted(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => Self::Success,
            QoS::AtLeastOnce => Self::GrantedQoS1,
            QoS::ExactlyOnce => Self::GrantedQoS2,
        }
    }

    /// Whether a 5.0 packet of `packet` type may carry this code (the table of
    /// each packet's reason codes in sections 3.2.2.2 to 3.15.2.1).
    pub fn allowed_in(self, packet: PacketType) -> bool {
        use ReasonCode::*;
        match packet {
            PacketType::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            PacketType::PubAck | PacketType::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            PacketType::PubRel | PacketType::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            PacketType::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketType::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            PacketType::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWillMessage
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketType::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
            _ => false,
        }
    }

    /// The 3.1/3.1.1 CONNACK return code for this reason (3.1.1 table 3.1).
    /// 5.0 codes with no 3.x counterpart become 3, Server unavailable, the
    /// closest refusal an old client understands.
    pub fn to_v3_connack(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedProtocolVersion => 1,
            Self::ClientIdentifierNotValid => 2,
            Self::BadUserNameOrPassword | Self::BadAuthenticationMethod => 4,
            Self::NotAuthorized | Self::Banned => 5,
            _ => 3,
        }
    }

    /// The reason code for a 3.1/3.1.1 CONNACK return code.
    pub fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::UnsupportedProtocolVersion,
            2 => Self::ClientIdentifierNotValid,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }

    /// The 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
    pub fn to_v3_suback(self) -> u8 {
        match self {
            Self::Success | Self::GrantedQoS1 | Self::GrantedQoS2 => self.as_u8(),
            _ => 0x80,
        }
    }

    /// The reason code for a 3.1.1 SUBACK return code.
    pub fn from_v3_suback(code: u8) -> Option<Self> {
        match code {
            0x00 => Some(Self::Success),
            0x01 => Some(Self::GrantedQoS1),
            0x02 => Some(Self::GrantedQoS2),
            0x80 => Some(Self::UnspecifiedError),
            _ => None,
        }
    }
}

/// Reads a 5.0 reason code, refusing one the spec does not define or one this
/// packet type may not carry.
pub(crate) fn decode_reason(code: u8, packet_type: PacketType) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code)
        .filter(|reason| reason.allowed_in(packet_type))
        .ok_or(DecodeError::InvalidReasonCode { packet_type, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_byte() {
        for byte in 0..=u8::MAX {
            if let Some(code) = ReasonCode::from_u8(byte) {
                assert_eq!(code.as_u8(), byte);
            }
        }
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xA3), None);
    }

    #[test]
    fn v3_connack_codes_map_both_ways() {
        for code in 0..=5 {
            let reason = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(reason.to_v3_connack(), code);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        assert_eq!(ReasonCode::QuotaExceeded.to_v3_connack(), 3);
    }

    #[test]
    fn pubrel_carries_only_success_or_identifier_not_found() {
        assert!(ReasonCode::Success.allowed_in(PacketType::PubRel));
        assert!(ReasonCode::PacketIdentifierNotFound.allowed_in(PacketType::PubComp));
        assert!(!ReasonCode::UnspecifiedError.allowed_in(PacketType::PubRel));
    }
}
