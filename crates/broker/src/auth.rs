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
}

impl Gatekeeper {
    /// Loads the files `config` names.
    pub fn load(config: &AuthConfig) -> Result<Gatekeeper, LoadError> {
        Ok(Gatekeeper::with(AuthPolicy::load(config)?))
    }

    /// A gatekeeper holding `policy`.
    pub fn with(policy: AuthPolicy) -> Gatekeeper {
        Gatekeeper {
            policy: ArcSwap::from_pointee(policy),
        }
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

    /// Everything allowed (tests of the protocol core).
    #[cfg(test)]
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
