//! What keeps the cluster's own ports to the cluster's members: mutual TLS
//! on the store's gRPC server, on edge-to-edge forwarding and on every
//! client of them (Raft, edges, the admin CLI), and the admin token that
//! membership changes carry besides the certificate.
//!
//! Both are read once, from files the operator names (`[cluster.tls]`,
//! `[cluster] admin_token_file`), and checked when read: a certificate that
//! does not chain to the CA, a key that does not match it or a token file
//! that is empty fails the start, never the first handshake.
//!
//! Every node presents its certificate as a server and as a client, and
//! verifies its peer against the cluster CA and one name, `server_name`,
//! that every node certificate carries as a DNS name (SAN): nodes reach each
//! other by addresses that change (a pod's IP), so the address is not what
//! is checked. One certificate for the whole cluster, or one per node, work
//! the same way as long as each carries that name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The name node certificates carry when `server_name` is not configured.
pub const DEFAULT_SERVER_NAME: &str = "rookery-cluster";

/// How long a TLS handshake on a cluster port may take: a peer that opens a
/// connection and says nothing holds it no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC metadata key that carries the admin token.
const AUTHORIZATION: &str = "authorization";

/// How often an idle connection to a peer is pinged, and how long the answer
/// may take before the connection is dropped.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster's certificates or admin token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found (expected PEM `BEGIN CERTIFICATE`)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key found (expected PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate is not usable as a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("{} and {}: the key does not belong to the certificate: {source}", cert_file.display(), key_file.display())]
    KeyMismatch {
        /// The certificate file.
        cert_file: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("server_name `{0}` is not a DNS name or an IP address")]
    BadServerName(String),
    /// The node certificate would be refused by its peers.
    #[error(
        "{}: peers would refuse this certificate as a {role} (CA {}, server_name `{server_name}`): {source}",
        cert_file.display(), ca_file.display()
    )]
    NotTrusted {
        /// The certificate file.
        cert_file: PathBuf,
        /// The CA file.
        ca_file: PathBuf,
        /// The name peers verify.
        server_name: String,
        /// "server" or "client": nodes are both.
        role: &'static str,
        /// Why (boxed: the variant stays small).
        #[source]
        source: Box<rustls::Error>,
    },
    /// The admin token file holds no usable token.
    #[error("{}: {why}", path.display())]
    BadToken {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The cluster's TLS material, checked: the CA every peer must chain to,
/// this node's certificate and key, and the name peers are verified
/// against.
#[derive(Clone)]
pub struct ClusterTls {
    ca: Certificate,
    identity: Identity,
    server_name: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Reads the PEM files and checks that they make a working node: the
    /// key is the certificate's, and the certificate chains to the CA for
    /// `server_name` both as a server and as a client (peers verify both).
    pub fn load(
        ca_file: &Path,
        cert_file: &Path,
        key_file: &Path,
        server_name: &str,
    ) -> Result<ClusterTls, SecurityError> {
        let ca_pem = read(ca_file)?;
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let cas = certificates(ca_file, &ca_pem)?;
        let chain = certificates(cert_file, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => SecurityError::NoPrivateKey {
                path: key_file.to_owned(),
            },
            source => SecurityError::Pem {
                path: key_file.to_owned(),
                source,
            },
        })?;
        let provider = ring_provider();
        CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|source| {
            SecurityError::KeyMismatch {
                cert_file: cert_file.to_owned(),
                key_file: key_file.to_owned(),
                source,
            }
        })?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|source| SecurityError::BadCa {
                path: ca_file.to_owned(),
                source,
            })?;
        }
        let trusted = Trusted {
            roots: Arc::new(roots),
            provider: Arc::new(provider),
        };
        let not_trusted = |role, source| SecurityError::NotTrusted {
            cert_file: cert_file.to_owned(),
            ca_file: ca_file.to_owned(),
            server_name: server_name.to_owned(),
            role,
            source: Box::new(source),
        };
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| SecurityError::BadServerName(server_name.to_owned()))?;
        trusted
            .as_server(&chain, &name)
            .map_err(|e| not_trusted("server", e))?;
        trusted
            .as_client(&chain)
            .map_err(|e| not_trusted("client", e))?;
        Ok(ClusterTls {
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
            server_name: server_name.to_owned(),
        })
    }

    /// The name every node certificate carries, which peers verify.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Server settings: this node's certificate, and a client certificate
    /// signed by the cluster CA required in the handshake.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Client settings: this node's certificate, and the server verified
    /// against the cluster CA for `server_name`.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(self.server_name.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The CA as peers use it, to check this node's own certificate at load.
