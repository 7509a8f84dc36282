//! TLS for `tls` and `wss` listeners: the rustls server settings built from
//! PEM files at startup, the per-connection handshake, and the subject of a
//! verified client certificate.
//!
//! Cryptography comes from rustls' `ring` provider, named explicitly: the
//! workspace builds rustls without a default provider.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::{Acceptor, ClientHello, WebPkiClientVerifier};
use rustls::{ServerConfig, crypto::CryptoProvider};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::TransportError;
use crate::config::TlsConfig;

/// The ALPN protocol name of MQTT (IANA registry, "mqtt").
const ALPN_MQTT: &[u8] = b"mqtt";

/// A listener's TLS settings, ready for handshakes.
pub(super) struct TlsSetup {
    /// Used when the client offers no ALPN protocol, or none we know.
    plain: Arc<ServerConfig>,
    /// The same settings selecting ALPN "mqtt", used when the client offers
    /// it. Kept apart because rustls refuses a client whose ALPN list and
    /// ours have nothing in common, and a client offering, say,
    /// `x-amzn-mqtt-ca` only must still get in.
    mqtt_alpn: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("mqtt_alpn", &self.mqtt_alpn.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Reads the certificate chain, key and client CAs named by `settings`.
    /// `advertise_mqtt` selects ALPN "mqtt" for clients that offer it.
    pub(super) fn load(
        listener: &str,
        settings: &TlsConfig,
        advertise_mqtt: bool,
    ) -> Result<TlsSetup, TransportError> {
        let certs = read_certificates(&settings.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| match e {
            pem::Error::NoItemsFound => TransportError::NoPrivateKey {
                path: settings.key_file.clone(),
            },
            source => TransportError::Pem {
                path: settings.key_file.clone(),
                source,
            },
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TransportError::Tls {
                listener: listener.to_owned(),
                source,
            })?;
        let builder = match (&settings.client_ca_file, settings.require_client_cert) {
            (None, true) => {
                return Err(TransportError::ClientCaMissing {
                    listener: listener.to_owned(),
                });
            }
            (None, false) => builder.with_no_client_auth(),
            (Some(ca_file), required) => {
                builder.with_client_cert_verifier(client_verifier(ca_file, required, &provider)?)
            }
        };
        let plain = builder.with_single_cert(certs, key).map_err(|source| {
            TransportError::CertificateKey {
                cert_file: settings.cert_file.clone(),
                key_file: settings.key_file.clone(),
                source,
            }
        })?;

        let mqtt_alpn = advertise_mqtt.then(|| {
            let mut with_alpn = plain.clone();
            with_alpn.alpn_protocols = vec![ALPN_MQTT.to_vec()];
            Arc::new(with_alpn)
        });
        Ok(TlsSetup {
            plain: Arc::new(plain),
            mqtt_alpn,
        })
    }

    /// Runs the server side of a TLS handshake over `io`.
    pub(super) async fn accept<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let config = match &self.mqtt_alpn {
            Some(with_alpn) if offers_mqtt(&start.client_hello()) => Arc::clone(with_alpn),
            _ => Arc::clone(&self.plain),
        };
        start.into_stream(config).await
    }
}

fn offers_mqtt(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ALPN_MQTT))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem_error = |source| TransportError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn client_verifier(
    ca_file: &Path,
    required: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|source| TransportError::CaCertificate {
                path: ca_file.to_owned(),
                source,
            })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    if !required {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|source| TransportError::ClientVerifier {
            path: ca_file.to_owned(),
            source,
        })
}

/// The subject of the client's certificate, when it presented one (rustls
/// only reports certificates its verifier accepted).
pub(super) fn client_subject<S>(stream: &TlsStream<S>) -> Option<String> {
    let chain = stream.get_ref().1.peer_certificates()?;
    subject_name(chain.first()?)
}

