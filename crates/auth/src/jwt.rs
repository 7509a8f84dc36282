//! A JWT in the CONNECT password: signature, `exp` and `nbf`, the username
//! from a claim, and topic permissions from a claim as EMQX reads them.
//!
//! Only the configured algorithm is accepted, whatever the token's header
//! says: `alg: none`, another algorithm, or an HMAC keyed with the public
//! key (key confusion) are all refused, since the key, not the header,
//! decides how the signature is checked. Signatures are checked with ring;
//! the claims are checked here, and a claim of the wrong JSON type is
//! refused rather than taken as absent.
//!
//! Permissions come in either of EMQX's forms:
//! - a list of rules, `[{"permission": "allow"|"deny", "action":
//!   "publish"|"subscribe"|"all" (or "pub"|"sub"), "topic": "t/${clientid}"
//!   (or "topics": [...])}]`, the first matching rule deciding;
//! - EMQX 4's object of allowed topics, `{"pub": [...], "sub": [...],
//!   "all": [...]}`.
//!
//! What none matches is denied (EMQX passes it on to its other authorizers
//! instead; here the token's rules are the whole answer for its client).
//! A rule Rookery cannot apply exactly (a `qos` or `retain` restriction,
//! EMQX 5.9's client conditions, an `eq` topic with wildcards, a placeholder
//! other than `${clientid}` and `${username}`) refuses the whole token, so a
//! token never grants more than its issuer meant.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::acl::TopicPermissions;
use crate::config::{JwtAlgorithm, JwtConfig};

mod key;
mod permissions;

use key::Key;
use permissions::parse_permissions;

/// Why the verifier could not be built. Each names its file; none prints
/// a secret.
#[derive(Debug, thiserror::Error)]
pub enum JwtLoadError {
    /// A key or secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key or secret file does not hold a usable key.
    #[error("{0}")]
    Key(String),
    /// The settings do not fit together (a missing or extra file, an empty
    /// claim name).
    #[error("{0}")]
    Config(String),
}

/// Why a token was refused. No message quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT, not signed with the configured algorithm, or its
    /// signature does not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Its `exp` has passed (with the leeway).
    #[error("the token has expired")]
    Expired,
    /// Its `nbf` is still to come (with the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A required claim is missing or of the wrong type.
    #[error("{0}")]
    Claim(String),
    /// The permissions claim cannot be applied exactly.
    #[error("the permissions claim: {0}")]
    Acl(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The username claim's value.
    pub username: String,
    /// Permissions from the ACL claim, when configured and present.
    pub permissions: Option<TopicPermissions>,
    /// When the token expires: its `exp`, in whole seconds since the Unix
    /// epoch, without the leeway (EMQX can disconnect a client then).
    pub expires_at_s: u64,
}

/// Checks tokens against one key.
pub struct JwtVerifier {
    /// The `alg` a token's header must name.
    algorithm: &'static str,
    key: Key,
    username_claim: String,
    acl_claim: Option<String>,
    leeway_s: u64,
}

