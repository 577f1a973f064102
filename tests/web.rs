//! The metrics endpoint and the status page against the real daemon (sim backend): the
//! figures move as a run finishes, survive a restart where the store keeps them, the
//! textfile matches, bad requests get their status; and a real headless Chromium renders
//! the page while a run goes and after it finished.

mod common;

use common::{drop_file, runs, wait_until, Daemon, Home};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The address the daemon logged it serves on (it was given port 0).
fn served_at(daemon: &Daemon) -> String {
    daemon.wait_log("serving /metrics", Duration::from_secs(10));
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("serving /metrics")).unwrap_or_default();
    let addr = line.split("address=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default();
    assert!(addr.starts_with("127.0.0.1:"), "no address in {line:?}");
    addr.to_string()
}

/// One raw request; the status code, the head and the body.
fn raw(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the response");
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, head, out[split + 4..].to_vec())
}

fn get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    raw(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
}

fn metrics(addr: &str) -> String {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    String::from_utf8(body).expect("utf-8 metrics")
}

/// The value of one series (`name{labels}` exactly as written), if there.
fn value(doc: &str, series: &str) -> Option<f64> {
    doc.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn completed(doc: &str) -> Option<f64> {
    value(doc, "cosmos_runs_finished_total{outcome=\"completed\"}")
}

fn job(name: &str) -> String {
    format!(
        "{{\"name\": \"{name}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{name}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}}}}}\n"
    )
}

fn config(job_seconds: &str, metrics_file: &Path) -> String {
    format!(
        "backend_args = [\"--job-seconds\", \"{job_seconds}\", \"--load-seconds\", \"0.5\"]\n\
         [daemon]\nlisten = \"127.0.0.1:0\"\nstatus_interval = \"300ms\"\nmetrics_file = \"{}\"\n",
        metrics_file.display()
    )
}

#[test]
fn metrics_move_as_a_run_finishes_and_the_store_backed_ones_survive_a_restart() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let prom = home.path().join("cosmos.prom");
    let daemon = Daemon::start(&home, &config("1", &prom), &[("COSMOS_FAKE_GPUS", "1:81920:2048")]);
    let addr = served_at(&daemon);
    assert!(wait_until(Duration::from_secs(10), || metrics(&addr).contains("cosmos_gpu_memory_total_bytes{")));
    let gpu = metrics(&addr);
    assert_eq!(value(&gpu, "cosmos_gpu_memory_total_bytes{gpu=\"0\",name=\"Fake GPU\"}"), Some(81920.0 * 1048576.0), "{gpu}");
    assert_eq!(value(&gpu, "cosmos_gpu_memory_used_bytes{gpu=\"0\",name=\"Fake GPU\"}"), Some(2048.0 * 1048576.0), "{gpu}");
    let util = value(&gpu, "cosmos_gpu_utilization_ratio{gpu=\"0\",name=\"Fake GPU\"}").expect("a utilisation gauge");
    assert!((0.0..=1.0).contains(&util), "{util}");

    let before = metrics(&addr);
    assert_eq!(completed(&before), Some(0.0), "{before}");
    assert_eq!(value(&before, "cosmos_queue_runs{status=\"queued\"}"), Some(0.0), "{before}");
    assert_eq!(value(&before, "cosmos_run_duration_seconds_count"), Some(0.0));
    for family in ["cosmos_intake_latency_seconds", "cosmos_model_load_duration_seconds", "cosmos_disk_free_bytes", "cosmos_worker_state"] {
        assert!(before.contains(&format!("# TYPE {family} ")), "{family} missing:\n{before}");
    }

    drop_file(&home, "one.jsonl", &job("web-one"));
    assert!(
        wait_until(LONG, || completed(&metrics(&addr)) == Some(1.0)),
        "the completed counter never reached 1:\n{}\n{}",
        metrics(&addr),
        daemon.log_text()
    );
    let after = metrics(&addr);
    assert_eq!(value(&after, "cosmos_queue_runs{status=\"completed\"}"), Some(1.0), "{after}");
    assert_eq!(value(&after, "cosmos_run_duration_seconds_count"), Some(1.0), "{after}");
    // The sim run takes a second: in the 5 s bucket, not the 1 s one... or just in it.
    assert_eq!(value(&after, "cosmos_run_duration_seconds_bucket{le=\"5\"}"), Some(1.0), "{after}");
    assert_eq!(value(&after, "cosmos_model_loads_total{outcome=\"loaded\"}"), Some(1.0), "{after}");
    assert_eq!(value(&after, "cosmos_model_load_duration_seconds_count"), Some(1.0), "{after}");
    assert_eq!(value(&after, "cosmos_intake_submissions_total{fate=\"accepted\"}"), Some(1.0), "{after}");
    assert_eq!(value(&after, "cosmos_intake_latency_seconds_count"), Some(1.0), "{after}");

    // /status.json is the daemon's status document.
    let (status, head, body) = get(&addr, "/status.json");
    assert_eq!(status, 200, "{head}");
    let doc: Value = serde_json::from_slice(&body).expect("status.json parses");
    assert_eq!(doc["daemon"]["pid"], daemon.child.id());
    assert!(doc["workers"].as_array().is_some_and(|w| !w.is_empty()), "{doc}");
    assert!(wait_until(LONG, || {
        let (_, _, b) = get(&addr, "/status.json");
        serde_json::from_slice::<Value>(&b).is_ok_and(|d| d["queue"]["completed"] == 1)
    }));

    // The run's folder, by its id: listed, and its files served as they are on disk.
    let id = runs(&home)[0]["id"].as_str().unwrap().to_string();
    let (status, _, listing) = get(&addr, &format!("/runs/{id}/"));
    assert_eq!(status, 200);
    let listing = String::from_utf8(listing).unwrap();
    assert!(listing.contains(&format!("/runs/{id}/output.mp4")) && listing.contains("manifest.json"), "{listing}");
    let on_disk = std::fs::read(home.outbox().join(format!("run_{id}/output.mp4"))).unwrap();
    let (status, head, video) = get(&addr, &format!("/runs/{id}/output.mp4"));
    assert_eq!((status, video.len()), (200, on_disk.len()), "{head}");
    assert!(video == on_disk && head.contains("video/mp4"), "{head}");
    let (status, _, runs_json) = get(&addr, "/runs.json");
    assert_eq!(status, 200);
    let recent: Value = serde_json::from_slice(&runs_json).unwrap();
    assert_eq!(recent[0]["id"], id.as_str());
    assert_eq!(recent[0]["outcome"], "completed");
    assert_eq!(recent[0]["folder"], format!("/runs/{id}/"));

    // What is not served, and garbage.
    let outside = format!("/runs/{id}/../../state/cosmos.db");
    for (request, want) in [
        (format!("GET {outside} HTTP/1.1\r\n\r\n"), 404),
        ("GET /runs/rs_aaaaaaaaaaaa/ HTTP/1.1\r\n\r\n".to_string(), 404),
        ("GET /nothing-here HTTP/1.1\r\n\r\n".to_string(), 404),
        ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_string(), 405),
        ("\u{1}\u{2}garbage\r\n\r\n".to_string(), 400),
        (format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000)), 431),
    ] {
        let (status, head, _) = raw(&addr, request.as_bytes());
        assert_eq!(status, want, "{}: {head}", request.chars().take(60).collect::<String>());
    }
    // HEAD: the head only.
    let (status, head, body) = raw(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(status == 200 && body.is_empty() && head.contains("Content-Length: "), "{head}");

    // The textfile: the same families, rewritten every status_interval, with the count.
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&prom).is_ok_and(|t| completed(&t) == Some(1.0))));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("# TYPE cosmos_runs_finished_total counter") && text.contains("# TYPE cosmos_queue_runs gauge"), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cosmos.prom") && n != "cosmos.prom")
        .collect();
    assert!(leftovers.is_empty() || leftovers.iter().all(|n| n.starts_with('.') && n.ends_with(".tmp")), "{leftovers:?}");

    // Stopped: the endpoint is gone with the daemon.
    let exit = daemon.stop();
    assert!(exit.success(), "{exit:?}");
    assert!(TcpStream::connect(&addr).is_err(), "still listening on {addr} after the daemon stopped");

    // Restarted: the counter the store backs still says 1; the in-memory ones start again.
    let daemon = Daemon::start(&home, &config("1", &prom), &[]);
    let addr = served_at(&daemon);
    let again = metrics(&addr);
    assert_eq!(completed(&again), Some(1.0), "{again}");
    assert_eq!(value(&again, "cosmos_run_duration_seconds_count"), Some(0.0), "{again}");
    assert!(daemon.stop().success());
}

