//! Authentication and authorization (MQTT 5.0 sections 4.12, 5.4.1-5.4.2):
//! Mosquitto's password and ACL files used unchanged, the CONNACK codes of a
//! refusal, ACLs on PUBLISH, SUBSCRIBE, delivery and wills. Every test here
//! also runs against Mosquitto (`ROOKERY_E2E_BROKER=mosquitto`) unless it
//! says why not.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::ProtocolVersion::{self, V3_1_1, V5};
use rookery_codec::{ByteString, Connect, QoS, ReasonCode};
use rookery_testkit::{RawClient, connect_packet};

use crate::harness::{Auth, Broker, Settings, skip_on_mosquitto, skip_unless_rookery, unique};

/// Written by Debian's `mosquitto_passwd` 2.0.11: alice's password is
/// `wonderland` (`$7$`, PBKDF2-SHA512, the default) and bob's `builder`
/// (`-H sha512`, `$6$`).
pub(crate) const MOSQUITTO_PASSWORDS: &str = "\
alice:$7$101$W+Feu/tqMcJj+0HQ$/z+tcJQrATfaFMRTStwpIjMBFCJFVFzws4u/uLu9muor3swwRv8gvXHnuDBciSZpNZ5sjzQ7CT+iv8ujILC8gA==
bob:$6$9bvuSjvGI3AU6q9Z$Bvjj58Ae31dWtQPDhlii+/XhCsDmCEp69FRwrae/fhQbP3176Qjqbajr2OGAPkLYrKL38LBdKUSl0e5hirj1GQ==
";

/// The ACL the Paho interoperability suites run with.
const PAHO_ACL: &str = "topic readwrite #\ntopic deny test/nosubscribe\n";

fn with_auth(auth: Auth) -> Broker {
    Broker::start_with(Settings {
        auth: Some(auth),
        ..Settings::default()
    })
}

fn passwords_only() -> Broker {
    with_auth(Auth {
        allow_anonymous: false,
        password_file: Some(MOSQUITTO_PASSWORDS.into()),
        acl_file: None,
        ..Auth::default()
    })
}

fn login(version: ProtocolVersion, id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(version, id);
    connect.username = Some(ByteString::from(user));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

async fn connack_code(broker: &Broker, connect: Connect) -> ReasonCode {
    let mut client = RawClient::open(broker.addr(), connect.protocol).await;
    client
        .send(rookery_codec::Packet::Connect(Box::new(connect)))
        .await;
    client.expect_connack().await.reason_code
}

/// A password file written by `mosquitto_passwd` works unchanged: the right
/// password connects, for `$7$` and `$6$` hashes alike.
#[tokio::test]
async fn a_mosquitto_password_file_lets_its_users_in() {
    let broker = passwords_only();
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        for version in [V3_1_1, V5] {
            let connect = login(version, &unique("pw"), user, password);
            assert_eq!(
                connack_code(&broker, connect).await,
                ReasonCode::Success,
                "{user} over {version:?}"
            );
        }
    }
}

/// MQTT-3.2.2 (3.1.1 return code 4) and 5.0's 0x86: a wrong password, or an
/// unknown user, is Bad User Name or Password.
#[tokio::test]
async fn a_wrong_password_is_refused_with_0x86_and_3_1_1s_4() {
    if skip_on_mosquitto(
        "Mosquitto 2.0.11 answers a wrong password with 0x87 (3.1.1's 5), not 0x86",
    ) {
        return;
    }
    let broker = passwords_only();
    for (user, password) in [("alice", "builder"), ("mallory", "wonderland")] {
        for version in [V3_1_1, V5] {
            let connect = login(version, &unique("pw"), user, password);
            // The codec reads 3.1.1's return code 4 as 0x86.
            assert_eq!(
                connack_code(&broker, connect).await,
                ReasonCode::BadUserNameOrPassword,
                "{user} over {version:?}"
            );
        }
    }
}

