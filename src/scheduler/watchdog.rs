//! One watchdog for a running attempt, its model load and its run alike: a pure
//! `tick(now, ...) -> Action` over the clock, the last word from the worker, and the cancel
//! and stop requests. The attempt does what it says; the tests below say what it says when.

use std::time::{Duration, Instant};

/// The watchdog's clocks (from the configuration and the protocol's timings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `scheduler.run_timeout`, from the attempt's start.
    pub timeout: Duration,
    /// With no word from the worker for this long, ask it (ping).
    pub quiet_before_ping: Duration,
    /// No pong within this: the worker hangs.
    pub pong_timeout: Duration,
    /// `scheduler.cancel_grace`: from the cancel request to the kill.
    pub cancel_grace: Duration,
    /// `daemon.stop_grace`: from the stop request to handing the run back.
    pub stop_grace: Duration,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep waiting for the worker.
    Wait,
    /// Ask the worker whether it is alive.
    Ping,
    /// Ask the worker to stop the run.
    Cancel,
    /// Kill the worker and end the attempt so.
    End(Stop),
}

/// Why the watchdog ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    TimedOut,
    /// No pong within `pong_timeout`.
    Hung,
    /// Cancelled, and the worker did not stop within `cancel_grace`.
    Cancelled,
    /// The daemon is stopping and `stop_grace` passed: the run goes back to the queue.
    HandedBack,
}

#[derive(Debug, Clone)]
pub struct Watchdog {
    limits: Limits,
    started: Instant,
    last_word: Instant,
    ping_sent: Option<Instant>,
    cancel_sent: Option<Instant>,
    stop_seen: Option<Instant>,
}

impl Watchdog {
    pub fn new(limits: Limits, now: Instant) -> Watchdog {
        Watchdog { limits, started: now, last_word: now, ping_sent: None, cancel_sent: None, stop_seen: None }
    }

    /// The worker said something: it is alive.
    pub fn heard(&mut self, now: Instant) {
        self.last_word = now;
        self.ping_sent = None;
    }

    /// Whether a cancel was asked of the worker (a death after it is the cancel's doing).
    pub fn cancelling(&self) -> bool {
        self.cancel_sent.is_some()
    }

    /// What to do at `now`, given whether a cancel was requested and whether the daemon is
    /// stopping. Ping and Cancel are each returned once; End is final.
    pub fn tick(&mut self, now: Instant, cancel_requested: bool, stopping: bool) -> Action {
        let l = self.limits;
        if now.duration_since(self.started) > l.timeout {
            return Action::End(Stop::TimedOut);
        }
        match self.ping_sent {
            Some(t) if now.duration_since(t) > l.pong_timeout => return Action::End(Stop::Hung),
            None if now.duration_since(self.last_word) > l.quiet_before_ping => {
                self.ping_sent = Some(now);
                return Action::Ping;
            }
            _ => {}
        }
        match self.cancel_sent {
            None if cancel_requested => {
                self.cancel_sent = Some(now);
                return Action::Cancel;
            }
            Some(t) if now.duration_since(t) > l.cancel_grace => return Action::End(Stop::Cancelled),
            _ => {}
        }
        if stopping {
            let since = *self.stop_seen.get_or_insert(now);
            if now.duration_since(since) > l.stop_grace {
                return Action::End(Stop::HandedBack);
            }
        }
        Action::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(100),
        quiet_before_ping: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(15),
        cancel_grace: Duration::from_secs(10),
        stop_grace: Duration::from_secs(20),
    };

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_quiet_worker_is_pinged_then_declared_hung_unless_it_answers() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LIMITS, t0);
        assert_eq!(w.tick(at(t0, 29), false, false), Action::Wait);
        assert_eq!(w.tick(at(t0, 31), false, false), Action::Ping);
        assert_eq!(w.tick(at(t0, 40), false, false), Action::Wait, "one ping, then wait for its pong");
        w.heard(at(t0, 41));
        assert_eq!(w.tick(at(t0, 60), false, false), Action::Wait, "it answered: quiet again from 41 s");
        assert_eq!(w.tick(at(t0, 72), false, false), Action::Ping);
        assert_eq!(w.tick(at(t0, 88), false, false), Action::End(Stop::Hung));
    }

    #[test]
    fn the_timeout_counts_from_the_start_whatever_the_worker_says() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LIMITS, t0);
        for s in (10..100).step_by(10) {
            w.heard(at(t0, s));
            assert_eq!(w.tick(at(t0, s), false, false), Action::Wait);
        }
        w.heard(at(t0, 101));
        assert_eq!(w.tick(at(t0, 101), false, false), Action::End(Stop::TimedOut));
    }

    #[test]
    fn cancel_asks_once_then_kills_after_the_grace() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LIMITS, t0);
        w.heard(at(t0, 5));
        assert_eq!(w.tick(at(t0, 5), true, false), Action::Cancel);
        assert!(w.cancelling());
        w.heard(at(t0, 10));
        assert_eq!(w.tick(at(t0, 10), true, false), Action::Wait);
        w.heard(at(t0, 16));
        assert_eq!(w.tick(at(t0, 16), true, false), Action::End(Stop::Cancelled));
    }

    #[test]
    fn a_stop_hands_the_run_back_after_the_stop_grace() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(LIMITS, t0);
        w.heard(at(t0, 1));
        assert_eq!(w.tick(at(t0, 1), false, true), Action::Wait, "the grace starts now");
        w.heard(at(t0, 20));
        assert_eq!(w.tick(at(t0, 20), false, true), Action::Wait);
        w.heard(at(t0, 22));
        assert_eq!(w.tick(at(t0, 22), false, true), Action::End(Stop::HandedBack));
    }
}
