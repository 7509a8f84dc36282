//! The Raft log in RocksDB, for openraft's `RaftLogStorage`.
//!
//! Every log write goes through one writer thread, in order. The thread drains
//! whatever has queued up while it was syncing and makes it durable with one
//! fsync: appends from many client writes share the cost of the disk flush.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::db::{Db, Reader};
use crate::keys::cf;
use crate::{NodeId, StoreError, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Writes waiting for the writer thread: at most this many share one fsync.
const MAX_WRITES_PER_SYNC: usize = 256;

enum Completion {
    Flushed(LogFlushed<TypeConfig>),
    Reply(oneshot::Sender<Result<(), std::io::Error>>),
}

struct LogWrite {
    batch: WriteBatch,
    completion: Completion,
}

/// Openraft's log storage over the store's database: entries, vote and
/// commit index, written in order by one thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    writer: Arc<LogWriter>,
    /// `rookery_store_raft_committed_index`.
    committed: metrics::Gauge,
    /// `rookery_store_raft_last_log_index`.
    last_log: metrics::Gauge,
    /// `rookery_store_raft_entry_bytes`.
    entry_bytes: metrics::Histogram,
}

/// The writer thread's queue and handle. Dropping the last `LogStore` clone
/// closes the queue and joins the thread, so the thread's database handle is
/// gone when the owner is: a database left closing on a detached thread while
/// the process exits aborts in RocksDB's static destructors.
struct LogWriter {
    queue: Option<mpsc::Sender<LogWrite>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LogWriter {
    fn send(&self, write: LogWrite) -> Result<(), StoreError> {
        self.queue
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(write)
            .map_err(|_| writer_gone())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The thread finishes the writes already queued, then sees the queue closed.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// The log in `db`, with its writer thread started.
    pub fn new(db: Arc<Db>) -> Result<Self, StoreError> {
        let (sender, queue) = mpsc::channel();
        let thread_db = db.clone();
        let thread = thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&thread_db, &queue))?;
        let writer = LogWriter {
            queue: Some(sender),
            thread: Some(thread),
        };
        let committed = metrics::gauge!("rookery_store_raft_committed_index");
        committed.set(0.0);
        Ok(LogStore {
            db,
            writer: Arc::new(writer),
            committed,
            last_log: metrics::gauge!("rookery_store_raft_last_log_index"),
            entry_bytes: metrics::histogram!("rookery_store_raft_entry_bytes"),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.db
            .get(cf::RAFT_META, key)?
            .map(|bytes| postcard::from_bytes(&bytes).map_err(StoreError::from))
            .transpose()
    }

    fn meta_batch<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(cf::RAFT_META)?,
            key,
            postcard::to_allocvec(value)?,
        );
        Ok(batch)
    }

    /// Queues a write for the writer thread and waits until it is on disk.
    async fn write_durably(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.writer.send(LogWrite {
            batch,
            completion: Completion::Reply(reply),
        })?;
        done.await.map_err(|_| writer_gone())??;
        Ok(())
    }
}

/// Empties the log of `db` and its commit and purge records and sets the
/// vote, in one synced write: a node restored from a backup starts a new
/// group from its state machine alone (openraft purges up to the applied
/// entry and builds a snapshot from the state when it starts).
pub(crate) fn start_over(db: &Db, vote: &Vote<NodeId>) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    let log = db.cf(cf::LOG)?;
    batch.delete_range_cf(log, index_key(0), index_key(u64::MAX));
    batch.delete_cf(log, index_key(u64::MAX));
    let meta = db.cf(cf::RAFT_META)?;
    batch.delete_cf(meta, COMMITTED);
    batch.delete_cf(meta, LAST_PURGED);
    batch.put_cf(meta, VOTE, postcard::to_allocvec(vote)?);
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.raw().write_opt(batch, &options)?;
    Ok(())
}

fn writer_gone() -> StoreError {
    StoreError::Io(std::io::Error::other(
        "the raft log writer thread has stopped",
    ))
}

