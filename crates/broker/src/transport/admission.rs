//! Which accepted sockets may become connections: the edge's maximum of
//! open connections (every listener together), each listener's own, the
//! maximum per client address, and the pace at which a listener accepts.
//!
//! A socket over a count is closed as soon as it is accepted, before any
//! byte of it is read (on a PROXY protocol listener the header is read
//! first: the address it names is the one counted). A listener over its
//! pace stops accepting for a moment instead: the kernel's backlog holds the
//! connections meanwhile, which costs this process nothing. Each limit that
//! acts is counted (`rookery_connections_limited_total{listener, limit}`,
//! `rookery_connection_rate_limited_total{listener}`) and logged at most
//! once per interval.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{Limits, ListenerConfig};
use crate::rate::{LIMIT_LOG_INTERVAL, LogThrottle, TokenBucket};

/// The counts every listener of an edge shares.
pub struct ConnectionLimits {
    open: AtomicUsize,
    max_open: usize,
    /// Open connections per client address; kept only when
    /// `max_per_address` is set, without entries at 0.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    /// One per [`Refusal`], so a flood of one kind does not hide another.
    logs: [LogThrottle; 3],
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("max_open", &self.max_open)
            .field("max_per_address", &self.max_per_address)
            .finish_non_exhaustive()
    }
}

impl ConnectionLimits {
    /// The edge's limits (`max_connections`, `max_connections_per_address`).
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            open: AtomicUsize::new(0),
            max_open: limits.max_connections,
            per_address: Mutex::new(HashMap::new()),
            max_per_address: limits.max_connections_per_address,
            logs: [
                LogThrottle::new(LIMIT_LOG_INTERVAL),
                LogThrottle::new(LIMIT_LOG_INTERVAL),
                LogThrottle::new(LIMIT_LOG_INTERVAL),
            ],
        })
    }

    /// No limit at all.
    pub fn unlimited() -> Arc<Self> {
        ConnectionLimits::new(&Limits {
            max_connections: 0,
            max_connections_per_address: 0,
            ..Limits::default()
        })
    }

    /// Connections open now (accepted, not yet closed), every listener
    /// together.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections open now from `ip` (0 when not counted per address).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.per_address
            .lock()
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    fn claim_address(&self, ip: IpAddr) -> Result<Option<IpAddr>, Refusal> {
        if self.max_per_address == 0 {
            return Ok(None);
        }
        // IPv4 clients of a dual-stack socket arrive as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let mut counts = self.per_address.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max_per_address {
            return Err(Refusal::Address);
        }
        *count += 1;
        Ok(Some(ip))
    }

    fn release_address(&self, ip: IpAddr) {
        let mut counts = self.per_address.lock();
        if let Some(count) = counts.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// Takes one place under `max` (0: no maximum) or says there is none.
fn claim(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (max == 0 || open < max).then_some(open + 1)
        })
        .is_ok()
}

/// Which count a socket was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `[broker.limits] max_connections`.
    Edge,
    /// The listener's `max_connections`.
    Listener,
    /// `max_connections_per_address`.
    Address,
}

impl Refusal {
    /// The `limit` label, named after the setting.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Edge => "max_connections",
            Refusal::Listener => "listener_max_connections",
            Refusal::Address => "max_connections_per_address",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::Edge => 0,
            Refusal::Listener => 1,
            Refusal::Address => 2,
        }
    }
}

