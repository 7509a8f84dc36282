//! Backups of a store replica and restoring one into a new group.
//!
//! A backup is a RocksDB checkpoint of the node's database (the Raft log
//! and the state machine at one consistent point: they share one
//! write-ahead log) in `DIR/rocksdb`, and a manifest, `DIR/BACKUP`, written
//! last, that says what it holds. Checkpoint files are hard links where
//! `DIR` is on the database's file system, so a backup is quick and small
//! until the live database compacts away from it.
//!
//! A restore starts a new group from a backup's state machine: it copies
//! the checkpoint into a new data directory, empties the log, and records
//! the restored node as the one voter of a new membership. On its first
//! start openraft finds the log behind the applied state, purges up to it
//! and builds a snapshot from the state, which is what nodes that join the
//! new group receive. The old group's members, edges and leases are not
//! carried over: edges registered at the time of the backup lapse once the
//! new group ticks, and their clients' sessions go offline as when an edge
//! dies (wills, session expiry).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use openraft::{BasicNode, Membership, StoredMembership, Vote};

use crate::db::Db;
use crate::keys::cf;
use crate::machine::{Counter, read_counter};
use crate::state_machine::{applied_state, set_membership};
use crate::{NodeId, StoreError};

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "BACKUP";
/// The checkpoint's directory in a backup directory.
pub const CHECKPOINT: &str = "rocksdb";
const MAGIC: &str = "rookery-backup 1";

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup's directory exists already: a backup never overwrites.
    #[error("{} exists already; a backup goes to a new directory", .0.display())]
    Exists(PathBuf),
    /// A restore's data directory has files in it.
    #[error("{} is not empty; restore into a new data directory", .0.display())]
    NotEmpty(PathBuf),
    /// The directory is not a complete backup.
    #[error("{} is not a Rookery backup: {why}", .path.display())]
    NotABackup {
        /// The directory given.
        path: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// The replica had applied nothing yet: there is no state to keep.
    #[error("the store replica has applied no entry yet; nothing to back up")]
    Empty,
    /// A file operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rocksdb::Error> for BackupError {
    fn from(error: rocksdb::Error) -> Self {
        BackupError::Store(StoreError::Rocks(error))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a backup holds, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup's directory.
    pub dir: PathBuf,
    /// The node it was taken on.
    pub node_id: NodeId,
    /// The last log entry its state machine applied.
    pub applied_index: u64,
    /// That entry's term.
    pub applied_term: u64,
    /// The voters of the group it was taken from.
    pub voters: Vec<NodeId>,
    /// When it was taken, ms since the Unix epoch.
    pub created_at_ms: u64,
}

impl BackupInfo {
    fn manifest(&self) -> String {
        let mut text = String::new();
        let voters: Vec<String> = self.voters.iter().map(u64::to_string).collect();
        let _ = writeln!(text, "{MAGIC}");
        let _ = writeln!(text, "rookery_version = {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(text, "node_id = {}", self.node_id);
        let _ = writeln!(text, "applied_index = {}", self.applied_index);
        let _ = writeln!(text, "applied_term = {}", self.applied_term);
        let _ = writeln!(text, "voters = {}", voters.join(","));
        let _ = writeln!(text, "created_at_ms = {}", self.created_at_ms);
        text
    }

    fn parse(dir: &Path, text: &str) -> Result<BackupInfo, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("{MANIFEST} does not start with {MAGIC:?}"));
        }
        let fields: BTreeMap<&str, &str> =
            lines.filter_map(|line| line.split_once(" = ")).collect();
        let number = |key: &str| -> Result<u64, String> {
            fields
                .get(key)
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| format!("{MANIFEST} has no valid {key}"))
        };
        let voters = fields
            .get("voters")
            .map(|list| {
                list.split(',')
                    .filter(|id| !id.is_empty())
                    .filter_map(|id| id.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(BackupInfo {
            dir: dir.to_owned(),
            node_id: number("node_id")?,
            applied_index: number("applied_index")?,
            applied_term: number("applied_term")?,
            voters,
            created_at_ms: number("created_at_ms")?,
        })
    }
}

/// Writes a consistent checkpoint of `db` (node `node_id`'s database) to
/// the new directory `dir`, then its manifest. Blocking: run it off the
/// async runtime. A failed backup leaves no directory behind.
pub fn backup(
    db: &Db,
    node_id: NodeId,
    dir: &Path,
    now_ms: u64,
) -> Result<BackupInfo, BackupError> {
    if dir.exists() {
        return Err(BackupError::Exists(dir.to_owned()));
    }
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::create_dir(dir).map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(dir.to_owned()),
        _ => io(dir)(error),
    })?;
    let written = write_backup(db, node_id, dir, now_ms);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

