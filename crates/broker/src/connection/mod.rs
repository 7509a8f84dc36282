//! One client connection, from CONNECT to its end.
//!
//! Follow a PUBLISH: `run` reads bytes from the `socket` and hands each
//! decoded packet to the `session`, the protocol core, which checks it
//! (`inbound`) and answers what it can into the `outbox` without I/O; a
//! publish comes back as a step to perform: `perform` routes it through the
//! hub, plans it (`publish`), writes what the store must commit, forwards
//! it, and once that is done the core answers PUBACK/PUBREC. CONNECT is
//! decided by `negotiate` before the store takes the session over
//! (`accept`); SUBSCRIBE by `subscribe`; the store commands a session writes
//! are built in `records`.

mod accept;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
mod inbound;
mod lazy;
mod limits;
mod negotiate;
mod outbox;
mod perform;
mod publish;
mod records;
mod retain_publish;
mod retained_feed;
mod run;
mod session;
mod socket;
mod subscribe;

use std::sync::Arc;

use rookery_codec::{DecodeError, PacketType, ReasonCode};

use crate::auth::ListenerAuth;
use crate::hub::Hub;
use crate::transport::Accepted;

/// Serves one accepted connection until it ends.
///
/// The returned future is what the connection's task holds for its whole
/// life, so it holds little: the handshake (CONNECT, authentication, the
/// store's Connect) runs boxed and is freed once it is done, and an idle
/// connection then keeps its boxed `Live` and the wait of `Live::serve`.
pub fn serve(
    hub: Arc<Hub>,
    accepted: Accepted,
    listener_auth: ListenerAuth,
) -> impl Future<Output = ()> + Send + 'static {
    let establishing = Box::pin(establish(hub, accepted, listener_auth));
    async move {
        if let Some(live) = establishing.await {
            live.serve().await;
        }
    }
}

/// From the accepted socket to a connected session: CONNECT read and
/// accepted; `None` when the client was refused or left.
async fn establish(
    hub: Arc<Hub>,
    accepted: Accepted,
    listener_auth: ListenerAuth,
) -> Option<Box<run::Live>> {
    let Accepted {
        stream,
        peer,
        listener,
        client_cert_subject,
        permit,
    } = accepted;
    let limits = &hub.config.limits;
    let mut socket = socket::Socket::new(stream, peer, limits);
    let connect_timeout = std::time::Duration::from_secs(limits.connect_timeout_s);
    let admission = accept::Admission {
        listener: listener_auth,
        certificate: client_cert_subject,
        deadline: tokio::time::Instant::now() + connect_timeout,
        listener_name: listener.clone(),
        permit,
    };
    let read = socket.read_connect(connect_timeout, limits.max_packet_size, &hub.stats);
    let connect = match Box::pin(read).await {
        Ok(Some(connect)) => connect,
        Ok(None) => return None,
        Err(error) => {
            tracing::debug!(%peer, %listener, %error, "connection closed before CONNECT completed");
            return None;
        }
    };
    let live = Box::pin(accept::accept(hub.clone(), socket, connect, admission)).await?;
    tracing::debug!(%peer, %listener, client_id = %live.client_id(), "client connected");
    Some(live)
}

/// Counts a protocol violation by kind.
fn protocol_error(reason: &'static str) {
    metrics::counter!("rookery_protocol_errors_total", "reason" => reason).increment(1);
}

/// The `reason` label of a malformed packet.
fn decode_error_label(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::PacketTooLarge { .. } => "packet_too_large",
        DecodeError::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
        _ => "malformed_packet",
    }
}

/// The DISCONNECT reason code for a malformed packet after CONNECT. The
/// codec's code is the one for the packet's own rule, but a CONNECT's
/// protocol name or level (0x84) only has a code in CONNACK: a CONNECT once
/// connected is a Protocol Error anyway (MQTT-3.1.0-2).
fn disconnect_reason(error: &DecodeError) -> ReasonCode {
    let reason = error.reason_code();
    if reason.allowed_in(PacketType::Disconnect) {
        reason
    } else {
        ReasonCode::ProtocolError
    }
}

/// Whether a topic name or filter is within the configured length and depth.
fn topic_within_limits(topic: &str, max_length: usize, max_levels: usize) -> bool {
    topic.len() <= max_length && topic.split('/').count() <= max_levels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `connection` fuzz target: a second CONNECT with an
    /// unknown protocol level was answered with DISCONNECT 0x84, a code
    /// DISCONNECT cannot carry (its client could not even decode it).
    #[test]
    fn mqtt_3_1_0_2_a_malformed_second_connect_is_a_protocol_error_not_0x84() {
        for error in [
            DecodeError::UnsupportedProtocolVersion(9),
            DecodeError::InvalidProtocolName,
        ] {
            assert_eq!(disconnect_reason(&error), ReasonCode::ProtocolError);
        }
        assert_eq!(
            disconnect_reason(&DecodeError::Truncated),
            ReasonCode::MalformedPacket
        );
        let too_large = DecodeError::PacketTooLarge { size: 9, max: 8 };
        assert_eq!(disconnect_reason(&too_large), ReasonCode::PacketTooLarge);
    }
}
