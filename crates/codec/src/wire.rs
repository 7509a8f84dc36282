//! The data representations of MQTT section 1.5: integers, variable byte
//! integers, UTF-8 strings and binary data, read from a frame without copying
//! and written through a [`Sink`] that either counts or writes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};

/// The largest value of a variable byte integer, and so of a remaining length.
pub const MAX_VARIABLE_INTEGER: u32 = 268_435_455;

/// Reads fields from the body of one frame. Every read that runs past the end
/// of the body is [`DecodeError::Truncated`]; binary fields are slices of the
/// frame, not copies.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.ensure(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.ensure(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.ensure(4)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (section 1.5.5).
    pub(crate) fn variable_integer(&mut self) -> Result<u32, DecodeError> {
        match parse_variable_integer(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Truncated),
        }
    }

    /// Binary data: a two-byte length and that many bytes (section 1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take_bytes(len)
    }

    /// A UTF-8 encoded string (section 1.5.4): well-formed, no U+0000.
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        // MQTT-1.5.4-2 before UTF-8: U+0000 is valid UTF-8 but not a valid MQTT string.
        if raw.contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        // MQTT-1.5.4-1: Rust's UTF-8 check also refuses the surrogates U+D800..U+DFFF.
        ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// The next `len` bytes as a reader of their own (a property list).
    pub(crate) fn split(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take_bytes(len)?))
    }

    /// Everything left: a payload.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless the body has been read to its end.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes(extra)),
        }
    }

    fn take_bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.ensure(len)?;
        Ok(self.buf.split_to(len))
    }

    fn ensure(&self, len: usize) -> Result<(), DecodeError> {
        if self.buf.len() < len {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
}

/// Parses a variable byte integer at the start of `buf`: `Ok(None)` when the
/// buffer ends before the integer does, otherwise its value and length.
///
/// MQTT-1.5.5-1: the encoding uses the fewest bytes that hold the value, so a
/// last byte of zero after a continuation byte (`80 00` for 0) is refused, as
/// is a fifth byte.
pub(crate) fn parse_variable_integer(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if index > 0 && *byte == 0 {
                return Err(DecodeError::MalformedVariableInteger);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVariableInteger)
    } else {
        Ok(None)
    }
}

/// Where an encoder puts bytes. Encoding runs twice through the same code: once
/// into a [`Counter`] to learn the lengths MQTT prefixes, then into the buffer.
pub(crate) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, bytes: &[u8]);
}

/// A sink that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        BufMut::put_slice(self, bytes);
    }
}

/// The length in bytes of `value` as a variable byte integer.
pub(crate) fn variable_integer_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_variable_integer<S: Sink>(sink: &mut S, value: u32) -> Result<(), EncodeError> {
    if value > MAX_VARIABLE_INTEGER {
        return Err(EncodeError::ValueOutOfRange("variable byte integer"));
    }
    let mut rest = value;
    loop {
        // Truncation is the point: the low seven bits of each group.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        sink.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn put_binary<S: Sink>(sink: &mut S, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong(bytes.len()))?;
    sink.put_u16(len);
    sink.put_slice(bytes);
    Ok(())
}

pub(crate) fn put_string<S: Sink>(sink: &mut S, text: &str) -> Result<(), EncodeError> {
    put_binary(sink, text.as_bytes())
}

/// A part of a packet that can be written to any [`Sink`].
pub(crate) trait Encode {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError>;

    /// The encoded length in bytes, found by encoding into a [`Counter`].
    fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut counter = Counter::default();
        self.encode(&mut counter)?;
        Ok(counter.0)
    }
}

/// Writes `value` prefixed by its length as a variable byte integer (a property list).
pub(crate) fn put_length_prefixed<S: Sink, E: Encode>(
    sink: &mut S,
    value: &E,
) -> Result<(), EncodeError> {
    let len = value.encoded_len()?;
    let len = u32::try_from(len).map_err(|_| EncodeError::RemainingLengthTooLarge(len))?;
    put_variable_integer(sink, len)?;
    value.encode(sink)
}
