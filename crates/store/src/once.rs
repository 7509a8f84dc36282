//! Logging what keeps happening once: a limit or a refusal that acts is
//! counted each time in a metric and logged at `warn` the first time only
//! (later ones at `debug`), so that an attacker or a flood cannot fill the
//! log. Shared by the layers above, which all depend on the store.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The (what, reason) pairs logged so far in this process.
static LOGGED: Mutex<BTreeSet<(&'static str, &'static str)>> = Mutex::new(BTreeSet::new());

/// Whether `reason` of `what` (a metric's name, say) acts for the first
/// time in this process: then log it loudly; the metric counts every time.
pub fn first_time(what: &'static str, reason: &'static str) -> bool {
    LOGGED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((what, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_first_once() {
        assert!(first_time("once-test", "a"));
        assert!(!first_time("once-test", "a"));
        assert!(first_time("once-test", "b"));
        assert!(first_time("once-other-test", "a"));
    }
}
