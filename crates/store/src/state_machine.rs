//! Openraft's `RaftStateMachine` over the state column families.
//!
//! Each log entry is applied as one atomic RocksDB write that also records the
//! applied log id, so a restart resumes exactly after the last applied entry.
//! A snapshot is every state record read from one RocksDB snapshot (a
//! consistent point in time) in a simple tagged stream; installing one
//! replaces the state in one write.

use std::fmt::Debug;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StoredMembership};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::broadcast;

use crate::db::{Db, Reader, Txn};
use crate::keys::cf;
use crate::machine::{Event, apply_batch};
use crate::proto::CommandResult;
use crate::{NodeId, StoreError, TypeConfig};

const APPLIED: &[u8] = b"applied";
const MEMBERSHIP: &[u8] = b"membership";

const SNAPSHOT_MAGIC: &[u8; 8] = b"RKSNAP01";
const SNAPSHOT_END: u8 = 0xFF;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// What one applied log entry changed, for watchers.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The entry's log index (the snapshot's last index on a reset).
    pub log_index: u64,
    /// What the entry's commands changed, in order.
    pub events: Vec<Event>,
    /// The state was replaced by a snapshot: watchers must start over.
    pub reset: bool,
}

/// Openraft's state machine over the store's database: applies entries,
/// builds and installs snapshots, and tells watchers what changed.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    snapshot_dir: PathBuf,
    applied: broadcast::Sender<Arc<Applied>>,
    snapshots_built: Arc<AtomicU64>,
    snapshots_installed: Arc<AtomicU64>,
    /// `rookery_store_raft_applied_index`, set as entries are applied.
    applied_index: metrics::Gauge,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("snapshot_dir", &self.snapshot_dir)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine in `db`, keeping snapshots in `snapshot_dir` and
    /// publishing each applied entry's changes on `applied`.
    pub fn new(
        db: Arc<Db>,
        snapshot_dir: PathBuf,
        applied: broadcast::Sender<Arc<Applied>>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(StateMachine {
            db,
            snapshot_dir,
            applied,
            snapshots_built: Arc::new(AtomicU64::new(0)),
            snapshots_installed: Arc::new(AtomicU64::new(0)),
            applied_index: metrics::gauge!("rookery_store_raft_applied_index"),
        })
    }

    /// How many snapshots from a leader this node has installed.
    pub fn snapshots_installed(&self) -> Arc<AtomicU64> {
        self.snapshots_installed.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.db
            .get(cf::SM_META, key)?
            .map(|bytes| postcard::from_bytes(&bytes).map_err(StoreError::from))
            .transpose()
    }

    fn publish(&self, applied: Applied) {
        // No receivers is normal: nobody is watching.
        let _ = self.applied.send(Arc::new(applied));
    }
}

/// The applied log id and membership as the state machine recorded them.
pub fn applied_state(db: &Db) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
    let applied: Option<LogId<NodeId>> = db
        .get(cf::SM_META, APPLIED)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()?
        .flatten();
    let membership = db
        .get(cf::SM_META, MEMBERSHIP)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

/// Replaces the membership the state machine recorded (a restore that
/// starts a new group from a backup's state).
pub(crate) fn set_membership(db: &Db, membership: &Membership) -> Result<(), StoreError> {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.raw().put_cf_opt(
        db.cf(cf::SM_META)?,
        MEMBERSHIP,
        postcard::to_allocvec(membership)?,
        &options,
    )?;
    Ok(())
}

