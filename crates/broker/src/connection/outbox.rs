//! What a connection has to write: packets encoded in the connection's
//! protocol version into one buffer, flushed to the socket by the I/O loop.
//! Encoding is not I/O, so the protocol core writes here directly and its
//! unit tests read the packets back.
//!
//! The buffer is bounded for deliveries (`max_output_buffer`): past the
//! bound the core stops taking messages from the session's queue (see
//! [`Outbox::room_for_more`]) and they wait there, under the queue's own
//! limit, until a flush makes room. Answers to the client's own packets
//! (acknowledgements, PINGRESP) are never held back: the client's reads
//! bound them.

use bytes::BytesMut;
use rookery_codec::{Disconnect, EncodeError, Packet, ProtocolVersion, Publish};

/// Above this a write buffer is given back after a flush.
const KEPT_WRITE_BUFFER: usize = 64 * 1024;

/// Packets waiting for the next flush.
#[derive(Debug)]
pub(super) struct Outbox {
    version: ProtocolVersion,
    buf: BytesMut,
    /// Deliveries stop being encoded once this many bytes wait.
    max_pending: usize,
    /// A delivery was held back for room since the last flush.
    held_back: bool,
}

impl Outbox {
    /// An empty outbox; 3.1.1 until CONNECT says otherwise.
    pub fn new() -> Self {
        Outbox {
            version: ProtocolVersion::V3_1_1,
            buf: BytesMut::new(),
            max_pending: usize::MAX,
            held_back: false,
        }
    }

    /// Bounds the bytes deliveries may fill the buffer with.
    pub fn limit_to(&mut self, max_pending: usize) {
        self.max_pending = max_pending.max(1);
    }

    /// Whether another delivery may be encoded now: one always fits in an
    /// empty buffer, however large. When not, remembers that output was
    /// held back, to send more after the next flush.
    pub fn room_for_more(&mut self) -> bool {
        let room = self.buf.len() < self.max_pending;
        if !room && !self.held_back {
            self.held_back = true;
            metrics::counter!("rookery_client_limits_total", "limit" => "max_output_buffer")
                .increment(1);
        }
        room
    }

    /// Whether deliveries were held back for room and not yet retried.
    pub fn is_held_back(&self) -> bool {
        self.held_back
    }

    /// Deliveries held back are about to be retried.
    pub fn retry_held_back(&mut self) {
        self.held_back = false;
    }

    /// The protocol version packets are encoded in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether the client speaks 5.0 (reason codes, properties).
    pub fn is_v5(&self) -> bool {
        self.version.is_v5()
    }

    /// Fixes the version CONNECT asked for.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// Queues a packet.
    pub fn send(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.version, &mut self.buf) {
            tracing::error!(%error, "could not encode a packet");
        }
    }

    /// Queues a PUBLISH unless it is larger than the client's maximum
    /// packet size (MQTT-3.1.2-25), which the caller then treats as sent.
    pub fn publish(&mut self, publish: Publish, max_packet_size: u32) -> Result<(), EncodeError> {
        Packet::Publish(publish)
            .encode_within(self.version, max_packet_size, &mut self.buf)
            .map(drop)
    }

    /// Tells a 5.0 client why the server closes the connection; 3.x has no
    /// server DISCONNECT.
    pub fn disconnect(&mut self, reason: rookery_codec::ReasonCode) {
        if self.version.is_v5() {
            self.send(&Packet::Disconnect(Disconnect::new(reason)));
        }
    }

    /// [`Outbox::disconnect`] naming another server for the client to use
    /// (the Server Reference property, with 0x9C or 0x9D).
    pub fn disconnect_to(&mut self, reason: rookery_codec::ReasonCode, server: &str) {
        if self.version.is_v5() {
            let mut disconnect = Disconnect::new(reason);
            disconnect.properties.server_reference = Some(rookery_codec::ByteString::from(server));
            self.send(&Packet::Disconnect(disconnect));
        }
    }

    /// The encoded bytes waiting.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// After a flush: empties the buffer, giving back a large one.
    pub fn written(&mut self) {
        if self.buf.capacity() > KEPT_WRITE_BUFFER {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
    }

    /// Decodes and removes every packet queued (tests read the core's
    /// answers this way).
    #[cfg(test)]
    pub fn take_packets(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Ok(Some(packet)) = rookery_codec::decode(&mut self.buf, self.version, u32::MAX) {
            packets.push(packet);
        }
        packets
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rookery_codec::{ByteString, PublishProperties, QoS};

    use super::*;

    fn publish(payload: usize) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteString::from("t"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; payload]),
        }
    }

    /// Deliveries fill the buffer up to the bound and no further; one
    /// always fits in an empty buffer, however large; a flush makes room
    /// again and is when the held-back deliveries are retried.
    #[test]
    fn deliveries_stop_at_max_output_buffer() {
        let mut out = Outbox::new();
        out.limit_to(1000);
        let mut encoded = 0;
        while out.room_for_more() {
            out.publish(publish(300), u32::MAX).unwrap_or_default();
            encoded += 1;
        }
        // 4 x ~305 bytes: the fourth starts below 1,000 and ends above it.
        assert_eq!(encoded, 4);
        assert!(out.is_held_back());
        out.written();
        out.retry_held_back();
        assert!(out.room_for_more() && !out.is_held_back());
        out.publish(publish(5000), u32::MAX).unwrap_or_default();
        assert!(out.pending().len() > 5000, "one packet always fits");
        assert!(!out.room_for_more());
    }

    /// Without a bound (the core's tests), nothing is held back.
    #[test]
    fn an_unbounded_outbox_always_has_room() {
        let mut out = Outbox::new();
        for _ in 0..100 {
            assert!(out.room_for_more());
            out.publish(publish(10_000), u32::MAX).unwrap_or_default();
        }
        assert!(!out.is_held_back());
    }
}
