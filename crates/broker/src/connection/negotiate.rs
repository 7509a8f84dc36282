//! CONNECT negotiation: what the server grants a client (identifier, session
//! expiry, keep alive, CONNACK properties, the window towards it), or the
//! reason code it is refused with. Pure: the store is asked afterwards, by
//! the I/O side, with what this decided.

use std::num::{NonZeroU16, NonZeroU32};

use rookery_codec::{ByteString, ConnAckProperties, Connect, ProtocolVersion, ReasonCode};

use super::topic_within_limits;
use crate::config::Limits;
use crate::message::qos_from;

/// Session Expiry Interval that never expires (MQTT-3.1.2-11 semantics for
/// 3.1.1's persistent sessions).
pub(super) const NEVER_EXPIRES: u32 = u32::MAX;

/// What the server grants a CONNECT it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Granted {
    /// The client's identifier, or the one assigned to it.
    pub client_id: String,
    /// The session expiry interval granted, in seconds; 0: ends with the
    /// connection.
    pub expiry_s: u32,
    /// MQTT-3.14.2-2: a DISCONNECT may not raise an expiry that was 0.
    pub requested_expiry_zero: bool,
    /// Seconds of keep alive in force (the client's, or the server's).
    pub keep_alive: u16,
    /// QoS 1/2 messages in flight towards the client at once.
    pub window: u16,
    /// The highest topic alias the client accepts from the server.
    pub client_alias_maximum: u16,
    /// The largest packet the client accepts.
    pub client_max_packet_size: u32,
    /// CONNACK's properties (5.0); empty for 3.x.
    pub connack: ConnAckProperties,
}

impl Granted {
    /// Whether the session outlives the connection.
    pub fn persistent(&self) -> bool {
        self.expiry_s > 0
    }
}

/// Decides CONNECT: the grant, or the CONNACK reason code refusing it.
/// `assign_id` makes an identifier for a client that sent none;
/// `scram_offered`: SCRAM-SHA-256 verifiers are loaded.
pub(super) fn negotiate(
    connect: &Connect,
    limits: &Limits,
    assign_id: impl FnOnce() -> String,
    scram_offered: bool,
) -> Result<Granted, ReasonCode> {
    let v5 = connect.protocol.is_v5();
    let mut connack = ConnAckProperties::default();
    super::limits::check_client_id(connect, limits)?;
    let mut client_id = connect.client_id.to_string();
    if client_id.is_empty() {
        // MQTT-3.1.3-8: 3.1.1 refuses an empty id with a persistent
        // session; 3.1 requires an id.
        if connect.protocol == ProtocolVersion::V3_1 || (!v5 && !connect.clean_start) {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        client_id = assign_id();
        if v5 {
            // MQTT-3.2.2-16.
            connack.assigned_client_identifier = Some(ByteString::from(client_id.as_str()));
        }
    }
    check_will(connect, limits)?;
    if let Some(method) = &connect.properties.authentication.method
        && !(scram_offered && method == rookery_auth::scram::MECHANISM)
    {
        // MQTT-4.12.0-1: a method the server does not offer.
        return Err(ReasonCode::BadAuthenticationMethod);
    }

    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        // 3.x has no expiry: kept until cleaned, or Mosquitto's
        // `persistent_client_expiration` after the client disconnects.
        limits.persistent_client_expiration.unwrap_or(NEVER_EXPIRES)
    };
    let expiry_s = requested_expiry.min(limits.max_session_expiry_s);
    if v5 && expiry_s != requested_expiry {
        connack.session_expiry_interval = Some(expiry_s);
    }

    let keep_alive = keep_alive(connect, limits);
    if v5 && keep_alive != connect.keep_alive {
        connack.server_keep_alive = Some(keep_alive);
    }
    if v5 {
        announce_capabilities(&mut connack, limits);
    }
    let client_receive_maximum = connect
        .properties
        .receive_maximum
        .map_or(u16::MAX, NonZeroU16::get);
    Ok(Granted {
        client_id,
        expiry_s,
        requested_expiry_zero: requested_expiry == 0,
        keep_alive,
        window: client_receive_maximum.min(limits.max_inflight.max(1)),
        client_alias_maximum: connect.properties.topic_alias_maximum.unwrap_or(0),
        client_max_packet_size: connect
            .properties
            .maximum_packet_size
            .map_or(rookery_codec::MAX_PACKET_SIZE, NonZeroU32::get),
        connack,
    })
}