struct Trusted {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl Trusted {
    fn as_server(
        &self,
        chain: &[CertificateDer<'static>],
        name: &ServerName<'_>,
    ) -> Result<(), rustls::Error> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let (end_entity, intermediates) = split_chain(chain)?;
        verifier
            .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn as_client(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let (end_entity, intermediates) = split_chain(chain)?;
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// The end-entity certificate and the intermediates after it.
type Chain<'a> = (&'a CertificateDer<'static>, &'a [CertificateDer<'static>]);

fn split_chain<'a>(chain: &'a [CertificateDer<'static>]) -> Result<Chain<'a>, rustls::Error> {
    chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)
}

/// Rustls' `ring` provider, named explicitly: the workspace builds rustls
/// without a default one (and never aws-lc).
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SecurityError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(SecurityError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The secret that membership changes carry (`authorization: Bearer ...`)
/// besides the node certificate. Compared in constant time; never printed.
#[derive(Clone)]
pub struct AdminToken {
    /// The metadata value sent: `Bearer <token>`.
    header: AsciiMetadataValue,
    /// SHA-256 of the token: what a presented token is compared with, so
    /// that the comparison's time says nothing of the token or its length.
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `path`: the file's content without surrounding
    /// whitespace (a trailing newline is usual), printable ASCII.
    pub fn read(path: &Path) -> Result<AdminToken, SecurityError> {
        let content = std::fs::read(path).map_err(|source| SecurityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = std::str::from_utf8(&content).map_err(|_| SecurityError::BadToken {
            path: path.to_owned(),
            why: "the token must be printable ASCII",
        })?;
        AdminToken::new(text.trim()).map_err(|why| SecurityError::BadToken {
            path: path.to_owned(),
            why,
        })
    }

    /// A token from its secret; refused when empty, shorter than 16
    /// characters, or not printable ASCII without spaces (it travels as an
    /// HTTP/2 header value).
    pub fn new(secret: &str) -> Result<AdminToken, &'static str> {
        if secret.is_empty() {
            return Err("the admin token file is empty");
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces");
        }
        if secret.len() < 16 {
            return Err("the token must be at least 16 characters (e.g. `openssl rand -hex 32`)");
        }
        let header = MetadataValue::try_from(format!("Bearer {secret}"))
            .map_err(|_| "the token must be printable ASCII without spaces")?;
        Ok(AdminToken {
            header,
            digest: sha256(secret.as_bytes()),
        })
    }

    /// Adds the token to a request's metadata.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.header.clone());
    }

    /// Whether a request carries this token.
    pub fn admits<T>(&self, request: &tonic::Request<T>) -> bool {
        let presented = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        presented.is_some_and(|value| self.admits_header(value))
    }

    /// Whether an `authorization` header's value (`Bearer <token>`) carries
    /// this token; the HTTP admin API checks its requests with it.
    pub fn admits_header(&self, value: &str) -> bool {
        match value.strip_prefix("Bearer ") {
            Some(token) => bool::from(sha256(token.trim().as_bytes()).ct_eq(&self.digest)),
            None => false,
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a node uses to reach its peers and to be reached: TLS on every
/// cluster port when configured, and the admin token when configured.
#[derive(Debug, Clone, Default)]
pub struct ClusterSecurity {
    /// Mutual TLS on every cluster port; plaintext when `None`.
    pub tls: Option<Arc<ClusterTls>>,
    /// The credential of membership changes; without it they are taken
    /// from loopback peers only.
    pub admin_token: Option<AdminToken>,
}

impl ClusterSecurity {
    /// The endpoint of a cluster port at `address` (`host:port`): `https`
    /// with the node's certificate and the cluster CA when TLS is on.
    /// Its connection is pinged while idle too: a peer that vanished
    /// without a reset (a container killed, a pod now at another IP) is
    /// found dead within seconds, and the channel connects again, resolving
    /// the peer's name anew.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = match &self.tls {
            None => Endpoint::from_shared(format!("http://{address}"))?,
            Some(tls) => Endpoint::from_shared(format!("https://{address}"))?
                .tls_config(tls.client_config())?,
        };
        Ok(endpoint
            .http2_keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true))
    }

    /// A gRPC server builder that requires mutual TLS when TLS is on.
    pub fn server(&self) -> Result<tonic::transport::Server, tonic::transport::Error> {
        let builder = tonic::transport::Server::builder();
        match &self.tls {
            None => Ok(builder),
            Some(tls) => builder.tls_config(tls.server_config()),
        }
    }

    /// Adds the admin token, if there is one, to a membership request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.admin_token {
            token.authorize(request);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    use rookery_testkit::TestCa;

    /// A CA, a node certificate for `names` signed by it, in `dir`; the
    /// paths of the CA, the certificate and the key.
    fn pki(dir: &Path, ca: &TestCa, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        let ca_file = ca.write(&dir.join("ca.pem"));
        let node = ca.node(names).write(dir, "node");
        (ca_file, node.cert_file, node.key_file)
    }

    #[test]
    fn a_node_certificate_signed_by_the_ca_for_the_server_name_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test cluster CA");
        let (ca_file, cert, key) = pki(dir.path(), &ca, &["rookery-cluster", "n1.example"]);
        let tls = ClusterTls::load(&ca_file, &cert, &key, DEFAULT_SERVER_NAME).unwrap();
        assert_eq!(tls.server_name(), "rookery-cluster");
        // Per-node certificates: each carries its own name too.
        ClusterTls::load(&ca_file, &cert, &key, "n1.example").unwrap();
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, _, _) = pki(dir.path(), &TestCa::new("cluster CA"), &["rookery-cluster"]);
        let stranger = TestCa::new("another CA")
            .node(&["rookery-cluster"])
            .write(dir.path(), "stranger");
        let refused = ClusterTls::load(
            &ca_file,
            &stranger.cert_file,
            &stranger.key_file,
            DEFAULT_SERVER_NAME,
        )
        .unwrap_err();
        assert!(
            matches!(refused, SecurityError::NotTrusted { .. }),
            "{refused}"
        );
    }

    #[test]
    fn a_certificate_without_the_server_name_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("cluster CA");
        let (ca_file, cert, key) = pki(dir.path(), &ca, &["n1.example"]);
        let refused = ClusterTls::load(&ca_file, &cert, &key, DEFAULT_SERVER_NAME).unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("server_name `rookery-cluster`"),
            "{message}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("cluster CA");
        let (ca_file, cert, _) = pki(dir.path(), &ca, &["rookery-cluster"]);
        let other = ca.node(&["rookery-cluster"]).write(dir.path(), "other");
        let refused =
            ClusterTls::load(&ca_file, &cert, &other.key_file, DEFAULT_SERVER_NAME).unwrap_err();
        assert!(
            matches!(refused, SecurityError::KeyMismatch { .. }),
            "{refused}"
        );
        let missing = ClusterTls::load(
            &dir.path().join("missing.pem"),
            &cert,
            &other.key_file,
            DEFAULT_SERVER_NAME,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
    }

    #[test]
    fn a_request_with_the_token_is_admitted_and_others_are_not() {
        let token = AdminToken::new("0123456789abcdef-secret").unwrap();
        let mut request = tonic::Request::new(());
        assert!(!token.admits(&request), "no token at all");
        token.authorize(&mut request);
        assert!(token.admits(&request));

        let other = AdminToken::new("0123456789abcdef-SECRET").unwrap();
        let mut forged = tonic::Request::new(());
        other.authorize(&mut forged);
        assert!(!token.admits(&forged), "another token");

        let mut bare = tonic::Request::new(());
        bare.metadata_mut().insert(
            AUTHORIZATION,
            MetadataValue::from_static("0123456789abcdef-secret"),
        );
        assert!(!token.admits(&bare), "the secret without `Bearer `");
    }

    #[test]
    fn tokens_that_cannot_be_sent_or_guessed_easily_are_refused() {
        assert!(AdminToken::new("").is_err());
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it, long enough").is_err());
        assert!(AdminToken::new("nul\0byte-and-long-enough").is_err());
        assert!(AdminToken::new("é-not-ascii-but-long-enough").is_err());
    }

    #[test]
    fn a_token_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let token = AdminToken::read(&path).unwrap();
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert(
            AUTHORIZATION,
            MetadataValue::from_static("Bearer 0123456789abcdef0123"),
        );
        assert!(token.admits(&request));
        std::fs::write(&path, "\n").unwrap();
        let empty = AdminToken::read(&path).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        assert!(format!("{token:?}") == "AdminToken(..)", "never printed");
    }
}
