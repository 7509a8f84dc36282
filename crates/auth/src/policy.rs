//! The policy: the configured files loaded together, asked once per CONNECT
//! and once per topic a client uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::acl::{Access, Acl, AclError, Subject, TopicPermissions};
use crate::config::{AuthConfig, ClientIdBinding};
use crate::jwt::{JwtLoadError, JwtVerifier};
use crate::password::{PasswordFile, PasswordFileError};
use crate::scram::ScramVerifiers;

/// Why a policy could not be loaded; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A password or SCRAM file has a line that cannot be read.
    #[error("{path}: {source}")]
    Passwords {
        /// The file.
        path: PathBuf,
        /// Which line, and why.
        source: PasswordFileError,
    },
    /// The ACL file has a line that cannot be read.
    #[error("{path}: {source}")]
    Acl {
        /// The file.
        path: PathBuf,
        /// Which line, and why.
        source: AclError,
    },
    /// The JWT key or secret.
    #[error("[broker.auth.jwt]: {0}")]
    Jwt(#[from] JwtLoadError),
}

/// Why a client is refused at CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Credentials were given and are wrong (5.0: 0x86; 3.1.1: 0x04).
    BadCredentials,
    /// No acceptable credentials for this listener (5.0: 0x87; 3.1.1: 0x05).
    NotAuthorized,
}

/// What a CONNECT offers to prove who the client is.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The CONNECT's User Name.
    pub username: Option<&'a str>,
    /// The CONNECT's Password.
    pub password: Option<&'a [u8]>,
    /// The client identifier (for patterns and token placeholders).
    pub client_id: &'a str,
    /// The identity of a verified client certificate, on a listener that
    /// uses it as the username; it replaces username and password.
    pub certificate_identity: Option<&'a str>,
    /// Whether this listener lets clients in without credentials.
    pub anonymous_allowed: bool,
}

/// An authenticated client: what the policy needs to decide its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The username it proved (or gave, where nothing checks usernames);
    /// `None` for an anonymous client.
    pub username: Option<Arc<str>>,
    /// Its client identifier.
    pub client_id: Arc<str>,
    /// Permissions its token carried, checked on top of the ACL file.
    pub token_permissions: Option<Arc<TopicPermissions>>,
}

impl Principal {
    /// A client let in without credentials.
    pub fn anonymous(client_id: &str) -> Principal {
        Principal {
            username: None,
            client_id: Arc::from(client_id),
            token_permissions: None,
        }
    }

    /// A client known by `username`, with no token permissions.
    pub fn user(username: &str, client_id: &str) -> Principal {
        Principal {
            username: Some(Arc::from(username)),
            client_id: Arc::from(client_id),
            token_permissions: None,
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            username: self.username.as_deref(),
            client_id: &self.client_id,
        }
    }
}

/// The loaded policy. Immutable: a reload builds a new one.
#[derive(Debug, Default)]
pub struct AuthPolicy {
    config: AuthConfig,
    passwords: Option<PasswordFile>,
    scram: Option<ScramVerifiers>,
    jwt: Option<JwtVerifier>,
    acl: Option<Acl>,
}

