//! The store's RocksDB database: the Raft log and the state machine in column
//! families of one database, so that one write-ahead log orders them and a
//! crash leaves a prefix of the writes (the state machine never runs ahead of
//! the log it was applied from).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch,
};

use crate::StoreError;
use crate::keys::{cf, prefix_end};

/// The store node's one RocksDB database, with every column family open.
#[derive(Debug)]
pub struct Db {
    inner: DB,
}

/// A key and value read from a column family.
pub type Record = (Vec<u8>, Vec<u8>);

impl Db {
    /// Opens (or creates) the database at `path` with every column family.
    pub fn open(path: &Path) -> Result<Arc<Db>, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // One background job per core of a small node; RocksDB's default of 2
        // already matches, set here so it is a decision, not an accident.
        options.set_max_background_jobs(2);
        let families = cf::STATE
            .iter()
            .chain([cf::LOG, cf::RAFT_META].iter())
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let inner = DB::open_cf_descriptors(&options, path, families)?;
        Ok(Arc::new(Db { inner }))
    }

    /// Opens the database at `path` to read only (a backup's checkpoint):
    /// nothing in the directory is changed.
    pub fn open_read_only(path: &Path) -> Result<Arc<Db>, StoreError> {
        let names = cf::STATE.iter().chain([cf::LOG, cf::RAFT_META].iter());
        let inner = DB::open_cf_for_read_only(&Options::default(), path, names, false)?;
        Ok(Arc::new(Db { inner }))
    }

    /// The RocksDB handle, for batches, snapshots and iterators.
    pub fn raw(&self) -> &DB {
        &self.inner
    }

    /// The handle of a column family (one of [`cf`]).
    pub fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.inner
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }
}

/// How the store reads, from the database or from a transaction over it (its
/// own writes first): the state machine's queries run the same inside and
/// outside of `apply`.
pub trait Reader {
    /// The value stored at `key` in `family`.
    fn get(&self, family: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records with `start <= key < end` (no end: to the last key), at most
    /// `limit` of them.
    fn scan_range(
        &self,
        family: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// The protobuf message stored at `key` in `family`, decoded.
    fn get_message<M: prost::Message + Default>(
        &self,
        family: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, StoreError> {
        self.get(family, key)?
            .map(|bytes| decode(family, &bytes))
            .transpose()
    }

    /// Every record whose key starts with `prefix`.
    fn scan_prefix(&self, family: &'static str, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.scan_range(family, prefix, prefix_end(prefix).as_deref(), usize::MAX)
    }
}

impl Reader for Db {
    fn get(&self, family: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.get_cf(self.cf(family)?, key)?)
    }

    fn scan_range(
        &self,
        family: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        // The bound stops RocksDB itself at `end`: without it, the iterator
        // steps over every deleted key past the range (acknowledged queue
        // entries of the next session, say) looking for a live one.
        let mut options = ReadOptions::default();
        if let Some(end) = end {
            options.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.inner.iterator_cf_opt(
            self.cf(family)?,
            options,
            IteratorMode::From(start, Direction::Forward),
        );
        let mut records = Vec::new();
        for item in iter {
            let (key, value) = item?;
            if end.is_some_and(|end| key.as_ref() >= end) || records.len() >= limit {
                break;
            }
            records.push((key.into_vec(), value.into_vec()));
        }
        Ok(records)
    }
}

/// Decodes a protobuf record read from `family`; a failure names the family.
pub fn decode<M: prost::Message + Default>(
    family: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::CorruptRecord { family, source })
}

/// A column family's name and a key in it.
type FamilyKey = (&'static str, Vec<u8>);

/// The writes of one log entry, applied to the database atomically by
/// [`Txn::into_batch`]. Reads see the transaction's own writes first, so a
/// command sees what earlier commands of the same entry did.
#[derive(Debug)]
pub struct Txn<'a> {
    db: &'a Db,
    writes: BTreeMap<FamilyKey, Option<Vec<u8>>>,
    /// Records read from the database, by key: one entry's commands read the
    /// same session many times (every enqueue, acknowledgement and record of
    /// a packet identifier checks it), and a memtable lookup costs far more
    /// than a hash lookup.
    reads: RefCell<HashMap<FamilyKey, Option<Vec<u8>>>>,
}

impl<'a> Txn<'a> {
    /// An empty transaction over `db`.
    pub fn new(db: &'a Db) -> Self {
        Txn {
            db,
            writes: BTreeMap::new(),
            reads: RefCell::new(HashMap::new()),
        }
    }

    /// Writes `value` at `key` in `family` when the transaction is applied.
    pub fn put(&mut self, family: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((family, key), Some(value));
    }

    /// Writes a protobuf message at `key` in `family`, encoded.
    pub fn put_message<M: prost::Message>(
        &mut self,
        family: &'static str,
        key: Vec<u8>,
        value: &M,
    ) {
        self.put(family, key, value.encode_to_vec());
    }

    /// Deletes `key` in `family` when the transaction is applied.
    pub fn delete(&mut self, family: &'static str, key: Vec<u8>) {
        self.writes.insert((family, key), None);
    }

    /// This transaction's writes to `family` with `start <= key < end`, in key
    /// order (`None`: a delete).
    fn pending<'s>(
        &'s self,
        family: &'static str,
        start: &[u8],
        end: Option<&'s [u8]>,
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s Option<Vec<u8>>)> + 's {
        self.writes
            .range((family, start.to_vec())..)
            .take_while(move |((name, key), _)| {
                *name == family && end.is_none_or(|end| key.as_slice() < end)
            })
            .map(|((_, key), value)| (key, value))
    }