// Written out to make plain that the key is never printed.
impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("username_claim", &self.username_claim)
            .field("acl_claim", &self.acl_claim)
            .field("leeway_s", &self.leeway_s)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the key the configuration names: for HS256 the secret file's
    /// bytes (trailing line breaks removed), for RS256 a PEM `PUBLIC KEY`
    /// or `RSA PUBLIC KEY` of 2048 to 8192 bits, for ES256 a PEM
    /// `PUBLIC KEY` on P-256.
    pub fn load(config: &JwtConfig) -> Result<JwtVerifier, JwtLoadError> {
        if config.username_claim.is_empty() {
            return Err(JwtLoadError::Config("username_claim is empty".into()));
        }
        if config.acl_claim.as_deref() == Some("") {
            return Err(JwtLoadError::Config("acl_claim is empty".into()));
        }
        Ok(JwtVerifier {
            algorithm: match config.algorithm {
                JwtAlgorithm::Hs256 => "HS256",
                JwtAlgorithm::Rs256 => "RS256",
                JwtAlgorithm::Es256 => "ES256",
            },
            key: Key::load(config)?,
            username_claim: config.username_claim.clone(),
            acl_claim: config.acl_claim.clone(),
            leeway_s: config.leeway_s,
        })
    }

    /// Verifies a token: its signature with the configured algorithm, its
    /// `exp` (required) and `nbf` (when present), its username claim and,
    /// when configured and present, its permissions claim.
    pub fn verify(&self, token: &[u8]) -> Result<JwtIdentity, JwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.verify_at(token, now)
    }

    /// [`JwtVerifier::verify`] at `now`, in seconds since the Unix epoch.
    fn verify_at(&self, token: &[u8], now: f64) -> Result<JwtIdentity, JwtError> {
        let claims = self.verified_claims(token)?;
        let expires_at_s = check_times(&claims, now, self.leeway_s)?;
        let username = match claims.get(&self.username_claim) {
            Some(Value::String(username)) if !username.is_empty() => username.clone(),
            Some(Value::String(_)) => return Err(claim_error(&self.username_claim, "is empty")),
            Some(_) => return Err(claim_error(&self.username_claim, "is not a string")),
            None => return Err(claim_error(&self.username_claim, "is missing")),
        };
        let permissions = match &self.acl_claim {
            Some(name) => claims.get(name).map(parse_permissions).transpose()?,
            None => None,
        };
        Ok(JwtIdentity {
            username,
            permissions,
            expires_at_s,
        })
    }

    /// The claims of a JWS in compact form (RFC 7515, 7.1) whose header
    /// names the configured algorithm and whose signature verifies. The
    /// claims are read only once the signature holds.
    fn verified_claims(&self, token: &[u8]) -> Result<Map<String, Value>, JwtError> {
        let invalid = |reason: &str| JwtError::Invalid(reason.into());
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not three dot-separated parts"));
        };
        let header = json_object(header).ok_or_else(|| invalid("the header is not JSON"))?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == self.algorithm => {}
            _ => {
                return Err(JwtError::Invalid(format!(
                    "not signed with {}",
                    self.algorithm
                )));
            }
        }
        // RFC 7515, 4.1.11: extensions listed in `crit` must be understood,
        // and none is (RFC 7797's unencoded payload among them).
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(invalid("the header asks for an extension"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid("the signature is not base64url"))?;
        let signed = &token[..header_and_payload_len(token)];
        if !self.key.verifies(signed, &signature) {
            return Err(invalid("the signature does not verify"));
        }
        json_object(payload).ok_or_else(|| invalid("the claims are not a JSON object"))
    }

    /// Whether `password` looks like a JWT (three base64url parts).
    pub fn looks_like_token(password: &[u8]) -> bool {
        password.iter().filter(|&&b| b == b'.').count() == 2
    }
}

/// The length of `header.payload`, the signing input: up to the last dot.
fn header_and_payload_len(token: &[u8]) -> usize {
    token.iter().rposition(|&b| b == b'.').unwrap_or(0)
}

/// A base64url part holding a JSON object.
fn json_object(part: &[u8]) -> Option<Map<String, Value>> {
    let json = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&json).ok()
}

fn claim_error(claim: &str, problem: &str) -> JwtError {
    JwtError::Claim(format!("the `{claim}` claim {problem}"))
}

/// Checks `exp` (required) and `nbf` (when present) against `now` with
/// `leeway_s`, as RFC 7519 (4.1.4, 4.1.5) reads them: valid before `exp`,
/// and from `nbf` on. Returns `exp`.
fn check_times(claims: &Map<String, Value>, now: f64, leeway_s: u64) -> Result<u64, JwtError> {
    let leeway = leeway_s as f64;
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| claim_error("exp", "is missing"))?;
    if now >= exp + leeway {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now + leeway
    {
        return Err(JwtError::NotYetValid);
    }
    // `as` saturates: a negative or far-off `exp` still gives a number.
    Ok(exp as u64)
}

/// A NumericDate claim: a JSON number, integer or not.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|seconds| seconds.is_finite())
            .map(Some)
            .ok_or_else(|| claim_error(name, "is not a number")),
    }
}

#[cfg(test)]
mod tests;
