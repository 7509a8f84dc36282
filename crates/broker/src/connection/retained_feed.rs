//! The retained messages a SUBSCRIBE brings, paced through the session's
//! queue instead of truncated at its length.
//!
//! When a filter's retained messages fit in the room left in the session's
//! queue, they are taken from this edge's copy at once, as before. When more
//! match (a `#` subscription over 300,000 retained topics, say), the filter
//! becomes a cursor: its messages are read from the store a page at a time,
//! in topic order, each page only once the queue is down to half its length,
//! so that no SUBSCRIBE reads or holds them all at once and a subscriber that
//! keeps reading gets every one (QoS 1/2 at the pace of its acknowledgements,
//! QoS 0 at the pace of its socket). The pages come from the store's copy,
//! which every edge mirrors.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rookery_codec::ByteString;
use rookery_store::writer::now_ms;

use super::run::Live;
use super::session::End;
use super::subscribe::{retained_delivery, retained_subscriptions};
use crate::hub::SubEntry;
use crate::message::Message;

/// The most retained messages one page reads from the store.
const PAGE: usize = 512;

/// The filters whose retained messages are still to be sent, in order.
#[derive(Debug, Default)]
pub(super) struct RetainedFeed {
    cursors: VecDeque<Cursor>,
}

/// A filter's retained messages still to send: those after `after`, in
/// topic order (from the first without one).
#[derive(Debug)]
struct Cursor {
    filter: ByteString,
    entry: SubEntry,
    after: Option<String>,
}

impl RetainedFeed {
    /// Stops sending the retained messages of these filters (unsubscribed,
    /// or subscribed again, which starts over).
    pub fn forget<'a>(&mut self, filters: impl IntoIterator<Item = &'a ByteString>) {
        for filter in filters {
            self.cursors.retain(|cursor| cursor.filter != *filter);
        }
    }
}

/// Counts a subscription whose retained messages are paged, and says so
/// once.
fn count_paged(filter: &str, queue: usize) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    metrics::counter!("rookery_retained_paged_subscriptions_total").increment(1);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            filter,
            max_queued_messages = queue,
            "a subscription matches more retained messages than its queue holds; they are sent \
             a page at a time as the queue drains (logged once; counted in \
             rookery_retained_paged_subscriptions_total)"
        );
    }
}

impl Live {
    /// Room in the session's queue for retained messages.
    fn retained_room(&self) -> usize {
        let queue = self.hub.config.limits.max_queued_messages;
        queue.saturating_sub(self.session.outgoing.memory_len())
    }

    /// Queues the retained messages of a SUBSCRIBE's accepted filters, as
    /// their Retain Handling asks (`existed`: which the session had).
    pub(super) fn send_retained(&mut self, accepted: &[(ByteString, SubEntry)], existed: &[bool]) {
        let subscriptions = retained_subscriptions(accepted, existed);
        self.retained
            .forget(subscriptions.iter().map(|(filter, _)| filter));
        let now = now_ms();
        for (filter, entry) in subscriptions {
            // Behind a filter being paged, the next one waits its turn.
            if self.retained.cursors.is_empty()
                && let Some(messages) = self.hub.retained_at_most(filter, now, self.retained_room())
            {
                for message in messages {
                    self.queue_retained(message, entry);
                }
                continue;
            }
            count_paged(filter, self.hub.config.limits.max_queued_messages);
            self.retained.cursors.push_back(Cursor {
                filter: filter.clone(),
                entry: *entry,
                after: None,
            });
        }
    }

    fn queue_retained(&mut self, message: Arc<Message>, entry: &SubEntry) {
        if !self
            .session
            .outgoing
            .push(retained_delivery(message, entry))
        {
            self.hub.stats.dropped("queue_full");
        }
    }

    /// Whether the next page of retained messages is due: a filter is being
    /// paged and the session's queue is down to half its length.
    pub(super) fn retained_due(&self) -> bool {
        let queue = self.hub.config.limits.max_queued_messages;
        !self.retained.cursors.is_empty()
            && self.session.outgoing.memory_len() <= queue / 2
            && self.retained_room() > 0
    }

    /// Reads the next page of the first paged filter from the store into the
    /// session's queue, and sends what the window allows.
    pub(super) async fn next_retained_page(&mut self) -> Result<(), End> {
        let limit = self.retained_room().min(PAGE);
        let Some(cursor) = self.retained.cursors.front() else {
            return Ok(());
        };
        if limit == 0 {
            return Ok(());
        }
        let (filter, entry, after) = (cursor.filter.clone(), cursor.entry, cursor.after.clone());
        // Pages follow one another while the queue has room, and a page read
        // from this process's replica never waits: let other tasks run.
        tokio::task::yield_now().await;
        let read = self
            .hub
            .store
            .retained_page(&filter, after.as_deref(), limit, now_ms())
            .await;
        let page = match read {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, client_id = %self.client_id(), %filter, "reading retained messages failed; the rest of them are not sent");
                self.hub.stats.dropped("store_unreachable");
                self.retained.cursors.pop_front();
                return Ok(());
            }
        };
        for message in &page.messages {
            if let Some(message) = Message::from_proto(message) {
                self.queue_retained(Arc::new(message), &entry);
            }
        }
        match (page.resume_after, self.retained.cursors.front_mut()) {
            (Some(next), Some(cursor)) => cursor.after = Some(next),
            (None, _) => {
                self.retained.cursors.pop_front();
            }
            (Some(_), None) => {}
        }
        self.send_ready();
        Ok(())
    }
}
