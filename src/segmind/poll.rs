//! When to poll a submitted job's status URL.
//!
//! The schedule is a trait object so it can be swapped (a later, adaptive
//! schedule can learn typical latencies) without touching the client.

use std::time::Duration;

use crate::config::PollSettings;

/// Decides the wait before the next status poll.
pub trait PollSchedule: Send + Sync + std::fmt::Debug {
    /// The wait before poll number `polls_done + 1`, given the time since the
    /// job was submitted.
    fn next_delay(&self, polls_done: u32, since_submit: Duration) -> Duration;
}

/// Starts at `initial`, grows by `multiplier` per poll, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct ExponentialPoll {
    settings: PollSettings,
}

impl ExponentialPoll {
    pub fn new(settings: PollSettings) -> Self {
        Self { settings }
    }
}

impl PollSchedule for ExponentialPoll {
    fn next_delay(&self, polls_done: u32, _since_submit: Duration) -> Duration {
        let s = &self.settings;
        let factor = s.multiplier.powi(polls_done.min(64) as i32);
        let secs = (s.initial.as_secs_f64() * factor).min(s.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_geometrically_then_caps() {
        let p = ExponentialPoll::new(PollSettings {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
            multiplier: 1.5,
        });
        let delays: Vec<f64> = (0..6)
            .map(|n| p.next_delay(n, Duration::ZERO).as_secs_f64())
            .collect();
        assert_eq!(delays, vec![2.0, 3.0, 4.5, 6.75, 10.0, 10.0]);
    }

    #[test]
    fn a_45_second_job_needs_about_a_handful_of_polls() {
        let p = ExponentialPoll::new(PollSettings {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
            multiplier: 1.5,
        });
        let (mut t, mut polls) = (0.0, 0u32);
        while t < 45.0 {
            t += p
                .next_delay(polls, Duration::from_secs_f64(t))
                .as_secs_f64();
            polls += 1;
        }
        assert!(polls <= 8, "{polls} polls");
    }
}
