//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5's enhanced authentication.
//!
//! The server side only: a client names [`MECHANISM`] as the Authentication
//! Method of its CONNECT and sends the client-first message as its
//! Authentication Data; [`ScramVerifiers::start`] answers with the
//! server-first message (sent in AUTH, reason 0x18 Continue
//! Authentication); the client's AUTH carries the client-final message,
//! which [`ScramExchange::finish`] checks, giving the server-final message
//! for the CONNACK.
//!
//! Verifiers are kept as RFC 5803 (and PostgreSQL) write them, one user a
//! line: `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`,
//! in base64. The server never sees or keeps a password.
//!
//! Not supported, and refused: channel binding (`p=`; a client sending
//! `y` is accepted, as RFC 5802 §6 asks of a server without it), mandatory
//! extensions (`m=`), and an authorization identity other than the
//! username. Neither username nor password is normalized with SASLprep:
//! the bytes are used as they are, which is the same for ASCII.
//!
//! A user the file does not hold gets an exchange that looks like a real
//! one (a salt derived from the username and a per-process secret, so it
//! is the same on every attempt, and the usual iteration count) and fails
//! at the proof, so usernames cannot be probed.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::password::{HashError, PasswordFileError, entries};

/// The Authentication Method a client names in CONNECT.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The iteration count of new verifiers and of unknown users' exchanges
/// (RFC 7677 §4 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The prefix of a verifier after the username (RFC 5803).
const SCHEME: &str = "SCRAM-SHA-256$";
/// Salt length of new verifiers and of unknown users' exchanges.
const SALT_LEN: usize = 16;
/// Random bytes in the server's nonce (24 base64 characters).
const NONCE_LEN: usize = 18;

type Key = [u8; 32];

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