#[test]
fn a_taken_address_stops_the_start_naming_it() {
    let home = Home::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = home.path().join("cosmosd.toml");
    std::fs::write(&config, format!("[runtime]\nkind = \"process\"\nbackend = \"sim\"\n[daemon]\nlisten = \"{addr}\"\n")).unwrap();
    let out = home.cosmosd().arg("--config").arg(&config).arg("--root").arg(home.root()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("daemon.listen"), "{stderr}");
}

/// Chromium from Debian's packages, or why the browser test cannot run.
fn chromium() -> Result<PathBuf, String> {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).is_file() {
            return Ok(PathBuf::from(c));
        }
    }
    Err("no chromium at /usr/bin/chromium (apt-get install chromium)".into())
}

/// Runs headless Chromium on `url` with a fresh profile, and what it printed.
fn browse(chromium: &Path, profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // Time for the page's script to fetch and render (virtual: idle time is skipped).
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM (tags stripped), or "".
fn element_text(dom: &str, id: &str) -> String {
    let Some(start) = dom.find(&format!("id=\"{id}\"")) else { return String::new() };
    let rest = &dom[start..];
    let rest = &rest[rest.find('>').map_or(0, |i| i + 1)..];
    // Up to the end of the row or block it opens (good enough for the page's flat markup).
    let end = ["</tr>", "</p>", "</span>"].iter().filter_map(|t| rest.find(t)).min().unwrap_or(rest.len());
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

#[test]
#[ignore = "needs Chromium (apt-get install chromium); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_headless_browser_shows_the_run_going_then_completed() {
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) => {
            if std::env::var("COSMOS_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("COSMOS_REQUIRE_BROWSER=1 but {why}");
            }
            println!("skipped: {why} (set COSMOS_REQUIRE_BROWSER=1 to make this a failure)");
            return;
        }
    };
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // A run long enough to be caught going.
    let daemon = Daemon::start(&home, &config("20", &home.path().join("cosmos.prom")), &[("COSMOS_FAKE_GPUS", "1:81920:2048")]);
    let addr = served_at(&daemon);
    let url = format!("http://{addr}/");
    drop_file(&home, "browse.jsonl", &job("seen-by-a-browser"));
    let running = || {
        let (_, _, b) = get(&addr, "/status.json");
        serde_json::from_slice::<Value>(&b).ok().filter(|d| d["current"]["steps"].as_u64().is_some_and(|s| s > 0))
    };
    assert!(wait_until(LONG, || running().is_some()), "the run never showed progress:\n{}", daemon.log_text());
    let id = running().unwrap()["current"]["run_id"].as_str().unwrap().to_string();

    let profile = tempfile::tempdir().unwrap();
    let during = browse(&chromium, profile.path(), &url, &["--dump-dom"]);
    assert!(during.contains("data-loaded=\"1\""), "the page's script did not render:\n{during}");
    assert_eq!(element_text(&during, "current-run"), id, "the current run is not shown:\n{during}");
    let progress = element_text(&during, "progress");
    assert!(progress.starts_with("step ") && progress.contains(" of ") && progress.contains("ETA"), "{progress}\n{during}");
    assert!(element_text(&during, "state").contains("running"), "{during}");
    assert!(during.contains("Fake GPU") && during.contains("2.0 GiB of 80.0 GiB"), "the GPU is not shown:\n{during}");

    assert!(
        wait_until(LONG, || runs(&home).first().is_some_and(|r| r["status"] == "completed")),
        "the run never completed:\n{}",
        daemon.log_text()
    );
    let after = browse(&chromium, profile.path(), &url, &["--dump-dom"]);
    let row = element_text(&after, &format!("run-{id}"));
    assert!(row.contains(&id) && row.contains("completed"), "no completed row for {id}: {row:?}\n{after}");
    assert!(after.contains(&format!("href=\"/runs/{id}/\"")), "no link to the run's folder:\n{after}");
    assert!(element_text(&after, "current").contains("no run in hand") || !after.contains("id=\"current-run\""), "{after}");

    // A screenshot for people to look at (kept where the lead reads it, when that exists).
    let shot = home.path().join("status-page.png");
    browse(&chromium, profile.path(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900", "--hide-scrollbars"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a PNG of a rendered page ({} bytes)", png.len());
    if let Ok(dir) = std::env::var("COSMOS_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, Path::new(&dir).join("status-page.png"));
    }
    assert!(daemon.stop().success());
}

