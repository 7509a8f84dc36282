//! MQTT 5.0 properties (section 2.2.2): one struct per group of packets that
//! share a set of properties, so a packet can only carry what the spec allows.
//! Decoding refuses unknown, misplaced, repeated and out-of-range properties.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use bytestring::ByteString;
use rookery_topic::validate_topic_name;

use crate::error::{DecodeError, EncodeError};
use crate::types::{PacketType, PayloadFormat, QoS};
use crate::wire::{
    Encode, MAX_VARIABLE_INTEGER, Reader, Sink, put_binary, put_length_prefixed, put_string,
    put_variable_integer,
};

/// A User Property: a name and value pair, which may repeat (section 3.1.2.11.8).
pub type UserProperty = (ByteString, ByteString);

macro_rules! property_ids {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// A property identifier (table 2-4 of section 2.2.2.2).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum PropertyId {
            $($(#[$doc])* $name = $value,)*
        }

        impl PropertyId {
            /// The property for an identifier, or `None` for one the spec does not define.
            pub fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

property_ids! {
    /// Byte: 0 unspecified bytes, 1 UTF-8 text.
    PayloadFormatIndicator = 0x01,
    /// Four-byte integer: seconds until the message expires.
    MessageExpiryInterval = 0x02,
    /// String: the payload's content type.
    ContentType = 0x03,
    /// String: the topic name for a response.
    ResponseTopic = 0x08,
    /// Binary: correlates a response with its request.
    CorrelationData = 0x09,
    /// Variable byte integer: 1 to 268,435,455.
    SubscriptionIdentifier = 0x0B,
    /// Four-byte integer: seconds the session outlives the connection.
    SessionExpiryInterval = 0x11,
    /// String: the client identifier the server assigned.
    AssignedClientIdentifier = 0x12,
    /// Two-byte integer: the keep alive the server requires.
    ServerKeepAlive = 0x13,
    /// String: the enhanced authentication method.
    AuthenticationMethod = 0x15,
    /// Binary: enhanced authentication data.
    AuthenticationData = 0x16,
    /// Byte 0 or 1: whether reason strings and user properties may be sent on failures.
    RequestProblemInformation = 0x17,
    /// Four-byte integer: seconds to wait before publishing the will.
    WillDelayInterval = 0x18,
    /// Byte 0 or 1: whether the client asks for Response Information.
    RequestResponseInformation = 0x19,
    /// String: the basis of response topics.
    ResponseInformation = 0x1A,
    /// String: another server to use.
    ServerReference = 0x1C,
    /// String: a human-readable reason.
    ReasonString = 0x1F,
    /// Two-byte integer, not zero: how many QoS 1 and 2 publishes may be in flight.
    ReceiveMaximum = 0x21,
    /// Two-byte integer: the highest topic alias the sender accepts.
    TopicAliasMaximum = 0x22,
    /// Two-byte integer, not zero: a topic alias.
    TopicAlias = 0x23,
    /// Byte 0 or 1: the highest QoS the server supports.
    MaximumQoS = 0x24,
    /// Byte 0 or 1: whether the server supports retained messages.
    RetainAvailable = 0x25,
    /// String pair: application-defined.
    UserProperty = 0x26,
    /// Four-byte integer, not zero: the largest packet the sender accepts.
    MaximumPacketSize = 0x27,
    /// Byte 0 or 1: whether wildcard subscriptions are supported.
    WildcardSubscriptionAvailable = 0x28,
    /// Byte 0 or 1: whether subscription identifiers are supported.
    SubscriptionIdentifierAvailable = 0x29,
    /// Byte 0 or 1: whether shared subscriptions are supported.
    SharedSubscriptionAvailable = 0x2A,
}

/// Reads a property list (its length, then each property), refusing repeats of
/// properties that may appear once, and hands each one to `on_property` with
/// the reader positioned at its value. `on_property` refuses what its packet
/// does not allow.
fn decode_list(
    reader: &mut Reader,
    mut on_property: impl FnMut(PropertyId, &mut Reader) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = reader.variable_integer()? as usize;
    let mut list = reader.split(len)?;
    let mut seen: u64 = 0;
    while !list.is_empty() {
        let raw = list.variable_integer()?;
        let id = PropertyId::from_u32(raw).ok_or(DecodeError::UnknownProperty(raw))?;
        // User Property may always repeat; Subscription Identifier repeats only in
        // PUBLISH (MQTT-3.3.4-4), so SUBSCRIBE checks it itself.
        if !matches!(
            id,
            PropertyId::UserProperty | PropertyId::SubscriptionIdentifier
        ) {
            let bit = 1u64 << (id as u8);
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
        }
        on_property(id, &mut list)?;
    }
    Ok(())
}

fn not_allowed(property: PropertyId, packet_type: PacketType) -> DecodeError {
    DecodeError::PropertyNotAllowed {
        property,
        packet_type,
    }
}

fn read_flag(reader: &mut Reader, id: PropertyId) -> Result<bool, DecodeError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn read_nonzero_u16(reader: &mut Reader, id: PropertyId) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(reader.u16()?).ok_or(DecodeError::InvalidPropertyValue(id))
}

fn read_nonzero_u32(reader: &mut Reader, id: PropertyId) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(reader.u32()?).ok_or(DecodeError::InvalidPropertyValue(id))
}

fn read_subscription_identifier(reader: &mut Reader) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(reader.variable_integer()?).ok_or(DecodeError::InvalidPropertyValue(
        PropertyId::SubscriptionIdentifier,
    ))
}

