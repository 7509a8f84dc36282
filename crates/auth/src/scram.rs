//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5's enhanced authentication.
//!
//! SKELETON: the lead's API for the auth helper to fill in.

/// The Authentication Method a client names in CONNECT.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not what the exchange expects.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Unknown user or wrong proof.
    #[error("authentication failed")]
    Failed,
}

/// Stored SCRAM verifiers, one per user.
#[derive(Debug, Clone, Default)]
pub struct ScramVerifiers {}

impl ScramVerifiers {
    /// Reads a verifier file's text.
    pub fn parse(text: &str) -> Result<ScramVerifiers, crate::password::PasswordFileError> {
        let _ = text;
        Ok(ScramVerifiers {})
    }

    /// Answers the client-first message: the exchange to finish and the
    /// server-first message to send in AUTH (0x18).
    pub fn start(&self, client_first: &[u8]) -> Result<(ScramExchange, Vec<u8>), ScramError> {
        let _ = client_first;
        Err(ScramError::Failed)
    }
}

/// An exchange waiting for the client-final message.
#[derive(Debug)]
pub struct ScramExchange {}

/// A finished exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSuccess {
    /// Who the client proved to be.
    pub username: String,
    /// The server-final message, sent in CONNACK's Authentication Data.
    pub server_final: Vec<u8>,
}

impl ScramExchange {
    /// Checks the client-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<ScramSuccess, ScramError> {
        let _ = client_final;
        Err(ScramError::Failed)
    }
}
