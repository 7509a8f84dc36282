//! Errors of the store, and their mapping to openraft's storage errors.

use openraft::{AnyError, StorageError, StorageIOError};

use crate::NodeId;

/// What went wrong reading or writing the store's database, snapshots or files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed a read or a write.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The database lacks a column family the store opens it with.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// A stored record does not decode as the protobuf message its family holds.
    #[error("corrupt record in {family}: {source}")]
    CorruptRecord {
        /// The column family the record was read from.
        family: &'static str,
        /// Why it does not decode.
        source: prost::DecodeError,
    },
    /// A stored total (`counters` family) is not an 8-byte integer.
    #[error("corrupt counter {0}")]
    CorruptCounter(&'static str),
    /// A Raft log entry, vote or snapshot meta does not (de)serialize.
    #[error("serialization: {0}")]
    Serialization(#[from] postcard::Error),
    /// A snapshot's data is not in the snapshot format; says where it breaks.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(&'static str),
    /// A file or thread failed, or Raft refused to start or to initialize.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// As openraft's error for a failed read (of the vote, say).
    pub fn read(self) -> StorageError<NodeId> {
        StorageIOError::read(AnyError::new(&self)).into()
    }

    /// As openraft's error for a failed write (of the vote or a snapshot).
    pub fn write(self) -> StorageError<NodeId> {
        StorageIOError::write(AnyError::new(&self)).into()
    }

    /// As openraft's error for a failed read of log entries.
    pub fn read_logs(self) -> StorageError<NodeId> {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    /// As openraft's error for a failed write of log entries.
    pub fn write_logs(self) -> StorageError<NodeId> {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }

    /// As openraft's error for a failed read of the state machine.
    pub fn read_state_machine(self) -> StorageError<NodeId> {
        StorageIOError::read_state_machine(AnyError::new(&self)).into()
    }

    /// As openraft's error for a failed write of the state machine.
    pub fn write_state_machine(self) -> StorageError<NodeId> {
        StorageIOError::write_state_machine(AnyError::new(&self)).into()
    }
}