fn read_user_property(reader: &mut Reader) -> Result<UserProperty, DecodeError> {
    Ok((reader.string()?, reader.string()?))
}

fn put_id<S: Sink>(sink: &mut S, id: PropertyId) {
    sink.put_u8(id as u8);
}

fn put_flag<S: Sink>(sink: &mut S, id: PropertyId, value: Option<bool>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u8(u8::from(value));
    }
}

fn put_u16_property<S: Sink>(sink: &mut S, id: PropertyId, value: Option<u16>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u16(value);
    }
}

fn put_u32_property<S: Sink>(sink: &mut S, id: PropertyId, value: Option<u32>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u32(value);
    }
}

fn put_string_property<S: Sink>(
    sink: &mut S,
    id: PropertyId,
    value: Option<&ByteString>,
) -> Result<(), EncodeError> {
    if let Some(value) = value {
        put_id(sink, id);
        put_string(sink, value)?;
    }
    Ok(())
}

fn put_binary_property<S: Sink>(
    sink: &mut S,
    id: PropertyId,
    value: Option<&Bytes>,
) -> Result<(), EncodeError> {
    if let Some(value) = value {
        put_id(sink, id);
        put_binary(sink, value)?;
    }
    Ok(())
}

fn put_subscription_identifier<S: Sink>(
    sink: &mut S,
    value: NonZeroU32,
) -> Result<(), EncodeError> {
    if value.get() > MAX_VARIABLE_INTEGER {
        return Err(EncodeError::ValueOutOfRange("subscription identifier"));
    }
    put_id(sink, PropertyId::SubscriptionIdentifier);
    put_variable_integer(sink, value.get())
}

fn put_user_properties<S: Sink>(sink: &mut S, pairs: &[UserProperty]) -> Result<(), EncodeError> {
    for (name, value) in pairs {
        put_id(sink, PropertyId::UserProperty);
        put_string(sink, name)?;
        put_string(sink, value)?;
    }
    Ok(())
}

/// The properties of an application message, shared by PUBLISH and the will
/// of CONNECT, and forwarded unchanged from publisher to subscriber
/// (MQTT-3.3.2-4, MQTT-3.3.2-17, MQTT-3.3.2-18, MQTT-3.3.2-19, MQTT-3.3.2-20).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Whether the payload is UTF-8 text.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Seconds the message lives; the server sends the remainder (MQTT-3.3.2-6).
    pub message_expiry_interval: Option<u32>,
    /// The payload's content type, e.g. a MIME type.
    pub content_type: Option<ByteString>,
    /// The topic name a responder publishes to.
    pub response_topic: Option<ByteString>,
    /// Correlates a response with its request.
    pub correlation_data: Option<Bytes>,
    /// Application-defined pairs, in the order sent (MQTT-3.3.2-18).
    pub user_properties: Vec<UserProperty>,
}

