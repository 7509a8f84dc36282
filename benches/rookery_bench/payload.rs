//! The header every benchmark payload starts with: who sent it, its place in
//! the sender's sequence, and when it was sent. Subscribers read it back to
//! count losses, duplicates and reordering and to measure end-to-end latency.
//!
//! Layout, little-endian, 28 bytes, then zero padding up to the payload size:
//!
//! | bytes  | field                                              |
//! | ------ | -------------------------------------------------- |
//! | 0..4   | magic `RKB1`                                       |
//! | 4..8   | run id: tells this run's messages from older ones  |
//! | 8..12  | publisher id (the publisher's client index)        |
//! | 12..20 | sequence number, from 0 per publisher              |
//! | 20..28 | send time, nanoseconds since the Unix epoch        |
//!
//! The wall clock is the shared epoch: every process of a run is on one
//! machine, so the clocks agree.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of the header; the smallest payload a benchmark may use.
pub const HEADER_LEN: usize = 28;

const MAGIC: [u8; 4] = *b"RKB1";
/// Where the sequence number sits in the payload.
pub const SEQ_OFFSET: usize = 12;
/// Where the send time sits in the payload.
pub const TIME_OFFSET: usize = 20;

/// The decoded header of one benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The run that sent the message.
    pub run_id: u32,
    /// The publisher's client index.
    pub publisher: u32,
    /// The message's place in its publisher's sequence, from 0.
    pub seq: u64,
    /// When the message was sent, in nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

/// Why a payload is not a benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("payload of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// The first four bytes are not `RKB1`.
    #[error("payload does not start with the benchmark magic")]
    BadMagic,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `payload`.
    /// Returns `false`, writing nothing, if `payload` is too short.
    pub fn write(&self, payload: &mut [u8]) -> bool {
        let Some(out) = payload.get_mut(..HEADER_LEN) else {
            return false;
        };
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.run_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        out[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&self.seq.to_le_bytes());
        out[TIME_OFFSET..TIME_OFFSET + 8].copy_from_slice(&self.sent_ns.to_le_bytes());
        true
    }

    /// Reads the header at the start of `payload`; padding after it is ignored.
    pub fn read(payload: &[u8]) -> Result<Self, PayloadError> {
        let header = payload
            .get(..HEADER_LEN)
            .ok_or(PayloadError::Short(payload.len()))?;
        if header[0..4] != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        Ok(Self {
            run_id: u32_at(header, 4),
            publisher: u32_at(header, 8),
            seq: u64_at(header, SEQ_OFFSET),
            sent_ns: u64_at(header, TIME_OFFSET),
        })
    }
}

/// Stamps a sequence number and send time into a payload whose header was
/// written before: the per-message part of publishing. `payload` must be at
/// least [`HEADER_LEN`] bytes; a shorter one is left alone.
pub fn stamp(payload: &mut [u8], seq: u64, sent_ns: u64) {
    if let Some(out) = payload.get_mut(SEQ_OFFSET..HEADER_LEN) {
        out[..8].copy_from_slice(&seq.to_le_bytes());
        out[8..].copy_from_slice(&sent_ns.to_le_bytes());
    }
}

/// The wall clock in nanoseconds since the Unix epoch (0 before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_ignores_padding() {
        let header = Header {
            run_id: 0xDEAD_BEEF,
            publisher: 41,
            seq: 1 << 40,
            sent_ns: 1_790_000_000_123_456_789,
        };
        let mut payload = vec![0xAA; 64];
        assert!(header.write(&mut payload));
        assert_eq!(&payload[..4], b"RKB1");
        assert_eq!(Header::read(&payload), Ok(header));
        // Padding is left as it was.
        assert!(payload[HEADER_LEN..].iter().all(|byte| *byte == 0xAA));
    }

    #[test]
    fn stamp_changes_only_sequence_and_time() {
        let header = Header {
            run_id: 7,
            publisher: 3,
            seq: 0,
            sent_ns: 0,
        };
        let mut payload = vec![0; HEADER_LEN];
        header.write(&mut payload);
        stamp(&mut payload, 99, 12345);
        assert_eq!(
            Header::read(&payload),
            Ok(Header {
                seq: 99,
                sent_ns: 12345,
                ..header
            })
        );
    }

    #[test]
    fn short_or_foreign_payloads_are_refused_without_panicking() {
        assert_eq!(Header::read(b"RKB1"), Err(PayloadError::Short(4)));
        assert_eq!(Header::read(&[]), Err(PayloadError::Short(0)));
        assert_eq!(
            Header::read(&[b'X'; HEADER_LEN]),
            Err(PayloadError::BadMagic)
        );
        let mut short = [0u8; 10];
        assert!(
            !Header {
                run_id: 1,
                publisher: 1,
                seq: 1,
                sent_ns: 1
            }
            .write(&mut short)
        );
        stamp(&mut short, 1, 1);
        assert_eq!(short, [0; 10]);
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
