//! Sliding-window counts of recent events per key (an agent, an agent tree), bounded
//! in keys and in events kept per key: the one mechanism behind the watchdog's
//! proposal rate, the proposal store's hourly bound and the per-sender message rate.

use std::collections::{HashMap, VecDeque};

/// Keys tracked before idle ones are dropped.
const MAX_KEYS: usize = 10_000;
/// Most event times kept per key.
const MAX_PER_KEY: usize = 10_000;

/// When each key's recent events happened (ms), within one window.
pub(crate) struct RateWindows {
    window_ms: u64,
    times: HashMap<String, VecDeque<u64>>,
}

impl RateWindows {
    /// Counts over the last `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        RateWindows {
            window_ms,
            times: HashMap::new(),
        }
    }

    /// The events `key` had in the window ending at `now_ms`. Older ones are dropped,
    /// and keys with none left when too many keys are held.
    pub fn recent(&mut self, key: &str, now_ms: u64) -> usize {
        let since = now_ms.saturating_sub(self.window_ms);
        if self.times.len() >= MAX_KEYS && !self.times.contains_key(key) {
            self.times
                .retain(|_, t| t.back().is_some_and(|at| *at >= since));
        }
        let times = self.times.entry(key.to_string()).or_default();
        while times.front().is_some_and(|at| *at < since) {
            times.pop_front();
        }
        times.len()
    }

    /// Records an event of `key` unless it already has `keep` in the window (beyond
    /// a limit, more need not be kept).
    pub fn record(&mut self, key: &str, now_ms: u64, keep: usize) {
        if self.recent(key, now_ms) < keep.min(MAX_PER_KEY)
            && let Some(times) = self.times.get_mut(key)
        {
            times.push_back(now_ms);
        }
    }

    /// Records an event of `key` if it had fewer than `max` in the window; whether it
    /// did.
    pub fn admit(&mut self, key: &str, now_ms: u64, max: usize) -> bool {
        if self.recent(key, now_ms) >= max {
            return false;
        }
        self.record(key, now_ms, max);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_up_to_its_limit_and_forgets_old_events() {
        let mut w = RateWindows::new(1_000);
        assert!(w.admit("a", 0, 2) && w.admit("a", 10, 2));
        assert!(!w.admit("a", 20, 2));
        assert!(w.admit("b", 20, 2), "keys are counted apart");
        assert_eq!(w.recent("a", 1_005), 1);
        assert!(w.admit("a", 1_011, 2));
        w.record("c", 0, 1);
        w.record("c", 1, 1);
        assert_eq!(w.recent("c", 2), 1, "nothing is kept beyond `keep`");
    }
}
