//! CONNECT performed: the negotiation's grant is taken to the store (a new
//! epoch for the client id, the session as stored), registered on this
//! edge, and answered with CONNACK.

use std::sync::Arc;

use rookery_codec::{ConnAck, ConnAckProperties, Connect, Packet, ReasonCode};
use rookery_store::proto::{self, command_result::Kind as ResultKind};
use rookery_store::writer::now_ms;

use super::negotiate::negotiate;
use super::records;
use super::run::Live;
use super::session::Session;
use super::socket::Socket;
use crate::hub::{ClientId, Hub, Mailbox, SessionEntry, sub_entry_from_proto};

/// Handles CONNECT; `None` when the connection is refused (CONNACK with the
/// reason sent).
pub(super) async fn accept(
    hub: Arc<Hub>,
    mut socket: Socket,
    connect: Box<Connect>,
) -> Option<Live> {
    socket.out.set_version(connect.protocol);
    let limits = &hub.config.limits;
    let assign_id = || format!("rookery-{:016x}", rand_id());
    let granted = match negotiate(&connect, limits, assign_id) {
        Ok(granted) => granted,
        Err(reason) => return refuse(&hub, socket, reason).await,
    };
    let command = records::connect(
        &connect,
        &granted,
        &hub.edge_id,
        now_ms(),
        limits.max_persistent_sessions,
    );
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
    let mut session = Session::new(&granted, client, connected.epoch, connection_id, limits);
    if session.persistent || connected.session_present {
        session.outgoing.resume(connected.queue);
    }
    hub.stats.connected();
    Some(Live::new(hub.clone(), socket, session, receiver, mailbox))
}

/// Answers CONNECT with a refusal (MQTT-3.2.2-6: no session).
async fn refuse(hub: &Hub, mut socket: Socket, reason: ReasonCode) -> Option<Live> {
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