/// One user's stored keys.
#[derive(Clone, PartialEq, Eq)]
struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl Verifier {
    /// RFC 5802 §3: SaltedPassword, then ClientKey, StoredKey and ServerKey.
    fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Reads `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    fn parse(text: &str) -> Result<Verifier, String> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or("expected `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`")?;
        let (params, keys) = rest.split_once('$').ok_or("expected `$` before the keys")?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or("expected `<iterations>:<salt>`")?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or("expected `<StoredKey>:<ServerKey>`")?;
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or("the iteration count is not a positive number")?;
        let salt = STANDARD
            .decode(salt)
            .ok()
            .filter(|salt| !salt.is_empty())
            .ok_or("the salt is not base64")?;
        let key = |text: &str, what: &str| {
            STANDARD
                .decode(text)
                .ok()
                .and_then(|bytes| Key::try_from(bytes.as_slice()).ok())
                .ok_or(format!("the {what} is not 32 bytes of base64"))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored_key, "StoredKey")?,
            server_key: key(server_key, "ServerKey")?,
        })
    }

    fn encode(&self) -> String {
        format!(
            "{SCHEME}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    /// The stand-in for a user the file does not hold: the same on every
    /// attempt within this process, unrelated to any password.
    fn decoy(username: &str, iterations: u32, secret: &Key) -> Verifier {
        let salt = hmac(secret, &[b"salt\0", username.as_bytes()]);
        Verifier {
            iterations,
            salt: salt[..SALT_LEN].to_vec(),
            stored_key: hmac(secret, &[b"stored\0", username.as_bytes()]),
            server_key: hmac(secret, &[b"server\0", username.as_bytes()]),
        }
    }
}

/// HMAC-SHA-256 with a 32-byte key. The key is given as the 64-byte block
/// HMAC pads it to with zeros (RFC 2104 §2), the same MAC, through the
/// constructor that cannot fail.
fn hmac(key: &Key, parts: &[&[u8]]) -> Key {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut mac = Hmac::<Sha256>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Random bytes from the operating system; `None` if it has none to give.
fn random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes)
}

/// This process's secret for unknown users' salts, drawn once.
fn process_secret() -> Option<&'static Key> {
    static SECRET: OnceLock<Option<Key>> = OnceLock::new();
    SECRET.get_or_init(random::<32>).as_ref()
}

/// Makes a SCRAM-SHA-256 verifier for `password` with a random 16-byte salt
/// and [`DEFAULT_ITERATIONS`], as the value of a `<password_file>.scram`
/// line (`user:` goes before it).
pub fn verifier(password: &[u8]) -> Result<String, HashError> {
    let salt =
        random::<SALT_LEN>().ok_or_else(|| HashError("the system gave no random salt".into()))?;
    Ok(Verifier::from_password(password, &salt, DEFAULT_ITERATIONS).encode())
}

/// Stored SCRAM verifiers, one per user.
#[derive(Clone, Default)]
pub struct ScramVerifiers {
    users: HashMap<String, Verifier>,
    /// The file's most common iteration count, for unknown users.
    decoy_iterations: u32,
}

// Hand-written so that a logged policy never shows a key.
impl fmt::Debug for ScramVerifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifiers")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl ScramVerifiers {
    /// Reads a verifier file's text: `user:SCRAM-SHA-256$...` lines, blank
    /// lines and `#` comments.
    pub fn parse(text: &str) -> Result<ScramVerifiers, PasswordFileError> {
        let mut users = HashMap::new();
        let mut iteration_counts: HashMap<u32, usize> = HashMap::new();
        for (line, username, value) in entries(text)? {
            let verifier =
                Verifier::parse(value).map_err(|problem| PasswordFileError { line, problem })?;
            *iteration_counts.entry(verifier.iterations).or_default() += 1;
            if users.insert(username.to_owned(), verifier).is_some() {
                return Err(PasswordFileError {
                    line,
                    problem: format!("user {username:?} has a line already"),
                });
            }
        }
        let decoy_iterations = iteration_counts
            .into_iter()
            .max_by_key(|&(iterations, count)| (count, iterations))
            .map_or(DEFAULT_ITERATIONS, |(iterations, _)| iterations);
        Ok(ScramVerifiers {
            users,
            decoy_iterations,
        })
    }

    /// Whether `username` has a verifier.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// How many users have a verifier.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user has a verifier.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Answers the client-first message: the exchange to finish and the
    /// server-first message to send in AUTH (0x18).
    pub fn start(&self, client_first: &[u8]) -> Result<(ScramExchange, Vec<u8>), ScramError> {
        let nonce = random::<NONCE_LEN>().ok_or(ScramError::Failed)?;
        self.start_with_nonce(client_first, &STANDARD.encode(nonce))
    }

    fn start_with_nonce(
        &self,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ScramExchange, Vec<u8>), ScramError> {
        let message = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Malformed("the client-first message is not UTF-8"))?;
        let first = ClientFirst::parse(message)?;
        let (verifier, known) = match self.users.get(&first.username) {
            Some(verifier) => (verifier.clone(), true),
            None => {
                let secret = process_secret().ok_or(ScramError::Failed)?;
                let decoy = Verifier::decoy(&first.username, self.decoy_iterations, secret);
                (decoy, false)
            }
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = ScramExchange {
            username: first.username,
            known,
            gs2_header: first.gs2_header.to_owned(),
            client_first_bare: first.bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            verifier,
        };
        Ok((exchange, server_first.into_bytes()))
    }
}

