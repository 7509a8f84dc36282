//! Password files: `user:hash` lines, as `rookery passwd` and Mosquitto's
//! `mosquitto_passwd` write them. New hashes are argon2id PHC strings;
//! Mosquitto's `$6$` (salted SHA-512) and `$7$` (PBKDF2-SHA512) are read
//! so that a Mosquitto user brings the file over unchanged.
//!
//! Mosquitto's formats (2.0, `src/security_default.c`), both with a 12-byte
//! salt and a 64-byte digest in standard base64:
//! - `$6$<salt>$<SHA-512(password || salt)>` (not crypt(3)'s `$6$`);
//! - `$7$<iterations>$<salt>$<PBKDF2-HMAC-SHA512(password, salt, iterations)>`.
//!
//! A line is the username, a `:` and the hash, with blanks around either
//! trimmed as Mosquitto does; blank lines and `#` comments are ignored.
//! [`UserLines`] edits a file while keeping every other line byte for byte.

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// The salt length of Mosquitto's `$6$` and `$7$` hashes.
const MOSQUITTO_SALT_LEN: usize = 12;
/// The digest length of Mosquitto's hashes (SHA-512).
const MOSQUITTO_DIGEST_LEN: usize = 64;

/// A line of a password file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct PasswordFileError {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong with it (never the hash itself).
    pub problem: String,
}

/// A password hash or SCRAM verifier could not be made: the system's
/// random number generator failed, so no salt could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(pub(crate) String);

/// One user's stored hash, decoded.
#[derive(Clone)]
enum StoredHash {
    /// A PHC string of argon2id (or argon2i/argon2d), boxed: it is four
    /// times the size of the others.
    Argon2(Box<PasswordHash>),
    /// Mosquitto's `$6$`.
    Sha512 {
        salt: [u8; MOSQUITTO_SALT_LEN],
        digest: [u8; MOSQUITTO_DIGEST_LEN],
    },
    /// Mosquitto's `$7$`.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: [u8; MOSQUITTO_SALT_LEN],
        digest: [u8; MOSQUITTO_DIGEST_LEN],
    },
}

impl StoredHash {
    fn parse(hash: &str) -> Result<StoredHash, String> {
        if let Some(rest) = hash.strip_prefix("$6$") {
            let (salt, digest) = rest
                .split_once('$')
                .ok_or("a `$6$` hash needs a salt and a digest")?;
            return Ok(StoredHash::Sha512 {
                salt: decode_exact(salt, "salt")?,
                digest: decode_exact(digest, "digest")?,
            });
        }
        if let Some(rest) = hash.strip_prefix("$7$") {
            let mut fields = rest.splitn(3, '$');
            let (Some(iterations), Some(salt), Some(digest)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err("a `$7$` hash needs iterations, a salt and a digest".into());
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or("a `$7$` hash needs a positive iteration count")?;
            return Ok(StoredHash::Pbkdf2Sha512 {
                iterations,
                salt: decode_exact(salt, "salt")?,
                digest: decode_exact(digest, "digest")?,
            });
        }
        if hash.starts_with("$argon2") {
            let phc =
                PasswordHash::new(hash).map_err(|error| format!("bad argon2 hash: {error}"))?;
            if !matches!(phc.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
                return Err("unknown argon2 variant".into());
            }
            // The parameters are checked now so that a bad line is named at
            // load, not found at a client's CONNECT.
            argon2::Params::try_from(&phc)
                .map_err(|error| format!("bad argon2 parameters: {error}"))?;
            if phc.salt.is_none() || phc.hash.is_none() {
                return Err("an argon2 hash needs a salt and a digest".into());
            }
            return Ok(StoredHash::Argon2(Box::new(phc)));
        }
        Err("unknown hash scheme (expected an argon2id PHC string, `$6$` or `$7$`)".into())
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Argon2(phc) => Argon2::default().verify_password(password, &**phc).is_ok(),
            StoredHash::Sha512 { salt, digest } => {
                let computed = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                bool::from(computed.as_slice().ct_eq(digest))
            }
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                digest,
            } => {
                let mut computed = [0u8; MOSQUITTO_DIGEST_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                bool::from(computed.ct_eq(digest))
            }
        }
    }

