//! `[broker.auth]`: where the policy's files are and how strict it is.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[broker.auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients without credentials are let in. Unset: only on
    /// listeners bound to a loopback address (Mosquitto 2's secure default);
    /// `true` or `false` applies to every listener.
    pub allow_anonymous: Option<bool>,
    /// `user:hash` lines (argon2id, or Mosquitto's `$6$` and `$7$`), as
    /// `rookery passwd` and `mosquitto_passwd` write them. SCRAM-SHA-256
    /// verifiers, when `rookery passwd` wrote them, sit beside it in
    /// `<password_file>.scram`.
    pub password_file: Option<PathBuf>,
    /// Topic permissions in Mosquitto's `acl_file` format. Unset: every
    /// authenticated client may use every topic (except publishing to `$SYS`).
    pub acl_file: Option<PathBuf>,
    /// A JWT in the CONNECT password authenticates the client.
    pub jwt: Option<JwtConfig>,
    /// How long a refused CONNECT waits before its CONNACK, in
    /// milliseconds, so that guessing passwords is slow.
    pub failure_delay_ms: u64,
    /// Which clients must use their username as their client id, or as
    /// its prefix (`alice`, `alice-1`, `alice:sensor`), so that one
    /// authenticated client cannot take over another's session.
    pub bind_client_id: ClientIdBinding,
}

/// Which clients' ids are bound to their usernames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdBinding {
    /// None: any client may use any id (Mosquitto's behaviour).
    None,
    /// Clients known by a certificate identity (`use_identity_as_username`).
    #[default]
    Certificate,
    /// Every client with a username.
    All,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            jwt: None,
            failure_delay_ms: 500,
            bind_client_id: ClientIdBinding::Certificate,
        }
    }
}

/// The signature algorithm a JWT must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret (`secret_file`).
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256 and a public key (`public_key_file`).
    Rs256,
    /// ECDSA P-256 with SHA-256 and a public key (`public_key_file`).
    Es256,
}

/// The `[broker.auth.jwt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The only algorithm accepted; a token naming another is refused.
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret (the file's bytes, without a trailing newline).
    pub secret_file: Option<PathBuf>,
    /// The RS256 or ES256 public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// The claim whose string value is the client's username.
    pub username_claim: String,
    /// A claim with topic permissions, as EMQX reads them; unset: none are
    /// taken from the token.
    pub acl_claim: Option<String>,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    pub leeway_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret_file: None,
            public_key_file: None,
            username_claim: "sub".into(),
            acl_claim: None,
            leeway_s: 0,
        }
    }
}
