//! Tokens made here: HS256 with a secret, RS256 and ES256 with the test keys
//! in `testdata/` (made once with openssl, see its README).

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::{hmac, signature};
use serde_json::json;

use super::*;
use crate::acl::{Access, Subject};

const SECRET: &[u8] = b"thirty-two bytes of shared secret";
/// The time tokens are checked at, unless a test reads the clock.
const NOW: f64 = 1_800_000_000.0;

const RS256_PRIVATE: &[u8] = include_bytes!("../../testdata/rs256-private.pem");
const RS256_PUBLIC: &[u8] = include_bytes!("../../testdata/rs256-public.pem");
const RS256_PUBLIC_PKCS1: &[u8] = include_bytes!("../../testdata/rs256-public-pkcs1.pem");
const RS256_OTHER_PRIVATE: &[u8] = include_bytes!("../../testdata/rs256-other-private.pem");
const RSA1024_PUBLIC: &[u8] = include_bytes!("../../testdata/rsa1024-public.pem");
const ES256_PRIVATE: &[u8] = include_bytes!("../../testdata/es256-private.pem");
const ES256_PUBLIC: &[u8] = include_bytes!("../../testdata/es256-public.pem");
const P384_PUBLIC: &[u8] = include_bytes!("../../testdata/p384-public.pem");

static HS256: LazyLock<JwtVerifier> = LazyLock::new(|| load_hs256(|_| {}));
static RS256: LazyLock<JwtVerifier> =
    LazyLock::new(|| load(JwtAlgorithm::Rs256, RS256_PUBLIC, |_| {}).unwrap());
static ES256: LazyLock<JwtVerifier> =
    LazyLock::new(|| load(JwtAlgorithm::Es256, ES256_PUBLIC, |_| {}).unwrap());

/// A verifier whose key or secret file holds `key_file`; `edit` changes
/// the rest of the configuration.
fn load(
    algorithm: JwtAlgorithm,
    key_file: &[u8],
    edit: impl FnOnce(&mut JwtConfig),
) -> Result<JwtVerifier, JwtLoadError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, key_file).unwrap();
    let mut config = JwtConfig {
        algorithm,
        ..JwtConfig::default()
    };
    if algorithm == JwtAlgorithm::Hs256 {
        config.secret_file = Some(path);
    } else {
        config.public_key_file = Some(path);
    }
    edit(&mut config);
    JwtVerifier::load(&config)
}

fn load_hs256(edit: impl FnOnce(&mut JwtConfig)) -> JwtVerifier {
    load(JwtAlgorithm::Hs256, SECRET, edit).unwrap()
}

/// `{"sub": "alice", "exp": NOW + 600}` with `extra` merged in (a null
/// removes a claim).
fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "alice", "exp": NOW + 600.0});
    if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
        for (name, value) in extra {
            if value.is_null() {
                claims.remove(&name);
            } else {
                claims.insert(name, value);
            }
        }
    }
    claims
}