fn write_loop(db: &Db, queue: &mpsc::Receiver<LogWrite>) {
    let writes_per_sync = metrics::histogram!("rookery_store_log_writes_per_sync");
    let sync_duration = metrics::histogram!("rookery_store_log_sync_duration_seconds");
    while let Ok(first) = queue.recv() {
        let started = std::time::Instant::now();
        let mut writes = vec![first];
        while writes.len() < MAX_WRITES_PER_SYNC {
            match queue.try_recv() {
                Ok(write) => writes.push(write),
                Err(_) => break,
            }
        }
        // Only the last write syncs: an fsync of the write-ahead log makes
        // every earlier write durable too.
        let last = writes.len() - 1;
        let mut outcome: Result<(), String> = Ok(());
        let mut completions = Vec::with_capacity(writes.len());
        for (position, write) in writes.into_iter().enumerate() {
            if outcome.is_ok() {
                let mut options = WriteOptions::default();
                options.set_sync(position == last);
                if let Err(error) = db.raw().write_opt(write.batch, &options) {
                    outcome = Err(error.to_string());
                }
            }
            completions.push(write.completion);
        }
        sync_duration.record(started.elapsed().as_secs_f64());
        writes_per_sync.record(completions.len() as f64);
        for completion in completions {
            let result = outcome.clone().map_err(std::io::Error::other);
            match completion {
                Completion::Flushed(callback) => callback.log_io_completed(result),
                Completion::Reply(reply) => {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let family = self.db.cf(cf::LOG).map_err(StoreError::read_logs)?;
        let iter = self.db.raw().iterator_cf(
            family,
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StoreError::from(e).read_logs())?;
            let index = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> =
                postcard::from_bytes(&value).map_err(|e| StoreError::from(e).read_logs())?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let family = self.db.cf(cf::LOG).map_err(StoreError::read_logs)?;
        let last = match self.db.raw().iterator_cf(family, IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(|e| StoreError::from(e).read_logs())?;
                let entry: Entry<TypeConfig> =
                    postcard::from_bytes(&value).map_err(|e| StoreError::from(e).read_logs())?;
                Some(entry.log_id)
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get_meta(LAST_PURGED).map_err(StoreError::read_logs)?;
        let last_log_id = last.or(last_purged_log_id);
        self.last_log
            .set(last_log_id.map_or(0, |id| id.index) as f64);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let batch = self.meta_batch(VOTE, vote).map_err(StoreError::write)?;
        self.write_durably(batch).await.map_err(StoreError::write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE).map_err(StoreError::read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own: losing it only makes a restarted node learn
        // the commit index again from the leader.
        let batch = self
            .meta_batch(COMMITTED, &committed)
            .map_err(StoreError::write)?;
        self.committed
            .set(committed.map_or(0, |id| id.index) as f64);
        self.db
            .raw()
            .write(batch)
            .map_err(|e| StoreError::from(e).write())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = self
            .get_meta::<Option<LogId<NodeId>>>(COMMITTED)
            .map_err(StoreError::read)?
            .flatten();
        self.committed
            .set(committed.map_or(0, |id| id.index) as f64);
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let family = self.db.cf(cf::LOG).map_err(StoreError::write_logs)?;
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id.index);
            let bytes =
                postcard::to_allocvec(&entry).map_err(|e| StoreError::from(e).write_logs())?;
            self.entry_bytes.record(bytes.len() as f64);
            batch.put_cf(family, index_key(entry.log_id.index), bytes);
        }
        if let Some(last) = last {
            self.last_log.set(last as f64);
        }
        // Returns at once; openraft learns of durability through the callback.
        self.writer
            .send(LogWrite {
                batch,
                completion: Completion::Flushed(callback),
            })
            .map_err(StoreError::write_logs)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let family = self.db.cf(cf::LOG).map_err(StoreError::write_logs)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(family, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(family, index_key(u64::MAX));
        self.write_durably(batch)
            .await
            .map_err(StoreError::write_logs)?;
        self.last_log.set(log_id.index.saturating_sub(1) as f64);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let family = self.db.cf(cf::LOG).map_err(StoreError::write_logs)?;
        let mut batch = self
            .meta_batch(LAST_PURGED, &log_id)
            .map_err(StoreError::write_logs)?;
        batch.delete_range_cf(
            family,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.write_durably(batch)
            .await
            .map_err(StoreError::write_logs)
    }
}
