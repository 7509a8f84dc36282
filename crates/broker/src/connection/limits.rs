//! What one client may do, beyond the protocol's own limits: how long its
//! client identifier may be, how many subscriptions its session may hold,
//! and how fast it may publish. (How much output may wait for it is the
//! outbox's: `Outbox::room_for_more`.)
//!
//! Each limit that acts is counted in `rookery_client_limits_total{limit}`
//! and logged at most once per interval, whatever the flood.

use rookery_codec::{Connect, ReasonCode};
use tokio::time::Instant;

use super::subscribe::Granted;
use crate::config::Limits;
use crate::rate::{LIMIT_LOG_INTERVAL, LogThrottle, TokenBucket};

/// Counts a client limit that acted; logs it unless it was logged within
/// the interval.
fn acted(limit: &'static str, log: &LogThrottle, client_id: &str) {
    metrics::counter!("rookery_client_limits_total", "limit" => limit).increment(1);
    if let Some(held_back) = log.allow() {
        tracing::warn!(
            client_id,
            limit,
            since_last_log = held_back,
            "client limit reached: {limit}"
        );
    }
}

/// Refuses a client identifier longer than `max_client_id_length` with
/// 0x85 Client Identifier not valid (0x02 Identifier rejected in 3.1.1).
/// MQTT-3.1.3-5: a server must allow 1 to 23 bytes and may refuse more; a
/// long identifier costs memory in every table and store record of the
/// session.
pub(super) fn check_client_id(connect: &Connect, limits: &Limits) -> Result<(), ReasonCode> {
    static LOG: LogThrottle = LogThrottle::new(LIMIT_LOG_INTERVAL);
    let id: &str = &connect.client_id;
    if id.len() <= limits.max_client_id_length {
        return Ok(());
    }
    // Only a prefix goes to the log: the rest is what the limit is for.
    let shown: String = id.chars().take(32).collect();
    acted("max_client_id_length", &LOG, &shown);
    Err(ReasonCode::ClientIdentifierNotValid)
}

/// Holds a SUBSCRIBE to `max_subscriptions` (0: no limit): of the filters
/// `granted` accepts, those that would take the session over the maximum
/// are refused with 0x97 Quota exceeded (0x80 in 3.1.1) and not recorded.
/// `held` says, per accepted filter, whether the session holds it already
/// (replacing a subscription takes no more room); `count` is how many the
/// session holds. Returns how many filters it refused.
pub(super) fn limit_subscriptions(
    granted: &mut Granted,
    held: &[bool],
    count: usize,
    limits: &Limits,
    v5: bool,
    client_id: &str,
) -> usize {
    static LOG: LogThrottle = LogThrottle::new(LIMIT_LOG_INTERVAL);
    let max = limits.max_subscriptions;
    if max == 0 {
        return 0;
    }
    let mut count = count;
    let mut added: Vec<&str> = Vec::new();
    let mut keep = Vec::with_capacity(granted.accepted.len());
    // The accepted filters are the granted reason codes, in order.
    let mut accepted = granted.accepted.iter().enumerate();
    for code in granted
        .reason_codes
        .iter_mut()
        .filter(|code| !code.is_error())
    {
        let Some((index, (filter, _))) = accepted.next() else {
            break;
        };
        let known = held.get(index).copied().unwrap_or(false) || added.contains(&filter.as_ref());
        if known {
            keep.push(true);
        } else if count < max {
            count += 1;
            added.push(filter.as_ref());
            keep.push(true);
        } else {
            *code = if v5 {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::UnspecifiedError
            };
            keep.push(false);
        }
    }
    let refused = keep.iter().filter(|kept| !**kept).count();
    if refused > 0 {
        let mut keep = keep.into_iter();
        granted.accepted.retain(|_| keep.next().unwrap_or(true));
        acted("max_subscriptions", &LOG, client_id);
    }
    refused
}

impl super::run::Live {
    /// Holds a SUBSCRIBE's accepted filters to `max_subscriptions`, against
    /// what the session holds on this edge (all of it: a session online
    /// here has its stored subscriptions in the registry).
    pub(super) fn limit_subscriptions(&self, granted: &mut Granted) {
        let limits = &self.hub.config.limits;
        if limits.max_subscriptions == 0 || granted.accepted.is_empty() {
            return;
        }
        let client = self.client_id();
        let filters = granted.accepted.iter().map(|(filter, _)| filter.as_ref());
        let (count, held) = self.hub.subscriptions_held(client, filters);
        let v5 = self.socket.out.is_v5();
        limit_subscriptions(granted, &held, count, limits, v5, client);
    }
}