/// Holds one connection's place in every count it is under; dropping it
/// frees them. It lives as long as the connection.
pub struct ConnectionPermit {
    edge: Arc<ConnectionLimits>,
    listener_open: Arc<AtomicUsize>,
    address: Option<IpAddr>,
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ConnectionPermit {
    /// Counts the connection under its client's address, once that is
    /// known (after a PROXY header).
    pub(super) fn claim_address(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.address.is_none() {
            self.address = self.edge.claim_address(ip)?;
        }
        Ok(())
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.listener_open.fetch_sub(1, Ordering::AcqRel);
        self.edge.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.address {
            self.edge.release_address(ip);
        }
    }
}

/// One listener's limits: its share of the edge's counts, its own count
/// and its accept pace.
pub(super) struct Gate {
    listener: Arc<str>,
    edge: Arc<ConnectionLimits>,
    open: Arc<AtomicUsize>,
    max_open: usize,
    /// `None` without `max_connection_rate`.
    pace: Option<TokenBucket>,
    /// Not accepting until then (over the pace).
    resume_at: Option<Instant>,
    pace_log: LogThrottle,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("max_open", &self.max_open)
            .field("paced", &self.pace.is_some())
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate of the listener `config` names `listener`, under the edge's
    /// counts.
    pub(super) fn new(
        listener: Arc<str>,
        config: &ListenerConfig,
        edge: Arc<ConnectionLimits>,
    ) -> Self {
        let rate = u64::from(config.max_connection_rate);
        Gate {
            listener,
            edge,
            open: Arc::new(AtomicUsize::new(0)),
            max_open: config.max_connections,
            // Bursts of one second's worth: a fleet reconnecting after a
            // restart gets in at the configured rate, not in one spike.
            pace: (rate > 0).then(|| TokenBucket::new(rate, rate, Instant::now())),
            resume_at: None,
            pace_log: LogThrottle::new(LIMIT_LOG_INTERVAL),
        }
    }

    /// When the listener may accept again, if it is pausing for its pace.
    pub(super) fn paused_until(&mut self) -> Option<Instant> {
        let resume_at = self.resume_at?;
        if Instant::now() >= resume_at {
            self.resume_at = None;
            return None;
        }
        Some(resume_at)
    }

    /// A socket was accepted from `peer`: its permit (edge and listener
    /// counts; the address is counted by the handshake), or the count it
    /// is over, counted and logged. Spends from the pace either way: a
    /// socket closed at once still cost an accept.
    pub(super) fn admit(&mut self, peer: SocketAddr) -> Option<ConnectionPermit> {
        self.spend_pace();
        if !claim(&self.edge.open, self.edge.max_open) {
            self.refused(Refusal::Edge, peer);
            return None;
        }
        if !claim(&self.open, self.max_open) {
            self.edge.open.fetch_sub(1, Ordering::AcqRel);
            self.refused(Refusal::Listener, peer);
            return None;
        }
        Some(ConnectionPermit {
            edge: Arc::clone(&self.edge),
            listener_open: Arc::clone(&self.open),
            address: None,
        })
    }

    fn spend_pace(&mut self) {
        let Some(pace) = self.pace.as_mut() else {
            return;
        };
        let now = Instant::now();
        let Some(wait) = pace.take(1, now) else {
            return;
        };
        self.resume_at = Some(now + wait);
        metrics::counter!(
            "rookery_connection_rate_limited_total",
            "listener" => Arc::clone(&self.listener),
        )
        .increment(1);
        if let Some(held_back) = self.pace_log.allow() {
            tracing::warn!(
                listener = %self.listener,
                pauses_since_last_log = held_back,
                "connections arrive faster than max_connection_rate; accepting more slowly (they wait in the backlog)"
            );
        }
    }

    /// Counts and logs a socket closed for `refusal`.
    pub(super) fn refused(&self, refusal: Refusal, peer: SocketAddr) {
        refused(&self.listener, &self.edge, refusal, peer);
    }

    /// The edge's counts, for the handshakes' address claims.
    pub(super) fn edge(&self) -> &Arc<ConnectionLimits> {
        &self.edge
    }
}

/// Counts and logs (at most once per interval per limit) a socket closed
/// for `refusal`.
pub(super) fn refused(
    listener: &Arc<str>,
    edge: &ConnectionLimits,
    refusal: Refusal,
    peer: SocketAddr,
) {
    let limit = refusal.label();
    metrics::counter!(
        "rookery_connections_limited_total",
        "listener" => Arc::clone(listener),
        "limit" => limit,
    )
    .increment(1);
    if let Some(held_back) = edge.logs[refusal.index()].allow() {
        tracing::warn!(
            listener = %listener,
            %peer,
            limit,
            refused_since_last_log = held_back,
            "connection refused: over {limit}"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::Ipv4Addr;

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 40000))
    }

    fn edge(max_connections: usize, max_connections_per_address: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(&Limits {
            max_connections,
            max_connections_per_address,
            ..Limits::default()
        })
    }

    fn gate(edge: &Arc<ConnectionLimits>, max_connections: usize, rate: u32) -> Gate {
        let config = ListenerConfig {
            max_connections,
            max_connection_rate: rate,
            ..ListenerConfig::default()
        };
        Gate::new("tcp".into(), &config, Arc::clone(edge))
    }

