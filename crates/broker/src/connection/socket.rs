//! The byte side of a connection: reading into a buffer sized for the
//! traffic, decoding packets, flushing the outbox with a bound, and closing
//! politely. Knows frames, not the protocol's rules.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rookery_codec::{
    ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::outbox::Outbox;
use super::{decode_error_label, protocol_error};
use crate::config::Limits;
use crate::rate::{LIMIT_LOG_INTERVAL, LogThrottle};
use crate::stats::Stats;
use crate::transport::BoxedStream;

/// What an idle connection keeps for reading: a CONNECT or a small packet
/// fits; a busy connection grows it (see `Socket::prepare_read`).
const IDLE_READ_BUFFER: usize = 256;
/// The read size of a connection whose last read filled its buffer.
const BUSY_READ_BUFFER: usize = 16 * 1024;
/// How long a closing connection keeps reading, see `Socket::linger`.
const LINGER: Duration = Duration::from_secs(1);
/// Control packet types (MQTT 2.1.2).
const PUBLISH_TYPE: u8 = 3;
const SUBSCRIBE_TYPE: u8 = 8;

/// Why no CONNECT was read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectReadError {
    /// MQTT-3.1.0-1: the first packet must be CONNECT.
    #[error("the first packet was {0:?}, not CONNECT")]
    NotConnect(rookery_codec::PacketType),
    /// MQTT-3.1.2-2: a protocol level this server does not speak (answered
    /// with CONNACK 0x01 in the 3.1.1 form).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// The bytes are not a well-formed CONNECT.
    #[error("malformed CONNECT: {0}")]
    Malformed(DecodeError),
    /// Nothing complete arrived within the connect timeout.
    #[error("no CONNECT within the connect timeout")]
    TimedOut,
    /// The socket failed.
    #[error("reading CONNECT failed: {0}")]
    Io(std::io::Error),
}

/// Why a write did not complete.
enum Stalled {
    /// The socket failed.
    Io(std::io::Error),
    /// This many bytes were not taken within the timeout.
    Unsent(usize),
}