/// The status document of a daemon on a shared queue: three hosts, one silent past its lease.
fn cluster_status(updated_at: &str) -> Value {
    serde_json::json!({
        "updated_at": updated_at,
        "daemon": {"state": "running", "version": "0.1.0", "pid": 1},
        "queue": {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0, "pending": 0},
        "current": null, "workers": [], "gpus": [], "nvml": null,
        "cluster": {
            "host_id": "gpu-a", "database": "cosmos@db.internal:5432/cosmos", "connected": true, "lease_seconds": 90,
            "queue": {"queued": 3, "running": 2, "completed": 9, "failed": 1, "cancelled": 0},
            "hosts": [
                {"host_id": "gpu-a", "version": "0.1.0", "pid": 11, "started_at": updated_at, "heartbeat_at": updated_at,
                 "seconds_since_heartbeat": 1.5,
                 "slots": [{"slot": "0", "gpus": [0], "loaded_controls": null, "state": "idle", "run_id": null},
                           {"slot": "1", "gpus": [1], "loaded_controls": "depth", "state": "loading", "run_id": "rs_aaaaaaaaaaaa"}]},
                {"host_id": "gpu-b", "version": "0.1.0", "pid": 22, "started_at": updated_at, "heartbeat_at": updated_at,
                 "seconds_since_heartbeat": 2.0,
                 "slots": [{"slot": "0", "gpus": [0, 1], "loaded_controls": "edge,vis", "state": "running", "run_id": "rs_bbbbbbbbbbbb"}]},
                {"host_id": "gpu-c", "version": "0.0.9", "pid": 33, "started_at": updated_at, "heartbeat_at": updated_at,
                 "seconds_since_heartbeat": 400.0, "slots": []},
            ],
        },
    })
}