/// A will the server could not publish as asked is refused at CONNECT.
fn check_will(connect: &Connect, limits: &Limits) -> Result<(), ReasonCode> {
    let Some(will) = &connect.will else {
        return Ok(());
    };
    if will.qos as u8 > limits.maximum_qos {
        // MQTT-3.2.2-12.
        return Err(ReasonCode::QoSNotSupported);
    }
    if will.retain && !limits.retain_available {
        // MQTT-3.2.2-13.
        return Err(ReasonCode::RetainNotSupported);
    }
    if !topic_within_limits(
        &will.topic,
        limits.max_topic_length,
        limits.max_topic_levels,
    ) {
        return Err(ReasonCode::TopicNameInvalid);
    }
    if super::publish::is_sys_topic(&will.topic) {
        // $SYS belongs to the broker, for wills as for publishes.
        return Err(ReasonCode::NotAuthorized);
    }
    Ok(())
}

/// The keep alive in force: the server's where it imposes one; for 5.0, at
/// most `max_keep_alive` (and not 0 when a maximum is set).
fn keep_alive(connect: &Connect, limits: &Limits) -> u16 {
    let mut keep_alive = limits.server_keep_alive.unwrap_or(connect.keep_alive);
    if connect.protocol.is_v5()
        && limits.max_keep_alive < u16::MAX
        && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
    {
        keep_alive = limits.max_keep_alive;
    }
    keep_alive
}