/// The first common name of a certificate's subject or, without one, the
/// whole subject as `C=NZ, O=Example` (attributes in certificate order).
/// `None` for an empty subject or DER this small reader cannot follow.
///
/// A deliberately small DER walk over an already verified certificate
/// (RFC 5280 section 4.1): Certificate → TBSCertificate → subject.
fn subject_name(cert: &[u8]) -> Option<String> {
    let (_, certificate) = der::expect(cert, der::SEQUENCE)?;
    let (_, tbs) = der::expect(certificate, der::SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, absent in v1 certificates
    if let Some((der::VERSION, _, after)) = der::next(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = der::next(rest)?.2;
    }
    let (_, subject) = der::expect(rest, der::SEQUENCE)?;

    let mut attributes = Vec::new();
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (after, set) = der::expect(rdns, der::SET)?;
        rdns = after;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (after, atv) = der::expect(atvs, der::SEQUENCE)?;
            atvs = after;
            let (value, oid) = der::expect(atv, der::OID)?;
            let (tag, value, _) = der::next(value)?;
            if let Some(text) = der::string(tag, value) {
                attributes.push((oid, text));
            }
        }
    }
    if let Some((_, cn)) = attributes.iter().find(|(oid, _)| *oid == oid::COMMON_NAME) {
        return Some(cn.clone());
    }
    if attributes.is_empty() {
        return None;
    }
    let parts: Vec<String> = attributes
        .iter()
        .map(|(oid, value)| format!("{}={value}", oid::short_name(oid)))
        .collect();
    Some(parts.join(", "))
}

/// Just enough DER (X.690) to find a certificate's subject.
mod der {
    pub(super) const SEQUENCE: u8 = 0x30;
    pub(super) const SET: u8 = 0x31;
    pub(super) const OID: u8 = 0x06;
    pub(super) const VERSION: u8 = 0xa0;

    /// Splits the first element off `input`: (tag, contents, rest).
    pub(super) fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags do not occur in a Name
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None; // indefinite or absurd lengths
            }
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b))
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        Some((tag, contents, rest))
    }

    /// Like [`next`], but the element must carry `tag`: (rest, contents).
    pub(super) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        match next(input)? {
            (found, contents, rest) if found == tag => Some((rest, contents)),
            _ => None,
        }
    }

    /// The text of a directory string, or `None` for other types.
    pub(super) fn string(tag: u8, value: &[u8]) -> Option<String> {
        match tag {
            // UTF8String, PrintableString, IA5String, TeletexString (read
            // as UTF-8: in practice it holds ASCII or Latin-1 mis-encoded)
            0x0c | 0x13 | 0x16 | 0x14 => Some(String::from_utf8_lossy(value).into_owned()),
            // BMPString: UTF-16BE
            0x1e => {
                let units: Vec<u16> = value
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                    .collect();
                Some(String::from_utf16_lossy(&units))
            }
            _ => None,
        }
    }
}

/// Attribute types of a distinguished name.
mod oid {
    /// id-at-commonName, 2.5.4.3
    pub(super) const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// The usual short name of an attribute type, or its dotted form.
    pub(super) fn short_name(oid: &[u8]) -> String {
        let name = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x05] => "serialNumber",
            [0x55, 0x04, 0x06] => "C",
            [0x55, 0x04, 0x07] => "L",
            [0x55, 0x04, 0x08] => "ST",
            [0x55, 0x04, 0x09] => "street",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
            [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
            _ => return dotted(oid),
        };
        name.to_owned()
    }

    /// 2.5.4.3 style, from the DER contents of an OBJECT IDENTIFIER.
    fn dotted(oid: &[u8]) -> String {
        let mut arcs: Vec<u64> = Vec::new();
        let mut value: u64 = 0;
        for &byte in oid {
            value = (value << 7) | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                if arcs.is_empty() {
                    // The first subidentifier packs two arcs: 40 * X + Y.
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_is_the_first_common_name() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Example");
        dn.push(DnType::CommonName, "sensor-17");
        assert_eq!(subject_name(&cert_with(dn)).as_deref(), Some("sensor-17"));
    }

    #[test]
    fn subject_without_common_name_is_the_whole_name() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "NZ");
        dn.push(DnType::OrganizationName, "Example Ltd");
        let subject = subject_name(&cert_with(dn)).unwrap();
        assert!(subject.contains("C=NZ"), "{subject}");
        assert!(subject.contains("O=Example Ltd"), "{subject}");
    }

    #[test]
    fn empty_subject_is_none() {
        assert_eq!(subject_name(&cert_with(DistinguishedName::new())), None);
    }

    #[test]
    fn garbage_and_truncated_der_are_none() {
        assert_eq!(subject_name(b""), None);
        assert_eq!(subject_name(b"\x30\x84\xff\xff\xff\xff"), None);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "x");
        let cert = cert_with(dn);
        for len in 0..cert.len() / 2 {
            assert_eq!(subject_name(&cert[..len]), None);
        }
    }

    #[test]
    fn unknown_attribute_types_print_dotted() {
        assert_eq!(
            oid::short_name(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]),
            "1.3.6.1.4.1.311"
        );
        assert_eq!(oid::short_name(&[0x55, 0x04, 0x0a]), "O");
    }
}
