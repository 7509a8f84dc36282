//! `rookery passwd`: adds, changes or deletes a user of a password file.
//!
//! It writes two files: FILE, `user:<argon2id PHC string>` lines that
//! Rookery (and not Mosquitto) reads, and FILE.scram beside it,
//! `user:SCRAM-SHA-256$...` verifiers for MQTT 5's enhanced
//! authentication. Every other line of either file (comments, Mosquitto's
//! `$6$` and `$7$` hashes) is kept byte for byte.
//!
//! Each file is replaced atomically: the new text goes to a temporary file
//! in the same directory, created with mode 0600 (so it is never readable
//! by other users, whatever the old file's mode), flushed to disk, given
//! the old file's owner when this process may, and renamed over the old
//! one. The two files are replaced one after the other, FILE first.

use std::fs::{self, File, Permissions};
use std::io::{self, BufRead, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rookery_auth::password::{UserLines, check_username, hash_password};
use rookery_auth::{scram, scram_path};
use zeroize::Zeroizing;

use crate::cli::PasswdArgs;

/// The longest password MQTT's CONNECT can carry.
const MAX_PASSWORD_LEN: usize = u16::MAX as usize;

/// Why `rookery passwd` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The username cannot be written to a password file.
    #[error("bad username: {0}")]
    Username(&'static str),
    /// The password was refused or could not be read.
    #[error("{0}")]
    Password(String),
    /// FILE does not exist and `--create` was not given.
    #[error("{0} does not exist (use -c to create it)")]
    Missing(PathBuf),
    /// `--delete` named a user the file does not hold.
    #[error("user {user:?} is not in {file}")]
    UnknownUser {
        /// The username.
        user: String,
        /// The password file.
        file: PathBuf,
    },
    /// The hash or verifier could not be made.
    #[error(transparent)]
    Hash(#[from] rookery_auth::password::HashError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PasswdError + '_ {
    move |source| PasswdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the command; what it did, for the terminal.
pub fn run(args: &PasswdArgs) -> Result<String, PasswdError> {
    check_username(&args.username).map_err(PasswdError::Username)?;
    let file = resolve(&args.file)?;
    // Beside the path the broker is configured with, which a link may hide.
    let scram_file = resolve(&scram_path(&args.file))?;
    if !args.create && !file.exists() {
        return Err(PasswdError::Missing(file));
    }
    let user = args.username.as_str();
    if args.delete {
        let mut lines = UserLines::new(&read(&file)?);
        if !lines.remove(user) {
            return Err(PasswdError::UnknownUser {
                user: user.to_owned(),
                file,
            });
        }
        replace(&file, &lines.text())?;
        if scram_file.exists() {
            let mut verifiers = UserLines::new(&read(&scram_file)?);
            if verifiers.remove(user) {
                replace(&scram_file, &verifiers.text())?;
            }
        }
        return Ok(format!(
            "deleted user {user:?} from {}",
            args.file.display()
        ));
    }

    let password = if args.password_stdin {
        password_from(&mut io::stdin().lock())?
    } else {
        password_from_terminal()?
    };
    // -c starts both files afresh, as mosquitto_passwd's -c does.
    let existing = |path: &Path| {
        if args.create || !path.exists() {
            Ok(String::new())
        } else {
            read(path)
        }
    };
    let mut lines = UserLines::new(&existing(&file)?);
    let mut verifiers = UserLines::new(&existing(&scram_file)?);
    let changed = lines.contains(user);
    lines.set(user, &hash_password(&password)?);
    verifiers.set(user, &scram::verifier(&password)?);
    replace(&file, &lines.text())?;
    replace(&scram_file, &verifiers.text())?;
    let done = if changed { "changed" } else { "added" };
    Ok(format!(
        "{done} user {user:?} in {} and {}",
        args.file.display(),
        scram_path(&args.file).display()
    ))
}

/// Where to write `path`: through a symbolic link to its target, so that a
/// linked file is updated rather than replaced by a plain one.
fn resolve(path: &Path) -> Result<PathBuf, PasswdError> {
    match fs::canonicalize(path) {
        Ok(target) => Ok(target),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(error) => Err(io_error(path)(error)),
    }
}

fn read(path: &Path) -> Result<String, PasswdError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// Replaces `path` with `text` atomically, mode 0600, keeping its owner
/// where this process may set it.
fn replace(path: &Path, text: &str) -> Result<(), PasswdError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    temp.write_all(text.as_bytes())
        .map_err(io_error(temp.path()))?;
    temp.as_file().sync_all().map_err(io_error(temp.path()))?;
    if let Ok(old) = fs::metadata(path) {
        // A root-run command on a file the broker's user owns must leave it
        // readable by that user. Without the right to, the file becomes
        // this user's, which the message says.
        let owner = (old.uid(), old.gid());
        let ours = fs::metadata(temp.path()).map_err(io_error(temp.path()))?;
        if owner != (ours.uid(), ours.gid())
            && std::os::unix::fs::fchown(temp.as_file(), Some(owner.0), Some(owner.1)).is_err()
        {
            eprintln!(
                "rookery: {} now belongs to uid {} (could not keep uid {})",
                path.display(),
                ours.uid(),
                owner.0
            );
        }
    }
    temp.persist(path)
        .map_err(|error| io_error(path)(error.error))?;
    // The rename is durable once the directory is.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))?;
    Ok(())
}

/// One line of `input`, without its line ending: `--password-stdin`.
fn password_from(input: &mut impl BufRead) -> Result<Zeroizing<Vec<u8>>, PasswdError> {
    let mut line = Zeroizing::new(Vec::new());
    // Bounded: a file piped in by mistake is refused, not read whole.
    let bound = (MAX_PASSWORD_LEN + 2) as u64;
    io::Read::take(input.by_ref(), bound)
        .read_until(b'\n', &mut line)
        .map_err(|error| PasswdError::Password(format!("cannot read the password: {error}")))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    check_password(line)
}

/// The password typed twice at the terminal, not echoed.
fn password_from_terminal() -> Result<Zeroizing<Vec<u8>>, PasswdError> {
    let prompt = |text: &str| {
        rpassword::prompt_password(text)
            .map(|password| Zeroizing::new(password.into_bytes()))
            .map_err(|error| {
                PasswdError::Password(format!(
                    "cannot read the password from the terminal ({error}); \
                     use --password-stdin"
                ))
            })
    };
    let first = prompt("Password: ")?;
    let second = prompt("Reenter password: ")?;
    if first != second {
        return Err(PasswdError::Password("the passwords do not match".into()));
    }
    check_password(first)
}

fn check_password(password: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, PasswdError> {
    if password.is_empty() {
        Err(PasswdError::Password("the password is empty".into()))
    } else if password.len() > MAX_PASSWORD_LEN {
        Err(PasswdError::Password(
            "the password is longer than MQTT's 65,535 bytes".into(),
        ))
    } else {
        Ok(password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stdin_password_is_one_line_without_its_ending() {
        let read = |input: &[u8]| password_from(&mut &input[..]).map(|p| p.to_vec());
        assert_eq!(read(b"secret\n").unwrap(), b"secret");
        assert_eq!(read(b"secret\r\nsecond line\n").unwrap(), b"secret");
        assert_eq!(read(b"no newline").unwrap(), b"no newline");
        assert_eq!(read(b" spaces kept \n").unwrap(), b" spaces kept ");
        assert!(read(b"\n").is_err());
        assert!(read(b"").is_err());
        assert!(read(&vec![b'x'; 65_536]).is_err());
    }

    #[test]
    fn a_replaced_file_is_0600_and_keeps_its_contents_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        replace(&path, "new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn delete(file: &Path, username: &str) -> Result<String, PasswdError> {
        run(&PasswdArgs {
            file: file.to_path_buf(),
            username: username.to_owned(),
            create: false,
            delete: true,
            password_stdin: false,
        })
    }

    #[test]
    fn a_linked_file_is_updated_through_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        fs::write(&real, "alice:x\nbob:y\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        delete(&link, "alice").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "bob:y\n");
        assert!(matches!(
            delete(&link, "alice"),
            Err(PasswdError::UnknownUser { .. })
        ));
    }

    #[test]
    fn a_replaced_file_keeps_its_owner_when_run_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "alice:x\n").unwrap();
        // Only root may give a file away: elsewhere there is nothing to keep.
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: not running as root");
            return;
        }
        replace(&path, "bob:y\n").unwrap();
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }
}