/// The parts of a client-first message the exchange needs (RFC 5802 §7).
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    username: String,
    nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    fn parse(message: &'a str) -> Result<ClientFirst<'a>, ScramError> {
        use ScramError::Malformed;
        let (flag, rest) = message.split_once(',').ok_or(Malformed("no GS2 header"))?;
        match flag {
            // `y`: the client could bind the channel but thinks the server
            // cannot, which is true here.
            "n" | "y" => {}
            flag if flag.starts_with("p=") => {
                return Err(Malformed("channel binding is not supported"));
            }
            _ => return Err(Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(Malformed("no GS2 header"))?;
        let gs2_header = &message[..message.len() - bare.len()];
        let authzid = match authzid {
            "" => None,
            authzid => Some(saslname(
                authzid
                    .strip_prefix("a=")
                    .ok_or(Malformed("bad authorization identity"))?,
            )?),
        };
        let mut attributes = bare.split(',');
        let name = attributes.next().unwrap_or_default();
        if name.starts_with("m=") {
            return Err(Malformed("mandatory extensions are not supported"));
        }
        let username = saslname(name.strip_prefix("n=").ok_or(Malformed("no username"))?)?;
        if username.is_empty() {
            return Err(Malformed("empty username"));
        }
        let nonce = attributes
            .next()
            .and_then(|nonce| nonce.strip_prefix("r="))
            .ok_or(Malformed("no client nonce"))?;
        // RFC 5802 §7: printable ASCII except `,`.
        if nonce.is_empty()
            || !nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(Malformed("bad client nonce"));
        }
        // Acting as another user is not offered.
        if authzid.is_some_and(|authzid| authzid != username) {
            return Err(ScramError::Failed);
        }
        // Any further attributes are extensions, which may be ignored.
        Ok(ClientFirst {
            gs2_header,
            bare,
            username,
            nonce,
        })
    }
}

/// Decodes a saslname: `=2C` is `,`, `=3D` is `=`; any other `=` is an
/// error (RFC 5802 §5.1).
fn saslname(text: &str) -> Result<String, ScramError> {
    let mut name = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        name.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => name.push(','),
            Some("=3D") => name.push('='),
            _ => return Err(ScramError::Malformed("bad `=` escape in a name")),
        }
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Ok(name)
}

/// An exchange waiting for the client-final message.
pub struct ScramExchange {
    username: String,
    /// Whether `verifier` is the user's, not a decoy.
    known: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// The client's and the server's nonces.
    nonce: String,
    verifier: Verifier,
}

// Hand-written so that the keys are never printed.
impl fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramExchange")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A finished exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSuccess {
    /// Who the client proved to be.
    pub username: String,
    /// The server-final message, sent in CONNACK's Authentication Data.
    pub server_final: Vec<u8>,
}

impl ScramExchange {
    /// The username the client-first message named (proved only once
    /// [`ScramExchange::finish`] succeeds).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks the client-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<ScramSuccess, ScramError> {
        use ScramError::Malformed;
        let message = std::str::from_utf8(client_final)
            .map_err(|_| Malformed("the client-final message is not UTF-8"))?;
        // The proof is the last attribute (RFC 5802 §7).
        let (without_proof, proof) = message.rsplit_once(",p=").ok_or(Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|binding| binding.strip_prefix("c="))
            .ok_or(Malformed("no channel binding attribute"))?;
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| Malformed("the channel binding is not base64"))?;
        // Without channel binding, `c=` carries the GS2 header unchanged.
        if binding != self.gs2_header.as_bytes() {
            return Err(Malformed("the channel binding is not the GS2 header"));
        }
        let nonce = attributes
            .next()
            .and_then(|nonce| nonce.strip_prefix("r="))
            .ok_or(Malformed("no nonce"))?;
        let proof = STANDARD
            .decode(proof)
            .ok()
            .and_then(|proof| Key::try_from(proof.as_slice()).ok())
            .ok_or(Malformed("the proof is not 32 bytes of base64"))?;
        if nonce != self.nonce {
            return Err(ScramError::Failed);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (byte, signature) in client_key.iter_mut().zip(client_signature) {
            *byte ^= signature;
        }
        let stored_key: Key = Sha256::digest(client_key).into();
        let proved = bool::from(stored_key.ct_eq(&self.verifier.stored_key));
        if !(proved && self.known) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(ScramSuccess {
            username: self.username,
            server_final: format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
        })
    }
}