/// Writes all of `bytes` and flushes, failing when one step takes nothing
/// for `timeout`: the timer restarts with each part the socket takes.
async fn write_within(
    stream: &mut BoxedStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Stalled> {
    let mut written = 0;
    while written < bytes.len() {
        match tokio::time::timeout(timeout, stream.write(&bytes[written..])).await {
            Ok(Ok(0)) => {
                return Err(Stalled::Io(std::io::ErrorKind::WriteZero.into()));
            }
            Ok(Ok(n)) => written += n,
            Ok(Err(error)) => return Err(Stalled::Io(error)),
            Err(_) => return Err(Stalled::Unsent(bytes.len() - written)),
        }
    }
    // A WebSocket holds what it was given until flushed.
    match tokio::time::timeout(timeout, stream.flush()).await {
        Ok(result) => result.map_err(Stalled::Io),
        Err(_) => Err(Stalled::Unsent(0)),
    }
}

/// One client's socket with its read buffer and outbox.
pub(super) struct Socket {
    stream: BoxedStream,
    /// The client's address (from PROXY protocol where the listener takes
    /// it), for logs.
    pub peer: SocketAddr,
    read_buf: BytesMut,
    /// Packets waiting for the next flush.
    pub out: Outbox,
    /// How long a write may wait for the client to take data
    /// (`send_timeout_s`).
    send_timeout: Duration,
}

impl Socket {
    /// Wraps an accepted stream, with the output bounds of `limits`
    /// (`max_output_buffer`, `send_timeout_s`).
    pub fn new(stream: BoxedStream, peer: SocketAddr, limits: &Limits) -> Self {
        let mut out = Outbox::new();
        out.limit_to(limits.max_output_buffer);
        Socket {
            stream,
            peer,
            read_buf: BytesMut::with_capacity(IDLE_READ_BUFFER),
            out,
            send_timeout: Duration::from_secs(limits.send_timeout_s.max(1)),
        }
    }

    /// Waits for the first packet, which must be CONNECT (MQTT-3.1.0-1);
    /// `None` when the client closed first.
    pub async fn read_connect(
        &mut self,
        timeout: Duration,
        max_packet_size: u32,
        stats: &Stats,
    ) -> Result<Option<Box<Connect>>, ConnectReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            match rookery_codec::decode(
                &mut self.read_buf,
                ProtocolVersion::V3_1_1,
                max_packet_size,
            ) {
                Ok(Some(Packet::Connect(connect))) => return Ok(Some(connect)),
                Ok(Some(other)) => {
                    protocol_error("first_packet_not_connect");
                    return Err(ConnectReadError::NotConnect(other.packet_type()));
                }
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocolVersion(level)) => {
                    protocol_error("unsupported_protocol_version");
                    self.out.send(&Packet::ConnAck(Box::new(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::UnsupportedProtocolVersion,
                        properties: ConnAckProperties::default(),
                    })));
                    let _ = self.flush(stats).await;
                    return Err(ConnectReadError::UnsupportedProtocol(level));
                }
                Err(error) => {
                    protocol_error(decode_error_label(&error));
                    return Err(ConnectReadError::Malformed(error));
                }
            }
            if !self.read_before(deadline, stats).await? {
                return Ok(None);
            }
        }
    }

    /// Reads more of what the client sends before the connect timeout's
    /// `deadline`; false when the client closed.
    async fn read_before(
        &mut self,
        deadline: Instant,
        stats: &Stats,
    ) -> Result<bool, ConnectReadError> {
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf))
            .await
            .map_err(|_| {
                metrics::counter!("rookery_connect_timeouts_total").increment(1);
                ConnectReadError::TimedOut
            })?;
        match read {
            Ok(0) => Ok(false),
            Ok(n) => {
                stats.received(n);
                Ok(true)
            }
            Err(error) => Err(ConnectReadError::Io(error)),
        }
    }

    /// The client's next packet during an authentication exchange, read
    /// before `deadline` (the connect timeout still runs); `None` when the
    /// client closed.
    pub async fn read_during_auth(
        &mut self,
        deadline: Instant,
        max_packet_size: u32,
        stats: &Stats,
    ) -> Result<Option<Packet>, ConnectReadError> {
        loop {
            match rookery_codec::decode(&mut self.read_buf, self.out.version(), max_packet_size) {
                Ok(Some(packet)) => return Ok(Some(packet)),
                Ok(None) => {}
                Err(error) => {
                    protocol_error(decode_error_label(&error));
                    return Err(ConnectReadError::Malformed(error));
                }
            }
            if !self.read_before(deadline, stats).await? {
                return Ok(None);
            }
        }
    }

    /// Reads what the socket has into the buffer; 0 when it closed.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        self.stream.read_buf(&mut self.read_buf).await
    }

    /// The kinds of packet read and not yet handled.
    pub fn buffered(&self) -> Buffered {
        Buffered::scan(&self.read_buf)
    }

    /// The next whole packet in the buffer, if one is there.
    pub fn decode(&mut self, max_packet_size: u32) -> Result<Option<Packet>, DecodeError> {
        rookery_codec::decode(&mut self.read_buf, self.out.version(), max_packet_size)
    }

    /// Writes the outbox to the socket. A client that takes none of it for
    /// the send timeout (it stopped reading, and the socket's buffers are
    /// full) fails the flush, and so its connection; one that reads slowly
    /// but steadily does not.
    pub async fn flush(&mut self, stats: &Stats) -> std::io::Result<()> {
        let pending = self.out.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let len = pending.len();
        match write_within(&mut self.stream, pending, self.send_timeout).await {
            Ok(()) => {}
            Err(Stalled::Io(error)) => return Err(error),
            Err(Stalled::Unsent(unsent)) => {
                static LOG: LogThrottle = LogThrottle::new(LIMIT_LOG_INTERVAL);
                metrics::counter!("rookery_send_timeouts_total").increment(1);
                if let Some(held_back) = LOG.allow() {
                    tracing::warn!(peer = %self.peer, unsent, since_last_log = held_back, "disconnecting a client that took no data for send_timeout_s");
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took no data for the send timeout",
                ));
            }
        }
        stats.sent(len);
        self.out.written();
        Ok(())
    }

    /// Sizes the read buffer for the next read: idle connections (most of
    /// them, in a large fleet) keep a small one; one whose last read filled
    /// the buffer gets room for a burst.
    pub fn prepare_read(&mut self, last_read: usize) {
        let spare = self.read_buf.capacity() - self.read_buf.len();
        if self.read_buf.is_empty()
            && last_read < IDLE_READ_BUFFER / 2
            && self.read_buf.capacity() > IDLE_READ_BUFFER * 4
        {
            self.read_buf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        } else if spare <= last_read / 2 || spare < 64 {
            let want = if last_read >= IDLE_READ_BUFFER / 2 {
                BUSY_READ_BUFFER
            } else {
                IDLE_READ_BUFFER
            };
            self.read_buf.reserve(want);
        }
    }

    /// Closes a connection the client ended: FIN.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Closes a connection the server ended: sends FIN, then reads and
    /// discards what the client still sends for a moment, so that the
    /// client reads the DISCONNECT before the socket is gone rather than a
    /// reset caused by its own unread packets.
    pub async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER;
        let mut discard = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(deadline, self.stream.read(&mut discard)).await
        {
            if n == 0 {
                break;
            }
        }
    }
}

