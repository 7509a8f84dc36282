//! The PROXY protocol header (v1 text, v2 binary) that a TCP load balancer
//! sends before the client's own bytes, naming the client's address.
//!
//! Only the header's own bytes are read — v1 up to its CRLF, v2 its 16-byte
//! prefix and then the length that prefix announces — so whatever follows
//! (a TLS ClientHello, an HTTP upgrade, MQTT) stays in the socket untouched.
//! The bytes are parsed by the `ppp` crate.
//!
//! Reference: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included (section 2.1 of the specification).
const V1_MAX_LEN: usize = 107;
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY";
/// The fixed part of a v2 header: 12-byte signature, version and command,
/// family and protocol, 2-byte length.
const V2_FIXED_LEN: usize = 16;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
    /// The socket failed or closed before the header was complete.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The first bytes are neither a v1 nor a v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 header without CRLF within 107 bytes.
    #[error("PROXY v1 header longer than {V1_MAX_LEN} bytes")]
    TooLong,
    /// The header is complete but malformed.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// Reads one PROXY header from `stream` and returns the client address it
/// names, or `None` when the header says to keep the socket's own peer
/// address (v2 `LOCAL` command, v1 `UNKNOWN`, or an unspecified or UNIX
/// address family).
pub(super) async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    // Five bytes tell the versions apart and are part of either header
    // (the shortest v1 header, "PROXY UNKNOWN\r\n", has 15).
    let mut header = Vec::with_capacity(V2_FIXED_LEN);
    header.resize(V1_PREFIX.len(), 0);
    stream.read_exact(&mut header).await?;

    if header == V1_PREFIX {
        read_v1(stream, header).await
    } else if ppp::v2::PROTOCOL_PREFIX.starts_with(&header) {
        read_v2(stream, header).await
    } else {
        Err(ProxyError::Missing)
    }
}

async fn read_v1<S>(stream: &mut S, mut header: Vec<u8>) -> Result<Option<SocketAddr>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    // Byte by byte: the end is only known when CRLF arrives, and reading
    // further would swallow the client's first bytes.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX_LEN {
            return Err(ProxyError::TooLong);
        }
        header.push(stream.read_u8().await?);
    }
    let parsed = ppp::v1::Header::try_from(header.as_slice())
        .map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

async fn read_v2<S>(stream: &mut S, mut header: Vec<u8>) -> Result<Option<SocketAddr>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let start = header.len();
    header.resize(V2_FIXED_LEN, 0);
    stream.read_exact(&mut header[start..]).await?;
    if !header.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(ProxyError::Missing);
    }
    let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(V2_FIXED_LEN + rest, 0);
    stream.read_exact(&mut header[V2_FIXED_LEN..]).await?;
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};

    /// Parses `input` and returns the address and the bytes left unread.
    async fn parse(input: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut rest = input;
        let result = read_header(&mut rest).await;
        (result, rest.to_vec())
    }

    fn v2(command: Command, addresses: ppp::v2::Addresses) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn v1_tcp4_names_the_source_and_leaves_the_payload() {
        let (addr, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 1883\r\n\x10\x0c").await;
        assert_eq!(addr.unwrap(), Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(rest, b"\x10\x0c");
    }

    #[tokio::test]
    async fn v1_tcp6_names_the_source() {
        let (addr, rest) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 5555 1883\r\nX").await;
        assert_eq!(addr.unwrap(), Some("[2001:db8::1]:5555".parse().unwrap()));
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v1_unknown_keeps_the_socket_address() {
        let (addr, rest) = parse(b"PROXY UNKNOWN\r\n\x10").await;
        assert_eq!(addr.unwrap(), None);
        assert_eq!(rest, b"\x10");
    }

    #[tokio::test]
    async fn v1_without_crlf_within_107_bytes_is_refused() {
        let mut input = b"PROXY TCP4 ".to_vec();
        input.resize(300, b'1');
        let (addr, _) = parse(&input).await;
        assert!(matches!(addr, Err(ProxyError::TooLong)), "{addr:?}");
    }

    #[tokio::test]
    async fn v1_malformed_is_refused() {
        let (addr, _) = parse(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n").await;
        assert!(matches!(addr, Err(ProxyError::Invalid(_))), "{addr:?}");
    }

    #[tokio::test]
    async fn v2_ipv4_names_the_source_and_leaves_the_payload() {
        let src: SocketAddr = "198.51.100.9:61000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8883".parse().unwrap();
        let mut input = v2(Command::Proxy, (src, dst).into());
        input.extend_from_slice(b"\x16\x03\x01");
        let (addr, rest) = parse(&input).await;
        assert_eq!(addr.unwrap(), Some(src));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn v2_ipv6_with_tlvs_names_the_source() {
        let src: SocketAddr = "[2001:db8::5]:4242".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:1883".parse().unwrap();
        let mut input =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
                .write_tlv(ppp::v2::Type::NoOp, b"padding".as_slice())
                .unwrap()
                .build()
                .unwrap();
        input.push(0x10);
        let (addr, rest) = parse(&input).await;
        assert_eq!(addr.unwrap(), Some(src));
        assert_eq!(rest, [0x10]);
    }

    #[tokio::test]
    async fn v2_local_keeps_the_socket_address() {
        let mut input = v2(Command::Local, ppp::v2::Addresses::Unspecified);
        input.push(0x10);
        let (addr, rest) = parse(&input).await;
        assert_eq!(addr.unwrap(), None);
        assert_eq!(rest, [0x10]);
    }

    #[tokio::test]
    async fn mqtt_without_a_header_is_refused() {
        let (addr, _) = parse(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c").await;
        assert!(matches!(addr, Err(ProxyError::Missing)), "{addr:?}");
    }

    #[tokio::test]
    async fn a_truncated_header_is_an_io_error() {
        let (addr, _) = parse(b"PROXY TCP4 1.2.3.4").await;
        assert!(matches!(addr, Err(ProxyError::Io(_))), "{addr:?}");
        let full = v2(
            Command::Proxy,
            (
                "1.2.3.4:5".parse::<SocketAddr>().unwrap(),
                "5.6.7.8:9".parse::<SocketAddr>().unwrap(),
            )
                .into(),
        );
        let (addr, _) = parse(&full[..20]).await;
        assert!(matches!(addr, Err(ProxyError::Io(_))), "{addr:?}");
    }

    #[tokio::test]
    async fn v2_signature_with_a_bad_version_is_refused() {
        let mut input = v2(
            Command::Proxy,
            (
                "1.2.3.4:5".parse::<SocketAddr>().unwrap(),
                "5.6.7.8:9".parse::<SocketAddr>().unwrap(),
            )
                .into(),
        );
        input[12] = 0x11; // version 1 in the binary format does not exist
        let (addr, _) = parse(&input).await;
        assert!(matches!(addr, Err(ProxyError::Invalid(_))), "{addr:?}");
    }
}
