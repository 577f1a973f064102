//! Wake-up on enqueue: `LISTEN cosmos_queue` on a connection of its own. PostgreSQL keeps
//! no notification for a listener that is not connected, so every return of
//! [`Waker::wait`] means "look at the queue now", and the caller still polls (every few
//! seconds) for what a lost notification or a lapsed lease elsewhere would not announce.

use super::conn::{self, is_transient, Conn};
use super::queue::CHANNEL;
use super::{ClusterError, Result};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::{Duration, Instant};

/// Why [`Waker::wait`] returned. Each means: look at the queue now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A run became claimable (enqueued, requeued, retried).
    Notified,
    /// Nothing was announced within the timeout: the polling fallback.
    TimedOut,
    /// The listening connection is back after a loss: notifications sent meanwhile are gone.
    Reconnected,
    /// The listening connection is lost (it is tried again at the next wait).
    Disconnected(String),
}

pub struct Waker {
    config: postgres::Config,
    target: String,
    client: Option<Client>,
}

impl Waker {
    /// Connects and listens; a database that is down now is not an error (the first wait
    /// says `Disconnected` and later waits reconnect).
    pub(super) fn connect(url: &str) -> Result<Waker> {
        let c = Conn::new(url)?;
        let mut waker = Waker { config: c.config().clone(), target: c.target().to_string(), client: None };
        waker.listen()?;
        Ok(waker)
    }

    fn listen(&mut self) -> Result<bool> {
        let attempt =
            conn::connect(&self.config).and_then(|mut client| client.batch_execute(&format!("LISTEN {CHANNEL}")).map(|()| client));
        match attempt {
            Ok(client) => {
                self.client = Some(client);
                Ok(true)
            }
            Err(e) if is_transient(&e) => Ok(false),
            Err(source) => Err(ClusterError::Db { target: self.target.clone(), op: "listen for new runs", source }),
        }
    }

    /// Blocks until a notification arrives or `timeout` passes. Several notifications that
    /// arrived together count as one wake-up.
    pub fn wait(&mut self, timeout: Duration) -> Result<Wake> {
        let start = Instant::now();
        let Some(client) = self.client.as_mut() else {
            if self.listen()? {
                return Ok(Wake::Reconnected);
            }
            // Down still: wait out the timeout here rather than spin on the caller's side.
            std::thread::sleep(timeout);
            return Ok(Wake::Disconnected(format!("cannot reach {} to listen", self.target)));
        };
        let got = {
            let mut notes = client.notifications();
            let got = notes.timeout_iter(timeout).next().map(|n| n.is_some());
            if matches!(got, Ok(true)) {
                // Drain what else is already here: one wake-up for a burst.
                while let Ok(Some(_)) = notes.iter().next() {}
            }
            got
        };
        match got {
            Ok(true) => Ok(Wake::Notified),
            Ok(false) if !client.is_closed() => Ok(Wake::TimedOut),
            result => {
                self.client = None;
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => "connection closed".to_string(),
                };
                // A connection that died at once is not a reason to return at once forever.
                std::thread::sleep(timeout.saturating_sub(start.elapsed()).min(Duration::from_millis(200)));
                Ok(Wake::Disconnected(format!("lost the listening connection to {}: {why}", self.target)))
            }
        }
    }
}