impl MessageProperties {
    /// Reads one message property; `Ok(false)` if `id` is not one of them.
    fn decode_one(&mut self, id: PropertyId, reader: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            PropertyId::PayloadFormatIndicator => {
                self.payload_format_indicator = Some(match reader.u8()? {
                    0 => PayloadFormat::Unspecified,
                    1 => PayloadFormat::Utf8,
                    _ => return Err(DecodeError::InvalidPropertyValue(id)),
                });
            }
            PropertyId::MessageExpiryInterval => self.message_expiry_interval = Some(reader.u32()?),
            PropertyId::ContentType => self.content_type = Some(reader.string()?),
            PropertyId::ResponseTopic => {
                let topic = reader.string()?;
                // MQTT-3.3.2-14: the Response Topic is a topic name, no wildcards.
                validate_topic_name(&topic).map_err(|_| DecodeError::InvalidPropertyValue(id))?;
                self.response_topic = Some(topic);
            }
            PropertyId::CorrelationData => self.correlation_data = Some(reader.binary()?),
            PropertyId::UserProperty => self.user_properties.push(read_user_property(reader)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        if let Some(format) = self.payload_format_indicator {
            put_id(sink, PropertyId::PayloadFormatIndicator);
            sink.put_u8(format as u8);
        }
        put_u32_property(
            sink,
            PropertyId::MessageExpiryInterval,
            self.message_expiry_interval,
        );
        put_string_property(sink, PropertyId::ContentType, self.content_type.as_ref())?;
        put_string_property(
            sink,
            PropertyId::ResponseTopic,
            self.response_topic.as_ref(),
        )?;
        put_binary_property(
            sink,
            PropertyId::CorrelationData,
            self.correlation_data.as_ref(),
        )?;
        put_user_properties(sink, &self.user_properties)
    }
}

/// [`MessageProperties`] as an [`Encode`] value, for a length-prefixed list.
struct MessagePropertyList<'a>(&'a MessageProperties);

impl Encode for MessagePropertyList<'_> {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        self.0.encode(sink)
    }
}

impl MessageProperties {
    /// The properties as a length-prefixed 5.0 property list: how a message's
    /// properties are kept outside a packet (in Rookery's store), unchanged
    /// from publisher to subscriber.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = bytes::BytesMut::new();
        put_length_prefixed(&mut buf, &MessagePropertyList(self))?;
        Ok(buf.freeze())
    }

    /// Reads what [`MessageProperties::to_bytes`] wrote; empty bytes are no
    /// properties.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        if bytes.is_empty() {
            return Ok(props);
        }
        let mut reader = Reader::new(bytes);
        decode_list(&mut reader, |id, reader| {
            if props.decode_one(id, reader)? {
                Ok(())
            } else {
                Err(not_allowed(id, PacketType::Publish))
            }
        })?;
        reader.finish()?;
        Ok(props)
    }
}

/// Properties of PUBLISH (section 3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// A topic alias standing for the topic name on this connection.
    pub topic_alias: Option<NonZeroU16>,
    /// The identifiers of the subscriptions that matched, server to client only.
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// The properties that travel with the message.
    pub message: MessageProperties,
}

impl PublishProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            if props.message.decode_one(id, reader)? {
                return Ok(());
            }
            match id {
                PropertyId::TopicAlias => props.topic_alias = Some(read_nonzero_u16(reader, id)?),
                PropertyId::SubscriptionIdentifier => {
                    props
                        .subscription_identifiers
                        .push(read_subscription_identifier(reader)?);
                }
                _ => return Err(not_allowed(id, PacketType::Publish)),
            }
            Ok(())
        })?;
        Ok(props)
    }
}

impl Encode for PublishProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_u16_property(
            sink,
            PropertyId::TopicAlias,
            self.topic_alias.map(NonZeroU16::get),
        );
        for id in &self.subscription_identifiers {
            put_subscription_identifier(sink, *id)?;
        }
        self.message.encode(sink)
    }
}

/// Properties of the will in CONNECT (section 3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Seconds after the connection ends before the will is published.
    pub will_delay_interval: Option<u32>,
    /// The properties the will message is published with.
    pub message: MessageProperties,
}

impl WillProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            if props.message.decode_one(id, reader)? {
                return Ok(());
            }
            match id {
                PropertyId::WillDelayInterval => props.will_delay_interval = Some(reader.u32()?),
                _ => return Err(not_allowed(id, PacketType::Connect)),
            }
            Ok(())
        })?;
        Ok(props)
    }
}

impl Encode for WillProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_u32_property(
            sink,
            PropertyId::WillDelayInterval,
            self.will_delay_interval,
        );
        self.message.encode(sink)
    }
}