/// Without credentials where anonymous clients are not allowed: 0x87 Not
/// Authorized (3.1.1's 5).
#[tokio::test]
async fn no_credentials_without_allow_anonymous_is_refused_with_0x87_and_3_1_1s_5() {
    let broker = passwords_only();
    for version in [V3_1_1, V5] {
        let connect = connect_packet(version, &unique("anon"));
        assert_eq!(
            connack_code(&broker, connect).await,
            ReasonCode::NotAuthorized,
            "{version:?}"
        );
    }
}

/// Mosquitto 2's secure default, kept: a listener off loopback lets no
/// anonymous client in unless `allow_anonymous = true` is set.
#[tokio::test]
async fn a_listener_off_loopback_refuses_anonymous_clients_by_default() {
    if skip_unless_rookery("the loopback default of allow_anonymous") {
        return;
    }
    let broker = Broker::start_with(Settings {
        listen: Some("0.0.0.0:0"),
        ..Settings::default()
    });
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.addr().port()));
    for version in [V3_1_1, V5] {
        let mut client = RawClient::open(addr, version).await;
        client
            .send(rookery_codec::Packet::Connect(Box::new(connect_packet(
                version,
                &unique("anon"),
            ))))
            .await;
        assert_eq!(
            client.expect_connack().await.reason_code,
            ReasonCode::NotAuthorized
        );
    }
    assert!(
        broker
            .metric("rookery_auth_failures_total{reason=\"not_authorized\"}")
            .await
            >= 2.0
    );
}

/// The Paho suites' ACL: SUBSCRIBE to a denied filter gets 0x80 (in 5.0
/// too, where the Paho test client takes nothing else); other filters in
/// the same packet are granted.
#[tokio::test]
async fn a_subscription_the_acl_denies_gets_0x80() {
    if skip_on_mosquitto(
        "Mosquitto 2.0.11 grants a denied SUBSCRIBE and only filters what it sends",
    ) {
        return;
    }
    let broker = with_auth(Auth {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some(PAHO_ACL.into()),
        ..Auth::default()
    });
    for version in [V3_1_1, V5] {
        let mut client = RawClient::open(broker.addr(), version).await;
        client
            .send(rookery_codec::Packet::Connect(Box::new(connect_packet(
                version,
                &unique("acl"),
            ))))
            .await;
        client.expect_connack().await;
        let codes = subscribe_codes(
            &mut client,
            &[
                ("test/nosubscribe", QoS::AtLeastOnce),
                ("test/allowed", QoS::AtLeastOnce),
            ],
        )
        .await;
        assert_eq!(
            codes,
            vec![ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1],
            "{version:?}"
        );
    }
}

/// A wider subscription is granted, and the messages on topics it may not
/// read are not sent to it.
#[tokio::test]
async fn a_wildcard_subscriber_is_not_sent_what_the_acl_denies() {
    let broker = with_auth(Auth {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some(PAHO_ACL.into()),
        ..Auth::default()
    });
    let mut subscriber = RawClient::v5(broker.addr(), &unique("sub")).await;
    subscriber.subscribe_ok(1, "test/#", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique("pub")).await;
    // Refused to the publisher too: `deny` is read and write.
    let refused = publisher.publish1(1, "test/nosubscribe", b"secret").await;
    assert_eq!(refused.reason_code, ReasonCode::NotAuthorized);
    publisher.publish1(2, "test/open", b"public").await;
    let publish = subscriber.receive().await;
    assert_eq!(&*publish.topic, "test/open");
    subscriber.ack(&publish).await;
    subscriber.expect_nothing().await;
}