/// Which control packet types a read buffer holds (bit n: type n), from
/// their fixed headers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Buffered(u16);

impl Buffered {
    /// Walks the fixed headers of `buf`. A partial packet at the end counts
    /// if its type byte is there (it is not decoded yet either way); a
    /// malformed length ends the walk (the decoder says so).
    fn scan(mut buf: &[u8]) -> Buffered {
        let mut types = 0u16;
        while let Some(&first) = buf.first() {
            types |= 1 << (first >> 4);
            let mut length = 0usize;
            let mut header = 1;
            loop {
                let Some(&byte) = buf.get(header) else {
                    return Buffered(types);
                };
                length |= usize::from(byte & 0x7f) << (7 * (header - 1));
                header += 1;
                if byte & 0x80 == 0 {
                    break;
                }
                if header > 4 {
                    return Buffered(types);
                }
            }
            match buf.get(header + length..) {
                Some(next) => buf = next,
                None => break,
            }
        }
        Buffered(types)
    }

    /// Whether a PUBLISH is among them.
    pub fn publish(self) -> bool {
        self.0 & 1 << PUBLISH_TYPE != 0
    }

    /// Whether a SUBSCRIBE is among them.
    pub fn subscribe(self) -> bool {
        self.0 & 1 << SUBSCRIBE_TYPE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::Buffered;

    #[test]
    fn a_subscribe_is_found_behind_other_packets() {
        let pingreq = [0xC0, 0x00];
        let puback = [0x40, 0x02, 0x00, 0x01];
        let subscribe = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01];
        let buf = [&pingreq[..], &puback[..], &subscribe[..]].concat();
        assert!(Buffered::scan(&buf).subscribe());
        assert!(!Buffered::scan(&buf[..6]).subscribe(), "PINGREQ and PUBACK");
        assert!(
            Buffered::scan(&buf[..7]).subscribe(),
            "a SUBSCRIBE's first byte"
        );
        assert!(!Buffered::scan(&buf).publish());
    }

    #[test]
    fn a_long_publish_is_skipped_by_its_remaining_length() {
        // 200 bytes of payload: a two-byte remaining length (0xC8 0x01).
        let mut publish = vec![0x32, 0xC8, 0x01];
        publish.extend(std::iter::repeat_n(0x82, 200));
        let alone = Buffered::scan(&publish);
        assert!(alone.publish());
        assert!(!alone.subscribe(), "SUBSCRIBE's byte inside a payload");
        publish.extend([0x82, 0x00]);
        assert!(Buffered::scan(&publish).subscribe());
    }

    #[test]
    fn a_malformed_length_ends_the_walk() {
        let malformed = Buffered::scan(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x82]);
        assert!(malformed.publish());
        assert!(!malformed.subscribe());
        assert_eq!(Buffered::scan(&[]), Buffered(0));
    }
}
