//! CONNECT (section 3.1) and CONNACK (section 3.2).

use bytes::Bytes;
use bytestring::ByteString;
use rookery_topic::validate_topic_name;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{ConnAckProperties, ConnectProperties, WillProperties};
use crate::reason::{ReasonCode, decode_reason};
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, Sink, put_binary, put_length_prefixed, put_string};

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN_START: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USER_NAME: u8 = 0x80;
const WILL_QOS_SHIFT: u8 = 3;

/// A client's request to open a session (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol revision the client speaks; it fixes the rest of the connection.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) or Clean Session (3.x).
    pub clean_start: bool,
    /// Seconds of the keep alive; 0 turns it off.
    pub keep_alive: u16,
    /// The client identifier; empty asks the server to assign one (5.0, 3.1.1).
    pub client_id: ByteString,
    /// The will message, published if the connection ends abnormally.
    pub will: Option<Will>,
    /// The user name.
    pub username: Option<ByteString>,
    /// The password: binary data.
    pub password: Option<Bytes>,
    /// 5.0 properties; empty for 3.x.
    pub properties: ConnectProperties,
}

/// The will message of a CONNECT (section 3.1.3.2 to 3.1.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic the will is published to.
    pub topic: ByteString,
    /// The will's payload.
    pub payload: Bytes,
    /// The QoS the will is published with.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// 5.0 will properties; empty for 3.x.
    pub properties: WillProperties,
}

impl Connect {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let name = reader.binary()?;
        let level = reader.u8()?;
        let protocol = match (name.as_ref(), level) {
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            // MQTT-3.1.2-2: a level this server does not speak; it answers 0x84.
            (b"MQTT" | b"MQIsdp", level) => {
                return Err(DecodeError::UnsupportedProtocolVersion(level));
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = reader.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ReservedConnectFlag);
        }
        let has_will = flags & FLAG_WILL != 0;
        let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0x03;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        let will_qos = QoS::from_bits(will_qos_bits).ok_or(DecodeError::InvalidWillFlags)?;
        if !has_will && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        let has_password = flags & FLAG_PASSWORD != 0;
        let has_username = flags & FLAG_USER_NAME != 0;
        // MQTT-3.1.2-22: before 5.0 a password needs a user name; 5.0 lifted the rule.
        if protocol != ProtocolVersion::V5 && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUserName);
        }
        let keep_alive = reader.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(reader)?
        } else {
            ConnectProperties::default()
        };
        let client_id = reader.string()?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                WillProperties::decode(reader)?
            } else {
                WillProperties::default()
            };
            let topic = reader.string()?;
            // MQTT-3.1.3-11: the Will Topic is a topic name.
            validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
            let payload = reader.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(reader.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(reader.binary()?)
        } else {
            None
        };
        Ok(Self {
            protocol,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn encode_body<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let protocol = self.protocol;
        if protocol != ProtocolVersion::V5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::ValueOutOfRange("password without user name"));
        }
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        if self.username.is_some() {
            flags |= FLAG_USER_NAME;
        }
        put_string(sink, protocol.protocol_name())?;
        sink.put_u8(protocol.level());
        sink.put_u8(flags);
        sink.put_u16(self.keep_alive);
        if protocol.is_v5() {
            put_length_prefixed(sink, &self.properties)?;
        }
        put_string(sink, &self.client_id)?;
        if let Some(will) = &self.will {
            if protocol.is_v5() {
                put_length_prefixed(sink, &will.properties)?;
            }
            put_string(sink, &will.topic)?;
            put_binary(sink, &will.payload)?;
        }
        if let Some(username) = &self.username {
            put_string(sink, username)?;
        }
        if let Some(password) = &self.password {
            put_binary(sink, password)?;
        }
        Ok(())
    }
}

/// The server's answer to CONNECT (section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The outcome; for 3.x sent as the nearest return code.
    pub reason_code: ReasonCode,
    /// 5.0 properties; empty for 3.x.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let flags = reader.u8()?;
        // MQTT-3.2.2-1: bits 7 to 1 of the acknowledge flags are reserved.
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidConnAckFlags);
        }
        let code = reader.u8()?;
        let (reason_code, properties) = if version.is_v5() {
            (
                decode_reason(code, PacketType::ConnAck)?,
                ConnAckProperties::decode(reader)?,
            )
        } else {
            let reason =
                ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
                    packet_type: PacketType::ConnAck,
                    code,
                })?;
            (reason, ConnAckProperties::default())
        };
        Ok(Self {
            session_present: flags & 0x01 != 0,
            reason_code,
            properties,
        })
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        sink.put_u8(u8::from(self.session_present));
        if version.is_v5() {
            sink.put_u8(self.reason_code.as_u8());
            put_length_prefixed(sink, &self.properties)
        } else {
            sink.put_u8(self.reason_code.to_v3_connack());
            Ok(())
        }
    }
}
