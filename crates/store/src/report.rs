//! What a store node tells Prometheus: its Raft state as openraft reports
//! it (leader, term, snapshot index and log length, each follower's lag, how
//! long ago a quorum last acknowledged its leadership), the sizes of its log
//! and snapshot, and the cluster-wide totals its state machine keeps. The
//! last log, committed and applied indexes are set where they change (the
//! log store and the state machine), so that they never disagree by the
//! report's delay.
//!
//! `rookery_store_is_leader` is honest: 1 only while this node leads *and*
//! a quorum acknowledged it within the longest election timeout. A leader
//! cut off from its majority keeps openraft's `Leader` state (it has no
//! lease to lose), but after that long the others may have elected a new
//! leader, so it no longer counts as one here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Gauge;
use openraft::{BasicNode, RaftMetrics};

use crate::db::{Db, Reader};
use crate::keys::cf;
use crate::machine::{Counter, read_counter};
use crate::{NodeId, Raft};

/// How often sizes on disk and the state machine's totals are read.
const SIZES_EVERY: Duration = Duration::from_secs(5);
/// How often openraft's latest report is read.
const LEADER_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The gauges of one store node, looked up once.
struct Gauges {
    leader_id: Gauge,
    is_leader: Gauge,
    term: Gauge,
    quorum_ack_age: Gauge,
    snapshot_index: Gauge,
    log_entries: Gauge,
    lag: BTreeMap<NodeId, Gauge>,
    leader_changes: metrics::Counter,
    /// The (term, leader) last counted in `leader_changes`.
    counted_leader: Option<(u64, NodeId)>,
}

/// What the gauges were last computed from, and when openraft sent it.
struct Seen {
    metrics: RaftMetrics<NodeId, BasicNode>,
    at: Instant,
}

impl Gauges {
    fn new() -> Self {
        Gauges {
            leader_id: metrics::gauge!("rookery_store_leader_id"),
            is_leader: metrics::gauge!("rookery_store_is_leader"),
            term: metrics::gauge!("rookery_store_term"),
            quorum_ack_age: metrics::gauge!("rookery_store_quorum_ack_age_seconds"),
            snapshot_index: metrics::gauge!("rookery_store_raft_snapshot_index"),
            log_entries: metrics::gauge!("rookery_store_raft_log_entries"),
            lag: BTreeMap::new(),
            leader_changes: metrics::counter!("rookery_store_leader_changes_total"),
            counted_leader: None,
        }
    }

    /// Sets every Raft gauge from what openraft last reported.
    fn update(&mut self, seen: &Seen, lease: Duration) {
        let metrics = &seen.metrics;
        let running = metrics.running_state.is_ok();
        let leader = metrics.current_leader.filter(|_| running);
        self.leader_id.set(leader.unwrap_or(0) as f64);
        if let Some(leader) = leader
            && self.counted_leader != Some((metrics.current_term, leader))
        {
            self.counted_leader = Some((metrics.current_term, leader));
            self.leader_changes.increment(1);
        }
        self.term.set(metrics.current_term as f64);

        // openraft's figure is as of its report; it ages since.
        let ack_age = metrics
            .millis_since_quorum_ack
            .filter(|_| running && metrics.state.is_leader())
            .map(|ms| Duration::from_millis(ms) + seen.at.elapsed());
        let leading = ack_age.is_some_and(|age| age <= lease);
        self.is_leader.set(f64::from(u8::from(leading)));
        // Not leading: no figure (NaN), rather than a reassuring 0.
        self.quorum_ack_age
            .set(ack_age.map_or(f64::NAN, |age| age.as_secs_f64()));

        let last_log = metrics.last_log_index.unwrap_or(0);
        self.snapshot_index
            .set(metrics.snapshot.map_or(0, |id| id.index) as f64);
        // Entries after the purged one are what the log holds.
        let first_kept = metrics.purged.map_or(0, |id| id.index + 1);
        self.log_entries
            .set(last_log.saturating_add(1).saturating_sub(first_kept) as f64);

        self.update_lag(metrics, last_log, running);
    }

    /// The leader's view of how far each follower's log is behind its own;
    /// NaN on a node that does not lead (it has no view).
    fn update_lag(
        &mut self,
        metrics: &RaftMetrics<NodeId, BasicNode>,
        last_log: u64,
        running: bool,
    ) {
        let replication = metrics.replication.as_ref().filter(|_| running);
        // Followers no longer replicated to (or every one, when this node
        // does not lead) have no figure.
        for (follower, gauge) in &self.lag {
            if !replication.is_some_and(|replication| replication.contains_key(follower)) {
                gauge.set(f64::NAN);
            }
        }
        let Some(replication) = replication else {
            return;
        };
        for (follower, matched) in replication.iter() {
            if *follower == metrics.id {
                continue;
            }
            let behind = match matched {
                Some(matched) => last_log.saturating_sub(matched.index),
                None => last_log.saturating_add(1),
            };
            self.lag
                .entry(*follower)
                .or_insert_with(|| {
                    metrics::gauge!(
                        "rookery_store_raft_replication_lag_entries",
                        "follower" => follower.to_string()
                    )
                })
                .set(behind as f64);
        }
    }