#[test]
#[ignore = "needs Chromium (apt-get install chromium); cargo nextest run --run-ignored all runs it, as CI does"]
fn a_headless_browser_shows_every_host_of_the_shared_queue() {
    use cosmos_workflow::{config::Config, metrics::Registry, web::Web};
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) => {
            if std::env::var("COSMOS_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("COSMOS_REQUIRE_BROWSER=1 but {why}");
            }
            println!("skipped: {why} (set COSMOS_REQUIRE_BROWSER=1 to make this a failure)");
            return;
        }
    };
    // The page and /status.json as the daemon serves them, fed the document it would build.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    (config.paths.inbox, config.paths.outbox, config.paths.state) =
        (dir.path().join("inbox"), dir.path().join("outbox"), dir.path().join("state"));
    for d in [&config.paths.outbox, &config.paths.state] {
        std::fs::create_dir_all(d).unwrap();
    }
    config.daemon.listen = "127.0.0.1:0".into();
    let registry = std::sync::Arc::new(Registry::new());
    let now = cosmos_workflow::time::Timestamp::now().rfc3339();
    let doc = cluster_status(&now);
    registry.set_status(&doc);
    let web = Web::start(&config, std::sync::Arc::clone(&registry)).expect("serve the page");
    let addr = web.local_addr.expect("an address").to_string();
    let (status, _, body) = get(&addr, "/status.json");
    assert_eq!(status, 200);
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served["cluster"], doc["cluster"], "/status.json passes the cluster object through");

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let dom = browse(&chromium, profile.path(), &url, &["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"1\""), "the page's script did not render:\n{dom}");
    assert!(!dom.contains("id=\"hosts-section\" hidden"), "the Hosts block is hidden:\n{dom}");
    let summary = element_text(&dom, "cluster");
    assert!(summary.contains("this host: gpu-a") && summary.contains("cosmos@db.internal:5432/cosmos"), "{summary}");
    assert!(summary.contains("3 queued, 2 running, 9 completed, 1 failed, 0 cancelled"), "{summary}");
    let a0 = element_text(&dom, "slot-gpu-a-0");
    assert!(a0.contains("gpu-a (this host)") && a0.contains("v0.1.0 pid 11") && a0.contains("2s ago") && a0.contains("idle"), "{a0}");
    let a1 = element_text(&dom, "slot-gpu-a-1");
    assert!(!a1.contains("gpu-a") && a1.contains("depth") && a1.contains("loading") && a1.contains("rs_aaaaaaaaaaaa"), "{a1}");
    let b0 = element_text(&dom, "slot-gpu-b-0");
    assert!(b0.contains("gpu-b") && !b0.contains("this host") && b0.contains("0, 1") && b0.contains("edge,vis"), "{b0}");
    assert!(b0.contains("running") && b0.contains("rs_bbbbbbbbbbbb") && !b0.contains("down?"), "{b0}");
    let c = element_text(&dom, "slot-gpu-c-none");
    assert!(c.contains("gpu-c") && c.contains("v0.0.9") && c.contains("no worker slot") && c.contains("silent: down?"), "{c}");

    // A screenshot for people to look at (kept where the lead reads it, when that exists).
    let shot = dir.path().join("status-page-hosts.png");
    browse(&chromium, profile.path(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1000", "--hide-scrollbars"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a PNG of a rendered page ({} bytes)", png.len());
    if let Ok(to) = std::env::var("COSMOS_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, Path::new(&to).join("status-page-hosts.png"));
    }

    // A database the daemon cannot reach: said, with the database; no hosts to show.
    let mut cut = doc.clone();
    cut["cluster"] = serde_json::json!({"host_id": "gpu-a", "database": "cosmos@db.internal:5432/cosmos", "connected": false,
        "error": "cannot reach the queue database", "queue": null, "hosts": []});
    registry.set_status(&cut);
    let dom = browse(&chromium, profile.path(), &url, &["--dump-dom"]);
    let summary = element_text(&dom, "cluster");
    assert!(summary.contains("cosmos@db.internal:5432/cosmos cannot be reached (cannot reach the queue database)"), "{summary}\n{dom}");
    assert!(dom.contains("no host has reported yet") && !dom.contains("id=\"slot-"), "{dom}");

    // One host, no [cluster]: no Hosts block at all.
    let mut single = doc.clone();
    single.as_object_mut().unwrap().remove("cluster");
    registry.set_status(&single);
    let dom = browse(&chromium, profile.path(), &url, &["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"1\""), "{dom}");
    assert!(dom.contains("id=\"hosts-section\" hidden"), "a Hosts block without a cluster:\n{dom}");
    web.stop();
}