/// A read-only topic: 5.0 PUBACK 0x87; 3.1.1 has no way to say so, so the
/// publish is acknowledged and dropped (as Mosquitto does). Either way no
/// subscriber gets it.
#[tokio::test]
async fn a_publish_the_acl_denies_is_refused_with_0x87_or_dropped_in_3_1_1() {
    let broker = with_auth(Auth {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some("topic read ro/#\ntopic readwrite rw/#\n".into()),
        ..Auth::default()
    });
    let mut subscriber = RawClient::v5(broker.addr(), &unique("sub")).await;
    subscriber.subscribe_ok(1, "ro/#", QoS::AtLeastOnce).await;

    let mut v5 = RawClient::v5(broker.addr(), &unique("pub5")).await;
    let ack = v5.publish1(1, "ro/x", b"denied").await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);

    let mut v311 = RawClient::v311(broker.addr(), &unique("pub4")).await;
    let ack = v311.publish1(1, "ro/x", b"denied").await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    subscriber.expect_nothing().await;
}

/// Wills are publishes the client asks for at CONNECT: one on a topic the
/// ACL denies is refused then (0x87, 3.1.1's 5).
#[tokio::test]
async fn a_will_the_acl_denies_is_refused_at_connect() {
    if skip_on_mosquitto(
        "Mosquitto 2.0.11 accepts the CONNECT and drops the will when it would be published",
    ) {
        return;
    }
    let broker = with_auth(Auth {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some("topic readwrite open/#\n".into()),
        ..Auth::default()
    });
    for version in [V3_1_1, V5] {
        let mut connect = connect_packet(version, &unique("will"));
        connect.will = Some(rookery_codec::Will {
            topic: ByteString::from("closed/alert"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
        assert_eq!(
            connack_code(&broker, connect).await,
            ReasonCode::NotAuthorized,
            "{version:?}"
        );
    }
}

/// No client publishes to `$SYS`, its will neither.
#[tokio::test]
async fn a_will_on_sys_is_refused_at_connect() {
    if skip_unless_rookery("refusing $SYS wills (Mosquitto accepts them)") {
        return;
    }
    let broker = crate::harness::shared();
    for version in [V3_1_1, V5] {
        let mut connect = connect_packet(version, &unique("syswill"));
        connect.will = Some(rookery_codec::Will {
            topic: ByteString::from("$SYS/broker/alert"),
            payload: Bytes::from_static(b"forged"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
        let mut client = RawClient::open(broker.addr(), version).await;
        client
            .send(rookery_codec::Packet::Connect(Box::new(connect)))
            .await;
        assert_eq!(
            client.expect_connack().await.reason_code,
            ReasonCode::NotAuthorized,
            "{version:?}"
        );
    }
}

/// `pattern` lines with `%u`: each user reads and writes its own tree only.
#[tokio::test]
async fn acl_patterns_give_each_user_its_own_topics() {
    if skip_on_mosquitto(
        "Mosquitto 2.0.11 grants a denied SUBSCRIBE and only filters what it sends",
    ) {
        return;
    }
    let broker = with_auth(Auth {
        allow_anonymous: false,
        password_file: Some(MOSQUITTO_PASSWORDS.into()),
        acl_file: Some("pattern readwrite users/%u/#\n".into()),
        ..Auth::default()
    });
    let connect = login(V5, &unique("alice"), "alice", "wonderland");
    let (mut alice, _) = RawClient::connect_ok(broker.addr(), connect).await;
    let codes = subscribe_codes(
        &mut alice,
        &[
            ("users/alice/#", QoS::AtLeastOnce),
            ("users/bob/#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        codes,
        vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
    );
    let ack = alice.publish1(2, "users/bob/inbox", b"x").await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let ack = alice.publish1(3, "users/alice/inbox", b"mine").await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let publish = alice.receive().await;
    assert_eq!(&*publish.topic, "users/alice/inbox");
}

/// SIGHUP reloads the ACL: a connected client's next publish is decided by
/// the new file, and its connection stays. A file that does not load keeps
/// the old policy.
#[tokio::test]
async fn sighup_reloads_the_acl_without_dropping_connections() {
    if skip_unless_rookery("reloading Rookery's configuration") {
        return;
    }
    let broker = with_auth(Auth {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some("topic readwrite #\n".into()),
        ..Auth::default()
    });
    let mut client = RawClient::v5(broker.addr(), &unique("reload")).await;
    let before = client.publish1(1, "a/b", b"before").await.reason_code;
    assert!(!before.is_error(), "{before:?}");
    let acl = broker.dir().join("acl");
    std::fs::write(&acl, "topic readwrite other/#\n").expect("rewrite the ACL");
    broker.signal(rookery_testkit::Signal::Hup);
    wait_for_metric(&broker, "rookery_reloads_total{result=\"ok\"}").await;
    assert_eq!(
        client.publish1(2, "a/b", b"after").await.reason_code,
        ReasonCode::NotAuthorized
    );
    std::fs::write(&acl, "topic bogus-access\nnonsense line\n").expect("break the ACL");
    broker.signal(rookery_testkit::Signal::Hup);
    wait_for_metric(&broker, "rookery_reloads_total{result=\"failed\"}").await;
    let still = client.publish1(3, "other/x", b"still").await.reason_code;
    assert!(
        !still.is_error(),
        "the last good ACL stays in force: {still:?}"
    );
}

async fn subscribe_codes(client: &mut RawClient, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
    let filters: Vec<_> = filters
        .iter()
        .map(|(filter, qos)| (*filter, rookery_testkit::at(*qos)))
        .collect();
    client
        .subscribe_with(1, &filters, Default::default())
        .await
        .reason_codes
}

async fn wait_for_metric(broker: &Broker, series: &str) {
    let deadline = tokio::time::Instant::now() + crate::harness::TIMEOUT;
    while broker.metric(series).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MQTT 5 enhanced authentication (section 4.12) with SCRAM-SHA-256:
/// CONNECT carries client-first, AUTH 0x18 server-first, the client's AUTH
/// 0x18 client-final, and CONNACK server-final, which proves that the
/// server knows the verifier.
#[tokio::test]
async fn mqtt_4_12_scram_sha_256_over_auth_packets_lets_the_user_in() {
    if skip_unless_rookery("SCRAM-SHA-256 (Mosquitto has no enhanced authentication)") {
        return;
    }
    let password = rookery_auth::password::hash_password(b"secret").expect("a hash");
    let verifier = rookery_auth::scram::verifier(b"secret").expect("a verifier");
    let broker = with_auth(Auth {
        allow_anonymous: false,
        password_file: Some(format!("carol:{password}\n")),
        scram_file: Some(format!("carol:{verifier}\n")),
        ..Auth::default()
    });
    let (reason, server_final, expected) = scram_login(&broker, "carol", b"secret").await;
    assert_eq!(reason, ReasonCode::Success);
    assert_eq!(server_final, Some(expected), "CONNACK carries server-final");

    let (reason, _, _) = scram_login(&broker, "carol", b"wrong").await;
    assert_eq!(reason, ReasonCode::BadUserNameOrPassword);
    let (reason, _, _) = scram_login(&broker, "nobody", b"secret").await;
    assert_eq!(reason, ReasonCode::BadUserNameOrPassword);

    // MQTT-4.12.0-1: a method the server does not offer.
    let mut connect = connect_packet(V5, &unique("scram"));
    connect.properties.authentication.method = Some(ByteString::from("SCRAM-SHA-1"));
    assert_eq!(
        connack_code(&broker, connect).await,
        ReasonCode::BadAuthenticationMethod
    );
}

/// One SCRAM login: CONNACK's reason code and Authentication Data, and the
/// server-final message the client expects.
async fn scram_login(
    broker: &Broker,
    user: &str,
    password: &[u8],
) -> (ReasonCode, Option<Vec<u8>>, Vec<u8>) {
    use rookery_codec::{Auth as AuthPacket, AuthProperties, Authentication, Packet};
    let client = rookery_auth::scram::ScramClient::new(user, password).expect("a nonce");
    let method = || Some(ByteString::from_static("SCRAM-SHA-256"));
    let mut connect = connect_packet(V5, &unique("scram"));
    connect.properties.authentication = Authentication {
        method: method(),
        data: Some(Bytes::from(client.client_first())),
    };
    let mut raw = RawClient::open(broker.addr(), V5).await;
    raw.send(Packet::Connect(Box::new(connect))).await;
    let server_first = match raw.expect().await {
        Packet::Auth(auth) => {
            assert_eq!(auth.reason_code, ReasonCode::ContinueAuthentication);
            assert_eq!(auth.properties.authentication.method, method());
            auth.properties.authentication.data.unwrap_or_default()
        }
        Packet::ConnAck(connack) => return (connack.reason_code, None, Vec::new()),
        other => panic!("expected AUTH or CONNACK, got {other:?}"),
    };
    let (client_final, expected) = client
        .client_final(&server_first)
        .expect("a well-formed server-first message");
    raw.send(Packet::Auth(AuthPacket {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication: Authentication {
                method: method(),
                data: Some(Bytes::from(client_final)),
            },
            ..AuthProperties::default()
        },
    }))
    .await;
    let connack = raw.expect_connack().await;
    let data = connack
        .properties
        .authentication
        .data
        .map(|data| data.to_vec());
    (connack.reason_code, data, expected)
}

/// An HS256 token, as an identity provider would sign it.
fn hs256_token(secret: &[u8], claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = url.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = url.encode(claims.to_string());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = ring::hmac::sign(&key, format!("{header}.{body}").as_bytes());
    format!("{header}.{body}.{}", url.encode(signature.as_ref()))
}

/// A JWT in the password field: its `sub` is the username, its EMQX-style
/// `acl` claim limits the topics, and an expired one is refused with 0x86.
#[tokio::test]
async fn a_jwt_in_the_password_authenticates_and_its_acl_claim_limits_topics() {
    if skip_unless_rookery("JWT authentication (Mosquitto has none)") {
        return;
    }
    let secret = b"a-shared-secret-of-at-least-32-bytes!!";
    let broker = Broker::start_with(Settings {
        auth: Some(Auth {
            allow_anonymous: false,
            ..Auth::default()
        }),
        extra_toml: Some(
            "[broker.auth.jwt]\nalgorithm = \"hs256\"\nsecret_file = \"{dir}/jwt-secret\"\n\
             acl_claim = \"acl\"\n"
                .into(),
        ),
        files: vec![("jwt-secret".into(), secret.to_vec())],
        ..Settings::default()
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let token = hs256_token(
        secret,
        &serde_json::json!({
            "sub": "dave",
            "exp": now + 300,
            "acl": {"pub": ["dave/#"], "sub": ["dave/#"]},
        }),
    );
    let (mut dave, _) =
        RawClient::connect_ok(broker.addr(), login(V5, &unique("dave"), "ignored", &token)).await;
    dave.subscribe_ok(1, "dave/#", QoS::AtLeastOnce).await;
    let denied = subscribe_codes(&mut dave, &[("other/#", QoS::AtLeastOnce)]).await;
    assert_eq!(denied, vec![ReasonCode::UnspecifiedError]);
    assert_eq!(
        dave.publish1(2, "other/x", b"no").await.reason_code,
        ReasonCode::NotAuthorized
    );
    assert!(
        !dave
            .publish1(3, "dave/x", b"yes")
            .await
            .reason_code
            .is_error()
    );
    assert_eq!(&*dave.receive().await.topic, "dave/x");

    let expired = hs256_token(secret, &serde_json::json!({"sub": "dave", "exp": now - 60}));
    let connect = login(V5, &unique("dave"), "ignored", &expired);
    assert_eq!(
        connack_code(&broker, connect).await,
        ReasonCode::BadUserNameOrPassword
    );
    let forged = hs256_token(
        b"another secret",
        &serde_json::json!({"sub": "dave", "exp": now + 300}),
    );
    let connect = login(V5, &unique("dave"), "ignored", &forged);
    assert_eq!(
        connack_code(&broker, connect).await,
        ReasonCode::BadUserNameOrPassword
    );
}
