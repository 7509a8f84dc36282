//! The caps the state machine enforces, and the totals they are checked
//! against: retained topics and their bytes, and persistent sessions.
//!
//! A cap travels in the command that could exceed it (the edge's setting),
//! so every replica decides the same way from the log alone. The totals live
//! in the `counters` family and change with every record they count; a total
//! that is missing (a store written before it was kept) is counted once from
//! the records, which every replica holds identically at the same index.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::StoreError;
use crate::db::{Reader, decode};
use crate::keys::cf;
use crate::proto::{Message, Session};

use super::Machine;

/// A total kept in the `counters` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Topics with a retained message.
    RetainedMessages,
    /// Topic and payload bytes of the retained messages.
    RetainedBytes,
    /// Sessions with a non-zero expiry interval, online or offline.
    PersistentSessions,
}

impl Counter {
    /// Its name, which is also its key.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RetainedMessages => "retained_messages",
            Counter::RetainedBytes => "retained_bytes",
            Counter::PersistentSessions => "persistent_sessions",
        }
    }

    fn key(self) -> &'static [u8] {
        self.name().as_bytes()
    }
}

/// What a retained message counts against `max_retained_bytes`: its topic
/// and payload. Properties are left out so that the figure never depends on
/// how a replica encodes them.
pub fn retained_size(message: &Message) -> u64 {
    (message.topic.len() + message.payload.len()) as u64
}

/// Whether a session outlives its connection.
fn persistent(session: &Session) -> bool {
    session.expiry_interval_s > 0
}

/// A total as stored, or counted from the records when it was never stored.
pub fn read_counter(reader: &impl Reader, counter: Counter) -> Result<u64, StoreError> {
    if let Some(bytes) = reader.get(cf::COUNTERS, counter.key())? {
        let bytes = <[u8; 8]>::try_from(bytes.as_slice())
            .map_err(|_| StoreError::CorruptCounter(counter.name()))?;
        return Ok(u64::from_be_bytes(bytes));
    }
    let mut total = 0u64;
    match counter {
        Counter::RetainedMessages | Counter::RetainedBytes => {
            for (_, value) in reader.scan_range(cf::RETAINED, b"", None, usize::MAX)? {
                total += match counter {
                    Counter::RetainedMessages => 1,
                    _ => retained_size(&decode::<Message>(cf::RETAINED, &value)?),
                };
            }
        }
        Counter::PersistentSessions => {
            for (_, value) in reader.scan_range(cf::SESSIONS, b"", None, usize::MAX)? {
                total += u64::from(persistent(&decode(cf::SESSIONS, &value)?));
            }
        }
    }
    Ok(total)
}

/// Counts a session that ended at its expiry (every replica counts the
/// sessions it applies the end of), and says once that 3.x sessions do
/// (Mosquitto's `persistent_client_expiration`, which they only have here).
pub fn count_expired(session: &Session) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let protocol = if session.protocol_version >= 5 {
        "5"
    } else {
        "3"
    };
    metrics::counter!("rookery_store_sessions_expired_total", "protocol" => protocol).increment(1);
    if protocol == "3" && !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            client_id = %session.client_id,
            expiry_interval_s = session.expiry_interval_s,
            "an MQTT 3.x persistent session expired after persistent_client_expiration \
             (logged once; counted in rookery_store_sessions_expired_total{{protocol=\"3\"}})"
        );
    }
}

/// What `SetRetained` may do with its message, by the caps it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedChange {
    /// A new topic within the caps, or a replacement: stored.
    Store,
    /// A new topic beyond a cap: refused, nothing changes.
    Refuse,
}

impl Machine<'_, '_> {
    fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        read_counter(&*self.txn, counter)
    }

    fn set_counter(&mut self, counter: Counter, value: u64) {
        self.txn.put(
            cf::COUNTERS,
            counter.key().to_vec(),
            value.to_be_bytes().to_vec(),
        );
    }

    /// Counts a retained message set (`new`, replacing `old`) or cleared
    /// (`new` is `None`), or refuses a new topic beyond the caps (0: none).
    /// Called before the record itself changes.
    pub(super) fn count_retained(
        &mut self,
        old: Option<&Message>,
        new: Option<&Message>,
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<RetainedChange, StoreError> {
        let count = self.counter(Counter::RetainedMessages)?;
        let bytes = self.counter(Counter::RetainedBytes)?;
        let old_size = old.map_or(0, retained_size);
        let new_size = new.map_or(0, retained_size);
        let (count, bytes) = match (old, new) {
            (None, None) => return Ok(RetainedChange::Store),
            (None, Some(_)) => {
                let over_count = max_messages != 0 && count >= max_messages;
                let over_bytes = max_bytes != 0 && bytes.saturating_add(new_size) > max_bytes;
                if over_count || over_bytes {
                    return Ok(RetainedChange::Refuse);
                }
                (count + 1, bytes.saturating_add(new_size))
            }
            // Replacing always applies (only new topics are refused), even
            // if the new message is larger.
            (Some(_), Some(_)) => (count, bytes.saturating_sub(old_size) + new_size),
            (Some(_), None) => (count.saturating_sub(1), bytes.saturating_sub(old_size)),
        };
        self.set_counter(Counter::RetainedMessages, count);
        self.set_counter(Counter::RetainedBytes, bytes);
        Ok(RetainedChange::Store)
    }

    /// Whether a connect asking for a persistent session must be refused:
    /// it would add one to `max` (0: no cap) or more. Resuming or replacing
    /// a stored persistent session adds none and is never refused.
    pub(super) fn persistent_sessions_full(
        &self,
        previous: Option<&Session>,
        expiry_interval_s: u32,
        max: u64,
    ) -> Result<bool, StoreError> {
        if max == 0 || expiry_interval_s == 0 || previous.is_some_and(persistent) {
            return Ok(false);
        }
        Ok(self.counter(Counter::PersistentSessions)? >= max)
    }

    /// Saves a session whose expiry interval may have changed, keeping the
    /// count of persistent sessions.
    pub(super) fn save_session_counted(&mut self, session: &Session) -> Result<(), StoreError> {
        let was = self
            .session(&session.client_id)?
            .is_some_and(|s| persistent(&s));
        let is = persistent(session);
        if was != is {
            let count = self.counter(Counter::PersistentSessions)?;
            let count = if is {
                count + 1
            } else {
                count.saturating_sub(1)
            };
            self.set_counter(Counter::PersistentSessions, count);
        }
        self.save_session(session);
        Ok(())
    }

    /// Deletes a session record, keeping the count of persistent sessions.
    pub(super) fn delete_session_counted(&mut self, client_id: &str) -> Result<(), StoreError> {
        if self.session(client_id)?.is_some_and(|s| persistent(&s)) {
            let count = self.counter(Counter::PersistentSessions)?;
            self.set_counter(Counter::PersistentSessions, count.saturating_sub(1));
        }
        self.txn
            .delete(cf::SESSIONS, crate::keys::client(client_id));
        Ok(())
    }
}
