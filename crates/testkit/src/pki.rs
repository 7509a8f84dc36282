//! Certificate material for tests of TLS between cluster nodes: a CA and
//! node certificates it signs, as PEM, made with rcgen in the test (nothing
//! checked in, nothing that expires under a long-lived repository).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority that signs node certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate (`BEGIN CERTIFICATE`).
    pub cert_pem: String,
    /// Its PKCS#8 private key (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
}

/// Where [`TestCert::write`] put a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("CA parameters: {e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_owned()
    }

    /// A node certificate signed by this CA for the DNS names (or IP
    /// addresses) `names`, usable as a TLS server and as a client, as a
    /// cluster node's must be.
    pub fn node(&self, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params =
            CertificateParams::new(names.clone()).unwrap_or_else(|e| panic!("node names: {e}"));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("node key: {e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("node certificate: {e}"));
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCert {
    /// Writes `{name}.pem` and `{name}.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> CertFiles {
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        for (path, content) in [(&cert_file, &self.cert_pem), (&key_file, &self.key_pem)] {
            std::fs::write(path, content)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        CertFiles {
            cert_file,
            key_file,
        }
    }
}