    /// What makes two hashes cost the same to check: the scheme and its
    /// parameters.
    fn cost_class(&self) -> String {
        match self {
            StoredHash::Argon2(phc) => format!(
                "{}${:?}${}",
                phc.algorithm.as_str(),
                phc.version,
                phc.params.as_str()
            ),
            StoredHash::Sha512 { .. } => "6".into(),
            StoredHash::Pbkdf2Sha512 { iterations, .. } => format!("7${iterations}"),
        }
    }

    /// The same scheme and parameters with a digest no password produces
    /// (all zeros), to spend a real check's time on an unknown user.
    fn decoy(&self) -> StoredHash {
        let mut decoy = self.clone();
        match &mut decoy {
            StoredHash::Argon2(phc) => {
                let len = phc.hash.as_ref().map_or(0, Output::len);
                phc.hash = Output::new(&vec![0; len]).ok();
            }
            StoredHash::Sha512 { digest, .. } | StoredHash::Pbkdf2Sha512 { digest, .. } => {
                *digest = [0; MOSQUITTO_DIGEST_LEN];
            }
        }
        decoy
    }
}

/// Decodes standard base64 (as OpenSSL writes it) of exactly `N` bytes.
fn decode_exact<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| format!("the {what} is not base64"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the {what} is {} bytes, not {N}", bytes.len()))
}

/// A parsed password file.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, StoredHash>,
    /// Checked for a user the file does not hold, so that the answer takes
    /// as long as for the file's most common kind of hash.
    decoy: Option<StoredHash>,
}

// Hand-written so that a logged policy never shows a hash.
impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Reads a password file's text.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut classes: Vec<(String, usize, StoredHash)> = Vec::new();
        for (line, username, hash) in entries(text)? {
            let stored =
                StoredHash::parse(hash).map_err(|problem| PasswordFileError { line, problem })?;
            if let Some(earlier) = first_line.insert(username.to_owned(), line) {
                return Err(PasswordFileError {
                    line,
                    problem: format!("user {username:?} is already on line {earlier}"),
                });
            }
            let class = stored.cost_class();
            match classes.iter_mut().find(|(c, _, _)| *c == class) {
                Some((_, count, _)) => *count += 1,
                None => classes.push((class, 1, stored.clone())),
            }
            users.insert(username.to_owned(), stored);
        }
        // max_by_key keeps the last of equals; reversed, the first seen wins.
        let decoy = classes
            .iter()
            .rev()
            .max_by_key(|(_, count, _)| *count)
            .map(|(_, _, hash)| hash.decoy());
        Ok(PasswordFile { users, decoy })
    }

    /// Whether `password` is `username`'s.
    ///
    /// The digests are compared in constant time. For a user the file does
    /// not hold, a hash of the file's most common kind is checked all the
    /// same, so that the time taken does not tell which users exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(stored) => stored.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    std::hint::black_box(decoy.verify(password));
                }
                false
            }
        }
    }

    /// Whether the file holds `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The `(line number, username, value)` of every user line of a password
/// or verifier file: split at the first `:`, blanks trimmed.
pub(crate) fn entries(text: &str) -> Result<Vec<(usize, &str, &str)>, PasswordFileError> {
    let mut found = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((username, value)) = trimmed.split_once(':') else {
            return Err(PasswordFileError {
                line,
                problem: "expected `user:hash`".into(),
            });
        };
        let (username, value) = (username.trim(), value.trim());
        if username.is_empty() {
            return Err(PasswordFileError {
                line,
                problem: "the username is empty".into(),
            });
        }
        if value.is_empty() {
            return Err(PasswordFileError {
                line,
                problem: format!("user {username:?} has no hash"),
            });
        }
        found.push((line, username, value));
    }
    Ok(found)
}

/// Hashes a new password as argon2id with the argon2 crate's default
/// parameters (19 MiB, 2 passes, 1 lane: OWASP's first recommendation) and
/// a random 16-byte salt, as a PHC string for a password file line.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let salt = argon2::password_hash::try_generate_salt()
        .map_err(|error| HashError(format!("no random salt: {error}")))?;
    Argon2::default()
        .hash_password_with_salt(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| HashError(error.to_string()))
}