/// A client's publish rate (`messages_rate`, `bytes_rate`): a token bucket
/// each, spent as bytes are read and as PUBLISH packets are handled. Over
/// either, the client is not read until the bucket allows again (and, over
/// the message rate, no more of what was read is handled): TCP then slows
/// the client down, and nothing it sent is dropped.
#[derive(Debug)]
pub(super) struct PublishRate {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// No more PUBLISH is handled, and nothing read, until then.
    messages_until: Option<Instant>,
    /// Nothing is read until then.
    bytes_until: Option<Instant>,
}

impl PublishRate {
    /// The rate `limits` allow; `None` when neither is limited.
    pub fn new(limits: &Limits) -> Option<Self> {
        let now = Instant::now();
        // Bursts of one second's worth.
        let bucket = |rate: u64| (rate > 0).then(|| TokenBucket::new(rate, rate, now));
        let messages = bucket(u64::from(limits.messages_rate));
        let bytes = bucket(limits.bytes_rate);
        (messages.is_some() || bytes.is_some()).then_some(PublishRate {
            messages,
            bytes,
            messages_until: None,
            bytes_until: None,
        })
    }

    /// `n` bytes were read from the client.
    pub fn read(&mut self, n: usize, client_id: &str) {
        static LOG: LogThrottle = LogThrottle::new(LIMIT_LOG_INTERVAL);
        if let Some(bucket) = self.bytes.as_mut() {
            let wait = bucket.take(n as u64, Instant::now());
            hold(&mut self.bytes_until, wait, "bytes_rate", &LOG, client_id);
        }
    }

    /// A PUBLISH was handled; whether the client is now over its message
    /// rate (handle nothing more for now).
    pub fn published(&mut self, client_id: &str) -> bool {
        static LOG: LogThrottle = LogThrottle::new(LIMIT_LOG_INTERVAL);
        if let Some(bucket) = self.messages.as_mut() {
            let wait = bucket.take(1, Instant::now());
            hold(
                &mut self.messages_until,
                wait,
                "messages_rate",
                &LOG,
                client_id,
            );
        }
        self.messages_held()
    }

    /// Whether no more PUBLISH is to be handled now.
    pub fn messages_held(&mut self) -> bool {
        still(&mut self.messages_until).is_some()
    }

    /// Until when the client is not to be read, if it is over a rate now.
    pub fn held_until(&mut self) -> Option<Instant> {
        let messages = still(&mut self.messages_until);
        let bytes = still(&mut self.bytes_until);
        messages.max(bytes)
    }
}

/// Extends a hold by `wait` from now; counts and logs a hold that starts.
fn hold(
    until: &mut Option<Instant>,
    wait: Option<std::time::Duration>,
    limit: &'static str,
    log: &LogThrottle,
    client_id: &str,
) {
    let Some(wait) = wait else {
        return;
    };
    if still(until).is_none() {
        acted(limit, log, client_id);
    }
    *until = Some(Instant::now() + wait);
}

