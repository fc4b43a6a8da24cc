//! The restart policy, as a pure state machine so that it can be tested without processes.
//!
//! A service that exits is restarted after a delay that doubles with each consecutive quick exit
//! (from `initial_backoff_ms` up to `max_backoff_ms`). A run that lasted a whole window resets the
//! delay. A service that exits more than `max_restarts` times within `window_ms` is in a crash
//! loop: the supervisor gives up on it, and powers the VM off if it is critical.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use coffer_types::RestartPolicy;

/// What to do after a service exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It exited this many times within the window: stop trying.
    CrashLoop {
        /// Exits counted within the window.
        exits: usize,
        /// The window.
        window: Duration,
    },
}

/// Exit history of one service.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    exits: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartTracker {
    /// A tracker for a service that has not exited yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            exits: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Records an exit at `now` after a run of `ran_for`, and decides what happens next.
    pub fn on_exit(&mut self, now: Instant, ran_for: Duration) -> Decision {
        let window = Duration::from_millis(self.policy.window_ms);
        while let Some(&first) = self.exits.front() {
            if now.saturating_duration_since(first) > window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        self.exits.push_back(now);
        if self.exits.len() > self.policy.max_restarts as usize {
            return Decision::CrashLoop {
                exits: self.exits.len(),
                window,
            };
        }
        if ran_for >= window {
            self.consecutive = 0;
        }
        let factor = 1u64.checked_shl(self.consecutive).unwrap_or(u64::MAX);
        let delay = self
            .policy
            .initial_backoff_ms
            .saturating_mul(factor)
            .min(self.policy.max_backoff_ms);
        self.consecutive = self.consecutive.saturating_add(1);
        Decision::RestartAfter(Duration::from_millis(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            max_restarts: 5,
            window_ms: 60_000,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 100,
            ..policy()
        });
        let start = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|i| t.on_exit(start + Duration::from_secs(i), Duration::from_millis(10)))
            .collect();
        let ms = |d| Decision::RestartAfter(Duration::from_millis(d));
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        t.on_exit(start, Duration::from_millis(10));
        t.on_exit(start + Duration::from_secs(1), Duration::from_millis(10));
        let d = t.on_exit(start + Duration::from_secs(200), Duration::from_secs(120));
        assert_eq!(d, Decision::RestartAfter(Duration::from_millis(100)));
    }

    #[test]
    fn too_many_exits_within_the_window_is_a_crash_loop() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        for i in 0..5 {
            let d = t.on_exit(start + Duration::from_secs(i), Duration::from_millis(10));
            assert!(matches!(d, Decision::RestartAfter(_)), "exit {i}: {d:?}");
        }
        let d = t.on_exit(start + Duration::from_secs(5), Duration::from_millis(10));
        assert_eq!(
            d,
            Decision::CrashLoop {
                exits: 6,
                window: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn exits_older_than_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        for i in 0..5 {
            t.on_exit(
                start + Duration::from_secs(i * 30),
                Duration::from_millis(10),
            );
        }
        // Exits at 0, 30, 60, 90, 120 s: at 130 s only 90, 120 and 130 are in the window.
        let d = t.on_exit(start + Duration::from_secs(130), Duration::from_millis(10));
        assert!(matches!(d, Decision::RestartAfter(_)), "{d:?}");
    }
}
