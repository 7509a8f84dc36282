//! Who a client is and what it may do.
//!
//! This crate decides authentication (a password file in Mosquitto's format
//! with argon2id, `$6$` and `$7$` hashes; a JWT in the password field;
//! SCRAM-SHA-256 for MQTT 5's enhanced authentication) and authorization
//! (Mosquitto's `acl_file` format, and topic permissions carried in a JWT).
//! It reads its files and nothing else: it never touches a socket, and knows
//! nothing of MQTT packets; the broker asks it with plain strings and bytes
//! and turns its answers into reason codes.
//!
//! Start reading at [`AuthPolicy`]: it is loaded from an [`AuthConfig`] (and
//! loaded again on reload), answers [`AuthPolicy::authenticate`] once per
//! CONNECT with a [`Principal`], and [`AuthPolicy::allows`] for every topic
//! that principal publishes, subscribes to or is sent.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
mod config;
pub mod jwt;
pub mod password;
mod policy;
pub mod scram;

pub use acl::{Access, Acl, AclError, PermissionRule, Subject, TopicPermissions};
pub use config::{AuthConfig, ClientIdBinding, JwtAlgorithm, JwtConfig};
pub use policy::{AuthPolicy, Credentials, Denial, LoadError, Principal, scram_path};
