//! A JWT in the CONNECT password: signature, `exp` and `nbf`, the username
//! from a claim, and topic permissions from a claim as EMQX reads them.
//!
//! SKELETON: the lead's API for the auth helper to fill in.

use crate::acl::TopicPermissions;
use crate::config::JwtConfig;

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtLoadError {
    /// The key or secret file could not be read or parsed.
    #[error("{0}")]
    Key(String),
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT, or its signature does not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The username claim's value.
    pub username: String,
    /// Permissions from the ACL claim, when configured and present.
    pub permissions: Option<TopicPermissions>,
}

/// Checks tokens against one key.
#[derive(Debug)]
pub struct JwtVerifier {}

impl JwtVerifier {
    /// Reads the key the configuration names.
    pub fn load(config: &JwtConfig) -> Result<JwtVerifier, JwtLoadError> {
        let _ = config;
        Err(JwtLoadError::Key("not built yet".into()))
    }

    /// Verifies a token.
    pub fn verify(&self, token: &[u8]) -> Result<JwtIdentity, JwtError> {
        let _ = token;
        Err(JwtError::Invalid("not built yet".into()))
    }

    /// Whether `password` looks like a JWT (three base64url parts).
    pub fn looks_like_token(password: &[u8]) -> bool {
        password.iter().filter(|&&b| b == b'.').count() == 2
    }
}