/// Whether `username` can be written to a password file and read back the
/// same: not empty, no `:`, no line break, no blanks around it (they are
/// trimmed on reading), not starting with `#` (a comment).
pub fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        Err("the username is empty")
    } else if username.contains(':') {
        Err("a username cannot hold `:`")
    } else if username.contains(['\n', '\r']) {
        Err("a username cannot hold a line break")
    } else if username.trim() != username {
        Err("a username cannot start or end with a blank")
    } else if username.starts_with('#') {
        Err("a username cannot start with `#`")
    } else if username.len() > usize::from(u16::MAX) {
        Err("a username is at most 65,535 bytes")
    } else {
        Ok(())
    }
}

/// A password or verifier file as its lines, for `rookery passwd`: setting
/// or removing one user's line keeps every other line (comments, blank
/// lines, Mosquitto's hashes, line endings) byte for byte.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserLines {
    /// Each line with its line ending, if it had one.
    lines: Vec<String>,
}

// Hand-written so that hashes are never printed.
impl fmt::Debug for UserLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserLines")
            .field("lines", &self.lines.len())
            .finish()
    }
}

impl UserLines {
    /// Takes a file's text as it is; nothing is checked.
    pub fn new(text: &str) -> UserLines {
        UserLines {
            lines: text.split_inclusive('\n').map(str::to_owned).collect(),
        }
    }

    fn position(&self, username: &str) -> Option<usize> {
        self.lines.iter().position(|line| {
            let trimmed = line.trim();
            !trimmed.starts_with('#')
                && trimmed
                    .split_once(':')
                    .is_some_and(|(name, _)| name.trim() == username)
        })
    }

