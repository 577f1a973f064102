//! One connection to the queue database, re-established after the server went away, and
//! the retry loop every operation runs in. The URL's password never appears in errors.

use super::{ClusterError, Result};
use postgres::config::Host;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// What an operation's closure can fail with: the database (retried when transient) or a
/// verdict of the queue itself (passed through as it is).
pub(super) enum Failure {
    Pg(postgres::Error),
    Queue(ClusterError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Self {
        Failure::Queue(e)
    }
}

pub(super) type OpResult<T> = std::result::Result<T, Failure>;

/// Checks `cluster.database` without connecting: it parses, names a host, and asks for no
/// TLS (not built in yet).
pub fn check_url(url: &str) -> Result<()> {
    parse(url).map(|_| ())
}

/// `user@host:port/dbname`: the database as messages name it, without the password.
pub fn describe_url(url: &str) -> Result<String> {
    parse(url).map(|c| describe(&c))
}

fn parse(url: &str) -> Result<postgres::Config> {
    crate::config::parse_database_url(url).map_err(ClusterError::Url)
}

fn describe(c: &postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let db = c.get_dbname().or(c.get_user()).unwrap_or("?");
    format!("{}@{host}:{port}/{db}", c.get_user().unwrap_or("?"))
}

/// How long an operation keeps reconnecting by default (a restart, a failover).
pub(super) const RETRY_FOR: Duration = Duration::from_secs(60);

pub(super) struct Conn {
    url: String,
    config: postgres::Config,
    target: String,
    client: Option<Client>,
    pub(super) retry_for: Duration,
}

impl Conn {
    /// Parses the URL; connects on first use.
    pub(super) fn new(url: &str) -> Result<Conn> {
        let mut config = parse(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanished (partition, power cut) is noticed in seconds, not the
        // kernel's default of hours: the lease is what matters, and it is minutes at most.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        config.keepalives_idle(Duration::from_secs(15));
        if config.get_application_name().is_none() {
            config.application_name("cosmosd");
        }
        // As libpq does: a password kept out of the configuration file (a Kubernetes Secret
        // in the environment, say) comes from PGPASSWORD when the URL names none.
        if config.get_password().is_none() {
            if let Some(pw) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
                config.password(pw.as_encoded_bytes());
            }
        }
        let target = describe(&config);
        Ok(Conn { url: url.trim().to_string(), config, target, client: None, retry_for: RETRY_FOR })
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on a live connection; a transient failure (lost connection, server
    /// restarting, serialization conflict) is retried with backoff for `retry_for`.
    pub(super) fn run<T>(&mut self, op: &'static str, mut f: impl FnMut(&mut Client) -> OpResult<T>) -> Result<T> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let error = match self.client() {
                Ok(client) => match f(client) {
                    Ok(v) => return Ok(v),
                    Err(Failure::Queue(e)) => return Err(e),
                    Err(Failure::Pg(e)) => {
                        // A lost race leaves the connection usable; a broken link does not.
                        if client.is_closed() || (is_transient(&e) && !is_conflict(&e)) {
                            self.client = None;
                        }
                        e
                    }
                },
                Err(e) => e,
            };
            if !is_transient(&error) {
                return Err(ClusterError::Db { target: self.target.clone(), op, source: error });
            }
            if start.elapsed() >= self.retry_for {
                return Err(ClusterError::Unavailable { target: self.target.clone(), tried: start.elapsed(), source: error });
            }
            tracing::debug!(target = %self.target, op, error = %error, "queue database: trying again");
            std::thread::sleep(delay.min(self.retry_for.saturating_sub(start.elapsed())));
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn client(&mut self) -> std::result::Result<&mut Client, postgres::Error> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.config)?,
        };
        Ok(self.client.insert(client))
    }

    /// The parsed configuration, for a second connection to the same database.
    pub(super) fn config(&self) -> &postgres::Config {
        &self.config
    }
}

pub(super) fn connect(config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
    config.connect(NoTls)
}

/// A serialization failure or deadlock: the transaction lost a race and may simply run again
/// on the same connection.
fn is_conflict(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| matches!(c.code(), "40001" | "40P01"))
}

/// Failures that pass by themselves: the connection broke or timed out, the server is
/// shutting down, starting up or out of connection slots, or a transaction lost a race.
pub(super) fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() || is_conflict(e) {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || c.starts_with("57P") || c == "53300";
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    let text = e.to_string();
    text.starts_with("timeout") || text.starts_with("error connecting")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_described_without_the_password() {
        assert_eq!(describe_url("postgres://cosmos:s3cret@db.internal:6432/queue").unwrap(), "cosmos@db.internal:6432/queue");
        assert_eq!(describe_url("host=10.0.0.5 user=cosmos dbname=q password=s3cret").unwrap(), "cosmos@10.0.0.5:5432/q");
        assert_eq!(describe_url("postgres://cosmos@db").unwrap(), "cosmos@db:5432/cosmos", "dbname defaults to the user");
        for (bad, says) in [
            ("http://x", "invalid connection string"),
            ("postgres:///db", "no host"),
            ("postgres://db.internal/q", "no user"),
            ("postgres://cosmos@db/q?sslmode=require", "TLS"),
        ] {
            let err = check_url(bad).expect_err(bad).to_string();
            assert!(err.contains(says) && err.starts_with("cluster.database"), "{bad}: {err}");
        }
        for bad in ["postgres://u:hunter2@db/q?sslmode=bogus", "postgres://u:hunter2@db:notaport/q", "user=u password=hunter2 port=x"] {
            let err = check_url(bad).expect_err(bad).to_string();
            assert!(!err.contains("hunter2") && err.contains("expected"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_unreachable_database_is_retried_then_reported_by_address() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut conn = Conn::new(&format!("postgres://cosmos:pw@127.0.0.1:{port}/q")).unwrap();
        conn.retry_for = Duration::from_millis(300);
        let mut calls = 0;
        let err = conn
            .run("test", |_| {
                calls += 1;
                Ok(())
            })
            .expect_err("nothing listens");
        assert_eq!(calls, 0, "never connected, so never ran");
        let text = err.to_string();
        assert!(matches!(err, ClusterError::Unavailable { .. }), "{text}");
        assert!(text.contains(&format!("cosmos@127.0.0.1:{port}/q")) && !text.contains("pw"), "{text}");
    }
}