/// Enhanced authentication fields, shared by CONNECT, CONNACK and AUTH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authentication {
    /// The authentication method's name.
    pub method: Option<ByteString>,
    /// Method-specific data.
    pub data: Option<Bytes>,
}

impl Authentication {
    fn decode_one(&mut self, id: PropertyId, reader: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            PropertyId::AuthenticationMethod => self.method = Some(reader.string()?),
            PropertyId::AuthenticationData => self.data = Some(reader.binary()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sections 3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3: data without a method is a Protocol Error.
    fn check(&self) -> Result<(), DecodeError> {
        if self.data.is_some() && self.method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok(())
    }

    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_string_property(sink, PropertyId::AuthenticationMethod, self.method.as_ref())?;
        put_binary_property(sink, PropertyId::AuthenticationData, self.data.as_ref())
    }
}

/// Properties of CONNECT (section 3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1 and 2 publishes the client accepts in flight.
    pub receive_maximum: Option<NonZeroU16>,
    /// The largest packet the client accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The highest topic alias the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Whether the client asks for Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// Whether reason strings and user properties may be sent on failures.
    pub request_problem_information: Option<bool>,
    /// Enhanced authentication.
    pub authentication: Authentication,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
}

impl ConnectProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            if props.authentication.decode_one(id, reader)? {
                return Ok(());
            }
            match id {
                PropertyId::SessionExpiryInterval => {
                    props.session_expiry_interval = Some(reader.u32()?);
                }
                PropertyId::ReceiveMaximum => {
                    props.receive_maximum = Some(read_nonzero_u16(reader, id)?);
                }
                PropertyId::MaximumPacketSize => {
                    props.maximum_packet_size = Some(read_nonzero_u32(reader, id)?);
                }
                PropertyId::TopicAliasMaximum => props.topic_alias_maximum = Some(reader.u16()?),
                PropertyId::RequestResponseInformation => {
                    props.request_response_information = Some(read_flag(reader, id)?);
                }
                PropertyId::RequestProblemInformation => {
                    props.request_problem_information = Some(read_flag(reader, id)?);
                }
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                _ => return Err(not_allowed(id, PacketType::Connect)),
            }
            Ok(())
        })?;
        props.authentication.check()?;
        Ok(props)
    }
}

impl Encode for ConnectProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_u32_property(
            sink,
            PropertyId::SessionExpiryInterval,
            self.session_expiry_interval,
        );
        put_u16_property(
            sink,
            PropertyId::ReceiveMaximum,
            self.receive_maximum.map(NonZeroU16::get),
        );
        put_u32_property(
            sink,
            PropertyId::MaximumPacketSize,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        put_u16_property(
            sink,
            PropertyId::TopicAliasMaximum,
            self.topic_alias_maximum,
        );
        put_flag(
            sink,
            PropertyId::RequestResponseInformation,
            self.request_response_information,
        );
        put_flag(
            sink,
            PropertyId::RequestProblemInformation,
            self.request_problem_information,
        );
        self.authentication.encode(sink)?;
        put_user_properties(sink, &self.user_properties)
    }
}

/// Properties of CONNACK (section 3.2.2.3): what the server grants and supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// The session expiry the server uses, if not the client's.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1 and 2 publishes the server accepts in flight.
    pub receive_maximum: Option<NonZeroU16>,
    /// The highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Whether the server supports retained messages; absent means yes.
    pub retain_available: Option<bool>,
    /// The largest packet the server accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The client identifier the server assigned to an empty one.
    pub assigned_client_identifier: Option<ByteString>,
    /// The highest topic alias the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// A human-readable reason.
    pub reason_string: Option<ByteString>,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
    /// Whether wildcard subscriptions are supported; absent means yes.
    pub wildcard_subscription_available: Option<bool>,
    /// Whether subscription identifiers are supported; absent means yes.
    pub subscription_identifiers_available: Option<bool>,
    /// Whether shared subscriptions are supported; absent means yes.
    pub shared_subscription_available: Option<bool>,
    /// The keep alive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
    /// The basis for response topics.
    pub response_information: Option<ByteString>,
    /// Another server the client should use.
    pub server_reference: Option<ByteString>,
    /// Enhanced authentication.
    pub authentication: Authentication,
}