    /// The store stopped: it leads nothing and knows no leader.
    fn stopped(&mut self) {
        self.leader_id.set(0.0);
        self.is_leader.set(0.0);
        self.quorum_ack_age.set(f64::NAN);
        for gauge in self.lag.values() {
            gauge.set(f64::NAN);
        }
    }
}

/// Keeps the gauges current until Raft stops. openraft reports after every
/// event (thousands a second under load) and at least every tick; reading
/// its latest report four times a second is enough for a scrape and cheap
/// whatever the load. `lease`: the longest election timeout.
pub(crate) async fn report(raft: Raft, db: Arc<Db>, snapshot_dir: PathBuf, lease: Duration) {
    let mut gauges = Gauges::new();
    let mut sizes = Sizes::new(db, snapshot_dir);
    let mut watch = raft.metrics();
    let mut seen = Seen {
        metrics: watch.borrow_and_update().clone(),
        at: Instant::now(),
    };
    let mut leader_check = tokio::time::interval(LEADER_CHECK_EVERY);
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut size_check = tokio::time::interval(SIZES_EVERY);
    size_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = leader_check.tick() => {
                match watch.has_changed() {
                    // Raft stopped (shut down, or failed for good).
                    Err(_) => {
                        gauges.stopped();
                        return;
                    }
                    Ok(true) => {
                        seen = Seen {
                            metrics: watch.borrow_and_update().clone(),
                            at: Instant::now(),
                        };
                    }
                    Ok(false) => {}
                }
                gauges.update(&seen, lease);
            }
            _ = size_check.tick() => sizes.update(),
        }
    }
}

/// Sizes on disk and the state machine's totals.
struct Sizes {
    db: Arc<Db>,
    snapshot_dir: PathBuf,
    log_bytes: Gauge,
    sst_bytes: Gauge,
    snapshot_bytes: Gauge,
    persistent_sessions: Gauge,
    retained_messages: Gauge,
    retained_bytes: Gauge,
}

impl Sizes {
    fn new(db: Arc<Db>, snapshot_dir: PathBuf) -> Self {
        let sizes = Sizes {
            db,
            snapshot_dir,
            log_bytes: metrics::gauge!("rookery_store_raft_log_bytes"),
            sst_bytes: metrics::gauge!("rookery_store_sst_bytes"),
            snapshot_bytes: metrics::gauge!("rookery_store_snapshot_bytes"),
            persistent_sessions: metrics::gauge!("rookery_store_persistent_sessions"),
            retained_messages: metrics::gauge!("rookery_store_retained_messages"),
            retained_bytes: metrics::gauge!("rookery_store_retained_bytes"),
        };
        // Counted from the records once if the state machine has not stored
        // a total yet; from then on only the stored totals are read.
        for (counter, gauge) in [
            (Counter::PersistentSessions, &sizes.persistent_sessions),
            (Counter::RetainedMessages, &sizes.retained_messages),
            (Counter::RetainedBytes, &sizes.retained_bytes),
        ] {
            gauge.set(read_counter(sizes.db.as_ref(), counter).unwrap_or(0) as f64);
        }
        sizes
    }

    fn update(&mut self) {
        let property = |family: &'static str, name: &str| -> u64 {
            self.db
                .cf(family)
                .ok()
                .and_then(|handle| self.db.raw().property_int_value_cf(handle, name).ok())
                .flatten()
                .unwrap_or(0)
        };
        // The log's SST files plus what sits in its memtable.
        let log = property(cf::LOG, "rocksdb.live-sst-files-size")
            + property(cf::LOG, "rocksdb.cur-size-all-mem-tables");
        self.log_bytes.set(log as f64);
        let sst: u64 = cf::STATE
            .iter()
            .chain([cf::LOG, cf::RAFT_META].iter())
            .map(|family| property(family, "rocksdb.live-sst-files-size"))
            .sum();
        self.sst_bytes.set(sst as f64);
        self.snapshot_bytes
            .set(crate::state_machine::snapshot_size(&self.snapshot_dir) as f64);

        // Only totals the state machine has stored: counting a missing one
        // from the records (a store from before they were kept) would scan
        // every session each time; it is stored at its first change.
        let stored = |counter: Counter, gauge: &Gauge| {
            if let Ok(Some(bytes)) = self.db.get(cf::COUNTERS, counter.name().as_bytes())
                && let Ok(bytes) = <[u8; 8]>::try_from(bytes.as_slice())
            {
                gauge.set(u64::from_be_bytes(bytes) as f64);
            }
        };
        stored(Counter::PersistentSessions, &self.persistent_sessions);
        stored(Counter::RetainedMessages, &self.retained_messages);
        stored(Counter::RetainedBytes, &self.retained_bytes);
    }
}
