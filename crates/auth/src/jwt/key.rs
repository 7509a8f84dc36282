//! The key a verifier checks signatures with: an HS256 secret, or an RS256
//! or ES256 public key read from PEM, checked when loaded so that a bad file
//! fails the load rather than every client.
//!
//! The public keys are taken apart here (PEM, then just enough DER for a
//! SubjectPublicKeyInfo or a PKCS#1 RSAPublicKey) because ring verifies
//! with the inner key bytes and has no parser for the wrappers.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{hmac, signature};

use super::JwtLoadError;
use crate::config::{JwtAlgorithm, JwtConfig};

/// RSA moduli ring accepts for RS256, in bits; RFC 7518 (3.3) requires
/// at least 2048.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// DER of the OID rsaEncryption, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// DER of the OID id-ecPublicKey, 1.2.840.10045.2.1.
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of the OID prime256v1 (P-256), 1.2.840.10045.3.1.7.
const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;

/// A loaded key, for one algorithm only.
pub(super) enum Key {
    /// HS256.
    Hmac(hmac::Key),
    /// RS256 (PKCS#1 RSAPublicKey) or ES256 (an uncompressed P-256 point).
    Public(signature::UnparsedPublicKey<Vec<u8>>),
}

// Written out so that the secret can never be printed.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::Hmac(_) => "Hmac(..)",
            Key::Public(_) => "Public(..)",
        })
    }
}

impl Key {
    /// Reads the key `config` names for its algorithm.
    pub(super) fn load(config: &JwtConfig) -> Result<Key, JwtLoadError> {
        match config.algorithm {
            JwtAlgorithm::Hs256 => load_secret(config),
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => load_public_key(config),
        }
    }

    /// Whether `signature` is this key's over `signed`. HMACs are compared
    /// in constant time.
    pub(super) fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            Key::Hmac(key) => hmac::verify(key, signed, signature).is_ok(),
            Key::Public(key) => key.verify(signed, signature).is_ok(),
        }
    }
}

/// The HS256 secret: the file's bytes without trailing line breaks.
fn load_secret(config: &JwtConfig) -> Result<Key, JwtLoadError> {
    let path = config
        .secret_file
        .as_deref()
        .ok_or_else(|| JwtLoadError::Config("algorithm = \"hs256\" needs secret_file".into()))?;
    if config.public_key_file.is_some() {
        return Err(JwtLoadError::Config(
            "public_key_file is for rs256 and es256; hs256 takes secret_file alone".into(),
        ));
    }
    let mut secret = read(path)?;
    while secret.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(key_error(path, "the secret is empty"));
    }
    // A public key here would let anyone who has it sign tokens.
    if secret.starts_with(b"-----BEGIN") {
        return Err(key_error(
            path,
            "holds a PEM key, not a shared secret; rs256 and es256 take public_key_file",
        ));
    }
    Ok(Key::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &secret)))
}

/// The RS256 or ES256 public key.
fn load_public_key(config: &JwtConfig) -> Result<Key, JwtLoadError> {
    let rsa = config.algorithm == JwtAlgorithm::Rs256;
    let name = if rsa { "rs256" } else { "es256" };
    let path = config.public_key_file.as_deref().ok_or_else(|| {
        JwtLoadError::Config(format!("algorithm = \"{name}\" needs public_key_file"))
    })?;
    if config.secret_file.is_some() {
        return Err(JwtLoadError::Config(format!(
            "secret_file is for hs256; {name} takes public_key_file alone"
        )));
    }
    let file = read(path)?;
    let (label, der) = pem(&file).map_err(|problem| key_error(path, problem))?;
    let key = match (label, rsa) {
        ("PUBLIC KEY", true) => spki(&der, RSA_ENCRYPTION)
            .ok_or_else(|| "is not an RSA public key".to_string())
            .and_then(rsa_key),
        ("RSA PUBLIC KEY", true) => rsa_key(&der),
        ("PUBLIC KEY", false) => p256_key(&der),
        (label, _) if label.contains("PRIVATE KEY") => {
            Err("holds a private key; give the public key (`openssl pkey -pubout`)".to_string())
        }
        (label, true) => Err(format!(
            "holds a PEM {label}, not a PUBLIC KEY or RSA PUBLIC KEY"
        )),
        (label, false) => Err(format!("holds a PEM {label}, not a PUBLIC KEY")),
    }
    .map_err(|problem| key_error(path, &problem))?;
    Ok(Key::Public(key))
}

/// An RS256 key from a PKCS#1 RSAPublicKey: `SEQUENCE { n INTEGER,
/// e INTEGER }`, with a modulus ring accepts.
fn rsa_key(pkcs1: &[u8]) -> Result<signature::UnparsedPublicKey<Vec<u8>>, String> {
    let not_rsa = || "is not an RSA public key".to_string();
    let (fields, rest) = tlv(pkcs1, SEQUENCE).ok_or_else(not_rsa)?;
    let (modulus, fields) = tlv(fields, INTEGER).ok_or_else(not_rsa)?;
    let (exponent, fields) = tlv(fields, INTEGER).ok_or_else(not_rsa)?;
    // A DER INTEGER with its top bit set is negative.
    if !rest.is_empty() || !fields.is_empty() || modulus.first().is_none_or(|b| b & 0x80 != 0) {
        return Err(not_rsa());
    }
    let bits = significant_bits(modulus);
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "the RSA key has {bits} bits; RS256 takes {} to {}",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    // ring takes public exponents from 3 to 2^33 - 1, odd.
    let exponent_bits = significant_bits(exponent);
    if !(2..=33).contains(&exponent_bits) || exponent.last().is_none_or(|b| b & 1 == 0) {
        return Err("the RSA key's public exponent is not one ring accepts".into());
    }
    Ok(signature::UnparsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        pkcs1.to_vec(),
    ))
}