impl ConnAckProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            if props.authentication.decode_one(id, reader)? {
                return Ok(());
            }
            match id {
                PropertyId::SessionExpiryInterval => {
                    props.session_expiry_interval = Some(reader.u32()?);
                }
                PropertyId::ReceiveMaximum => {
                    props.receive_maximum = Some(read_nonzero_u16(reader, id)?);
                }
                PropertyId::MaximumQoS => {
                    props.maximum_qos = Some(match reader.u8()? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(DecodeError::InvalidPropertyValue(id)),
                    });
                }
                PropertyId::RetainAvailable => {
                    props.retain_available = Some(read_flag(reader, id)?);
                }
                PropertyId::MaximumPacketSize => {
                    props.maximum_packet_size = Some(read_nonzero_u32(reader, id)?);
                }
                PropertyId::AssignedClientIdentifier => {
                    props.assigned_client_identifier = Some(reader.string()?);
                }
                PropertyId::TopicAliasMaximum => props.topic_alias_maximum = Some(reader.u16()?),
                PropertyId::ReasonString => props.reason_string = Some(reader.string()?),
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                PropertyId::WildcardSubscriptionAvailable => {
                    props.wildcard_subscription_available = Some(read_flag(reader, id)?);
                }
                PropertyId::SubscriptionIdentifierAvailable => {
                    props.subscription_identifiers_available = Some(read_flag(reader, id)?);
                }
                PropertyId::SharedSubscriptionAvailable => {
                    props.shared_subscription_available = Some(read_flag(reader, id)?);
                }
                PropertyId::ServerKeepAlive => props.server_keep_alive = Some(reader.u16()?),
                PropertyId::ResponseInformation => {
                    props.response_information = Some(reader.string()?);
                }
                PropertyId::ServerReference => props.server_reference = Some(reader.string()?),
                _ => return Err(not_allowed(id, PacketType::ConnAck)),
            }
            Ok(())
        })?;
        props.authentication.check()?;
        Ok(props)
    }
}

impl Encode for ConnAckProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_u32_property(
            sink,
            PropertyId::SessionExpiryInterval,
            self.session_expiry_interval,
        );
        put_u16_property(
            sink,
            PropertyId::ReceiveMaximum,
            self.receive_maximum.map(NonZeroU16::get),
        );
        if let Some(qos) = self.maximum_qos {
            if qos == QoS::ExactlyOnce {
                // Section 3.2.2.3.4: only 0 or 1 may be sent; 2 is said by omission.
                return Err(EncodeError::ValueOutOfRange("maximum QoS"));
            }
            put_id(sink, PropertyId::MaximumQoS);
            sink.put_u8(qos as u8);
        }
        put_flag(sink, PropertyId::RetainAvailable, self.retain_available);
        put_u32_property(
            sink,
            PropertyId::MaximumPacketSize,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        put_string_property(
            sink,
            PropertyId::AssignedClientIdentifier,
            self.assigned_client_identifier.as_ref(),
        )?;
        put_u16_property(
            sink,
            PropertyId::TopicAliasMaximum,
            self.topic_alias_maximum,
        );
        put_string_property(sink, PropertyId::ReasonString, self.reason_string.as_ref())?;
        put_user_properties(sink, &self.user_properties)?;
        put_flag(
            sink,
            PropertyId::WildcardSubscriptionAvailable,
            self.wildcard_subscription_available,
        );
        put_flag(
            sink,
            PropertyId::SubscriptionIdentifierAvailable,
            self.subscription_identifiers_available,
        );
        put_flag(
            sink,
            PropertyId::SharedSubscriptionAvailable,
            self.shared_subscription_available,
        );
        put_u16_property(sink, PropertyId::ServerKeepAlive, self.server_keep_alive);
        put_string_property(
            sink,
            PropertyId::ResponseInformation,
            self.response_information.as_ref(),
        )?;
        put_string_property(
            sink,
            PropertyId::ServerReference,
            self.server_reference.as_ref(),
        )?;
        self.authentication.encode(sink)
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a reason
/// string and user properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// A human-readable reason.
    pub reason_string: Option<ByteString>,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    pub(crate) fn decode(
        reader: &mut Reader,
        packet_type: PacketType,
    ) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            match id {
                PropertyId::ReasonString => props.reason_string = Some(reader.string()?),
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                _ => return Err(not_allowed(id, packet_type)),
            }
            Ok(())
        })?;
        Ok(props)
    }

    /// Whether there is nothing to send, so the property length may be omitted.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl Encode for AckProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_string_property(sink, PropertyId::ReasonString, self.reason_string.as_ref())?;
        put_user_properties(sink, &self.user_properties)
    }
}

