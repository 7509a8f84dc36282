//! CONNECT performed: the negotiation's grant is taken to the store (a new
//! epoch for the client id, the session as stored), registered on this
//! edge, and answered with CONNACK.

use std::sync::Arc;
use std::time::Duration;

use rookery_auth::{Access, AuthPolicy, Principal, scram};
use rookery_codec::{
    Auth, AuthProperties, Authentication, ByteString, ConnAck, ConnAckProperties, Connect, Packet,
    ReasonCode,
};
use rookery_store::proto::{self, command_result::Kind as ResultKind};
use rookery_store::writer::now_ms;
use tokio::time::Instant;

use super::negotiate::{Granted, negotiate};
use super::records;
use super::run::Live;
use super::session::Session;
use super::socket::Socket;
use crate::auth::{Authorizer, ListenerAuth, OfferedCredentials, denial_label, denial_reason};
use crate::hub::{ClientId, Hub, Mailbox, SessionEntry, sub_entry_from_proto};
use crate::transport::ConnectionPermit;

/// What the listener knows of a connection before its CONNECT.
#[derive(Debug)]
pub(super) struct Admission {
    /// How the listener authenticates.
    pub listener: ListenerAuth,
    /// The identity of a verified client certificate.
    pub certificate: Option<String>,
    /// When the connect timeout ends, authentication exchange included.
    pub deadline: Instant,
    /// The listener's name (`rookery_clients_connected{listener}`), kept
    /// in the store for operators.
    pub listener_name: Arc<str>,
    /// The connection's place in the connection limits: held by the
    /// refusal or, once connected, by `Live` until the connection ends.
    pub permit: ConnectionPermit,
}