/// How a test token is signed.
#[derive(Clone, Copy)]
enum Signer<'a> {
    Hmac(hmac::Algorithm, &'a [u8]),
    /// RS256 with a PKCS#8 PEM private key.
    Rsa(&'a [u8]),
    /// ES256 with a PKCS#8 PEM private key.
    Ecdsa(&'a [u8]),
}

/// A token with any header, signed by `signer`.
fn token(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = SystemRandom::new();
    let signature = match signer {
        Signer::Hmac(algorithm, secret) => {
            let key = hmac::Key::new(algorithm, secret);
            hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
        }
        Signer::Rsa(pem) => {
            let key = signature::RsaKeyPair::from_pkcs8(&key::pem(pem).unwrap().1).unwrap();
            let mut signature = vec![0; key.public().modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
            signature
        }
        Signer::Ecdsa(pem) => {
            let key = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key::pem(pem).unwrap().1,
                &rng,
            )
            .unwrap();
            key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        }
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn sign(alg: &str, signer: Signer<'_>, claims: &Value) -> String {
    token(&json!({"alg": alg, "typ": "JWT"}), claims, signer)
}

fn hs(claims: &Value) -> String {
    sign("HS256", Signer::Hmac(hmac::HMAC_SHA256, SECRET), claims)
}

fn rs(claims: &Value) -> String {
    sign("RS256", Signer::Rsa(RS256_PRIVATE), claims)
}

fn es(claims: &Value) -> String {
    sign("ES256", Signer::Ecdsa(ES256_PRIVATE), claims)
}

/// A token put together by hand, with any header and signature.
fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn verify(verifier: &JwtVerifier, token: &str) -> Result<JwtIdentity, JwtError> {
    verifier.verify_at(token.as_bytes(), NOW)
}

fn is_invalid(result: Result<JwtIdentity, JwtError>) -> bool {
    matches!(result, Err(JwtError::Invalid(_)))
}

#[test]
fn an_hs256_token_gives_its_subject_as_the_username() {
    let identity = verify(&HS256, &hs(&claims(json!({})))).unwrap();
    assert_eq!(
        identity,
        JwtIdentity {
            username: "alice".into(),
            permissions: None,
            expires_at_s: NOW as u64 + 600,
        }
    );
}

#[test]
fn verify_checks_against_the_clock() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let fresh = hs(&claims(json!({"exp": now + 600.0})));
    assert_eq!(HS256.verify(fresh.as_bytes()).unwrap().username, "alice");
    let stale = hs(&claims(json!({"exp": now - 600.0})));
    assert_eq!(HS256.verify(stale.as_bytes()), Err(JwtError::Expired));
}

#[test]
fn the_username_comes_from_the_configured_claim() {
    let verifier = load_hs256(|config| config.username_claim = "username".into());
    let token = hs(&claims(json!({"username": "bob"})));
    assert_eq!(verify(&verifier, &token).unwrap().username, "bob");
    for (claim, why) in [
        (json!(null), "is missing"),
        (json!(42), "is not a string"),
        (json!(["bob"]), "is not a string"),
        (json!(""), "is empty"),
    ] {
        let token = hs(&claims(json!({ "username": claim })));
        assert_eq!(
            verify(&verifier, &token),
            Err(JwtError::Claim(format!("the `username` claim {why}"))),
            "{claim}"
        );
    }
}

#[test]
fn the_secret_file_is_read_without_its_trailing_newline() {
    for file in [
        &b"thirty-two bytes of shared secret\n"[..],
        b"thirty-two bytes of shared secret\r\n",
    ] {
        let verifier = load(JwtAlgorithm::Hs256, file, |_| {}).unwrap();
        assert!(verify(&verifier, &hs(&claims(json!({})))).is_ok());
    }
}

#[test]
fn rs256_tokens_verify_with_an_spki_or_a_pkcs1_public_key() {
    let token = rs(&claims(json!({})));
    assert_eq!(verify(&RS256, &token).unwrap().username, "alice");
    let pkcs1 = load(JwtAlgorithm::Rs256, RS256_PUBLIC_PKCS1, |_| {}).unwrap();
    assert_eq!(verify(&pkcs1, &token).unwrap().username, "alice");
}

#[test]
fn es256_tokens_verify_with_a_p256_public_key() {
    assert_eq!(
        verify(&ES256, &es(&claims(json!({})))).unwrap().username,
        "alice"
    );
}

#[test]
fn exp_is_required_and_the_token_is_valid_only_before_it() {
    // RFC 7519, 4.1.4: the current time must be before `exp`.
    let at = |exp: Value| verify(&HS256, &hs(&claims(json!({ "exp": exp }))));
    assert_eq!(at(json!(NOW)), Err(JwtError::Expired));
    assert_eq!(at(json!(NOW - 3600.0)), Err(JwtError::Expired));
    assert!(at(json!(NOW + 1.0)).is_ok());
    assert!(
        at(json!(NOW + 0.5)).is_ok(),
        "a NumericDate may have a fraction"
    );
    let missing = Err(JwtError::Claim("the `exp` claim is missing".into()));
    assert_eq!(at(json!(null)), missing);
    // A string is refused, not taken as absent (GHSA-h395-gr6q-cpjc).
    let mistyped = Err(JwtError::Claim("the `exp` claim is not a number".into()));
    assert_eq!(at(json!("1900000000")), mistyped);
    assert_eq!(at(json!([NOW + 600.0])), mistyped);
}

#[test]
fn the_leeway_allows_clock_skew_on_exp_and_nbf() {
    let verifier = load_hs256(|config| config.leeway_s = 60);
    let at = |extra: Value| verify(&verifier, &hs(&claims(extra)));
    assert!(at(json!({"exp": NOW - 30.0})).is_ok());
    assert_eq!(at(json!({"exp": NOW - 60.0})), Err(JwtError::Expired));
    assert!(at(json!({"nbf": NOW + 60.0})).is_ok());
    assert_eq!(at(json!({"nbf": NOW + 61.0})), Err(JwtError::NotYetValid));
}

#[test]
fn nbf_is_checked_when_present() {
    let at = |nbf: Value| verify(&HS256, &hs(&claims(json!({ "nbf": nbf }))));
    assert!(at(json!(NOW)).is_ok());
    assert!(at(json!(NOW - 600.0)).is_ok());
    assert_eq!(at(json!(NOW + 1.0)), Err(JwtError::NotYetValid));
    assert_eq!(
        at(json!("soon")),
        Err(JwtError::Claim("the `nbf` claim is not a number".into()))
    );
}

#[test]
fn a_wrong_signature_is_refused() {
    let all = claims(json!({}));
    let other_secret = Signer::Hmac(hmac::HMAC_SHA256, b"another secret entirely");
    assert!(is_invalid(verify(
        &HS256,
        &sign("HS256", other_secret, &all)
    )));
    let other_key = Signer::Rsa(RS256_OTHER_PRIVATE);
    assert!(is_invalid(verify(&RS256, &sign("RS256", other_key, &all))));

    // A valid signature over other claims: alice's signature on mallory.
    for (verifier, signed) in [
        (&*HS256, hs(&all)),
        (&*RS256, rs(&all)),
        (&*ES256, es(&all)),
    ] {
        let mallory = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "mallory"})).to_string());
        let parts: Vec<&str> = signed.split('.').collect();
        let spliced = format!("{}.{mallory}.{}", parts[0], parts[2]);
        assert_eq!(
            verify(verifier, &spliced),
            Err(JwtError::Invalid("the signature does not verify".into()))
        );
    }
}

