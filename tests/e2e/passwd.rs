//! `rookery passwd`: the real binary adding, changing and deleting users of
//! a password file that Debian's `mosquitto_passwd` wrote, the way an
//! operator would run it. What it writes is read back with the parser the
//! broker loads password files with.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rookery_auth::password::PasswordFile;
use rookery_auth::scram::ScramVerifiers;

use crate::harness::skip_unless_rookery;

/// Written by mosquitto_passwd 2.0.11 (`$7$` alice and bob, `$6$` carol and
/// dave); the passwords are in the auth crate's tests.
const MOSQUITTO: &str = include_str!("../../crates/auth/tests/fixtures/mosquitto_passwd");

/// How long one `rookery passwd` may take (argon2id in a debug build).
const LIMIT: Duration = Duration::from_secs(30);

/// The exit status and stderr of `rookery passwd ARGS`, `stdin` written to
/// its standard input; killed after [`LIMIT`].
fn passwd(args: &[&str], stdin: &[u8]) -> (bool, String) {
    run(
        Command::new(env!("CARGO_BIN_EXE_rookery"))
            .arg("passwd")
            .args(args),
        stdin,
    )
}

fn run(command: &mut Command, stdin: &[u8]) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rookery passwd");
    // Dropping stdin after writing it ends the input.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write stdin");
    let started = Instant::now();
    while child.try_wait().expect("wait for rookery passwd").is_none() {
        if started.elapsed() > LIMIT {
            child.kill().ok();
            panic!("rookery passwd {command:?} did not finish within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A directory holding a copy of the Mosquitto file, mode 0644 as
/// mosquitto_passwd leaves it.
fn mosquitto_file() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    fs::write(&file, MOSQUITTO).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let path = file.to_str().unwrap().to_owned();
    (dir, file, path)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn scram(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".scram");
    PathBuf::from(name)
}

fn passwords(file: &Path) -> PasswordFile {
    PasswordFile::parse(&fs::read_to_string(file).unwrap()).unwrap()
}

fn verifiers(file: &Path) -> ScramVerifiers {
    ScramVerifiers::parse(&fs::read_to_string(scram(file)).unwrap()).unwrap()
}

#[test]
fn passwd_adds_changes_and_deletes_a_user_keeping_mosquitto_lines() {
    if skip_unless_rookery("rookery passwd") {
        return;
    }
    let (_dir, file, path) = mosquitto_file();

    let (ok, out) = passwd(&["--password-stdin", &path, "erin"], b"first secret\n");
    assert!(ok, "{out}");
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(MOSQUITTO), "{text}");
    assert!(
        text[MOSQUITTO.len()..].starts_with("erin:$argon2id$"),
        "{text}"
    );
    let users = passwords(&file);
    assert!(users.verify("erin", b"first secret"));
    assert!(!users.verify("erin", b"first secret\n"));
    assert!(users.verify("alice", b"wonderland"));
    assert!(users.verify("carol", b"sechs"));
    assert!(verifiers(&file).contains("erin"));
    // Written mode 0600 although the file it replaced was 0644.
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&scram(&file)), 0o600);

    // Changing a Mosquitto user's password: its line, in place, becomes
    // argon2id; every other line is kept byte for byte.
    let (ok, out) = passwd(&["--password-stdin", &path, "bob"], b"new bob\r\n");
    assert!(ok, "{out}");
    let text = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let before: Vec<&str> = MOSQUITTO.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        (lines[0], lines[2], lines[3]),
        (before[0], before[2], before[3])
    );
    assert!(lines[1].starts_with("bob:$argon2id$"), "{text}");
    let users = passwords(&file);
    assert!(users.verify("bob", b"new bob"));
    assert!(!users.verify("bob", b"b0b:with$colon"));
    let scram_users = verifiers(&file);
    assert!(scram_users.contains("bob") && scram_users.contains("erin"));

    let (ok, out) = passwd(&["-D", &path, "erin"], b"");
    assert!(ok, "{out}");
    let users = passwords(&file);
    assert!(!users.contains("erin"));
    assert!(users.contains("alice") && users.contains("bob"));
    assert!(!verifiers(&file).contains("erin"));
    assert_eq!(mode(&file), 0o600);

    // Deleting a user the file does not hold fails and changes nothing.
    let unchanged = fs::read_to_string(&file).unwrap();
    let (ok, out) = passwd(&["--delete", &path, "erin"], b"");
    assert!(!ok, "{out}");
    assert!(out.contains("not in"), "{out}");
    assert_eq!(fs::read_to_string(&file).unwrap(), unchanged);
}