/// How authentication ended.
enum Identified {
    /// The client is let in as this principal.
    Admitted(Principal),
    /// The client is refused with this reason code.
    Refused(ReasonCode, &'static str),
    /// The client left, or broke the exchange; nothing more is sent.
    Gone,
}

/// Handles CONNECT; `None` when the connection is refused (CONNACK with the
/// reason sent).
pub(super) async fn accept(
    hub: Arc<Hub>,
    mut socket: Socket,
    connect: Box<Connect>,
    admission: Admission,
) -> Option<Box<Live>> {
    socket.out.set_version(connect.protocol);
    let limits = &hub.config.limits;
    let policy = hub.gatekeeper.current();
    let assign_id = || format!("rookery-{:016x}", rand_id());
    let mut granted = match negotiate(&connect, limits, assign_id, policy.scram().is_some()) {
        Ok(granted) => granted,
        Err(reason) => return refuse(&hub, socket, reason).await,
    };
    let principal = match identify(
        &hub,
        &mut socket,
        &connect,
        &mut granted,
        &policy,
        &admission,
    )
    .await
    {
        Identified::Admitted(principal) => principal,
        Identified::Refused(reason, label) => {
            return refuse_after_delay(&hub, socket, &connect, &policy, reason, label).await;
        }
        Identified::Gone => return None,
    };
    let username = principal.username.clone();
    let authorizer = Authorizer::new(hub.gatekeeper.clone(), principal);
    if let Some(will) = &connect.will
        && !authorizer.may(&will.topic, Access::Write)
    {
        // A will is a publish the client asks for now: the ACL applies now.
        return refuse(&hub, socket, ReasonCode::NotAuthorized).await;
    }
    let origin = records::Origin {
        address: socket.peer,
        listener: &admission.listener_name,
        username: username.as_deref(),
    };
    let command = records::connect(&connect, &granted, &hub.edge_id, now_ms(), limits, &origin);
    let connected = match hub.store.write_one(command).await {
        Ok(proto::CommandResult {
            kind: Some(ResultKind::Connected(connected)),
        }) => connected,
        Ok(proto::CommandResult {
            kind: Some(ResultKind::QuotaExceeded(_)),
        }) => {
            persistent_sessions_full(&granted.client_id, limits.max_persistent_sessions);
            return refuse(&hub, socket, ReasonCode::QuotaExceeded).await;
        }
        Ok(other) => {
            tracing::error!(?other, "unexpected store answer to Connect");
            return refuse(&hub, socket, ReasonCode::UnspecifiedError).await;
        }
        Err(error) => {
            tracing::warn!(%error, client_id = granted.client_id, "refusing a client: the store is unavailable");
            return refuse(&hub, socket, ReasonCode::ServerUnavailable).await;
        }
    };

    let client: ClientId = Arc::from(granted.client_id.as_str());
    let connection_id = hub.next_connection_id();
    let (mailbox, receiver) = Mailbox::new(
        connection_id,
        hub.pause_threshold(),
        usize::from(limits.max_inflight),
    );
    let entry = SessionEntry {
        epoch: connected.epoch,
        persistent: granted.persistent(),
        mailbox: Some(mailbox.clone()),
        remote_edge: None,
    };
    let subscriptions = connected.subscriptions.iter().map(|subscription| {
        (
            subscription.filter.clone(),
            sub_entry_from_proto(subscription.options.as_ref()),
        )
    });
    if hub.attach(&client, entry, subscriptions).is_err() {
        // A newer connection of the same client won the race.
        return refuse(&hub, socket, ReasonCode::SessionTakenOver).await;
    }
    socket.out.send(&Packet::ConnAck(Box::new(ConnAck {
        // MQTT-3.2.2-2/3.
        session_present: connected.session_present,
        reason_code: ReasonCode::Success,
        properties: granted.connack.clone(),
    })));
    let mut session = Session::new(
        &granted,
        client,
        connected.epoch,
        connection_id,
        limits,
        authorizer,
    );
    if session.persistent || connected.session_present {
        session
            .outgoing
            .resume(connected.queue, connected.queue_next_seq);
        if connected.may_have_sent {
            session.outgoing.may_have_sent(
                connected.may_have_sent_below_seq,
                usize::from(limits.max_inflight),
            );
        }
    }
    let client_gauge = hub
        .stats
        .connected(&admission.listener_name, connect.protocol);
    Some(Live::new(
        hub.clone(),
        socket,
        session,
        receiver,
        mailbox,
        client_gauge,
        admission.permit,
    ))
}

/// Who the client is: a SCRAM exchange when CONNECT names SCRAM-SHA-256,
/// else the credentials CONNECT carries (or the listener's certificate).
async fn identify(
    hub: &Hub,
    socket: &mut Socket,
    connect: &Connect,
    granted: &mut Granted,
    policy: &Arc<AuthPolicy>,
    admission: &Admission,
) -> Identified {
    if connect.properties.authentication.method.as_deref() == Some(scram::MECHANISM) {
        return scram_exchange(hub, socket, connect, granted, policy, admission.deadline).await;
    }
    let offered = OfferedCredentials {
        username: connect.username.as_deref().map(str::to_owned),
        password: connect.password.clone(),
        client_id: granted.client_id.clone(),
        certificate_identity: admission
            .certificate
            .clone()
            .filter(|_| admission.listener.identity_as_username),
        anonymous_allowed: admission.listener.anonymous_allowed,
    };
    match hub.gatekeeper.authenticate(policy.clone(), offered).await {
        Ok(principal) => Identified::Admitted(principal),
        Err(denial) => Identified::Refused(denial_reason(denial), denial_label(denial)),
    }
}

/// MQTT 5 enhanced authentication with SCRAM-SHA-256 (section 4.12):
/// CONNECT carries client-first, AUTH 0x18 answers server-first, the
/// client's AUTH 0x18 carries client-final, and CONNACK carries
/// server-final.
async fn scram_exchange(
    hub: &Hub,
    socket: &mut Socket,
    connect: &Connect,
    granted: &mut Granted,
    policy: &AuthPolicy,
    deadline: Instant,
) -> Identified {
    let bad = Identified::Refused(ReasonCode::BadUserNameOrPassword, "bad_credentials");
    let Some(verifiers) = policy.scram() else {
        return Identified::Refused(ReasonCode::BadAuthenticationMethod, "bad_method");
    };
    let client_first = connect
        .properties
        .authentication
        .data
        .as_deref()
        .unwrap_or_default();
    let Ok((exchange, server_first)) = verifiers.start(client_first) else {
        return bad;
    };
    socket.out.send(&scram_auth(server_first));
    if socket.flush(&hub.stats).await.is_err() {
        return Identified::Gone;
    }
    let client_final = match socket
        .read_during_auth(deadline, hub.config.limits.max_packet_size, &hub.stats)
        .await
    {
        Ok(Some(Packet::Auth(auth)))
            if auth.reason_code == ReasonCode::ContinueAuthentication
                && auth.properties.authentication.method.as_deref() == Some(scram::MECHANISM) =>
        {
            auth.properties.authentication.data.unwrap_or_default()
        }
        Ok(Some(Packet::Auth(_))) => {
            // MQTT-4.12.0-5: the method may not change during the exchange.
            return Identified::Refused(ReasonCode::ProtocolError, "protocol_error");
        }
        Ok(Some(other)) => {
            tracing::debug!(peer = %socket.peer, packet = ?other.packet_type(), "packet other than AUTH during authentication");
            return Identified::Refused(ReasonCode::ProtocolError, "protocol_error");
        }
        Ok(None) | Err(_) => return Identified::Gone,
    };
    let Ok(success) = exchange.finish(&client_final) else {
        return bad;
    };
    match policy.bind(
        Principal::user(&success.username, &granted.client_id),
        false,
    ) {
        Ok(principal) => {
            granted.connack.authentication = Authentication {
                method: Some(ByteString::from_static(scram::MECHANISM)),
                data: Some(success.server_final.into()),
            };
            Identified::Admitted(principal)
        }
        Err(denial) => Identified::Refused(denial_reason(denial), denial_label(denial)),
    }
}

/// AUTH 0x18 with SCRAM data.
fn scram_auth(data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication: Authentication {
                method: Some(ByteString::from_static(scram::MECHANISM)),
                data: Some(data.into()),
            },
            ..AuthProperties::default()
        },
    })
}

