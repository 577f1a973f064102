//! Metrics and the status page (off unless configured):
//!
//! - `daemon.listen`: a small HTTP/1.1 server on its own thread (std only): `/metrics`
//!   (Prometheus text format 0.0.4), `/status.json` (the document the daemon writes as
//!   status.json), `/` (a status page that polls `/status.json` and `/runs.json`), and
//!   `/runs/<run id>/` (a read-only listing of a finished run's outbox folder and its files).
//! - `daemon.metrics_file`: the same metrics for node_exporter's textfile collector,
//!   replaced atomically every `daemon.status_interval`.
//!
//! Both read the registry the daemon's parts record into ([`crate::metrics`]), the store
//! (a connection of their own) and the disks; neither writes anything but the textfile.
//! [`Web::stop`] ends and joins every thread they started.

mod http;
mod render;
mod runs;

use crate::config::Config;
use crate::layout::Layout;
use crate::metrics::Registry;
use crate::store::Store;
use http::{HttpError, Response};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client may take to send its request, and each write to it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 32;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen on daemon.listen = {addr:?}: {source} (expected a free address such as \"127.0.0.1:9464\", or \"\" for none)")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
    #[error("the metrics cannot read the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What the server and the textfile writer read.
struct Ctx {
    registry: Arc<Registry>,
    store: Mutex<Store>,
    layout: Layout,
    finished: Mutex<render::Finished>,
    stop: AtomicBool,
}

impl Ctx {
    fn metrics(&self) -> String {
        let snap = self.registry.snapshot();
        let from_store = match self.store.lock() {
            Ok(store) => {
                let counts = store.counts().map_err(|e| tracing::debug!(error = %e, "metrics: no run counts")).ok();
                let finished = self
                    .finished
                    .lock()
                    .ok()
                    .and_then(|mut f| f.update(&store).map_err(|e| tracing::debug!(error = %e, "metrics: no finished counts")).ok());
                render::FromStore { counts, finished }
            }
            Err(_) => render::FromStore { counts: None, finished: None },
        };
        let disks = [("outbox", self.layout.outbox()), ("state", self.layout.state())];
        render::metrics(&snap, &from_store, &disks)
    }

    /// The status document the schedulers built last (the file on disk may be an earlier
    /// daemon's until the first is built, so it is not read).
    fn status(&self) -> Option<Vec<u8>> {
        self.registry.status().and_then(|v| serde_json::to_vec_pretty(&v).ok())
    }
}

/// The endpoint and the textfile writer, while they run.
pub struct Web {
    ctx: Option<Arc<Ctx>>,
    threads: Vec<JoinHandle<()>>,
    /// Where the server listens (the port chosen when `daemon.listen` asked for port 0).
    pub local_addr: Option<std::net::SocketAddr>,
}

