//! DISCONNECT (section 3.14) and AUTH (section 3.15).

use crate::error::{DecodeError, EncodeError};
use crate::properties::{AuthProperties, DisconnectProperties};
use crate::reason::{ReasonCode, decode_reason};
use crate::types::{PacketType, ProtocolVersion};
use crate::wire::{Reader, Sink, put_length_prefixed};

/// The end of a connection, sent by either side (server-sent only in 5.0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0: why; 0x00 is a normal disconnection, 0x04 asks for the will.
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let mut disconnect = Self::default();
        // Section 3.14.2.1: a remaining length of 0 means Normal disconnection.
        if version.is_v5() && !reader.is_empty() {
            disconnect.reason_code = decode_reason(reader.u8()?, PacketType::Disconnect)?;
            if !reader.is_empty() {
                disconnect.properties = DisconnectProperties::decode(reader)?;
            }
        }
        Ok(disconnect)
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        if !version.is_v5() {
            return Ok(());
        }
        let has_properties = !self.properties.is_empty();
        if has_properties || self.reason_code != ReasonCode::Success {
            sink.put_u8(self.reason_code.as_u8());
        }
        if has_properties {
            put_length_prefixed(sink, &self.properties)?;
        }
        Ok(())
    }
}

/// A step of 5.0 enhanced authentication, either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// The method, its data, and the usual reason string and user properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut auth = Self::default();
        // Section 3.15.2.1: a remaining length of 0 means Success with no properties.
        if !reader.is_empty() {
            auth.reason_code = decode_reason(reader.u8()?, PacketType::Auth)?;
            if !reader.is_empty() {
                auth.properties = AuthProperties::decode(reader)?;
            }
        }
        Ok(auth)
    }

    pub(crate) fn encode_body<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let has_properties = !self.properties.is_empty();
        if has_properties || self.reason_code != ReasonCode::Success {
            sink.put_u8(self.reason_code.as_u8());
        }
        if has_properties {
            put_length_prefixed(sink, &self.properties)?;
        }
        Ok(())
    }
}
