//! The retained messages, one per topic, as the store holds them: set by
//! publishes here and by the store's notifications of other edges' ones.

use std::sync::Arc;

use parking_lot::RwLock;
use rookery_topic::RetainedIndex;

use super::Hub;
use crate::message::Message;
use crate::store::StoreUnavailable;

/// The retained messages by topic, behind their own lock (a leaf in the
/// lock order).
#[derive(Debug, Default)]
pub(super) struct Retained {
    index: RwLock<RetainedIndex<Arc<Message>>>,
}

impl Hub {
    /// Sets or clears the retained message of its topic in memory
    /// (MQTT-3.3.1-5, MQTT-3.3.1-6).
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = self.retained.index.write();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(&message.topic, message.clone());
        }
        self.stats.set_retained(retained.len());
    }

    /// The retained messages a new subscription receives (MQTT-3.3.1-9..11).
    pub fn retained_for(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let mut found = Vec::new();
        self.retained
            .index
            .read()
            .for_each_match(filter, |_, message| {
                if !message.expired(now_ms) {
                    found.push(message.clone());
                }
            });
        found
    }

    /// Replaces the retained messages with the store's.
    pub(super) async fn load_retained(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        let messages = self.store.retained("#", now_ms).await?;
        let mut retained = self.retained.index.write();
        *retained = RetainedIndex::new();
        for message in messages {
            if let Some(message) = Message::from_proto(&message) {
                retained.insert(&message.topic.clone(), Arc::new(message));
            }
        }
        self.stats.set_retained(retained.len());
        Ok(())
    }
}