#[test]
fn only_the_configured_algorithm_is_accepted() {
    let all = claims(json!({}));
    assert!(is_invalid(verify(&HS256, &rs(&all))));
    assert!(is_invalid(verify(&HS256, &es(&all))));
    assert!(is_invalid(verify(&RS256, &es(&all))));
    assert!(is_invalid(verify(&ES256, &rs(&all))));
    let hs512 = sign("HS512", Signer::Hmac(hmac::HMAC_SHA512, SECRET), &all);
    assert_eq!(
        verify(&HS256, &hs512),
        Err(JwtError::Invalid("not signed with HS256".into()))
    );
    // `alg` is case-sensitive (RFC 7515, 4.1.1).
    let lower = sign("hs256", Signer::Hmac(hmac::HMAC_SHA256, SECRET), &all);
    assert!(is_invalid(verify(&HS256, &lower)));
}

#[test]
fn an_hmac_keyed_with_the_public_key_is_refused() {
    // Key confusion: the public key is public, so an HMAC keyed with its
    // bytes must not pass where RS256 or ES256 is configured, whichever
    // `alg` the header names.
    let all = claims(json!({}));
    for (verifier, alg, public_key) in [
        (&*RS256, "RS256", RS256_PUBLIC),
        (&*ES256, "ES256", ES256_PUBLIC),
    ] {
        let confused = Signer::Hmac(hmac::HMAC_SHA256, public_key);
        assert!(is_invalid(verify(verifier, &sign("HS256", confused, &all))));
        assert!(is_invalid(verify(verifier, &sign(alg, confused, &all))));
    }
}

#[test]
fn alg_none_is_refused() {
    let all = claims(json!({}));
    for verifier in [&*HS256, &*RS256, &*ES256] {
        for alg in ["none", "None", "NONE"] {
            for signature in [&b""[..], b"x"] {
                let token = forged(&json!({"alg": alg, "typ": "JWT"}), &all, signature);
                assert!(is_invalid(verify(verifier, &token)), "{alg}");
            }
        }
        let no_alg = forged(&json!({"typ": "JWT"}), &all, b"");
        assert!(is_invalid(verify(verifier, &no_alg)));
    }
}

