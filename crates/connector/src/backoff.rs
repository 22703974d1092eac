//! Reconnect backoff: "full jitter" (a uniformly random wait between zero and an exponentially
//! growing ceiling), so a fleet of connectors that lost the same edge does not come back in
//! lockstep.

use std::time::Duration;

use rand::Rng;

use crate::config::ReconnectSettings;

/// The smallest wait ever returned, so that a zero draw never turns into a busy loop.
const FLOOR: Duration = Duration::from_millis(50);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    settings: ReconnectSettings,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first step.
    pub fn new(settings: ReconnectSettings) -> Self {
        Backoff {
            settings,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait: `initial * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.settings
            .initial
            .saturating_mul(factor)
            .min(self.settings.max)
    }

    /// The next wait, at least `floor` (the edge's `retry_after`), and advance.
    pub fn next_delay(&mut self, floor: Duration) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jittered = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
        jittered.max(floor).max(FLOOR)
    }

    /// Start again from the first step (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReconnectSettings {
        ReconnectSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_max() {
        let mut backoff = Backoff::new(settings());
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay(Duration::ZERO);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_floor_and_ceiling() {
        let mut backoff = Backoff::new(settings());
        for _ in 0..1000 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(Duration::ZERO);
            assert!(delay >= FLOOR && delay <= ceiling.max(FLOOR), "{delay:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut backoff = Backoff::new(settings());
        let delay = backoff.next_delay(Duration::from_secs(30));
        assert!(delay >= Duration::from_secs(30));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(settings());
        backoff.attempt = u32::MAX;
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
        backoff.next_delay(Duration::ZERO);
    }
}
