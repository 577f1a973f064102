//! The host's lease keeper: one thread, on a connection of its own, renewing every lease
//! this host's slots hold (a run in the worker, or a finished one waiting to be published)
//! every third of the lease. A slot never waits on the database to learn where it stands:
//! [`LeaseKeeper::state`] answers from memory, and counts a lease lost once a whole lease
//! (less a tenth, for the clocks) has passed since the last renewal the database confirmed,
//! even while the keeper's own call hangs on a cut network. By then the reaper of another
//! host may have taken the run: its holder here must stop it and discard what it made.

use super::{ClusterError, PgQueue, Token};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a held lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held; `cancel`: someone asked (`cosmos cancel`, on any host) for the run to stop.
    Held { cancel: bool },
    /// No longer this host's: stop the run and discard its output.
    Lost(String),
}

struct Held {
    token: Token,
    lease: Duration,
    /// When the last renewal the database confirmed was sent (or the claim made).
    confirmed: Instant,
    cancel: bool,
    lost: Option<String>,
}

#[derive(Default)]
struct Inner {
    leases: Mutex<HashMap<String, Held>>,
    stop: AtomicBool,
    wake: Condvar,
}

/// See the module documentation. Dropping it stops and joins the thread.
pub struct LeaseKeeper {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts the keeper on `queue` (a connection of its own), renewing every `every`.
    pub fn start(mut queue: PgQueue, every: Duration) -> LeaseKeeper {
        // A renewal that cannot get through within a period is tried at the next one.
        queue.reconnect_within(every);
        let inner = Arc::new(Inner::default());
        let mine = inner.clone();
        let thread = std::thread::Builder::new().name("lease-keeper".into()).spawn(move || keep(queue, &mine, every)).ok();
        LeaseKeeper { inner, thread }
    }

    /// Starts keeping the lease a claim just took (`claimed`: when the claim was sent).
    pub fn hold(&self, run_id: &str, token: Token, lease: Duration, claimed: Instant) {
        if let Ok(mut l) = self.inner.leases.lock() {
            l.insert(run_id.to_string(), Held { token, lease, confirmed: claimed, cancel: false, lost: None });
        }
    }

    /// The run's attempt ended (finished under its token, or discarded): stop renewing.
    pub fn release(&self, run_id: &str) {
        if let Ok(mut l) = self.inner.leases.lock() {
            l.remove(run_id);
        }
    }

    /// Where the lease of `run_id` stands now; one this keeper does not hold is lost.
    pub fn state(&self, run_id: &str) -> LeaseState {
        let Ok(l) = self.inner.leases.lock() else { return LeaseState::Lost("the lease keeper failed".into()) };
        match l.get(run_id) {
            None => LeaseState::Lost("no lease is held for it here".into()),
            Some(h) => match &h.lost {
                Some(why) => LeaseState::Lost(why.clone()),
                None if h.confirmed.elapsed() >= lapse_after(h.lease) => LeaseState::Lost(format!(
                    "no renewal reached the queue database for {:.0}s (the lease is {:.0}s): another host may have taken the run",
                    h.confirmed.elapsed().as_secs_f64(),
                    h.lease.as_secs_f64()
                )),
                None => LeaseState::Held { cancel: h.cancel },
            },
        }
    }

    /// The token of a held lease.
    pub fn token(&self, run_id: &str) -> Option<Token> {
        self.inner.leases.lock().ok()?.get(run_id).map(|h| h.token)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A lease counts as lost this long after its last confirmed renewal: a tenth early, so
/// that this host stops before the database's clock says the lease is over.
fn lapse_after(lease: Duration) -> Duration {
    lease.mul_f64(0.9)
}

fn keep(mut queue: PgQueue, inner: &Inner, every: Duration) {
    while !inner.stop.load(Ordering::SeqCst) {
        let due: Vec<(String, Token, Duration)> = match inner.leases.lock() {
            Ok(mut l) => {
                // Lost by this host's clock is lost for good: renewing a lease the slot was
                // told is gone (and stopped its run for) would only keep it from the reaper.
                for h in l.values_mut().filter(|h| h.lost.is_none() && h.confirmed.elapsed() >= lapse_after(h.lease)) {
                    h.lost = Some(format!(
                        "no renewal reached the queue database for {:.0}s (the lease is {:.0}s): another host may have taken the run",
                        h.confirmed.elapsed().as_secs_f64(),
                        h.lease.as_secs_f64()
                    ));
                }
                l.iter().filter(|(_, h)| h.lost.is_none()).map(|(id, h)| (id.clone(), h.token, h.lease)).collect()
            }
            Err(_) => return,
        };
        for (id, token, lease) in due {
            let sent = Instant::now();
            let answer = queue.renew(&id, token, lease);
            let Ok(mut l) = inner.leases.lock() else { return };
            let Some(h) = l.get_mut(&id).filter(|h| h.token == token) else { continue };
            match answer {
                Ok(cancel) => {
                    h.confirmed = sent;
                    h.cancel = cancel;
                }
                Err(e @ ClusterError::Fenced { .. }) | Err(e @ ClusterError::NotFound(_)) => {
                    tracing::warn!(run = %id, token = %token, error = %e, "the lease is lost");
                    h.lost = Some(e.to_string());
                }
                Err(e) => tracing::warn!(run = %id, token = %token, error = %e, "cannot renew the lease now; trying again"),
            }
        }
        let Ok(l) = inner.leases.lock() else { return };
        let _ = inner.wake.wait_timeout(l, every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_lost_a_tenth_before_it_ends() {
        assert_eq!(lapse_after(Duration::from_secs(90)), Duration::from_secs(81));
        assert!(lapse_after(Duration::from_millis(10)) < Duration::from_millis(10));
    }
}
