//! Authentication and authorization at the edge: the policy in force
//! (swapped whole on reload, so a check never sees half of a new policy),
//! which listeners let anonymous clients in, and a session's rights.
//! What a policy decides is in `rookery_auth`; this module asks it and
//! counts its refusals.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rookery_auth::{Access, AuthConfig, AuthPolicy, Denial, LoadError, Principal};
use rookery_codec::ReasonCode;

use crate::config::ListenerConfig;

/// The policy in force on this edge.
#[derive(Debug)]
pub struct Gatekeeper {
    policy: ArcSwap<AuthPolicy>,
    /// Password checks running at once: argon2id takes tens of
    /// milliseconds and 19 MiB each, so a flood of CONNECTs waits here
    /// instead of stalling the runtime or taking memory without bound.
    checks: tokio::sync::Semaphore,
}

/// A CONNECT's credentials, owned, to be checked off the runtime's threads.
#[derive(Debug, Clone)]
pub struct OfferedCredentials {
    /// The CONNECT's User Name.
    pub username: Option<String>,
    /// The CONNECT's Password.
    pub password: Option<bytes::Bytes>,
    /// The client identifier.
    pub client_id: String,
    /// A verified certificate's identity, on a listener that uses it.
    pub certificate_identity: Option<String>,
    /// Whether the listener lets clients in without credentials.
    pub anonymous_allowed: bool,
}

impl Gatekeeper {
    /// Loads the files `config` names.
    pub fn load(config: &AuthConfig) -> Result<Gatekeeper, LoadError> {
        Ok(Gatekeeper::with(AuthPolicy::load(config)?))
    }

    /// A gatekeeper holding `policy`.
    pub fn with(policy: AuthPolicy) -> Gatekeeper {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Gatekeeper {
            policy: ArcSwap::from_pointee(policy),
            checks: tokio::sync::Semaphore::new(cores),
        }
    }

    /// Decides a CONNECT's credentials with `policy`, on a blocking thread
    /// when a password must be checked, at most one check per core at once.
    pub async fn authenticate(
        &self,
        policy: Arc<AuthPolicy>,
        offered: OfferedCredentials,
    ) -> Result<Principal, Denial> {
        // Only a password costs a hash; the rest is decided at once.
        let hashes = offered.password.is_some() && offered.certificate_identity.is_none();
        let decide = move || {
            policy.authenticate(&rookery_auth::Credentials {
                username: offered.username.as_deref(),
                password: offered.password.as_deref(),
                client_id: &offered.client_id,
                certificate_identity: offered.certificate_identity.as_deref(),
                anonymous_allowed: offered.anonymous_allowed,
            })
        };
        if !hashes {
            return decide();
        }
        let Ok(_slot) = self.checks.acquire().await else {
            return Err(Denial::NotAuthorized);
        };
        tokio::task::spawn_blocking(decide)
            .await
            .unwrap_or(Err(Denial::NotAuthorized))
    }

    /// Loads `config` again; on failure the policy in force stays.
    pub fn reload(&self, config: &AuthConfig) -> Result<(), LoadError> {
        let policy = AuthPolicy::load(config)?;
        self.policy.store(Arc::new(policy));
        Ok(())
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<AuthPolicy> {
        self.policy.load_full()
    }
}

/// What a listener's clients need to be let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerAuth {
    /// Clients without credentials are let in.
    pub anonymous_allowed: bool,
    /// A verified client certificate's identity is the username.
    pub identity_as_username: bool,
}

impl ListenerAuth {
    /// `allow_anonymous` as configured, or, unset, only on a loopback
    /// address (Mosquitto 2's default: nothing off the machine gets in
    /// without credentials unless the operator says so).
    pub fn of(config: &AuthConfig, listener: &ListenerConfig) -> ListenerAuth {
        ListenerAuth {
            anonymous_allowed: config
                .allow_anonymous
                .unwrap_or_else(|| listener.address.ip().is_loopback()),
            identity_as_username: listener.use_identity_as_username,
        }
    }
}

/// CONNACK's reason code for a refusal (the codec turns 0x86 and 0x87 into
/// 3.1.1's 4 and 5).
pub fn denial_reason(denial: Denial) -> ReasonCode {
    match denial {
        Denial::BadCredentials => ReasonCode::BadUserNameOrPassword,
        Denial::NotAuthorized => ReasonCode::NotAuthorized,
    }
}

/// The `reason` label of a refused CONNECT.
pub fn denial_label(denial: Denial) -> &'static str {
    match denial {
        Denial::BadCredentials => "bad_credentials",
        Denial::NotAuthorized => "not_authorized",
    }
}

/// A session's rights: who it is, asked of the policy in force at each
/// check, so a reloaded ACL applies to connected clients at once.
#[derive(Debug, Clone)]
pub struct Authorizer {
    gatekeeper: Arc<Gatekeeper>,
    principal: Principal,
}

impl Authorizer {
    /// The rights of `principal`.
    pub fn new(gatekeeper: Arc<Gatekeeper>, principal: Principal) -> Authorizer {
        Authorizer {
            gatekeeper,
            principal,
        }
    }

    /// Everything allowed (tests and fuzzing of the protocol core).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn unrestricted(client_id: &str) -> Authorizer {
        Authorizer::new(
            Arc::new(Gatekeeper::with(AuthPolicy::default())),
            Principal::anonymous(client_id),
        )
    }

    /// Whom the rights are for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the session may do `access` on `topic`; a refusal is
    /// counted and logged at debug.
    pub fn may(&self, topic: &str, access: Access) -> bool {
        let policy = self.gatekeeper.policy.load();
        if !policy.restricts(&self.principal) || policy.allows(&self.principal, topic, access) {
            return true;
        }
        let label = match access {
            Access::Read => "read",
            Access::Subscribe => "subscribe",
            Access::Write => "publish",
        };
        metrics::counter!("rookery_authorization_denied_total", "access" => label).increment(1);
        tracing::debug!(client_id = %self.principal.client_id, username = ?self.principal.username, topic, access = label, "denied by the ACL");
        false
    }
}