#[test]
fn malformed_tokens_are_refused_without_echoing_them() {
    let valid = hs(&claims(json!({})));
    for token in [
        "".to_string(),
        "..".to_string(),
        "secret-password".to_string(),
        "a.b.c".to_string(),
        format!("{valid}.extra"),
        valid.replacen('.', "!", 1),
        forged(&json!({"alg": "HS256"}), &json!("not an object"), b"x"),
        format!("{valid}="),
        format!(" {valid}"),
    ] {
        let error = verify(&HS256, &token).unwrap_err();
        assert!(matches!(error, JwtError::Invalid(_)), "{token}: {error}");
        assert!(
            token.len() < 4 || !error.to_string().contains(&token),
            "{error}"
        );
    }
}

#[test]
fn a_signed_token_asking_for_an_extension_is_refused() {
    // RFC 7515, 4.1.11: a `crit` extension the recipient does not
    // understand (all of them, here) refuses the token; RFC 7797's `b64`.
    let secret = Signer::Hmac(hmac::HMAC_SHA256, SECRET);
    for header in [
        json!({"alg": "HS256", "crit": ["exp"], "exp": NOW + 600.0}),
        json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
    ] {
        let signed = token(&header, &claims(json!({})), secret);
        assert_eq!(
            verify(&HS256, &signed),
            Err(JwtError::Invalid("the header asks for an extension".into()))
        );
    }
}

#[test]
fn a_claims_object_that_is_not_json_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    let token = format!("{header}.{}.x", URL_SAFE_NO_PAD.encode([0xff, 0xfe]));
    assert!(is_invalid(verify(&HS256, &token)));
}

fn subject<'a>() -> Subject<'a> {
    Subject {
        username: Some("alice"),
        client_id: "c1",
    }
}

/// The permissions a token with `acl` in its `acl` claim gives.
fn permissions(acl: Value) -> Result<Option<TopicPermissions>, JwtError> {
    static VERIFIER: LazyLock<JwtVerifier> =
        LazyLock::new(|| load_hs256(|config| config.acl_claim = Some("acl".into())));
    verify(&VERIFIER, &hs(&claims(json!({ "acl": acl })))).map(|identity| identity.permissions)
}