    /// Admits and claims the address, as a listener and its handshake do.
    fn connect(gate: &mut Gate, from: SocketAddr) -> Result<ConnectionPermit, Refusal> {
        let mut permit = gate.admit(from).ok_or(Refusal::Edge)?;
        permit.claim_address(from.ip())?;
        Ok(permit)
    }

    #[test]
    fn each_address_gets_its_own_count_and_a_closed_connection_frees_its_place() {
        let edge = edge(0, 2);
        let mut gate = gate(&edge, 0, 0);
        let first = connect(&mut gate, peer(1)).unwrap();
        let _second = connect(&mut gate, peer(1)).unwrap();
        assert_eq!(
            connect(&mut gate, peer(1)).unwrap_err(),
            Refusal::Address,
            "the third from 127.0.0.1"
        );
        let _other = connect(&mut gate, peer(2)).unwrap();
        assert_eq!(edge.open_from(peer(1).ip()), 2);
        assert_eq!(edge.open_from(peer(2).ip()), 1);
        drop(first);
        assert_eq!(edge.open_from(peer(1).ip()), 1);
        let _again = connect(&mut gate, peer(1)).unwrap();
        // Refused sockets hold no place anywhere.
        assert_eq!(edge.open(), 3);
        assert_eq!(gate.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_ipv4_client_counts_the_same_on_an_ipv6_socket() {
        let edge = edge(0, 1);
        let mut gate = gate(&edge, 0, 0);
        let v4 = peer(1);
        let mapped = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped(), v4.port()));
        let _held = connect(&mut gate, v4).unwrap();
        assert_eq!(connect(&mut gate, mapped).unwrap_err(), Refusal::Address);
    }

    #[test]
    fn addresses_are_forgotten_when_their_last_connection_closes() {
        let edge = edge(0, 5);
        let mut gate = gate(&edge, 0, 0);
        let held: Vec<_> = (1..=50)
            .map(|last| connect(&mut gate, peer(last)).unwrap())
            .collect();
        assert_eq!(edge.per_address.lock().len(), 50);
        drop(held);
        assert!(edge.per_address.lock().is_empty());
        assert_eq!(edge.open(), 0);
    }

    #[test]
    fn the_edge_count_spans_listeners_and_each_listener_has_its_own() {
        let edge = edge(3, 0);
        let mut tcp = gate(&edge, 2, 0);
        let mut tls = gate(&edge, 0, 0);
        let a = tcp.admit(peer(1)).unwrap();
        let _b = tcp.admit(peer(2)).unwrap();
        assert!(tcp.admit(peer(3)).is_none(), "the listener's maximum");
        let _c = tls.admit(peer(3)).unwrap();
        assert!(tls.admit(peer(4)).is_none(), "the edge's maximum");
        assert_eq!(edge.open(), 3);
        drop(a);
        assert_eq!(tcp.open.load(Ordering::Relaxed), 1);
        assert!(tls.admit(peer(4)).is_some());
    }

    #[test]
    fn unlimited_counts_refuse_nothing_and_keep_no_addresses() {
        let edge = ConnectionLimits::unlimited();
        let mut gate = gate(&edge, 0, 0);
        let held: Vec<_> = (0..1000)
            .map(|_| connect(&mut gate, peer(1)).unwrap())
            .collect();
        assert_eq!(edge.open(), 1000);
        assert!(edge.per_address.lock().is_empty());
        drop(held);
        assert_eq!(edge.open(), 0);
    }

    #[tokio::test]
    async fn a_listener_over_its_rate_pauses_until_a_token_returns() {
        let edge = ConnectionLimits::unlimited();
        let mut gate = gate(&edge, 0, 10);
        let mut permits = Vec::new();
        for _ in 0..10 {
            assert_eq!(gate.paused_until(), None);
            permits.push(gate.admit(peer(1)).unwrap());
        }
        // The burst is spent: the eleventh accept puts the pace in debt.
        permits.push(gate.admit(peer(1)).unwrap());
        let until = gate.paused_until().expect("paused");
        let left = until - Instant::now();
        assert!(left <= std::time::Duration::from_millis(100), "{left:?}");
        assert!(left >= std::time::Duration::from_millis(50), "{left:?}");
        tokio::time::sleep_until(until).await;
        assert_eq!(gate.paused_until(), None);
    }
}