/// Properties of SUBSCRIBE (section 3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// An identifier returned with every message these subscriptions match.
    pub subscription_identifier: Option<NonZeroU32>,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
}

impl SubscribeProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            match id {
                PropertyId::SubscriptionIdentifier => {
                    // Section 3.8.2.1.2: a Protocol Error to include it more than once.
                    if props.subscription_identifier.is_some() {
                        return Err(DecodeError::DuplicateProperty(id));
                    }
                    props.subscription_identifier = Some(read_subscription_identifier(reader)?);
                }
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                _ => return Err(not_allowed(id, PacketType::Subscribe)),
            }
            Ok(())
        })?;
        Ok(props)
    }
}

impl Encode for SubscribeProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        if let Some(id) = self.subscription_identifier {
            put_subscription_identifier(sink, id)?;
        }
        put_user_properties(sink, &self.user_properties)
    }
}

/// Properties of UNSUBSCRIBE (section 3.10.2.1): user properties only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
}

impl UnsubscribeProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            match id {
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                _ => return Err(not_allowed(id, PacketType::Unsubscribe)),
            }
            Ok(())
        })?;
        Ok(props)
    }
}

impl Encode for UnsubscribeProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_user_properties(sink, &self.user_properties)
    }
}

/// Properties of DISCONNECT (section 3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// A new session expiry, client to server only.
    pub session_expiry_interval: Option<u32>,
    /// A human-readable reason.
    pub reason_string: Option<ByteString>,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
    /// Another server the client should use.
    pub server_reference: Option<ByteString>,
}

impl DisconnectProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            match id {
                PropertyId::SessionExpiryInterval => {
                    props.session_expiry_interval = Some(reader.u32()?);
                }
                PropertyId::ReasonString => props.reason_string = Some(reader.string()?),
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                PropertyId::ServerReference => props.server_reference = Some(reader.string()?),
                _ => return Err(not_allowed(id, PacketType::Disconnect)),
            }
            Ok(())
        })?;
        Ok(props)
    }

    /// Whether there is nothing to send, so the property length may be omitted.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl Encode for DisconnectProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        put_u32_property(
            sink,
            PropertyId::SessionExpiryInterval,
            self.session_expiry_interval,
        );
        put_string_property(sink, PropertyId::ReasonString, self.reason_string.as_ref())?;
        put_user_properties(sink, &self.user_properties)?;
        put_string_property(
            sink,
            PropertyId::ServerReference,
            self.server_reference.as_ref(),
        )
    }
}

/// Properties of AUTH (section 3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// The authentication exchange.
    pub authentication: Authentication,
    /// A human-readable reason.
    pub reason_string: Option<ByteString>,
    /// Application-defined pairs.
    pub user_properties: Vec<UserProperty>,
}

impl AuthProperties {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        decode_list(reader, |id, reader| {
            if props.authentication.decode_one(id, reader)? {
                return Ok(());
            }
            match id {
                PropertyId::ReasonString => props.reason_string = Some(reader.string()?),
                PropertyId::UserProperty => props.user_properties.push(read_user_property(reader)?),
                _ => return Err(not_allowed(id, PacketType::Auth)),
            }
            Ok(())
        })?;
        props.authentication.check()?;
        Ok(props)
    }

    /// Whether there is nothing to send, so the property length may be omitted.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl Encode for AuthProperties {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        self.authentication.encode(sink)?;
        put_string_property(sink, PropertyId::ReasonString, self.reason_string.as_ref())?;
        put_user_properties(sink, &self.user_properties)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn message_properties_survive_bytes_and_back() {
        let props = MessageProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(30),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        let bytes = props.to_bytes().unwrap();
        assert_eq!(MessageProperties::from_bytes(bytes).unwrap(), props);
        let empty = MessageProperties::default();
        assert_eq!(
            MessageProperties::from_bytes(empty.to_bytes().unwrap()).unwrap(),
            empty
        );
        assert_eq!(MessageProperties::from_bytes(Bytes::new()).unwrap(), empty);
    }

    #[test]
    fn message_properties_refuse_a_topic_alias() {
        // Topic Alias (0x23) = 1: a connection's property, not the message's.
        let bytes = Bytes::from_static(&[3, 0x23, 0, 1]);
        assert!(MessageProperties::from_bytes(bytes).is_err());
    }
}