#[test]
fn acl_rules_in_emqx_5s_list_form_decide_in_order() {
    let permissions = permissions(json!([
        {"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
        {"permission": "deny", "action": "all", "topic": "t/3"},
        {"permission": "allow", "action": "sub", "topic": "eq t/1"},
        {"permission": "allow", "action": "pub", "topics": ["u/${username}/#", "v"]},
        {"permission": "allow", "action": "subscribe", "topic": "t/#",
         "qos": [2, 0, 1], "retain": "all"},
    ]))
    .unwrap()
    .unwrap();
    let allows = |topic: &str, access| permissions.allows(subject(), topic, access);
    assert!(allows("t/c1", Access::Write));
    assert!(!allows("t/c2", Access::Write));
    assert!(!allows("t/3", Access::Write));
    assert!(!allows("t/3", Access::Subscribe));
    assert!(!allows("t/3", Access::Read));
    assert!(allows("t/1", Access::Subscribe));
    assert!(allows("t/#", Access::Subscribe));
    assert!(allows("t/x", Access::Read));
    assert!(allows("u/alice/x", Access::Write));
    assert!(!allows("u/bob/x", Access::Write));
    assert!(allows("v", Access::Write));
    // What no rule matches is denied.
    assert!(!allows("w", Access::Write));
    assert!(!allows("w", Access::Subscribe));
}

#[test]
fn acl_topics_in_emqx_4s_object_form_are_allowed_and_nothing_else() {
    let permissions = permissions(json!({
        "pub": ["p/${username}"],
        "sub": ["s/#", "eq s2/x"],
        "all": ["a/${clientid}", "b/%c"],
    }))
    .unwrap()
    .unwrap();
    let allows = |topic: &str, access| permissions.allows(subject(), topic, access);
    assert!(allows("p/alice", Access::Write));
    assert!(!allows("p/alice", Access::Subscribe));
    assert!(allows("s/#", Access::Subscribe));
    assert!(allows("s/1", Access::Read));
    assert!(allows("s2/x", Access::Subscribe));
    assert!(!allows("s/1", Access::Write));
    assert!(allows("a/c1", Access::Write));
    assert!(allows("a/c1", Access::Subscribe));
    assert!(!allows("a/c2", Access::Write));
    // EMQX 5 reads `%c` as written (EMQX 4's placeholder).
    assert!(allows("b/%c", Access::Write));
    assert!(!allows("b/c1", Access::Write));

    let nothing = self::permissions(json!({})).unwrap().unwrap();
    assert!(!nothing.allows(subject(), "a", Access::Write));
    assert!(!nothing.allows(subject(), "#", Access::Subscribe));
}

#[test]
fn the_acl_claim_is_read_only_when_configured_and_present() {
    assert_eq!(permissions(json!(null)).unwrap(), None, "absent");
    let token = hs(&claims(json!({"acl": {"pub": ["a"]}})));
    assert_eq!(verify(&HS256, &token).unwrap().permissions, None);
}

#[test]
fn an_acl_claim_that_cannot_be_applied_exactly_refuses_the_token() {
    let rule = |extra: Value| {
        let mut rule = json!({"permission": "allow", "action": "publish", "topic": "a"});
        if let (Value::Object(rule), Value::Object(extra)) = (&mut rule, extra) {
            for (name, value) in extra {
                if value.is_null() {
                    rule.remove(&name);
                } else {
                    rule.insert(name, value);
                }
            }
        }
        json!([rule])
    };
    for acl in [
        json!("pub"),
        json!(42),
        json!(["a/b"]),
        rule(json!({"permission": "maybe"})),
        rule(json!({"permission": null})),
        rule(json!({"action": "read"})),
        rule(json!({"action": null})),
        rule(json!({"topic": null})),
        rule(json!({"topic": 5})),
        rule(json!({"topics": ["b"]})),
        rule(json!({"topic": null, "topics": "b"})),
        rule(json!({"topic": null, "topics": [7]})),
        rule(json!({"qos": [1]})),
        rule(json!({"qos": 1})),
        rule(json!({"qos": "0,1"})),
        rule(json!({"qos": [0, 1, 2, 3]})),
        rule(json!({"retain": true})),
        rule(json!({"retain": false})),
        rule(json!({"clientid_re": "^c"})),
        rule(json!({"ipaddr": "10.0.0.0/8"})),
        rule(json!({"topic": "eq a/#"})),
        rule(json!({"topic": "eq a/${clientid}"})),
        rule(json!({"topic": "a/${clientid}/%u"})),
        rule(json!({"topic": "a/${peerhost}"})),
        rule(json!({"topic": "a/#/b"})),
        rule(json!({"topic": ""})),
        json!({"publish": ["a"]}),
        json!({"pub": "a"}),
        json!({"pub": [1]}),
        json!({"pub": ["a/#/b"]}),
    ] {
        let result = permissions(acl.clone());
        assert!(matches!(result, Err(JwtError::Acl(_))), "{acl}: {result:?}");
    }
    // A null claim is present, and not a list or an object.
    let verifier = load_hs256(|config| config.acl_claim = Some("acl".into()));
    let token = hs(&json!({"sub": "alice", "exp": NOW + 600.0, "acl": null}));
    assert!(matches!(verify(&verifier, &token), Err(JwtError::Acl(_))));
}

#[test]
fn qos_and_retain_are_accepted_when_they_restrict_nothing() {
    for extra in [
        json!({"qos": [0, 1, 2]}),
        json!({"qos": ["2", "1", "0"]}),
        json!({"qos": "0,1,2"}),
        json!({"qos": null, "retain": null}),
        json!({"retain": "all"}),
    ] {
        let mut rule = json!({"permission": "allow", "action": "all", "topic": "a"});
        if let (Value::Object(rule), Value::Object(extra)) = (&mut rule, extra.clone()) {
            rule.extend(extra);
        }
        assert!(permissions(json!([rule])).is_ok(), "{extra}");
    }
}

#[test]
fn load_errors_name_the_file_and_never_print_the_secret() {
    let config = JwtConfig {
        secret_file: Some("/nonexistent/jwt-secret".into()),
        ..JwtConfig::default()
    };
    let error = JwtVerifier::load(&config).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/jwt-secret"),
        "{error}"
    );

    for (file, problem) in [
        (&b"\n"[..], "the secret is empty"),
        (RS256_PUBLIC, "holds a PEM key"),
    ] {
        let error = load(JwtAlgorithm::Hs256, file, |_| {}).unwrap_err();
        assert!(error.to_string().contains("/key: "), "{error}");
        assert!(error.to_string().contains(problem), "{error}");
    }
    let verifier = format!("{:?}", *HS256);
    assert!(!verifier.contains("thirty-two"), "{verifier}");
}