/// The server's limits, as 5.0 CONNACK properties.
fn announce_capabilities(connack: &mut ConnAckProperties, limits: &Limits) {
    connack.receive_maximum = NonZeroU16::new(limits.receive_maximum);
    if limits.maximum_qos < 2 {
        connack.maximum_qos = qos_from(u32::from(limits.maximum_qos));
    }
    connack.retain_available = Some(limits.retain_available);
    connack.maximum_packet_size = NonZeroU32::new(limits.max_packet_size);
    connack.topic_alias_maximum = Some(limits.topic_alias_maximum);
    connack.wildcard_subscription_available = Some(limits.wildcard_subscriptions);
    connack.subscription_identifiers_available = Some(limits.subscription_identifiers);
    connack.shared_subscription_available = Some(limits.shared_subscriptions);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rookery_codec::{ConnectProperties, QoS, Will, WillProperties};

    fn connect(protocol: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive: 60,
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    fn with_will(mut connect: Connect, topic: &str, qos: QoS, retain: bool) -> Connect {
        connect.will = Some(Will {
            topic: ByteString::from(topic),
            payload: Bytes::from_static(b"gone"),
            qos,
            retain,
            properties: WillProperties::default(),
        });
        connect
    }

    fn assigned() -> String {
        "assigned".to_owned()
    }

    #[test]
    fn mqtt_3_1_3_8_an_empty_client_id_with_a_persistent_3_1_1_session_is_refused_with_0x02() {
        let refused = negotiate(
            &connect(ProtocolVersion::V3_1_1, "", false),
            &Limits::default(),
            assigned,
            false,
        );
        assert_eq!(refused, Err(ReasonCode::ClientIdentifierNotValid));
    }

    #[test]
    fn mqtt_3_1_an_empty_client_id_is_always_refused() {
        let refused = negotiate(
            &connect(ProtocolVersion::V3_1, "", true),
            &Limits::default(),
            assigned,
            false,
        );
        assert_eq!(refused, Err(ReasonCode::ClientIdentifierNotValid));
    }

    #[test]
    fn mqtt_3_2_2_16_an_empty_client_id_is_assigned_one_and_told_it_in_5_0() {
        let v5 = negotiate(
            &connect(ProtocolVersion::V5, "", true),
            &Limits::default(),
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(v5.client_id, "assigned");
        assert_eq!(
            v5.connack.assigned_client_identifier.as_deref(),
            Some("assigned")
        );
        let v311 = negotiate(
            &connect(ProtocolVersion::V3_1_1, "", true),
            &Limits::default(),
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(v311.client_id, "assigned");
        assert_eq!(
            v311.connack,
            ConnAckProperties::default(),
            "3.x has no properties"
        );
    }

    #[test]
    fn mqtt_3_2_2_12_a_will_qos_above_the_maximum_is_refused_with_0x9b() {
        let limits = Limits {
            maximum_qos: 1,
            ..Limits::default()
        };
        let will = with_will(
            connect(ProtocolVersion::V5, "c", true),
            "w",
            QoS::ExactlyOnce,
            false,
        );
        assert_eq!(
            negotiate(&will, &limits, assigned, false),
            Err(ReasonCode::QoSNotSupported)
        );
    }

    #[test]
    fn mqtt_3_2_2_13_a_retained_will_without_retain_available_is_refused_with_0x9a() {
        let limits = Limits {
            retain_available: false,
            ..Limits::default()
        };
        let will = with_will(
            connect(ProtocolVersion::V5, "c", true),
            "w",
            QoS::AtMostOnce,
            true,
        );
        assert_eq!(
            negotiate(&will, &limits, assigned, false),
            Err(ReasonCode::RetainNotSupported)
        );
    }

    #[test]
    fn a_will_topic_beyond_the_topic_limits_is_refused_with_0x90() {
        let limits = Limits {
            max_topic_levels: 2,
            ..Limits::default()
        };
        let will = with_will(
            connect(ProtocolVersion::V5, "c", true),
            "a/b/c",
            QoS::AtMostOnce,
            false,
        );
        assert_eq!(
            negotiate(&will, &limits, assigned, false),
            Err(ReasonCode::TopicNameInvalid)
        );
    }

    #[test]
    fn mqtt_4_12_0_1_an_authentication_method_is_refused_with_0x8c() {
        let mut auth = connect(ProtocolVersion::V5, "c", true);
        auth.properties.authentication.method = Some(ByteString::from("SCRAM-SHA-1"));
        assert_eq!(
            negotiate(&auth, &Limits::default(), assigned, false),
            Err(ReasonCode::BadAuthenticationMethod)
        );
    }

    #[test]
    fn mqtt_4_12_0_1_scram_sha_256_is_taken_only_where_verifiers_are_loaded() {
        let mut scram = connect(ProtocolVersion::V5, "c", true);
        scram.properties.authentication.method = Some(ByteString::from("SCRAM-SHA-256"));
        assert!(negotiate(&scram, &Limits::default(), assigned, true).is_ok());
        assert_eq!(
            negotiate(&scram, &Limits::default(), assigned, false),
            Err(ReasonCode::BadAuthenticationMethod)
        );
    }

    #[test]
    fn a_will_on_sys_is_refused_with_0x87() {
        for topic in ["$SYS", "$SYS/broker/alert"] {
            let will = with_will(
                connect(ProtocolVersion::V5, "c", true),
                topic,
                QoS::AtMostOnce,
                true,
            );
            assert_eq!(
                negotiate(&will, &Limits::default(), assigned, false),
                Err(ReasonCode::NotAuthorized),
                "{topic}"
            );
        }
    }

    #[test]
    fn session_expiry_is_capped_and_the_cap_told_to_a_5_0_client() {
        let limits = Limits {
            max_session_expiry_s: 100,
            ..Limits::default()
        };
        let mut asks = connect(ProtocolVersion::V5, "c", false);
        asks.properties.session_expiry_interval = Some(1000);
        let granted = negotiate(&asks, &limits, assigned, false).unwrap();
        assert_eq!(granted.expiry_s, 100);
        assert_eq!(granted.connack.session_expiry_interval, Some(100));
        assert!(!granted.requested_expiry_zero);

        // 3.1.1: Clean Session 0 never expires, Clean Session 1 ends with the
        // connection.
        let persistent = negotiate(
            &connect(ProtocolVersion::V3_1_1, "c", false),
            &Limits::default(),
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(persistent.expiry_s, NEVER_EXPIRES);
        let clean = negotiate(
            &connect(ProtocolVersion::V3_1_1, "c", true),
            &Limits::default(),
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(clean.expiry_s, 0);
        assert!(clean.requested_expiry_zero);
        assert!(!clean.persistent());
    }

    /// Mosquitto's `persistent_client_expiration`: a 3.x persistent session
    /// expires that long after its client disconnects; 5.0 clients keep
    /// their own Session Expiry Interval.
    #[test]
    fn persistent_client_expiration_bounds_3_x_persistent_sessions_only() {
        let limits = Limits {
            persistent_client_expiration: Some(60),
            ..Limits::default()
        };
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1] {
            let granted =
                negotiate(&connect(version, "c", false), &limits, assigned, false).unwrap();
            assert_eq!(granted.expiry_s, 60, "{version:?}");
            assert!(granted.persistent());
            assert_eq!(
                granted.connack,
                ConnAckProperties::default(),
                "3.x is told nothing"
            );
        }
        let clean = negotiate(
            &connect(ProtocolVersion::V3_1_1, "c", true),
            &limits,
            assigned,
            false,
        );
        assert_eq!(clean.unwrap().expiry_s, 0);
        let mut v5 = connect(ProtocolVersion::V5, "c", false);
        v5.properties.session_expiry_interval = Some(NEVER_EXPIRES);
        assert_eq!(
            negotiate(&v5, &limits, assigned, false).unwrap().expiry_s,
            NEVER_EXPIRES
        );
    }

    #[test]
    fn mqtt_3_2_2_21_a_server_keep_alive_replaces_the_clients_and_is_told_in_5_0() {
        let limits = Limits {
            server_keep_alive: Some(30),
            ..Limits::default()
        };
        let granted = negotiate(
            &connect(ProtocolVersion::V5, "c", true),
            &limits,
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(granted.keep_alive, 30);
        assert_eq!(granted.connack.server_keep_alive, Some(30));

        let capped = Limits {
            max_keep_alive: 20,
            ..Limits::default()
        };
        let mut none = connect(ProtocolVersion::V5, "c", true);
        none.keep_alive = 0;
        let granted = negotiate(&none, &capped, assigned, false).unwrap();
        assert_eq!(granted.keep_alive, 20, "0 asks for none, a maximum is set");
    }

    #[test]
    fn the_window_towards_the_client_is_its_receive_maximum_within_max_inflight() {
        let limits = Limits {
            max_inflight: 32,
            ..Limits::default()
        };
        let mut small = connect(ProtocolVersion::V5, "c", true);
        small.properties.receive_maximum = NonZeroU16::new(5);
        small.properties.topic_alias_maximum = Some(7);
        small.properties.maximum_packet_size = NonZeroU32::new(1000);
        let granted = negotiate(&small, &limits, assigned, false).unwrap();
        assert_eq!(granted.window, 5);
        assert_eq!(granted.client_alias_maximum, 7);
        assert_eq!(granted.client_max_packet_size, 1000);
        let large = negotiate(
            &connect(ProtocolVersion::V5, "c", true),
            &limits,
            assigned,
            false,
        )
        .unwrap();
        assert_eq!(large.window, 32);
    }

    #[test]
    fn a_5_0_connack_announces_the_servers_limits() {
        let limits = Limits {
            maximum_qos: 1,
            shared_subscriptions: false,
            ..Limits::default()
        };
        let granted = negotiate(
            &connect(ProtocolVersion::V5, "c", true),
            &limits,
            assigned,
            false,
        )
        .unwrap();
        let connack = &granted.connack;
        assert_eq!(connack.maximum_qos, Some(QoS::AtLeastOnce));
        assert_eq!(
            connack.receive_maximum,
            NonZeroU16::new(limits.receive_maximum)
        );
        assert_eq!(
            connack.maximum_packet_size,
            NonZeroU32::new(limits.max_packet_size)
        );
        assert_eq!(
            connack.topic_alias_maximum,
            Some(limits.topic_alias_maximum)
        );
        assert_eq!(connack.shared_subscription_available, Some(false));
        assert_eq!(connack.retain_available, Some(true));
    }
}