fn write_backup(
    db: &Db,
    node_id: NodeId,
    dir: &Path,
    now_ms: u64,
) -> Result<BackupInfo, BackupError> {
    let checkpoint_dir = dir.join(CHECKPOINT);
    rocksdb::checkpoint::Checkpoint::new(db.raw())?.create_checkpoint(&checkpoint_dir)?;
    // What the checkpoint holds, read from the checkpoint itself.
    let (applied, membership) = {
        let copy = Db::open_read_only(&checkpoint_dir)?;
        applied_state(&copy)?
    };
    let applied = applied.ok_or(BackupError::Empty)?;
    let info = BackupInfo {
        dir: dir.to_owned(),
        node_id,
        applied_index: applied.index,
        applied_term: applied.leader_id.get_term(),
        voters: membership.membership().voter_ids().collect(),
        created_at_ms: now_ms,
    };
    let manifest = dir.join(MANIFEST);
    std::fs::write(&manifest, info.manifest()).map_err(io(&manifest))?;
    Ok(info)
}

/// Reads a backup's manifest, checking that the backup is complete.
pub fn read_backup(dir: &Path) -> Result<BackupInfo, BackupError> {
    let not_a_backup = |why: String| BackupError::NotABackup {
        path: dir.to_owned(),
        why,
    };
    let manifest = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest)
        .map_err(|error| not_a_backup(format!("{}: {error}", manifest.display())))?;
    let info = BackupInfo::parse(dir, &text).map_err(not_a_backup)?;
    if !dir.join(CHECKPOINT).is_dir() {
        return Err(not_a_backup(format!("{CHECKPOINT}/ is missing")));
    }
    Ok(info)
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup restored.
    pub backup: BackupInfo,
    /// The sessions and retained messages the new group starts with.
    pub sessions: u64,
    /// Topics with a retained message.
    pub retained: u64,
}

/// Restores the backup in `from` into the new data directory `data_dir`
/// (absent or empty) for node `node_id`, whose store address (as other
/// nodes reach it) is `address`: started there, the node is the single
/// voter of a new group holding the backup's sessions, subscriptions,
/// queues and retained messages, and other nodes can join it. Blocking.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    node_id: NodeId,
    address: &str,
) -> Result<Restored, BackupError> {
    let backup = read_backup(from)?;
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir).map_err(io(data_dir))?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(data_dir.to_owned()));
        }
    }
    let target = data_dir.join(CHECKPOINT);
    std::fs::create_dir_all(&target).map_err(io(&target))?;
    let restored = copy_and_rewrite(&backup, &target, node_id, address);
    if restored.is_err() {
        let _ = std::fs::remove_dir_all(&target);
    }
    restored
}

fn copy_and_rewrite(
    backup: &BackupInfo,
    target: &Path,
    node_id: NodeId,
    address: &str,
) -> Result<Restored, BackupError> {
    let source = backup.dir.join(CHECKPOINT);
    // Copied, not linked: the new node writes its database, and the
    // backup must stay as it was.
    for entry in std::fs::read_dir(&source).map_err(io(&source))? {
        let entry = entry.map_err(io(&source))?;
        let path = entry.path();
        if path.is_file() {
            let to = target.join(entry.file_name());
            std::fs::copy(&path, &to).map_err(io(&to))?;
        }
    }
    let db = Db::open(target)?;
    let (applied, _) = applied_state(&db)?;
    let applied = applied.ok_or(BackupError::Empty)?;
    // The vote is at the backup's term, so that the first election of the
    // new group is at a later one and its entries follow the restored
    // state's in log order.
    crate::log_store::start_over(&db, &Vote::new(applied.leader_id.get_term(), node_id))?;
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, BasicNode::new(address))]),
    );
    set_membership(&db, &StoredMembership::new(Some(applied), membership))?;
    let sessions = db
        .raw()
        .iterator_cf(db.cf(cf::SESSIONS)?, rocksdb::IteratorMode::Start)
        .count() as u64;
    let retained = read_counter(&*db, Counter::RetainedMessages)?;
    db.raw().flush()?;
    Ok(Restored {
        backup: backup.clone(),
        sessions,
        retained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back() {
        let info = BackupInfo {
            dir: PathBuf::from("/b"),
            node_id: 2,
            applied_index: 1234,
            applied_term: 3,
            voters: vec![1, 2, 3],
            created_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            BackupInfo::parse(Path::new("/b"), &info.manifest()),
            Ok(info)
        );
        assert!(BackupInfo::parse(Path::new("/b"), "something else\n").is_err());
        assert!(BackupInfo::parse(Path::new("/b"), &format!("{MAGIC}\nnode_id = 1\n")).is_err());
    }

    #[test]
    fn a_backup_never_overwrites_and_a_restore_needs_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        assert!(matches!(
            backup(&db, 1, &existing, 0),
            Err(BackupError::Exists(_))
        ));
        // A database that applied nothing has nothing to back up, and the
        // failed backup leaves no directory.
        let empty = dir.path().join("empty");
        assert!(matches!(backup(&db, 1, &empty, 0), Err(BackupError::Empty)));
        assert!(!empty.exists());
        assert!(matches!(
            restore(&existing, &dir.path().join("new"), 1, "127.0.0.1:7883"),
            Err(BackupError::NotABackup { .. })
        ));
    }
}
