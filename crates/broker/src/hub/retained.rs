//! The retained messages, one per topic, as the store holds them: set by
//! publishes here and by the store's notifications of other edges' ones.
//!
//! The caps (`max_retained_messages`, `max_retained_bytes`) are the
//! store's to decide, cluster-wide: each `SetRetained` carries them and the
//! store refuses a new topic beyond them. This copy follows: a publish here
//! is retained in memory at once when the store will very likely take it
//! (a replacement, or a new topic while this copy is below the caps), and
//! taken out again if the store refuses it after all.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use rookery_store::proto::{self, command_result::Kind as ResultKind};
use rookery_topic::RetainedIndex;

use super::Hub;
use crate::message::Message;
use crate::store::StoreUnavailable;

/// The retained messages by topic, behind their own lock (a leaf in the
/// lock order).
#[derive(Debug, Default)]
pub(super) struct Retained {
    set: RwLock<RetainedSet>,
}

#[derive(Debug, Default)]
struct RetainedSet {
    index: RetainedIndex<Arc<Message>>,
    /// Topic and payload bytes, as the store counts them.
    bytes: u64,
}

/// What a retained message counts against `max_retained_bytes`.
fn size(message: &Message) -> u64 {
    (message.topic.len() + message.payload.len()) as u64
}

impl RetainedSet {
    /// Sets or clears (empty payload) the topic's message.
    fn set(&mut self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            self.remove(&message.topic);
            return;
        }
        self.bytes += size(message);
        if let Some(old) = self.index.insert(&message.topic, message.clone()) {
            self.bytes = self.bytes.saturating_sub(size(&old));
        }
    }

    fn remove(&mut self, topic: &str) {
        if let Some(old) = self.index.remove(topic) {
            self.bytes = self.bytes.saturating_sub(size(&old));
        }
    }
}