/// A refused authentication: counted, logged with the peer (never the
/// password), and answered after `failure_delay_ms` so that guessing is
/// slow.
async fn refuse_after_delay(
    hub: &Hub,
    socket: Socket,
    connect: &Connect,
    policy: &AuthPolicy,
    reason: ReasonCode,
    label: &'static str,
) -> Option<Box<Live>> {
    metrics::counter!("rookery_auth_failures_total", "reason" => label).increment(1);
    tracing::info!(
        peer = %socket.peer,
        client_id = %connect.client_id,
        username = connect.username.as_deref().unwrap_or(""),
        reason = label,
        "client refused at CONNECT"
    );
    tokio::time::sleep(Duration::from_millis(policy.config().failure_delay_ms)).await;
    refuse(hub, socket, reason).await
}

/// Answers CONNECT with a refusal (MQTT-3.2.2-6: no session).
async fn refuse(hub: &Hub, mut socket: Socket, reason: ReasonCode) -> Option<Box<Live>> {
    metrics::counter!("rookery_connections_refused_total", "reason" => format!("{reason:?}"))
        .increment(1);
    socket.out.send(&Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason_code: reason,
        properties: ConnAckProperties::default(),
    })));
    let _ = socket.flush(&hub.stats).await;
    None
}

/// Counts a CONNECT refused for want of room for one more persistent
/// session, and says so once.
fn persistent_sessions_full(client_id: &str, max: u64) {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    metrics::counter!("rookery_persistent_sessions_refused_total").increment(1);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            client_id,
            max_persistent_sessions = max,
            "a CONNECT for a new persistent session was refused: the store holds as many as \
             allowed (logged once; counted in rookery_persistent_sessions_refused_total)"
        );
    }
}

/// A random 64-bit value for assigned client identifiers.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