impl Web {
    /// Starts what the configuration asks for (nothing when `daemon.listen` and
    /// `daemon.metrics_file` are empty). A bind failure is an error naming the address.
    /// Both keys are read here only: changing them takes a restart.
    pub fn start(config: &Config, registry: Arc<Registry>) -> Result<Web, WebError> {
        let listen = config.daemon.listen.trim();
        let file = config.daemon.metrics_file.clone();
        if listen.is_empty() && file.as_os_str().is_empty() {
            return Ok(Web { ctx: None, threads: Vec::new(), local_addr: None });
        }
        let listener = if listen.is_empty() {
            None
        } else {
            let l = TcpListener::bind(listen).map_err(|source| WebError::Bind { addr: listen.to_string(), source })?;
            l.set_nonblocking(true).map_err(|source| WebError::Bind { addr: listen.to_string(), source })?;
            Some(l)
        };
        let layout = Layout::of(&config.paths);
        let ctx = Arc::new(Ctx {
            registry,
            store: Mutex::new(Store::open(&layout.database())?),
            layout,
            finished: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let mut web = Web { ctx: Some(Arc::clone(&ctx)), threads: Vec::new(), local_addr: None };
        if let Some(listener) = listener {
            web.local_addr = listener.local_addr().ok();
            // The address bound (a port 0 in daemon.listen gets one chosen here).
            let bound = web.local_addr.map_or_else(|| listen.to_string(), |a| a.to_string());
            tracing::info!(address = %bound, "serving /metrics, /status.json and the status page");
            let c = Arc::clone(&ctx);
            let t = std::thread::Builder::new()
                .name("web".into())
                .spawn(move || serve(listener, c))
                .map_err(|source| WebError::Thread { what: "web", source })?;
            web.threads.push(t);
        }
        if !file.as_os_str().is_empty() {
            let every = config.daemon.status_interval.0;
            let c = Arc::clone(&ctx);
            let t = std::thread::Builder::new()
                .name("metrics-file".into())
                .spawn(move || write_textfile_every(&c, &file, every))
                .map_err(|source| WebError::Thread { what: "metrics-file", source })?;
            web.threads.push(t);
        }
        Ok(web)
    }

    /// Stops the server and the textfile writer (which writes once more) and joins them.
    pub fn stop(self) {
        drop(self);
    }
}

/// Dropped (a start-up that fails later, say), it stops and joins just the same.
impl Drop for Web {
    fn drop(&mut self) {
        if let Some(ctx) = &self.ctx {
            ctx.stop.store(true, Ordering::SeqCst);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The textfile: written at once, then every `every`, and a last time at stop.
fn write_textfile_every(ctx: &Ctx, path: &std::path::Path, every: Duration) {
    let mut failing: Option<String> = None;
    loop {
        let text = ctx.metrics();
        // Temp beside it (hidden, `.tmp`: the collector reads only `*.prom`), then rename.
        match crate::fsutil::write_atomic(path, text.as_bytes()) {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!(path = %path.display(), "the metrics file is written again");
                }
            }
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    tracing::warn!(path = %path.display(), error = %why, "cannot write daemon.metrics_file");
                }
                failing = Some(why);
            }
        }
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let until = Instant::now() + every;
        while Instant::now() < until && !ctx.stop.load(Ordering::SeqCst) {
            std::thread::sleep(ACCEPT_POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

/// The accept loop: a thread per connection, at most [`MAX_CONNECTIONS`]; all joined at stop.
fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut told: Option<String> = None;
    while !ctx.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                conns.retain(|t| !t.is_finished());
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (c, a) = (Arc::clone(&ctx), Arc::clone(&active));
                let spawned = std::thread::Builder::new().name("web-conn".into()).spawn(move || {
                    handle(stream, &c);
                    a.fetch_sub(1, Ordering::SeqCst);
                });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(e) => {
                        active.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!(error = %e, "cannot start a thread for a web connection");
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                // Out of file descriptors, say: said once, then waited out.
                let why = e.to_string();
                if told.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "cannot accept a web connection");
                    told = Some(why);
                }
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

fn busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = Response::new(503, "text/plain; charset=utf-8", "503 too many connections\n").write_to(&mut stream, None, &|| true);
}

fn handle(mut stream: TcpStream, ctx: &Ctx) {
    // Accepted sockets inherit the listener's non-blocking mode on some systems.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (method, response) = match http::read_head(&mut stream).and_then(|h| http::parse_head(&h)) {
        Ok(req) => (Some(req.method), route(ctx, &req.path)),
        Err(e) => (None, Response::error(&e)),
    };
    let keep_going = || !ctx.stop.load(Ordering::SeqCst);
    if let Err(e) = response.write_to(&mut stream, method, &keep_going) {
        tracing::debug!(error = %e, "web client went away");
    }
    if method.is_none() {
        // What the client still sends (an oversized head, a body) is read and dropped for
        // a moment: closing with unread bytes makes the kernel reset the connection, and
        // the client would lose the error response before reading it.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 4096];
        let mut left = 256 * 1024;
        while left > 0 {
            match std::io::Read::read(&mut stream, &mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    }
}

fn route(ctx: &Ctx, path: &str) -> Response {
    match path {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", PAGE_HTML),
        "/assets/page.css" => Response::new(200, "text/css; charset=utf-8", PAGE_CSS),
        "/assets/page.js" => Response::new(200, "text/javascript; charset=utf-8", PAGE_JS),
        "/metrics" => Response::new(200, crate::metrics::CONTENT_TYPE, ctx.metrics()),
        "/status.json" => match ctx.status() {
            Some(body) => Response::new(200, "application/json", body),
            None => Response::new(503, "application/json", "{\"error\": \"no status yet: the daemon is starting\"}\n"),
        },
        "/runs.json" => {
            let listed = ctx.store.lock().map_err(|_| "the store lock is poisoned".to_string()).and_then(|store| {
                let layout = served_layout(&ctx.layout);
                runs::recent(&store, &layout).map_err(|e| e.to_string())
            });
            match listed {
                Ok(v) => Response::new(200, "application/json", serde_json::to_vec(&v).unwrap_or_default()),
                Err(e) => Response::new(503, "application/json", serde_json::json!({"error": e}).to_string()),
            }
        }
        p => match p.strip_prefix("/runs/").map(|r| r.split_once('/').unwrap_or((r, ""))) {
            Some((id, rest)) => runs::serve(&served_layout(&ctx.layout), id, rest).unwrap_or_else(|| Response::error(&HttpError::NotFound)),
            None => Response::error(&HttpError::NotFound),
        },
    }
}

/// The layout with the outbox resolved (links and `..` gone), as files are opened from it
/// without following links.
fn served_layout(layout: &Layout) -> Layout {
    let outbox = std::fs::canonicalize(layout.outbox()).unwrap_or_else(|_| crate::fsutil::absolute(layout.outbox()));
    Layout::new(layout.inbox(), &outbox, layout.state())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path) -> Ctx {
        let layout = Layout::new(&dir.join("inbox"), &dir.join("outbox"), &dir.join("state"));
        std::fs::create_dir_all(layout.outbox()).unwrap();
        std::fs::create_dir_all(layout.state()).unwrap();
        Ctx {
            registry: Arc::new(Registry::new()),
            store: Mutex::new(Store::open(&layout.database()).unwrap()),
            layout,
            finished: Mutex::default(),
            stop: AtomicBool::new(false),
        }
    }

    #[test]
    fn routes_answer_known_paths_and_404_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        assert_eq!(route(&c, "/").status, 200);
        assert_eq!(route(&c, "/assets/page.js").status, 200);
        assert_eq!(route(&c, "/metrics").content_type, crate::metrics::CONTENT_TYPE);
        assert_eq!(route(&c, "/status.json").status, 503, "nothing built or written yet");
        c.registry.set_status(&serde_json::json!({"queue": {"queued": 1}}));
        assert_eq!(route(&c, "/status.json").status, 200);
        assert_eq!(route(&c, "/runs.json").status, 200);
        for p in ["/nope", "/metrics/", "/runs/", "/runs/rs_abcdefghijkl/", "/runs/../state/cosmos.db", "/assets/../page.html"] {
            assert_eq!(route(&c, p).status, 404, "{p}");
        }
    }

    #[test]
    fn the_listen_key_is_checked_with_the_configuration() {
        let origin = std::path::Path::new("cosmosd.toml");
        assert!(Config::from_toml("[daemon]\nlisten = \"127.0.0.1:9464\"\n", origin).is_ok());
        assert!(Config::from_toml("[daemon]\nlisten = \"[::1]:0\"\n", origin).is_ok());
        for bad in ["9464", "localhost", ":9464", "127.0.0.1:99999", "127.0.0.1:port"] {
            let err = Config::from_toml(&format!("[daemon]\nlisten = \"{bad}\"\n"), origin).expect_err(bad).to_string();
            assert!(err.contains("daemon.listen") && err.contains("HOST:PORT") && err.contains("cosmosd.toml"), "{err}");
        }
    }

    #[test]
    fn a_taken_address_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut config = Config::default();
        config.paths.inbox = dir.path().join("inbox");
        config.paths.outbox = dir.path().join("outbox");
        config.paths.state = dir.path().join("state");
        std::fs::create_dir_all(&config.paths.state).unwrap();
        config.daemon.listen = addr.clone();
        let err = Web::start(&config, Arc::new(Registry::new())).err().unwrap().to_string();
        assert!(err.contains(&addr) && err.contains("daemon.listen"), "{err}");
        config.daemon.listen = "not an address".into();
        assert!(Web::start(&config, Arc::new(Registry::new())).err().unwrap().to_string().contains("not an address"));
    }
}