impl AuthPolicy {
    /// Reads every file `config` names.
    pub fn load(config: &AuthConfig) -> Result<AuthPolicy, LoadError> {
        let passwords =
            match &config.password_file {
                Some(path) => Some(PasswordFile::parse(&read(path)?).map_err(|source| {
                    LoadError::Passwords {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let scram = match config.password_file.as_deref().map(scram_path) {
            Some(path) if path.exists() => {
                Some(ScramVerifiers::parse(&read(&path)?).map_err(|source| {
                    LoadError::Passwords {
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            _ => None,
        };
        let acl = match &config.acl_file {
            Some(path) => Some(Acl::parse(&read(path)?).map_err(|source| LoadError::Acl {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let jwt = config.jwt.as_ref().map(JwtVerifier::load).transpose()?;
        Ok(AuthPolicy {
            config: config.clone(),
            passwords,
            scram,
            jwt,
            acl,
        })
    }

    /// What it was loaded from.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// SCRAM-SHA-256 verifiers, when `<password_file>.scram` exists.
    pub fn scram(&self) -> Option<&ScramVerifiers> {
        self.scram.as_ref()
    }

    /// Whether anything checks credentials (a password file or JWT).
    pub fn checks_credentials(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some()
    }

    /// Decides a CONNECT's credentials.
    ///
    /// - A certificate identity is the username; nothing else is checked.
    /// - A password is checked against the password file, then, when it
    ///   looks like a token, against the JWT key; a wrong one is
    ///   [`Denial::BadCredentials`].
    /// - Without a password: where nothing checks credentials, the client
    ///   is let in as anonymous listeners allow (its username, if any, is
    ///   kept for ACL patterns, as in Mosquitto); otherwise a username
    ///   alone is [`Denial::BadCredentials`], and no credentials at all
    ///   are [`Denial::NotAuthorized`] unless anonymous clients are allowed.
    ///
    /// A client whose id is bound to its username (`bind_client_id`) and
    /// uses another is [`Denial::NotAuthorized`].
    pub fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Principal, Denial> {
        let principal = self.identify(credentials)?;
        self.bind(principal, credentials.certificate_identity.is_some())
    }

    /// Checks that a client's id belongs to its username where
    /// `bind_client_id` says so (`via_certificate`: the username is a
    /// certificate identity); [`Denial::NotAuthorized`] if not.
    pub fn bind(&self, principal: Principal, via_certificate: bool) -> Result<Principal, Denial> {
        let bound = match self.config.bind_client_id {
            ClientIdBinding::None => false,
            ClientIdBinding::Certificate => via_certificate,
            ClientIdBinding::All => principal.username.is_some(),
        };
        match &principal.username {
            Some(username) if bound && !id_belongs_to(&principal.client_id, username) => {
                Err(Denial::NotAuthorized)
            }
            _ => Ok(principal),
        }
    }

    fn identify(&self, credentials: &Credentials<'_>) -> Result<Principal, Denial> {
        let client_id = credentials.client_id;
        if let Some(identity) = credentials.certificate_identity {
            return Ok(Principal::user(identity, client_id));
        }
        if let Some(password) = credentials.password
            && self.checks_credentials()
        {
            return self.check_password(credentials.username, password, client_id);
        }
        // Without a password file or JWT key a password proves nothing, and
        // the client is taken as without one.
        match credentials.username {
            Some(username) if !self.checks_credentials() && credentials.anonymous_allowed => {
                Ok(Principal::user(username, client_id))
            }
            Some(_) if self.checks_credentials() => Err(Denial::BadCredentials),
            _ if credentials.anonymous_allowed => Ok(Principal::anonymous(client_id)),
            _ => Err(Denial::NotAuthorized),
        }
    }

    fn check_password(
        &self,
        username: Option<&str>,
        password: &[u8],
        client_id: &str,
    ) -> Result<Principal, Denial> {
        if let (Some(passwords), Some(username)) = (&self.passwords, username)
            && passwords.verify(username, password)
        {
            return Ok(Principal::user(username, client_id));
        }
        if let Some(jwt) = &self.jwt
            && JwtVerifier::looks_like_token(password)
        {
            let identity = jwt.verify(password).map_err(|_| Denial::BadCredentials)?;
            return Ok(Principal {
                username: Some(Arc::from(identity.username.as_str())),
                client_id: Arc::from(client_id),
                token_permissions: identity.permissions.map(Arc::new),
            });
        }
        Err(Denial::BadCredentials)
    }

    /// Whether `principal` may do `access` on `topic` (a name for reading
    /// and writing, a filter for subscribing). Token permissions and the
    /// ACL file must both allow it; with neither, everything is allowed.
    pub fn allows(&self, principal: &Principal, topic: &str, access: Access) -> bool {
        let subject = principal.subject();
        if let Some(permissions) = &principal.token_permissions
            && !permissions.allows(subject, topic, access)
        {
            return false;
        }
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(subject, topic, access))
    }

    /// Whether reading may be refused for some principal, so that the
    /// per-message check can be skipped when it never refuses.
    pub fn restricts(&self, principal: &Principal) -> bool {
        self.acl.is_some() || principal.token_permissions.is_some()
    }
}

/// `alice` may use `alice`, `alice-1`, `alice_1`, `alice:x`, `alice/x` or
/// `alice.x`, not `alicex` (which may be another user's).
fn id_belongs_to(client_id: &str, username: &str) -> bool {
    match client_id.strip_prefix(username) {
        Some("") => true,
        Some(rest) => rest.starts_with(['-', '_', ':', '/', '.']),
        None => false,
    }
}

/// Where SCRAM verifiers are kept: beside the password file.
pub fn scram_path(password_file: &Path) -> PathBuf {
    let mut name = password_file.as_os_str().to_owned();
    name.push(".scram");
    PathBuf::from(name)
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials<'a>(
        username: Option<&'a str>,
        password: Option<&'a [u8]>,
        anonymous_allowed: bool,
    ) -> Credentials<'a> {
        Credentials {
            username,
            password,
            client_id: "c1",
            certificate_identity: None,
            anonymous_allowed,
        }
    }

    #[test]
    fn without_files_anonymous_clients_follow_the_listener() {
        let policy = AuthPolicy::default();
        assert_eq!(
            policy.authenticate(&credentials(None, None, true)),
            Ok(Principal::anonymous("c1"))
        );
        assert_eq!(
            policy.authenticate(&credentials(None, None, false)),
            Err(Denial::NotAuthorized)
        );
        // Mosquitto keeps an unchecked username for `%u` patterns.
        assert_eq!(
            policy.authenticate(&credentials(Some("bob"), Some(b"x"), true)),
            Ok(Principal::user("bob", "c1"))
        );
        assert_eq!(
            policy.authenticate(&credentials(Some("bob"), Some(b"x"), false)),
            Err(Denial::NotAuthorized)
        );
    }

    #[test]
    fn a_certificate_identity_is_the_username() {
        let policy = AuthPolicy::default();
        let mut offered = credentials(Some("mallory"), None, false);
        offered.certificate_identity = Some("device-7");
        offered.client_id = "device-7";
        assert_eq!(
            policy.authenticate(&offered),
            Ok(Principal::user("device-7", "device-7"))
        );
    }

    #[test]
    fn a_certificate_client_may_only_use_its_own_client_ids() {
        let policy = AuthPolicy::default();
        let offered = |client_id| Credentials {
            username: None,
            password: None,
            client_id,
            certificate_identity: Some("device-7"),
            anonymous_allowed: false,
        };
        assert!(policy.authenticate(&offered("device-7")).is_ok());
        assert!(policy.authenticate(&offered("device-7:temp")).is_ok());
        assert_eq!(
            policy.authenticate(&offered("device-8")),
            Err(Denial::NotAuthorized)
        );
        assert_eq!(
            policy.authenticate(&offered("device-77")),
            Err(Denial::NotAuthorized)
        );
    }

    #[test]
    fn without_an_acl_everything_is_allowed() {
        let policy = AuthPolicy::default();
        let principal = Principal::anonymous("c1");
        assert!(policy.allows(&principal, "a/b", Access::Write));
        assert!(policy.allows(&principal, "#", Access::Subscribe));
        assert!(!policy.restricts(&principal));
    }

    #[test]
    fn an_acl_file_is_loaded_and_asked() {
        let dir = tempfile::tempdir().unwrap();
        let acl_file = dir.path().join("acl");
        std::fs::write(
            &acl_file,
            "topic readwrite #\ntopic deny test/nosubscribe\n",
        )
        .unwrap();
        let policy = AuthPolicy::load(&AuthConfig {
            acl_file: Some(acl_file),
            ..AuthConfig::default()
        })
        .unwrap();
        let principal = Principal::anonymous("c1");
        assert!(policy.restricts(&principal));
        assert!(!policy.allows(&principal, "test/nosubscribe", Access::Subscribe));
        assert!(policy.allows(&principal, "a", Access::Read));
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = AuthPolicy::load(&AuthConfig {
            acl_file: Some("/nonexistent/acl".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/acl"), "{error}");
    }
}