/// An ES256 key from a SubjectPublicKeyInfo on P-256: an uncompressed
/// point, which is the form ring takes.
fn p256_key(der: &[u8]) -> Result<signature::UnparsedPublicKey<Vec<u8>>, String> {
    let point = spki(der, EC_PUBLIC_KEY).ok_or("is not an EC public key")?;
    if spki_parameters(der) != Some(PRIME256V1) {
        return Err("is not a P-256 public key".into());
    }
    if point.len() != 65 || point[0] != 0x04 {
        return Err("is not an uncompressed P-256 point".into());
    }
    Ok(signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        point.to_vec(),
    ))
}

/// The key bytes of a SubjectPublicKeyInfo whose algorithm is `algorithm`:
/// `SEQUENCE { SEQUENCE { OID, parameters }, BIT STRING }`.
fn spki<'a>(der: &'a [u8], algorithm: &[u8]) -> Option<&'a [u8]> {
    let (info, rest) = tlv(der, SEQUENCE)?;
    let (identifier, info) = tlv(info, SEQUENCE)?;
    let (oid, _parameters) = tlv(identifier, OID)?;
    let (bits, info) = tlv(info, BIT_STRING)?;
    if oid != algorithm || !rest.is_empty() || !info.is_empty() {
        return None;
    }
    // rsaEncryption's parameters are NULL; checked for exactness.
    if algorithm == RSA_ENCRYPTION && spki_parameters(der) != Some(&[][..]) {
        return None;
    }
    // The first byte counts unused bits: a key is whole bytes.
    match bits.split_first() {
        Some((0, key)) => Some(key),
        _ => None,
    }
}

/// The content of the algorithm's parameters in a SubjectPublicKeyInfo: an
/// OID's bytes, or nothing for NULL.
fn spki_parameters(der: &[u8]) -> Option<&[u8]> {
    let (info, _) = tlv(der, SEQUENCE)?;
    let (identifier, _) = tlv(info, SEQUENCE)?;
    let (_, parameters) = tlv(identifier, OID)?;
    let (tag, content, rest) = any_tlv(parameters)?;
    (rest.is_empty() && (tag == OID || (tag == NULL && content.is_empty()))).then_some(content)
}

/// One DER element with tag `tag`: its content and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = any_tlv(input)?;
    (found == tag).then_some((content, rest))
}

/// One DER element: its tag, content and what follows. Lengths take at
/// most three bytes (16 MiB), far more than any key here.
fn any_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, input) = input.split_first()?;
    let (length, input) = match first {
        0..=0x7f => (usize::from(first), input),
        0x81..=0x83 => {
            let count = usize::from(first & 0x7f);
            let bytes = input.get(..count)?;
            let length = bytes
                .iter()
                .fold(0usize, |length, &b| (length << 8) | usize::from(b));
            // DER: the shortest form, so no leading zero and no long form
            // for what fits the short one.
            if bytes[0] == 0 || length < 0x80 {
                return None;
            }
            (length, &input[count..])
        }
        _ => return None,
    };
    let content = input.get(..length)?;
    Some((tag, content, &input[length..]))
}

/// The number of bits of a big-endian unsigned integer.
fn significant_bits(number: &[u8]) -> usize {
    let Some(first) = number.iter().position(|&b| b != 0) else {
        return 0;
    };
    (number.len() - first - 1) * 8 + (8 - number[first].leading_zeros() as usize)
}

/// The label and the DER of a file's first PEM block.
pub(super) fn pem(file: &[u8]) -> Result<(&str, Vec<u8>), &'static str> {
    let text = std::str::from_utf8(file).map_err(|_| "is not a PEM file")?;
    let start = text.find("-----BEGIN ").ok_or("is not a PEM file")?;
    let after = &text[start + "-----BEGIN ".len()..];
    let label_end = after.find("-----").ok_or("is not a PEM file")?;
    let label = &after[..label_end];
    let body = &after[label_end + "-----".len()..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or("has a PEM block without its END line")?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| "has a PEM block that is not base64")?;
    Ok((label, der))
}

fn read(path: &Path) -> Result<Vec<u8>, JwtLoadError> {
    std::fs::read(path).map_err(|source| JwtLoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn key_error(path: &Path, problem: &str) -> JwtLoadError {
    JwtLoadError::Key(format!("{}: {problem}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_are_read_in_their_shortest_form_only() {
        assert_eq!(any_tlv(&[0x05, 0x00]), Some((0x05, &[][..], &[][..])));
        assert_eq!(
            any_tlv(&[0x04, 0x02, 1, 2, 3]),
            Some((0x04, &[1, 2][..], &[3][..]))
        );
        let long: Vec<u8> = [0x04, 0x81, 0x80].into_iter().chain([7; 0x80]).collect();
        assert_eq!(
            any_tlv(&long).map(|(_, content, _)| content.len()),
            Some(0x80)
        );
        assert_eq!(
            any_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]),
            None,
            "not shortest"
        );
        assert_eq!(any_tlv(&[0x04, 0x82, 0x00, 0x80]), None, "leading zero");
        assert_eq!(any_tlv(&[0x04, 0x80]), None, "indefinite");
        assert_eq!(any_tlv(&[0x04, 0x03, 1]), None, "short");
        assert_eq!(any_tlv(&[0x04]), None);
    }

    #[test]
    fn significant_bits_skip_leading_zeros() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0, 0x80, 0]), 16);
        assert_eq!(significant_bits(&[0x01, 0x00, 0x01]), 17);
    }
}
