//! How an edge-only node hears from the store: it follows one store node's
//! `Follow` stream (and reads sessions and routes from that node), and moves
//! to another when the stream breaks or when the node stops keeping up with
//! the rest of the group.
//!
//! A node can stop applying the log while its stream stays open: cut off
//! from the leader but not from this edge, paused, or a deposed leader that
//! has not noticed. Its stream then carries no notifications and its reads
//! are stale, so persistent sessions on this edge would get nothing while
//! their store queues fill. So the followed node's applied index is compared
//! with the other nodes' every second, and a node that stays behind is left.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rookery_cluster::Peers;
use rookery_store::proto::{self, store_client::StoreClient};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::store::{READ_LIMIT, StoreEvent};

/// Pause before following again after every store node was tried.
const FOLLOW_AGAIN: Duration = Duration::from_millis(200);

/// How often the followed node's progress is compared with the others'.
const LAG_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long the followed node may stay behind before another is followed:
/// several looks, so that a follower slowed for a moment (a compaction, a
/// busy machine) is not left, since moving costs every session a re-read.
const BEHIND_AT_MOST: Duration = Duration::from_secs(3);

/// Follows one store node after another: the events of one `Follow` stream
/// until it breaks or its node falls behind, then (after `Lagged`) the next
/// node's. `home` is where reads go: the node followed now.
pub(crate) async fn follow(
    peers: Arc<Peers>,
    home: Arc<Mutex<Option<String>>>,
    edge_id: String,
    sender: mpsc::Sender<StoreEvent>,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    use proto::follow_event::Kind;
    loop {
        for address in peers.addresses().await {
            let Ok(channel) = peers.channel(&address) else {
                continue;
            };
            let request = proto::FollowRequest {
                edge_id: edge_id.clone(),
            };
            let client = StoreClient::new(channel).max_decoding_message_size(READ_LIMIT);
            let Ok(stream) = { client }.follow(request).await else {
                continue;
            };
            let mut stream = stream.into_inner();
            let mut behind = tokio::spawn(watch_progress(peers.clone(), address.clone()));
            let why = loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    found = &mut behind => break match found {
                        Ok(behind) => {
                            metrics::counter!("rookery_store_followed_node_behind_total")
                                .increment(1);
                            behind.to_string()
                        }
                        Err(error) => format!("its progress check failed: {error}"),
                    },
                };
                let event = match message {
                    Ok(Some(event)) => event,
                    Ok(None) => break "the store node ended the stream".to_owned(),
                    Err(status) => break status.message().to_owned(),
                };
                let event = match event.kind {
                    Some(Kind::Ready(_)) => {
                        *home.lock() = Some(address.clone());
                        tracing::info!(store = %address, "following a store node");
                        match first.take() {
                            Some(first) => {
                                let _ = first.send(());
                                continue;
                            }
                            // Whatever came between the two streams is read
                            // again from the new node.
                            None => StoreEvent::Lagged,
                        }
                    }
                    Some(Kind::Edge(edge)) => match edge.kind {
                        Some(kind) => StoreEvent::Edge(kind),
                        None => continue,
                    },
                    Some(Kind::RouteAdded(route)) => StoreEvent::RouteAdded(route),
                    Some(Kind::RouteRemoved(route)) => StoreEvent::RouteRemoved(route),
                    Some(Kind::Retained(message)) => StoreEvent::Retained(message),
                    Some(Kind::EdgeRegistered(edge)) => StoreEvent::EdgeRegistered(edge),
                    None => continue,
                };
                if sender.send(event).await.is_err() {
                    behind.abort();
                    return;
                }
            };
            behind.abort();
            tracing::warn!(store = %address, %why, "stopped following a store node");
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_AGAIN).await;
    }
}

/// Resolves once the store node at `followed` has stayed behind the others
/// for [`BEHIND_AT_MOST`].
async fn watch_progress(peers: Arc<Peers>, followed: String) -> Behind {
    let mut progress = Progress::default();
    let mut looks = tokio::time::interval(LAG_CHECK_EVERY);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        looks.tick().await;
        let applied = peers.applied_indices().await;
        let highest = applied.iter().map(|(_, index)| *index).max();
        let followed_applied = applied
            .iter()
            .find(|(address, _)| *address == followed)
            .map(|(_, index)| *index);
        if let Some(behind) = progress.look(followed_applied, highest, Instant::now()) {
            return behind;
        }
    }
}

/// Why the followed node is left.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Behind {
    /// Its applied index at the last look (`None`: it did not answer).
    applied: Option<u64>,
    /// What the most advanced node had applied a look earlier.
    others: u64,
    /// How long it has been behind.
    for_: Duration,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.applied {
            Some(applied) => write!(f, "it stopped keeping up: applied index {applied}"),
            None => write!(f, "it stopped answering: applied index unknown"),
        }?;
        write!(
            f,
            " while another node had reached {}, for {:.1} s",
            self.others,
            self.for_.as_secs_f64()
        )
    }
}