/// The hold's end while it lasts; a past one is cleared.
fn still(until: &mut Option<Instant>) -> Option<Instant> {
    if until.is_some_and(|at| Instant::now() >= at) {
        *until = None;
    }
    *until
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use rookery_codec::{ByteString, ProtocolVersion, QoS};

    use super::*;
    use crate::hub::SubEntry;

    fn connect(client_id: &str) -> Connect {
        rookery_codec::Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn mqtt_3_1_3_5_a_client_id_over_the_maximum_is_refused_with_0x85() {
        let limits = Limits::default();
        assert_eq!(limits.max_client_id_length, 128);
        assert_eq!(check_client_id(&connect(&"a".repeat(128)), &limits), Ok(()));
        assert_eq!(
            check_client_id(&connect(&"a".repeat(129)), &limits),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert_eq!(
            check_client_id(&connect(&"€".repeat(43)), &limits),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
    }

    fn granted(codes: &[ReasonCode], filters: &[&str]) -> Granted {
        Granted {
            reason_codes: codes.to_vec(),
            accepted: filters
                .iter()
                .map(|filter| {
                    (
                        ByteString::from(*filter),
                        SubEntry {
                            options: Default::default(),
                            subscription_id: 0,
                        },
                    )
                })
                .collect(),
        }
    }

    fn filters(granted: &Granted) -> Vec<&str> {
        granted.accepted.iter().map(|(f, _)| f.as_ref()).collect()
    }

    #[test]
    fn filters_over_max_subscriptions_get_0x97_and_are_not_recorded() {
        let limits = Limits {
            max_subscriptions: 3,
            ..Limits::default()
        };
        let ok = ReasonCode::granted(QoS::AtLeastOnce);
        // Two held already; a third fits, the fourth does not, and an
        // invalid filter in between keeps its own code.
        let mut answer = granted(
            &[ok, ReasonCode::TopicFilterInvalid, ok, ok],
            &["c", "d", "a"],
        );
        let refused =
            limit_subscriptions(&mut answer, &[false, false, true], 2, &limits, true, "x");
        assert_eq!(refused, 1);
        assert_eq!(
            answer.reason_codes,
            vec![
                ok,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::QuotaExceeded,
                ok
            ],
            "`a` replaces a subscription the session holds: no more room needed"
        );
        assert_eq!(filters(&answer), vec!["c", "a"]);
    }

    #[test]
    fn a_3_1_1_client_gets_0x80_over_max_subscriptions() {
        let limits = Limits {
            max_subscriptions: 1,
            ..Limits::default()
        };
        let ok = ReasonCode::granted(QoS::AtMostOnce);
        let mut answer = granted(&[ok, ok], &["a", "b"]);
        limit_subscriptions(&mut answer, &[false, false], 0, &limits, false, "x");
        assert_eq!(answer.reason_codes, vec![ok, ReasonCode::UnspecifiedError]);
        assert_eq!(filters(&answer), vec!["a"]);
    }

    #[test]
    fn the_same_new_filter_twice_in_one_subscribe_counts_once() {
        let limits = Limits {
            max_subscriptions: 1,
            ..Limits::default()
        };
        let ok = ReasonCode::granted(QoS::AtMostOnce);
        let mut answer = granted(&[ok, ok], &["a", "a"]);
        assert_eq!(
            limit_subscriptions(&mut answer, &[false, false], 0, &limits, true, "x"),
            0
        );
    }

    #[test]
    fn no_maximum_refuses_nothing() {
        let limits = Limits {
            max_subscriptions: 0,
            ..Limits::default()
        };
        let ok = ReasonCode::granted(QoS::AtMostOnce);
        let mut answer = granted(&[ok], &["a"]);
        assert_eq!(
            limit_subscriptions(&mut answer, &[false], 1_000_000, &limits, true, "x"),
            0
        );
    }

    /// How long from now until `until`, which must be within (half of
    /// `expected`, `expected`]: real time passes while a test runs.
    fn assert_about(until: Instant, expected: Duration) {
        let left = until - Instant::now();
        assert!(left <= expected && left >= expected / 2, "{left:?}");
    }

    #[tokio::test]
    async fn a_client_over_its_message_rate_is_held_until_a_token_returns() {
        let limits = Limits {
            messages_rate: 10,
            ..Limits::default()
        };
        let mut rate = PublishRate::new(&limits).unwrap();
        for _ in 0..10 {
            assert!(!rate.published("x"));
        }
        assert!(rate.published("x"), "the eleventh in the same instant");
        let until = rate.held_until().unwrap();
        assert_about(until, Duration::from_millis(100));
        tokio::time::sleep_until(until).await;
        assert!(!rate.messages_held());
        assert_eq!(rate.held_until(), None);
    }

    #[tokio::test]
    async fn a_client_over_its_byte_rate_is_held_until_the_debt_is_paid() {
        let limits = Limits {
            bytes_rate: 1000,
            ..Limits::default()
        };
        let mut rate = PublishRate::new(&limits).unwrap();
        rate.read(3000, "x");
        // Not read for 2 s, but what was read is handled.
        assert!(!rate.messages_held());
        let until = rate.held_until().unwrap();
        assert_about(until, Duration::from_secs(2));
        assert!(rate.held_until().is_some(), "still held");
    }

    #[test]
    fn no_rate_is_no_throttle() {
        assert!(PublishRate::new(&Limits::default()).is_none());
    }
}