impl Hub {
    /// Sets or clears the retained message of its topic in memory, as the
    /// store has it (MQTT-3.3.1-5, MQTT-3.3.1-6).
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = self.retained.set.write();
        retained.set(message);
        self.stats.set_retained(retained.index.len());
    }

    /// Retains a message published here before the store has decided: at
    /// once unless it is a new topic beyond the caps, which waits for the
    /// store (its notification retains it if the store takes it after all).
    pub fn retain_locally(&self, message: &Arc<Message>) {
        let limits = &self.config.limits;
        let mut retained = self.retained.set.write();
        let new = !message.payload.is_empty() && retained.index.get(&message.topic).is_none();
        let over_count = limits.max_retained_messages != 0
            && retained.index.len() as u64 >= limits.max_retained_messages;
        let over_bytes = limits.max_retained_bytes != 0
            && retained.bytes + size(message) > limits.max_retained_bytes;
        if new && (over_count || over_bytes) {
            return;
        }
        retained.set(message);
        self.stats.set_retained(retained.index.len());
    }

    /// Whether a topic has a retained message here.
    pub fn has_retained(&self, topic: &str) -> bool {
        self.retained.set.read().index.get(topic).is_some()
    }

    /// The store command that retains (or clears) a message, with this
    /// edge's caps for the store to apply.
    pub fn set_retained_command(&self, message: proto::Message) -> proto::Command {
        let limits = &self.config.limits;
        proto::Command {
            kind: Some(proto::command::Kind::SetRetained(proto::SetRetained {
                message: Some(message),
                max_messages: limits.max_retained_messages,
                max_bytes: limits.max_retained_bytes,
                will: None,
            })),
        }
    }

    /// Reads a store write's results for a refused retained message: the
    /// store is at a cap and `message` is not retained. Its copy here goes
    /// (unless a later message replaced it). Whether it was refused.
    pub fn retained_outcome(
        &self,
        message: &Arc<Message>,
        results: &[proto::CommandResult],
    ) -> bool {
        let refused = results
            .iter()
            .any(|result| matches!(result.kind, Some(ResultKind::QuotaExceeded(_))));
        if refused {
            self.retained_refused(message);
        }
        refused
    }

    /// A retained message the store refused: counted, logged once, and no
    /// longer retained here.
    pub fn retained_refused(&self, message: &Arc<Message>) {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        metrics::counter!("rookery_retained_refused_total").increment(1);
        if !LOGGED.swap(true, Ordering::Relaxed) {
            let limits = &self.config.limits;
            tracing::warn!(
                topic = %message.topic,
                max_retained_messages = limits.max_retained_messages,
                max_retained_bytes = limits.max_retained_bytes,
                "a retained message for a new topic was refused: the store holds as many \
                 retained messages as allowed (logged once; counted in \
                 rookery_retained_refused_total)"
            );
        }
        let mut retained = self.retained.set.write();
        let ours = retained
            .index
            .get(&message.topic)
            .is_some_and(|kept| Arc::ptr_eq(kept, message));
        if ours {
            retained.remove(&message.topic);
            self.stats.set_retained(retained.index.len());
        }
    }

    /// The retained messages a new subscription receives (MQTT-3.3.1-9..11),
    /// if no more than
    /// `limit` match; `None` as soon as more do (without walking the rest):
    /// the caller pages them from the store instead.
    pub fn retained_at_most(
        &self,
        filter: &str,
        now_ms: u64,
        limit: usize,
    ) -> Option<Vec<Arc<Message>>> {
        let mut found = Vec::new();
        let walked = self
            .retained
            .set
            .read()
            .index
            .for_each_match_while(filter, |_, message| {
                if message.expired(now_ms) {
                    return ControlFlow::Continue(());
                }
                if found.len() == limit {
                    return ControlFlow::Break(());
                }
                found.push(message.clone());
                ControlFlow::Continue(())
            });
        walked.is_continue().then_some(found)
    }

    /// Replaces the retained messages with the store's.
    pub(super) async fn load_retained(&self, now_ms: u64) -> Result<(), StoreUnavailable> {
        let messages = self.store.retained("#", now_ms).await?;
        let mut retained = self.retained.set.write();
        *retained = RetainedSet::default();
        for message in messages {
            if let Some(message) = Message::from_proto(&message) {
                retained.set(&Arc::new(message));
            }
        }
        self.stats.set_retained(retained.index.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerConfig, Limits};

    fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            qos: rookery_codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at_ms: 0,
            origin: Arc::from("p"),
        })
    }

    fn capped(hub: &mut Hub, max_retained_messages: u64) {
        hub.config = Arc::new(BrokerConfig {
            limits: Limits {
                max_retained_messages,
                ..Limits::default()
            },
            ..BrokerConfig::default()
        });
    }

    /// A new topic beyond the cap is not retained here before the store
    /// takes it; replacing a topic is; a refused message goes again unless
    /// something replaced it meanwhile.
    #[tokio::test]
    async fn retained_here_only_what_the_store_will_likely_take() {
        let (mut hub, _dir) = crate::hub::fixtures::hub_on_a_store().await;
        capped(&mut hub, 2);
        let a = message("a", b"1");
        hub.retain_locally(&a);
        hub.retain_locally(&message("b", b"1"));
        hub.retain_locally(&message("c", b"1"));
        assert!(!hub.has_retained("c"), "a new topic beyond the cap waits");
        let a2 = message("a", b"2");
        hub.retain_locally(&a2);
        let kept = hub.retained_at_most("a", 0, usize::MAX).unwrap();
        assert_eq!(kept[0].payload, &b"2"[..]);

        hub.retained_refused(&a);
        assert!(
            hub.has_retained("a"),
            "a later message replaced the refused one"
        );
        hub.retained_refused(&a2);
        assert!(!hub.has_retained("a"));
    }

    #[tokio::test]
    async fn a_walk_beyond_the_limit_says_so_without_collecting_everything() {
        let (hub, _dir) = crate::hub::fixtures::hub_on_a_store().await;
        for topic in ["t/1", "t/2", "t/3"] {
            hub.retain(&message(topic, b"x"));
        }
        assert_eq!(hub.retained_at_most("t/#", 0, 3).map(|m| m.len()), Some(3));
        assert_eq!(hub.retained_at_most("t/#", 0, 2), None);
        assert_eq!(hub.retained_at_most("t/+", 0, 10).map(|m| m.len()), Some(3));
    }
}