#[test]
fn passwd_needs_create_for_a_new_file_and_create_starts_afresh() {
    if skip_unless_rookery("rookery passwd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new");
    let path = file.to_str().unwrap();
    let (ok, out) = passwd(&["--password-stdin", path, "u"], b"pw\n");
    assert!(!ok && out.contains("-c"), "{out}");
    assert!(!file.exists());

    let (ok, out) = passwd(&["-c", "--password-stdin", path, "u"], b"pw\n");
    assert!(ok, "{out}");
    assert_eq!(mode(&file), 0o600);
    assert!(passwords(&file).verify("u", b"pw"));

    // -c over an existing file keeps only the new user, as
    // mosquitto_passwd -c does.
    let (_dir, mosquitto, path) = mosquitto_file();
    let (ok, out) = passwd(&["--create", "--password-stdin", &path, "v"], b"pw\n");
    assert!(ok, "{out}");
    let users = passwords(&mosquitto);
    assert_eq!(users.len(), 1);
    assert!(users.verify("v", b"pw"));
}

#[test]
fn passwd_refuses_bad_input_and_leaves_the_file_alone() {
    if skip_unless_rookery("rookery passwd") {
        return;
    }
    let (_dir, file, path) = mosquitto_file();
    let cases: [(&[&str], &[u8], &str); 4] = [
        (&["--password-stdin", &path, "eve"], b"\n", "empty"),
        (&["--password-stdin", &path, "a:b"], b"pw\n", "username"),
        (&["--password-stdin", &path, " eve"], b"pw\n", "username"),
        (&["-c", "-D", &path, "alice"], b"", "cannot be used with"),
    ];
    for (args, stdin, problem) in cases {
        let (ok, out) = passwd(args, stdin);
        assert!(!ok, "{args:?}: {out}");
        assert!(out.contains(problem), "{args:?}: {out}");
        assert!(!out.contains("$7$"), "a hash was shown: {out}");
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), MOSQUITTO);
    assert_eq!(mode(&file), 0o644);
    assert!(!scram(&file).exists());
}

/// Runs `rookery passwd FILE USER` at a terminal of its own (util-linux's
/// `script`), typing each answer once the prompt for it is shown; its exit
/// status and everything the terminal showed.
fn at_terminal(path: &str, user: &str, answers: &[&str]) -> (bool, String) {
    let line = format!("{} passwd {path} {user}", env!("CARGO_BIN_EXE_rookery"));
    let mut child = Command::new("/usr/bin/script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 256];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buffer) {
                shown.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        })
    };
    let text = |shown: &std::sync::Mutex<Vec<u8>>| {
        String::from_utf8_lossy(&shown.lock().unwrap()).into_owned()
    };
    let mut stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    for (asked, answer) in answers.iter().enumerate() {
        while text(&shown).matches("assword: ").count() <= asked {
            if started.elapsed() > LIMIT {
                child.kill().ok();
                panic!("no prompt {asked} within {LIMIT:?}: {}", text(&shown));
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The prompt is written just before echo is turned off.
        thread::sleep(Duration::from_millis(300));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > LIMIT {
            child.kill().ok();
            panic!("rookery passwd did not finish: {}", text(&shown));
        }
        thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let ok = child.wait().unwrap().success();
    reader.join().unwrap();
    (ok, text(&shown))
}

#[test]
fn passwd_asks_twice_at_the_terminal_without_echo() {
    if skip_unless_rookery("rookery passwd") {
        return;
    }
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: /usr/bin/script (util-linux) is not installed");
        return;
    }
    let (_dir, file, path) = mosquitto_file();
    let (ok, out) = at_terminal(&path, "tty-user", &["one", "two"]);
    assert!(!ok, "{out}");
    assert!(out.contains("do not match"), "{out}");
    assert!(!passwords(&file).contains("tty-user"));

    let (ok, out) = at_terminal(&path, "tty-user", &["typed secret", "typed secret"]);
    assert!(ok, "{out}");
    assert!(out.contains("Reenter password: "), "{out}");
    assert!(
        !out.contains("typed secret"),
        "the password was echoed: {out}"
    );
    assert!(passwords(&file).verify("tty-user", b"typed secret"));
}

#[test]
fn passwd_without_a_terminal_points_to_password_stdin() {
    if skip_unless_rookery("rookery passwd") {
        return;
    }
    // setsid: no controlling terminal, as under a service manager or CI.
    if !Path::new("/usr/bin/setsid").exists() {
        eprintln!("skipped: /usr/bin/setsid (util-linux) is not installed");
        return;
    }
    let (_dir, file, path) = mosquitto_file();
    let (ok, out) = run(
        Command::new("/usr/bin/setsid")
            .args(["--wait", env!("CARGO_BIN_EXE_rookery"), "passwd"])
            .args([&path, "nobody"]),
        b"",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("--password-stdin"), "{out}");
    assert_eq!(fs::read_to_string(&file).unwrap(), MOSQUITTO);
}
