//! JWTs through the policy, as the broker asks it at CONNECT: tokens signed
//! by OpenSSL (`openssl dgst`, an implementation independent of the one
//! that checks them) with the test keys in `testdata/`, and the permissions
//! a token carries deciding topics. The OpenSSL cases are skipped, with a
//! message, where `openssl` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rookery_auth::{
    Access, AuthConfig, AuthPolicy, Credentials, Denial, JwtAlgorithm, JwtConfig, Principal,
};
use serde_json::{Value, json};

const SECRET: &str = "thirty-two bytes of shared secret";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: openssl is not installed");
    }
    found.then_some("openssl")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A policy with `[broker.auth.jwt]` only; the secret or key file is
/// written into `dir` (HS256) or taken from `testdata/`.
fn policy(dir: &Path, algorithm: JwtAlgorithm, acl_claim: Option<&str>) -> AuthPolicy {
    let mut jwt = JwtConfig {
        algorithm,
        acl_claim: acl_claim.map(str::to_string),
        ..JwtConfig::default()
    };
    match algorithm {
        JwtAlgorithm::Hs256 => {
            let secret = dir.join("jwt-secret");
            std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
            jwt.secret_file = Some(secret);
        }
        JwtAlgorithm::Rs256 => jwt.public_key_file = Some(testdata("rs256-public.pem")),
        JwtAlgorithm::Es256 => jwt.public_key_file = Some(testdata("es256-public.pem")),
    }
    AuthPolicy::load(&AuthConfig {
        jwt: Some(jwt),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn connect(policy: &AuthPolicy, token: &str) -> Result<Principal, Denial> {
    policy.authenticate(&Credentials {
        username: Some("whoever"),
        password: Some(token.as_bytes()),
        client_id: "c1",
        certificate_identity: None,
        anonymous_allowed: false,
    })
}

/// `header.claims.signature`, the signature made by `openssl dgst` over
/// the signing input.
fn openssl_token(openssl: &str, alg: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("input");
    std::fs::write(&data, &input).unwrap();
    let mut command = Command::new(openssl);
    command.args(["dgst", "-sha256", "-binary"]);
    match alg {
        "HS256" => command.args(["-hmac", SECRET]),
        "RS256" => command.arg("-sign").arg(testdata("rs256-private.pem")),
        "ES256" => command.arg("-sign").arg(testdata("es256-private.pem")),
        _ => panic!("{alg}"),
    };
    let output = command.arg(&data).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let signature = if alg == "ES256" {
        fixed_ecdsa(&output.stdout)
    } else {
        output.stdout
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// OpenSSL's DER `SEQUENCE { r INTEGER, s INTEGER }` as JWS's fixed
/// 64 bytes, r then s (RFC 7518, 3.4).
fn fixed_ecdsa(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut rest = &der[2..];
    let mut fixed = Vec::new();
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02);
        let length = usize::from(rest[1]);
        let integer = &rest[2..2 + length];
        let integer = &integer[integer.len().saturating_sub(32)..];
        fixed.extend(std::iter::repeat_n(0, 32 - integer.len()));
        fixed.extend_from_slice(integer);
        rest = &rest[2 + length..];
    }
    fixed
}

#[test]
fn tokens_signed_by_openssl_authenticate_with_their_claimed_username() {
    let Some(openssl) = openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let claims = json!({"sub": "device-7", "exp": now() + 600});
    for (algorithm, alg) in [
        (JwtAlgorithm::Hs256, "HS256"),
        (JwtAlgorithm::Rs256, "RS256"),
        (JwtAlgorithm::Es256, "ES256"),
    ] {
        let policy = policy(dir.path(), algorithm, None);
        let token = openssl_token(openssl, alg, &claims);
        // The token's subject, not the CONNECT's User Name.
        assert_eq!(
            connect(&policy, &token),
            Ok(Principal::user("device-7", "c1")),
            "{alg}"
        );
        let expired = openssl_token(openssl, alg, &json!({"sub": "device-7", "exp": 1}));
        assert_eq!(connect(&policy, &expired), Err(Denial::BadCredentials));
        let other = if alg == "HS256" { "RS256" } else { "HS256" };
        let wrong_alg = openssl_token(openssl, other, &claims);
        assert_eq!(connect(&policy, &wrong_alg), Err(Denial::BadCredentials));
    }
}

#[test]
fn a_tokens_permissions_decide_its_topics() {
    let Some(openssl) = openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(dir.path(), JwtAlgorithm::Rs256, Some("acl"));
    let token = openssl_token(
        openssl,
        "RS256",
        &json!({"sub": "device-7", "exp": now() + 600, "acl": [
            {"permission": "allow", "action": "publish", "topic": "devices/${clientid}/#"},
            {"permission": "deny", "action": "all", "topic": "commands/+/admin"},
            {"permission": "allow", "action": "subscribe", "topic": "commands/${username}/#"},
        ]}),
    );
    let principal = connect(&policy, &token).unwrap();
    assert!(policy.restricts(&principal));
    assert!(policy.allows(&principal, "devices/c1/temperature", Access::Write));
    assert!(!policy.allows(&principal, "devices/c2/temperature", Access::Write));
    assert!(policy.allows(&principal, "commands/device-7/#", Access::Subscribe));
    assert!(policy.allows(&principal, "commands/device-7/reboot", Access::Read));
    assert!(!policy.allows(&principal, "commands/device-7/admin", Access::Read));
    assert!(!policy.allows(&principal, "#", Access::Subscribe));

    // A token whose permissions cannot be applied exactly is refused.
    let narrower = openssl_token(
        openssl,
        "RS256",
        &json!({"sub": "device-7", "exp": now() + 600, "acl": [
            {"permission": "allow", "action": "publish", "topic": "a", "qos": [1]},
        ]}),
    );
    assert_eq!(connect(&policy, &narrower), Err(Denial::BadCredentials));
}

#[test]
fn a_key_file_that_cannot_be_used_fails_the_load_and_names_the_file() {
    let key = testdata("rs256-private.pem");
    let error = AuthPolicy::load(&AuthConfig {
        jwt: Some(JwtConfig {
            algorithm: JwtAlgorithm::Rs256,
            public_key_file: Some(key.clone()),
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("[broker.auth.jwt]: "), "{error}");
    assert!(error.contains(&key.display().to_string()), "{error}");
    assert!(error.contains("private key"), "{error}");
}