/// The applied log id as the state machine recorded it.
pub fn applied_index(db: &Db) -> Result<u64, StoreError> {
    let applied: Option<LogId<NodeId>> = db
        .get(cf::SM_META, APPLIED)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()?
        .flatten();
    Ok(applied.map_or(0, |log_id| log_id.index))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let applied = self
            .read_meta::<Option<LogId<NodeId>>>(APPLIED)
            .map_err(StoreError::read_state_machine)?
            .flatten();
        self.applied_index
            .set(applied.map_or(0, |id| id.index) as f64);
        let membership = self
            .read_meta(MEMBERSHIP)
            .map_err(StoreError::read_state_machine)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<CommandResult>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let mut txn = Txn::new(&self.db);
            let mut events = Vec::new();
            let results = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    apply_batch(&mut txn, entry.log_id.index, batch, &mut events)
                        .map_err(StoreError::write_state_machine)?
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                    let bytes = postcard::to_allocvec(&stored)
                        .map_err(|e| StoreError::from(e).write_state_machine())?;
                    txn.put(cf::SM_META, MEMBERSHIP.to_vec(), bytes);
                    Vec::new()
                }
            };
            let applied = postcard::to_allocvec(&Some(entry.log_id))
                .map_err(|e| StoreError::from(e).write_state_machine())?;
            txn.put(cf::SM_META, APPLIED.to_vec(), applied);
            let batch = txn.into_batch().map_err(StoreError::write_state_machine)?;
            // Not synced: the entry is durable in the log, and the shared
            // write-ahead log recovers a prefix, so a crash only means
            // applying it again from the log.
            self.db
                .raw()
                .write(batch)
                .map_err(|e| StoreError::from(e).write_state_machine())?;
            self.applied_index.set(entry.log_id.index as f64);
            if !events.is_empty() {
                self.publish(Applied {
                    log_index: entry.log_id.index,
                    events,
                    reset: false,
                });
            }
            responses.push(results);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let db = self.db.clone();
        let meta_for_write = meta.clone();
        let install_data = data.clone();
        tokio::task::spawn_blocking(move || install(&db, &meta_for_write, &install_data))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)).write_state_machine())?
            .map_err(StoreError::write_state_machine)?;
        save_snapshot(&self.snapshot_dir, meta, &data).map_err(StoreError::write)?;
        let log_index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        tracing::info!(log_index, bytes = data.len(), "installed a snapshot");
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rookery_store_snapshots_installed_total").increment(1);
        self.applied_index.set(log_index as f64);
        self.publish(Applied {
            log_index,
            events: Vec::new(),
            reset: true,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        load_snapshot(&self.snapshot_dir).map_err(StoreError::read)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        let (last_log_id, last_membership, data) = tokio::task::spawn_blocking(move || build(&db))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)).read_state_machine())?
            .map_err(StoreError::read_state_machine)?;
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(log_id) => format!("{}-{}-{built}", log_id.leader_id, log_id.index),
            None => format!("empty-{built}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        save_snapshot(&self.snapshot_dir, &meta, &data).map_err(StoreError::write)?;
        tracing::info!(
            log_index = last_log_id.map_or(0, |log_id| log_id.index),
            bytes = data.len(),
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Reads every state record at one point in time into the snapshot format:
/// magic, then `tag u8, key length u32, key, value length u32, value` per
/// record, then the end tag. The applied log id and membership come from the
/// same point in time.
#[allow(clippy::type_complexity)]
pub(crate) fn build(db: &Db) -> Result<(Option<LogId<NodeId>>, Membership, Vec<u8>), StoreError> {
    let snapshot = db.raw().snapshot();
    let read_meta = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(snapshot.get_cf(db.cf(cf::SM_META)?, key)?)
    };
    let applied: Option<LogId<NodeId>> = read_meta(APPLIED)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()?
        .flatten();
    let membership: Membership = read_meta(MEMBERSHIP)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()?
        .unwrap_or_default();
    let mut data = SNAPSHOT_MAGIC.to_vec();
    for (tag, family) in cf::STATE.iter().enumerate() {
        if *family == cf::SM_META {
            continue;
        }
        for item in snapshot.iterator_cf(db.cf(family)?, IteratorMode::Start) {
            let (key, value) = item?;
            data.push(tag as u8);
            push_chunk(&mut data, &key)?;
            push_chunk(&mut data, &value)?;
        }
    }
    data.push(SNAPSHOT_END);
    Ok((applied, membership, data))
}

fn push_chunk(data: &mut Vec<u8>, chunk: &[u8]) -> Result<(), StoreError> {
    let len =
        u32::try_from(chunk.len()).map_err(|_| StoreError::CorruptSnapshot("record over 4 GiB"))?;
    data.extend_from_slice(&len.to_le_bytes());
    data.extend_from_slice(chunk);
    Ok(())
}

/// The records of a snapshot, checked whole before anything is replaced.
/// One state record of a snapshot: column family, key, value.
type SnapshotRecord<'a> = (&'static str, &'a [u8], &'a [u8]);

