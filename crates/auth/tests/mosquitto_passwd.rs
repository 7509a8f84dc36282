//! Password files written by the real `mosquitto_passwd` (Debian's, at
//! /usr/bin/mosquitto_passwd, or `MOSQUITTO_PASSWD`) are read unchanged:
//! both hash kinds it writes, right and wrong passwords. Skipped, with a
//! message, where it is not installed; the committed fixture is tested in
//! the unit tests either way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use rookery_auth::password::PasswordFile;

fn mosquitto_passwd() -> Option<PathBuf> {
    let path = std::env::var_os("MOSQUITTO_PASSWD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/mosquitto_passwd"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: {} is not installed", path.display());
        None
    }
}

#[test]
fn files_written_by_mosquitto_passwd_verify() {
    let Some(tool) = mosquitto_passwd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    // (hash option, user, password): `$7$` is the default, `$6$` is
    // `-H sha512`; passwords with `:`, `$`, spaces and non-ASCII.
    let users: [(&[&str], &str, &str); 4] = [
        (&[], "pbkdf2", "pass:with$odd chars"),
        (&["-H", "sha512-pbkdf2"], "pbkdf2-explicit", "ünïcode"),
        (&["-H", "sha512"], "sha512", "plain"),
        (&["-H", "sha512"], "sha512-b", "x"),
    ];
    for (index, (hash, user, password)) in users.iter().enumerate() {
        let mut command = Command::new(&tool);
        command.args(*hash);
        if index == 0 {
            command.arg("-c");
        }
        let status = command
            .arg("-b")
            .arg(&file)
            .args([user, password])
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_passwd for {user}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches(":$7$").count(), 2, "{text}");
    assert_eq!(text.matches(":$6$").count(), 2, "{text}");
    let parsed = PasswordFile::parse(&text).unwrap();
    for (_, user, password) in users {
        assert!(parsed.verify(user, password.as_bytes()), "{user}");
        assert!(!parsed.verify(user, b"wrong"), "{user}");
    }
    assert!(!parsed.verify("pbkdf2", b"plain"));
}