/// The client side of SCRAM-SHA-256, as RFC 5802 describes it: for tests
/// and tools that log in to a broker with enhanced authentication.
#[derive(Debug)]
pub struct ScramClient {
    username: String,
    password: Vec<u8>,
    nonce: String,
    /// The GS2 header: `n,,` (no channel binding).
    gs2: String,
}

impl ScramClient {
    /// A client for `username` with `password` and a fresh random nonce.
    pub fn new(username: &str, password: &[u8]) -> Result<ScramClient, HashError> {
        Ok(ScramClient {
            username: username.to_owned(),
            password: password.to_vec(),
            nonce: STANDARD
                .encode(random::<18>().ok_or_else(|| HashError("no random nonce".into()))?),
            gs2: "n,,".to_owned(),
        })
    }

    fn bare(&self) -> String {
        let name = self.username.replace('=', "=3D").replace(',', "=2C");
        format!("n={name},r={}", self.nonce)
    }

    /// The client-first message (CONNECT's Authentication Data).
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2, self.bare()).into_bytes()
    }

    /// Answers the server-first message: the client-final message, and the
    /// server-final message a server that knows the password sends back.
    pub fn client_final(&self, server_first: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ScramError> {
        let malformed = ScramError::Malformed("server-first");
        let server_first = std::str::from_utf8(server_first).map_err(|_| malformed.clone())?;
        let mut fields = server_first.split(',');
        let mut field = |prefix: &str| {
            fields
                .next()
                .and_then(|field| field.strip_prefix(prefix))
                .ok_or(malformed.clone())
        };
        let nonce = field("r=")?;
        let salt = STANDARD
            .decode(field("s=")?)
            .map_err(|_| malformed.clone())?;
        let iterations: u32 = field("i=")?.parse().map_err(|_| malformed.clone())?;
        if !nonce.starts_with(&self.nonce) || iterations == 0 {
            return Err(malformed);
        }
        let keys = Verifier::from_password(&self.password, &salt, iterations);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(&self.gs2));
        let auth = format!("{},{server_first},{without_proof}", self.bare());
        let signature = hmac(&keys.stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server = hmac(&keys.server_key, &[auth.as_bytes()]);
        Ok((
            format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes(),
            format!("v={}", STANDARD.encode(server)).into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifiers(lines: &[(&str, &str)]) -> ScramVerifiers {
        let text: String = lines
            .iter()
            .map(|(user, password)| format!("{user}:{}\n", verifier(password.as_bytes()).unwrap()))
            .collect();
        ScramVerifiers::parse(&text).unwrap()
    }

    #[test]
    fn rfc_7677_test_vector() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let line = format!(
            "user:{}",
            Verifier::from_password(b"pencil", &salt, 4096).encode()
        );
        let verifiers = ScramVerifiers::parse(&line).unwrap();
        let (exchange, server_first) = verifiers
            .start_with_nonce(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(server_first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let success = exchange
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(success.username, "user");
        assert_eq!(
            String::from_utf8(success.server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_client_with_the_password_is_let_in_and_can_check_the_server() {
        let verifiers = verifiers(&[("alice", "wonderland"), ("a,b=c", "odd name")]);
        for (user, password) in [("alice", "wonderland"), ("a,b=c", "odd name")] {
            let client = ScramClient::new(user, password.as_bytes()).unwrap();
            let (exchange, server_first) = verifiers.start(&client.client_first()).unwrap();
            assert_eq!(exchange.username(), user);
            let (client_final, expected_server_final) = client.client_final(&server_first).unwrap();
            let success = exchange.finish(&client_final).unwrap();
            assert_eq!(success.username, user);
            assert_eq!(success.server_final, expected_server_final);
        }
    }

    #[test]
    fn a_wrong_password_fails() {
        let verifiers = verifiers(&[("alice", "wonderland")]);
        let client = ScramClient::new("alice", b"wonderlamd").unwrap();
        let (exchange, server_first) = verifiers.start(&client.client_first()).unwrap();
        let (client_final, _) = client.client_final(&server_first).unwrap();
        assert_eq!(exchange.finish(&client_final), Err(ScramError::Failed));
    }

    #[test]
    fn an_unknown_user_gets_a_steady_plausible_exchange_then_fails() {
        let verifiers = verifiers(&[("alice", "wonderland")]);
        let salt_of = |user: &str| {
            let client = ScramClient::new(user, b"guess").unwrap();
            let (exchange, server_first) = verifiers.start(&client.client_first()).unwrap();
            let text = String::from_utf8(server_first.clone()).unwrap();
            let (client_final, _) = client.client_final(&server_first).unwrap();
            assert_eq!(exchange.finish(&client_final), Err(ScramError::Failed));
            let fields: Vec<&str> = text.split(',').collect();
            assert_eq!(fields.len(), 3, "{text}");
            assert_eq!(fields[2], "i=4096");
            fields[1].to_owned()
        };
        let mallory = salt_of("mallory");
        assert_eq!(STANDARD.decode(&mallory[2..]).unwrap().len(), SALT_LEN);
        assert_eq!(mallory, salt_of("mallory"));
        assert_ne!(mallory, salt_of("trudy"));
        // A real user's salt is as long.
        let alice = salt_of("alice");
        assert_eq!(alice.len(), mallory.len());
    }

    #[test]
    fn the_gs2_header_is_checked() {
        let verifiers = verifiers(&[("alice", "pw")]);
        let start = |message: &str| verifiers.start(message.as_bytes()).map(|_| ());
        assert_eq!(
            start("p=tls-unique,,n=alice,r=abc"),
            Err(ScramError::Malformed("channel binding is not supported"))
        );
        assert_eq!(
            start("n,,m=ext,n=alice,r=abc"),
            Err(ScramError::Malformed(
                "mandatory extensions are not supported"
            ))
        );
        assert_eq!(start("n,a=bob,n=alice,r=abc"), Err(ScramError::Failed));
        assert!(start("n,a=alice,n=alice,r=abc").is_ok());
        assert!(start("n,,n=alice,r=abc,x=extension").is_ok());

        // `y`: the client-final message repeats `y,,` in `c=`.
        let mut client = ScramClient::new("alice", b"pw").unwrap();
        client.gs2 = "y,,".to_owned();
        let (exchange, server_first) = verifiers.start(&client.client_first()).unwrap();
        let (client_final, _) = client.client_final(&server_first).unwrap();
        assert!(client_final.starts_with(b"c=eSws,"));
        assert!(exchange.finish(&client_final).is_ok());
    }

    #[test]
    fn the_client_final_message_must_match_the_exchange() {
        let verifiers = verifiers(&[("alice", "pw")]);
        let client = ScramClient::new("alice", b"pw").unwrap();
        let attempt = |edit: &dyn Fn(&str) -> String| {
            let (exchange, server_first) = verifiers.start(&client.client_first()).unwrap();
            let (client_final, _) = client.client_final(&server_first).unwrap();
            exchange.finish(edit(std::str::from_utf8(&client_final).unwrap()).as_bytes())
        };
        assert!(attempt(&|m| m.to_owned()).is_ok());
        // Another exchange's nonce (a replay) fails.
        let replay = |m: &str| m.replacen(&client.nonce, &format!("{}x", client.nonce), 1);
        assert_eq!(attempt(&replay), Err(ScramError::Failed));
        let no_binding = |m: &str| m.replacen("c=biws", "c=eSws", 1);
        assert!(matches!(
            attempt(&no_binding),
            Err(ScramError::Malformed(_))
        ));
        let short_proof = |m: &str| format!("{},p=AAAA", m.rsplit_once(",p=").unwrap().0);
        assert!(matches!(
            attempt(&short_proof),
            Err(ScramError::Malformed(_))
        ));
        let no_proof = |m: &str| m.rsplit_once(",p=").unwrap().0.to_owned();
        assert!(matches!(attempt(&no_proof), Err(ScramError::Malformed(_))));
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let verifiers = verifiers(&[("alice", "pw")]);
        let client = ScramClient::new("alice", b"pw").unwrap();
        let first = client.client_first();
        let (_, server_first) = verifiers.start(&first).unwrap();
        let (last, _) = client.client_final(&server_first).unwrap();
        let mut inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\xff\xfe".to_vec(),
            b"n".to_vec(),
            b"n,".to_vec(),
            b"n,,".to_vec(),
            b"n,,n=".to_vec(),
            b"n,,n=a".to_vec(),
            b"n,,n=a,r=".to_vec(),
            b"n,,n=a=,r=x".to_vec(),
            b"n,,n=a=2".to_vec(),
            b"n,,n=a=2X,r=x".to_vec(),
            b"n,,n=a,r=x\x01".to_vec(),
            b"x,,n=a,r=x".to_vec(),
            b"n,b,n=a,r=x".to_vec(),
            b",,,,,,".to_vec(),
            b"c=,r=,p=".to_vec(),
            "n,,n=\u{e9}=,r=\u{e9}".into(),
        ];
        // Every prefix of real messages, and each with one byte changed.
        for message in [&first, &last] {
            for end in 0..message.len() {
                inputs.push(message[..end].to_vec());
                let mut flipped = message.clone();
                flipped[end] ^= 0x80;
                inputs.push(flipped);
            }
        }
        for input in &inputs {
            let _ = verifiers.start(input);
            let (exchange, _) = verifiers.start(&first).unwrap();
            assert!(exchange.finish(input).is_err() || input == &last);
        }
    }

    #[test]
    fn verifier_files_are_read_with_line_numbers_and_no_keys_shown() {
        let good = verifier(b"pw").unwrap();
        assert!(good.starts_with("SCRAM-SHA-256$4096:"), "{good}");
        let parsed = ScramVerifiers::parse(&format!("# c\n\nu : {good}\n")).unwrap();
        assert!(parsed.contains("u") && parsed.len() == 1);
        assert!(!format!("{parsed:?}").contains('$'));
        let (_, salt_and_keys) = good.split_once(':').unwrap();
        let cases = [
            (format!("u:{good}\nu:{good}\n"), 2, "already"),
            ("u:SCRAM-SHA-1$4096:AAAA$AAAA:AAAA\n".into(), 1, "expected"),
            (
                format!("u:SCRAM-SHA-256$0:{salt_and_keys}\n"),
                1,
                "iteration",
            ),
            (
                "u:SCRAM-SHA-256$4096:AAAA$c2VjcmV0:AAAA\n".into(),
                1,
                "StoredKey",
            ),
            ("u:SCRAM-SHA-256$4096:!!$AAAA:AAAA\n".into(), 1, "salt"),
            ("u:SCRAM-SHA-256$4096\n".into(), 1, "expected"),
        ];
        for (text, line, problem) in cases {
            let error = ScramVerifiers::parse(&text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.problem.contains(problem), "{text:?}: {error}");
            assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
        }
    }

    #[test]
    fn unknown_users_get_the_files_usual_iteration_count() {
        let salt = [7u8; 16];
        let line = |user: &str, iterations| {
            let verifier = Verifier::from_password(b"pw", &salt, iterations).encode();
            format!("{user}:{verifier}\n")
        };
        let text = [line("a", 8192), line("b", 8192), line("c", 4096)].concat();
        let verifiers = ScramVerifiers::parse(&text).unwrap();
        let (_, server_first) = verifiers.start(b"n,,n=zed,r=abc").unwrap();
        assert!(server_first.ends_with(b",i=8192"));
    }
}