    /// Whether a line names `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.position(username).is_some()
    }

    /// Sets `username`'s line to `username:value`: in place when the user
    /// has one (keeping its line ending), appended otherwise.
    pub fn set(&mut self, username: &str, value: &str) {
        let line = format!("{username}:{value}");
        match self.position(username) {
            Some(index) => {
                let old = &self.lines[index];
                let ending = &old[old.trim_end_matches(['\r', '\n']).len()..];
                self.lines[index] = format!("{line}{ending}");
            }
            None => {
                if let Some(last) = self.lines.last_mut()
                    && !last.ends_with('\n')
                {
                    last.push('\n');
                }
                self.lines.push(format!("{line}\n"));
            }
        }
    }

    /// Removes `username`'s line; whether it had one.
    pub fn remove(&mut self, username: &str) -> bool {
        match self.position(username) {
            Some(index) => {
                self.lines.remove(index);
                true
            }
            None => false,
        }
    }

    /// The file's new text.
    pub fn text(&self) -> String {
        self.lines.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by Debian's mosquitto_passwd 2.0.11: alice and bob with the
    // default `$7$` (PBKDF2-SHA512, 101 iterations), carol and dave with
    // `-H sha512` (`$6$`).
    const MOSQUITTO: &str = include_str!("../tests/fixtures/mosquitto_passwd");
    const MOSQUITTO_PASSWORDS: [(&str, &str); 4] = [
        ("alice", "wonderland"),
        ("bob", "b0b:with$colon"),
        ("carol", "sechs"),
        ("dave", "pässwörd ünïcode"),
    ];

    #[test]
    fn mosquitto_passwd_hashes_verify_right_and_wrong_passwords() {
        let file = PasswordFile::parse(MOSQUITTO).unwrap();
        assert_eq!(file.len(), 4);
        for (user, password) in MOSQUITTO_PASSWORDS {
            assert!(file.verify(user, password.as_bytes()), "{user}");
            assert!(!file.verify(user, b"wrong"), "{user}");
            // Mosquitto hashes the whole password: a prefix is not it.
            assert!(!file.verify(user, &password.as_bytes()[..password.len() - 1]));
        }
        // Another user's password is not this user's.
        assert!(!file.verify("alice", b"sechs"));
        assert!(!file.verify("nobody", b"wonderland"));
    }

    #[test]
    fn argon2id_hashes_round_trip() {
        let hash = hash_password(b"correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let file = PasswordFile::parse(&format!("erin:{hash}\n")).unwrap();
        assert!(file.verify("erin", b"correct horse"));
        assert!(!file.verify("erin", b"correct horse "));
        assert!(!file.verify("frank", b"correct horse"));
        // Each hash has its own salt.
        assert_ne!(hash, hash_password(b"correct horse").unwrap());
    }

    #[test]
    fn comments_blank_lines_blanks_and_crlf_are_ignored() {
        let hash = hash_password(b"pw").unwrap();
        let text = format!("# users\n\n  \t\r\n  erin : {hash} \r\n#bob:x\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("erin", b"pw"));
        assert!(!file.contains("#bob"));
    }

    #[test]
    fn bad_lines_are_named_by_number_without_the_hash() {
        let secret = "$6$c2VjcmV0c2FsdDEy$tooshort";
        let cases = [
            (
                format!("ok:{}\nbroken\n", hash_password(b"x").unwrap()),
                2,
                "user:hash",
            ),
            (format!("\n\nu:{secret}\n"), 3, "digest is 6 bytes"),
            ("u:$6$!!!$AAAA\n".into(), 1, "salt is not base64"),
            ("u:$7$0$AAAA$AAAA\n".into(), 1, "positive iteration"),
            (
                "u:$7$101$AAAA\n".into(),
                1,
                "iterations, a salt and a digest",
            ),
            ("u:$6$onlysalt\n".into(), 1, "a salt and a digest"),
            ("u:plaintext\n".into(), 1, "unknown hash scheme"),
            (
                "u:$argon2id$v=19$m=1,t=2,p=1$AAAAAAAAAAA$AAAA\n".into(),
                1,
                "argon2",
            ),
            (
                "u:$argon2x$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$AAAA\n".into(),
                1,
                "argon2",
            ),
            (":$6$x$y\n".into(), 1, "username is empty"),
            ("u:\n".into(), 1, "no hash"),
        ];
        for (text, line, problem) in cases {
            let error = PasswordFile::parse(&text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.problem.contains(problem), "{text:?}: {error}");
            assert!(!error.to_string().contains("tooshort"), "{error}");
        }
    }

    #[test]
    fn a_user_twice_is_refused() {
        let text = format!("{MOSQUITTO}alice:{}\n", hash_password(b"x").unwrap());
        let error = PasswordFile::parse(&text).unwrap_err();
        assert_eq!(error.line, 5);
        assert!(error.problem.contains("line 1"), "{error}");
    }

    #[test]
    fn an_unknown_user_checks_a_decoy_of_the_most_common_kind() {
        let file = PasswordFile::parse(MOSQUITTO).unwrap();
        // Two `$7$` with 101 iterations against two `$6$`: the first seen wins.
        match &file.decoy {
            Some(StoredHash::Pbkdf2Sha512 {
                iterations, digest, ..
            }) => {
                assert_eq!(*iterations, 101);
                assert_eq!(digest, &[0; 64]);
            }
            _ => panic!("expected a $7$ decoy"),
        }
        let argon = hash_password(b"x").unwrap();
        let text = format!("a:{argon}\nb:{argon}\n{MOSQUITTO}c:{argon}\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert!(matches!(file.decoy, Some(StoredHash::Argon2(_))));
        assert!(!file.verify("zed", b"x"));
        assert!(PasswordFile::parse("# none\n").unwrap().decoy.is_none());
    }

    #[test]
    fn debug_output_shows_no_hash() {
        let file = PasswordFile::parse(MOSQUITTO).unwrap();
        let shown = format!("{file:?}{:?}", UserLines::new(MOSQUITTO));
        assert!(!shown.contains('$'), "{shown}");
    }

    #[test]
    fn user_lines_keep_other_lines_byte_for_byte() {
        let text = "# header\r\nalice:$7$keep\r\n\n  bob : $6$keep2\nzed:x";
        let mut lines = UserLines::new(text);
        assert!(lines.contains("bob"));
        assert!(!lines.contains("header"));
        lines.set("bob", "NEW");
        assert_eq!(
            lines.text(),
            "# header\r\nalice:$7$keep\r\n\nbob:NEW\nzed:x"
        );
        lines.set("alice", "A");
        lines.set("carol", "C");
        assert_eq!(
            lines.text(),
            "# header\r\nalice:A\r\n\nbob:NEW\nzed:x\ncarol:C\n"
        );
        assert!(lines.remove("zed"));
        assert!(!lines.remove("zed"));
        assert_eq!(lines.text(), "# header\r\nalice:A\r\n\nbob:NEW\ncarol:C\n");
        let mut empty = UserLines::new("");
        empty.set("u", "h");
        assert_eq!(empty.text(), "u:h\n");
    }

    #[test]
    fn usernames_that_would_not_read_back_are_refused() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("dévice-7@site").is_ok());
        for bad in ["", "a:b", "a\nb", " a", "a ", "#a"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }
}
