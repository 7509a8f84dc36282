//! What a connection has to write: packets encoded in the connection's
//! protocol version into one buffer, flushed to the socket by the I/O loop.
//! Encoding is not I/O, so the protocol core writes here directly and its
//! unit tests read the packets back.

use bytes::BytesMut;
use rookery_codec::{Disconnect, EncodeError, Packet, ProtocolVersion, Publish};

/// Above this a write buffer is given back after a flush.
const KEPT_WRITE_BUFFER: usize = 64 * 1024;

/// Packets waiting for the next flush.
#[derive(Debug)]
pub(super) struct Outbox {
    version: ProtocolVersion,
    buf: BytesMut,
}

impl Outbox {
    /// An empty outbox; 3.1.1 until CONNECT says otherwise.
    pub fn new() -> Self {
        Outbox {
            version: ProtocolVersion::V3_1_1,
            buf: BytesMut::new(),
        }
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