    /// The transaction as one RocksDB write batch.
    pub fn into_batch(self) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        for ((family, key), value) in self.writes {
            let handle = self.db.cf(family)?;
            match value {
                Some(value) => batch.put_cf(handle, key, value),
                None => batch.delete_cf(handle, key),
            }
        }
        Ok(batch)
    }
}

impl Reader for Txn<'_> {
    fn get(&self, family: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = (family, key.to_vec());
        if let Some(write) = self.writes.get(&key) {
            return Ok(write.clone());
        }
        if let Some(read) = self.reads.borrow().get(&key) {
            return Ok(read.clone());
        }
        let read = self.db.get(family, &key.1)?;
        self.reads.borrow_mut().insert(key, read.clone());
        Ok(read)
    }

    fn scan_range(
        &self,
        family: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        // Read enough from the database to fill `limit` even if this
        // transaction deleted some of them.
        let deleted = self
            .pending(family, start, end)
            .filter(|(_, value)| value.is_none())
            .count();
        let stored = self
            .db
            .scan_range(family, start, end, limit.saturating_add(deleted))?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in self.pending(family, start, end) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_reads_its_own_writes_over_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut seed = Txn::new(&db);
        seed.put(cf::SESSIONS, b"a".to_vec(), b"1".to_vec());
        seed.put(cf::SESSIONS, b"b".to_vec(), b"2".to_vec());
        seed.put(cf::SESSIONS, b"c".to_vec(), b"3".to_vec());
        db.raw().write(seed.into_batch().unwrap()).unwrap();

        let mut txn = Txn::new(&db);
        txn.delete(cf::SESSIONS, b"b".to_vec());
        txn.put(cf::SESSIONS, b"bb".to_vec(), b"4".to_vec());
        txn.put(cf::SUBSCRIPTIONS, b"b".to_vec(), b"other family".to_vec());
        assert_eq!(txn.get(cf::SESSIONS, b"b").unwrap(), None);
        assert_eq!(txn.get(cf::SESSIONS, b"a").unwrap(), Some(b"1".to_vec()));
        let keys: Vec<Vec<u8>> = txn
            .scan_range(cf::SESSIONS, b"", None, 3)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"bb".to_vec(), b"c".to_vec()]);
        // Nothing reaches the database before the batch is written.
        assert_eq!(db.get(cf::SESSIONS, b"bb").unwrap(), None);
        db.raw().write(txn.into_batch().unwrap()).unwrap();
        assert_eq!(db.get(cf::SESSIONS, b"b").unwrap(), None);
        assert_eq!(db.get(cf::SESSIONS, b"bb").unwrap(), Some(b"4".to_vec()));
    }

    #[test]
    fn a_transaction_sees_its_writes_over_what_it_read_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.raw()
            .put_cf(db.cf(cf::SESSIONS).unwrap(), b"a", b"1")
            .unwrap();
        let mut txn = Txn::new(&db);
        assert_eq!(txn.get(cf::SESSIONS, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(txn.get(cf::SESSIONS, b"b").unwrap(), None);
        txn.put(cf::SESSIONS, b"a".to_vec(), b"2".to_vec());
        txn.put(cf::SESSIONS, b"b".to_vec(), b"3".to_vec());
        assert_eq!(txn.get(cf::SESSIONS, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(txn.get(cf::SESSIONS, b"b").unwrap(), Some(b"3".to_vec()));
        txn.delete(cf::SESSIONS, b"a".to_vec());
        assert_eq!(txn.get(cf::SESSIONS, b"a").unwrap(), None);
    }

    #[test]
    fn a_bounded_scan_does_not_step_over_deleted_keys_past_its_end() {
        use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let family = db.cf(cf::QUEUES).unwrap();
        // One live entry of session a; the acknowledged (deleted) entries of
        // session b after it; a live entry of session c.
        db.raw().put_cf(family, b"a1", b"v").unwrap();
        for seq in 0..100u8 {
            db.raw().put_cf(family, [b'b', seq], b"v").unwrap();
            db.raw().delete_cf(family, [b'b', seq]).unwrap();
        }
        db.raw().put_cf(family, b"c1", b"v").unwrap();

        // The counters are the calling thread's.
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        let records = db
            .scan_range(cf::QUEUES, b"a", Some(b"b"), usize::MAX)
            .unwrap();
        let skipped = perf.metric(PerfMetric::InternalDeleteSkippedCount);
        set_perf_stats(PerfStatsLevel::Disable);

        let keys: Vec<Vec<u8>> = records.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, [b"a1".to_vec()]);
        assert_eq!(skipped, 0, "deleted keys past the end were stepped over");
        let unbounded = db.scan_range(cf::QUEUES, b"a2", None, usize::MAX).unwrap();
        assert_eq!(unbounded, [(b"c1".to_vec(), b"v".to_vec())]);
    }
}