#[test]
fn a_public_key_of_the_wrong_kind_is_refused_at_load() {
    for (algorithm, file, problem) in [
        (
            JwtAlgorithm::Rs256,
            ES256_PUBLIC,
            "is not an RSA public key",
        ),
        (JwtAlgorithm::Rs256, RSA1024_PUBLIC, "has 1024 bits"),
        (JwtAlgorithm::Rs256, RS256_PRIVATE, "holds a private key"),
        (JwtAlgorithm::Rs256, b"hello", "is not a PEM file"),
        (JwtAlgorithm::Es256, RS256_PUBLIC, "is not an EC public key"),
        (
            JwtAlgorithm::Es256,
            P384_PUBLIC,
            "is not a P-256 public key",
        ),
        (
            JwtAlgorithm::Es256,
            RS256_PUBLIC_PKCS1,
            "holds a PEM RSA PUBLIC KEY",
        ),
        (JwtAlgorithm::Es256, ES256_PRIVATE, "holds a private key"),
    ] {
        let error = load(algorithm, file, |_| {}).unwrap_err().to_string();
        assert!(error.contains(problem), "{algorithm:?}: {error}");
        assert!(error.contains("/key: "), "{error}");
    }
}

#[test]
fn settings_that_do_not_fit_together_are_refused() {
    let both_files = |config: &mut JwtConfig| {
        config.secret_file = Some("/etc/secret".into());
        config.public_key_file = Some("/etc/key.pem".into());
    };
    assert!(matches!(
        load(JwtAlgorithm::Rs256, RS256_PUBLIC, both_files),
        Err(JwtLoadError::Config(_))
    ));
    assert!(matches!(
        load(JwtAlgorithm::Hs256, SECRET, both_files),
        Err(JwtLoadError::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::load(&JwtConfig::default()),
        Err(JwtLoadError::Config(_))
    ));
    assert!(matches!(
        load(JwtAlgorithm::Hs256, SECRET, |config| config
            .username_claim
            .clear()),
        Err(JwtLoadError::Config(_))
    ));
    assert!(matches!(
        load(JwtAlgorithm::Hs256, SECRET, |config| config.acl_claim =
            Some(String::new())),
        Err(JwtLoadError::Config(_))
    ));
}

/// JSON values shaped like ACL claims: the right field names and words
/// often, anything else sometimes.
fn acl_like() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "allow",
        "deny",
        "pub",
        "sub",
        "publish",
        "subscribe",
        "all",
        "a/#",
        "+/b",
        "#",
        "t/${clientid}",
        "${username}",
        "eq a",
        "eq a/#",
        "",
        "0,1,2",
        "%c/%u",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        words.prop_map(Value::from),
        "[a-z/#+$%{} ]{0,12}".prop_map(Value::from),
    ];
    let keys = prop::sample::select(vec![
        "permission",
        "action",
        "topic",
        "topics",
        "qos",
        "retain",
        "pub",
        "sub",
        "all",
        "x",
    ]);
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for verifier in [&*HS256, &*RS256, &*ES256] {
            prop_assert!(verifier.verify_at(&bytes, NOW).is_err());
        }
    }

    #[test]
    fn random_three_part_tokens_never_panic(
        header in "[A-Za-z0-9_=+/-]{0,80}",
        claims in "[A-Za-z0-9_=+/-]{0,80}",
        signature in "[A-Za-z0-9_=+/-]{0,400}",
    ) {
        let token = format!("{header}.{claims}.{signature}");
        for verifier in [&*HS256, &*RS256, &*ES256] {
            prop_assert!(verify(verifier, &token).is_err());
        }
    }

    #[test]
    fn any_json_header_never_panics(header in acl_like(), signature in any::<Vec<u8>>()) {
        let token = forged(&header, &claims(json!({})), &signature);
        prop_assert!(is_invalid(verify(&HS256, &token)));
    }

    #[test]
    fn any_acl_claim_is_applied_or_refused_without_panic(acl in acl_like()) {
        if let Ok(Some(permissions)) = permissions(acl) {
            for topic in ["a", "a/b", "t/c1", "#", "+/b", "$SYS/x"] {
                for access in [Access::Read, Access::Subscribe, Access::Write] {
                    let _ = permissions.allows(subject(), topic, access);
                }
            }
        }
    }
}
