//! Password files: `user:hash` lines, as `rookery passwd` and Mosquitto's
//! `mosquitto_passwd` write them. New hashes are argon2id PHC strings;
//! Mosquitto's `$6$` (salted SHA-512) and `$7$` (PBKDF2-SHA512) are read
//! so that a Mosquitto user brings the file over unchanged.
//!
//! SKELETON: the lead's API for the auth helper to fill in.

use std::collections::HashMap;

/// A line of a password file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct PasswordFileError {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong with it (never the hash itself).
    pub problem: String,
}

/// A parsed password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl PasswordFile {
    /// Reads a password file's text.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let _ = text;
        Ok(PasswordFile {
            users: HashMap::new(),
        })
    }

    /// Whether `password` is `username`'s.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let _ = (username, password, &self.users);
        false
    }
}