/// Whether the followed node keeps up: at each look it must have applied at
/// least what the most advanced node had applied at the look before (a
/// second earlier), which any node the leader replicates to does.
#[derive(Debug, Default)]
struct Progress {
    /// The highest index any node had applied at the previous look.
    target: Option<u64>,
    /// The first of the looks that found it behind, in a row.
    behind_since: Option<Instant>,
}

impl Progress {
    /// One look: `followed` is the followed node's applied index (`None`:
    /// it did not answer), `highest` the highest any node answered (`None`:
    /// none answered, and nothing can be told). `Some` once it has been
    /// behind for [`BEHIND_AT_MOST`].
    fn look(
        &mut self,
        followed: Option<u64>,
        highest: Option<u64>,
        now: Instant,
    ) -> Option<Behind> {
        let highest = highest?;
        let target = self.target.replace(highest);
        let keeps_up = match (followed, target) {
            (Some(applied), Some(target)) => applied >= target,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if keeps_up {
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        let for_ = now.duration_since(since);
        (for_ >= BEHIND_AT_MOST).then(|| Behind {
            applied: followed,
            others: target.unwrap_or(highest),
            for_,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks a second apart from `start`: (followed, highest) per look.
    fn looks(progress: &mut Progress, answers: &[(Option<u64>, Option<u64>)]) -> Vec<bool> {
        let start = Instant::now();
        answers
            .iter()
            .enumerate()
            .map(|(i, &(followed, highest))| {
                let now = start + LAG_CHECK_EVERY * u32::try_from(i).unwrap_or(u32::MAX);
                progress.look(followed, highest, now).is_some()
            })
            .collect()
    }

    #[test]
    fn a_node_that_reaches_what_the_others_had_a_second_ago_keeps_up() {
        let mut progress = Progress::default();
        // Always a little behind the leader, never stuck.
        let answers: Vec<_> = (0..10u64)
            .map(|i| (Some(i * 100 + 50), Some(i * 100 + 90)))
            .collect();
        assert!(looks(&mut progress, &answers).iter().all(|left| !left));
    }

    #[test]
    fn an_idle_group_keeps_up() {
        let mut progress = Progress::default();
        let answers = vec![(Some(7), Some(7)); 10];
        assert!(looks(&mut progress, &answers).iter().all(|left| !left));
    }

    #[test]
    fn a_node_that_stops_applying_is_left_after_three_seconds_behind() {
        let mut progress = Progress::default();
        let answers = [
            (Some(10), Some(10)),
            (Some(20), Some(20)),
            // Stuck at 20 from here while the others go on.
            (Some(20), Some(30)),
            (Some(20), Some(40)), // behind: 20 < 30
            (Some(20), Some(50)),
            (Some(20), Some(60)),
            (Some(20), Some(70)), // three seconds after the first behind look
        ];
        assert_eq!(
            looks(&mut progress, &answers),
            [false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn catching_up_in_between_starts_the_count_again() {
        let mut progress = Progress::default();
        let answers = [
            (Some(10), Some(10)),
            (Some(10), Some(20)),
            (Some(10), Some(30)), // behind
            (Some(10), Some(40)),
            (Some(40), Some(50)), // caught up with the look before
            (Some(40), Some(60)), // behind again
            (Some(40), Some(70)),
            (Some(40), Some(80)),
        ];
        assert!(looks(&mut progress, &answers).iter().all(|left| !left));
    }

    #[test]
    fn a_node_that_does_not_answer_while_others_do_is_behind() {
        let mut progress = Progress::default();
        let answers = [
            (Some(10), Some(10)),
            (None, Some(10)),
            (None, Some(10)),
            (None, Some(10)),
            (None, Some(10)),
        ];
        assert_eq!(
            looks(&mut progress, &answers),
            [false, false, false, false, true]
        );
    }

    #[test]
    fn when_no_node_answers_nothing_is_told() {
        let mut progress = Progress::default();
        let answers = [
            (Some(10), Some(10)),
            (None, None),
            (None, None),
            (None, None),
            (None, None),
        ];
        assert!(looks(&mut progress, &answers).iter().all(|left| !left));
    }

    #[test]
    fn the_reason_names_both_indices() {
        let behind = Behind {
            applied: Some(20),
            others: 70,
            for_: Duration::from_secs(3),
        };
        assert_eq!(
            behind.to_string(),
            "it stopped keeping up: applied index 20 while another node had reached 70, for 3.0 s"
        );
    }
}