fn parse(data: &[u8]) -> Result<Vec<SnapshotRecord<'_>>, StoreError> {
    let body = data
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or(StoreError::CorruptSnapshot("bad magic"))?;
    let mut records = Vec::new();
    let mut rest = body;
    loop {
        let (&tag, after_tag) = rest
            .split_first()
            .ok_or(StoreError::CorruptSnapshot("truncated"))?;
        if tag == SNAPSHOT_END {
            if !after_tag.is_empty() {
                return Err(StoreError::CorruptSnapshot("data after the end"));
            }
            return Ok(records);
        }
        let family = cf::STATE
            .get(usize::from(tag))
            .copied()
            .filter(|family| *family != cf::SM_META)
            .ok_or(StoreError::CorruptSnapshot("unknown column family"))?;
        let (key, after_key) = take_chunk(after_tag)?;
        let (value, after_value) = take_chunk(after_key)?;
        records.push((family, key, value));
        rest = after_value;
    }
}

fn take_chunk(data: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let (len, rest) = data
        .split_first_chunk::<4>()
        .ok_or(StoreError::CorruptSnapshot("truncated"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(StoreError::CorruptSnapshot("truncated"));
    }
    Ok(rest.split_at(len))
}

/// Replaces the whole state with a snapshot's, in one synced write.
pub(crate) fn install(db: &Db, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let records = parse(data)?;
    let mut batch = WriteBatch::default();
    for family in cf::STATE {
        let handle = db.cf(family)?;
        // Range-delete the bulk; keys at or past the range end (possible only
        // for keys starting with eight 0xFF bytes) one by one.
        let end = [0xFF_u8; 8];
        batch.delete_range_cf(handle, b"".as_slice(), end.as_slice());
        for item in db.raw().iterator_cf(
            handle,
            IteratorMode::From(&end, rocksdb::Direction::Forward),
        ) {
            let (key, _) = item?;
            batch.delete_cf(handle, key);
        }
    }
    for (family, key, value) in records {
        batch.put_cf(db.cf(family)?, key, value);
    }
    let meta_family = db.cf(cf::SM_META)?;
    batch.put_cf(
        meta_family,
        APPLIED,
        postcard::to_allocvec(&meta.last_log_id)?,
    );
    batch.put_cf(
        meta_family,
        MEMBERSHIP,
        postcard::to_allocvec(&meta.last_membership)?,
    );
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.raw().write_opt(batch, &options)?;
    Ok(())
}

/// The size of the snapshot kept on disk; 0 when there is none.
pub(crate) fn snapshot_size(dir: &Path) -> u64 {
    std::fs::metadata(snapshot_paths(dir).1).map_or(0, |metadata| metadata.len())
}

fn snapshot_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("current.meta"), dir.join("current.data"))
}

/// Keeps the latest snapshot on disk (written aside, then renamed into place)
/// so that a restarted node can still send it to a lagging follower.
fn save_snapshot(dir: &Path, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let (meta_path, data_path) = snapshot_paths(dir);
    let meta_tmp = dir.join("current.meta.tmp");
    let data_tmp = dir.join("current.data.tmp");
    std::fs::write(&data_tmp, data)?;
    std::fs::write(&meta_tmp, postcard::to_allocvec(meta)?)?;
    std::fs::rename(&data_tmp, &data_path)?;
    std::fs::rename(&meta_tmp, &meta_path)?;
    Ok(())
}

fn load_snapshot(dir: &Path) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let (meta_path, data_path) = snapshot_paths(dir);
    if !meta_path.exists() || !data_path.exists() {
        return Ok(None);
    }
    let meta: Meta = postcard::from_bytes(&std::fs::read(&meta_path)?)?;
    let data = std::fs::read(&data_path)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_parses_back_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut txn = Txn::new(&db);
        txn.put(cf::SESSIONS, b"k1".to_vec(), b"v1".to_vec());
        txn.put(cf::RETAINED, b"a/b".to_vec(), vec![0xFF; 3]);
        db.raw().write(txn.into_batch().unwrap()).unwrap();
        let (_, _, data) = build(&db).unwrap();
        let records = parse(&data).unwrap();
        assert_eq!(
            records,
            vec![
                (cf::SESSIONS, b"k1".as_slice(), b"v1".as_slice()),
                (cf::RETAINED, b"a/b".as_slice(), [0xFF; 3].as_slice()),
            ]
        );
        assert!(parse(&data[..data.len() - 3]).is_err());
        assert!(parse(&data[1..]).is_err());
    }
}
