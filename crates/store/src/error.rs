//! Errors of the store, and their mapping to openraft's storage errors.

use openraft::{AnyError, StorageError, StorageIOError};

use crate::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt record in {family}: {source}")]
    CorruptRecord {
        family: &'static str,
        source: prost::DecodeError,
    },
    #[error("serialization: {0}")]
    Serialization(#[from] postcard::Error),
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    pub fn read(self) -> StorageError<NodeId> {
        StorageIOError::read(AnyError::new(&self)).into()
    }

    pub fn write(self) -> StorageError<NodeId> {
        StorageIOError::write(AnyError::new(&self)).into()
    }

    pub fn read_logs(self) -> StorageError<NodeId> {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    pub fn write_logs(self) -> StorageError<NodeId> {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }

    pub fn read_state_machine(self) -> StorageError<NodeId> {
        StorageIOError::read_state_machine(AnyError::new(&self)).into()
    }

    pub fn write_state_machine(self) -> StorageError<NodeId> {
        StorageIOError::write_state_machine(AnyError::new(&self)).into()
    }
}
