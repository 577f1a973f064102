//! Helpers shared by the integration tests: a temp home with the fixture videos, and the
//! real binaries run against it.
#![allow(dead_code)]

use assert_cmd::Command;
use std::path::{Path, PathBuf};

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// A temp folder with `videos/city1` and `videos/street1`: the committed example videos
    /// (real small MP4s: intake probes every video, so made-up bytes would be refused).
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let videos = dir.path().join("videos");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos");
        for (scene, files) in [("city1", ["color.mp4", "depth.mp4"]), ("street1", ["color.mp4", "segmentation.mp4"])] {
            std::fs::create_dir_all(videos.join(scene)).expect("mkdir");
            for f in files {
                std::fs::copy(fixtures.join(scene).join(f), videos.join(scene).join(f)).expect("copy an example video");
            }
        }
        Home { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `cosmos --root <home>` run in the temp folder, with no ambient config.
    pub fn cosmos(&self) -> Command {
        let mut cmd = Command::cargo_bin("cosmos").expect("cosmos binary");
        cmd.current_dir(self.path()).env_remove("COSMOS_CONFIG").arg("--root").arg(self.root());
        cmd
    }

    pub fn cosmosd(&self) -> Command {
        let mut cmd = Command::cargo_bin("cosmosd").expect("cosmosd binary");
        cmd.current_dir(self.path()).env_remove("COSMOS_CONFIG");
        cmd
    }

    /// Runs `cosmos ARGS`, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cosmos().args(args).output().expect("run cosmos");
        assert!(
            out.status.success(),
            "cosmos {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `cosmos ARGS`, expects exit 2, returns stderr + stdout.
    pub fn usage_error(&self, args: &[&str]) -> String {
        let out = self.cosmos().args(args).output().expect("run cosmos");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "cosmos {args:?} should exit 2, got {:?}: {text}", out.status.code());
        text
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON output")
    }
}

/// A real example video padded to `bytes` with a trailing `free` box (still a valid MP4,
/// as intake's probe requires): a big input without a big encode.
pub fn padded_video(bytes: usize) -> Vec<u8> {
    let mut v = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos/city1/color.mp4")).expect("example video");
    let pad = bytes.saturating_sub(v.len()).max(8);
    v.extend_from_slice(&(pad as u32).to_be_bytes());
    v.extend_from_slice(b"free");
    v.resize(v.len() + pad - 8, 0);
    v
}

/// The first `prefix`-id in `text` (what the seed's scripts grep for).
pub fn grep_id(text: &str, prefix: &str) -> String {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix} id in {text:?}"));
    text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// A running `cosmosd --root <home>`, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts cosmosd on `home` with a fast test configuration plus `extra` TOML.
    pub fn start(home: &Home, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let config = home.path().join("cosmosd.toml");
        Daemon::start_with(home, &config, extra, &["--root".as_ref(), home.root().as_os_str()], env)
    }

    /// Starts cosmosd with the fast test configuration plus `extra` TOML written to `config`,
    /// and `args` after `--config` (say, `--root DIR`; none when `extra` has `[paths]`).
    pub fn start_with(home: &Home, config: &Path, extra: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Daemon {
        // The process runtime unless the test picks one.
        let kind = if extra.contains("kind = ") { "" } else { "kind = \"process\"\n" };
        // `extra` may open with sections of its own ([paths] say): those go first, so the
        // [runtime] keys below stay in [runtime].
        let (watch_extra, rest) = match extra.strip_prefix("[watch]\n") {
            Some(r) => r.split_once("\n[").map_or((r, String::new()), |(w, rest)| (w, format!("[{rest}"))),
            None => ("", extra.to_string()),
        };
        // The sim backend unless the test picks one.
        let backend = if rest.contains("backend = \"") { "" } else { "backend = \"sim\"\n" };
        std::fs::write(
            config,
            format!(
                "[watch]\nsettle = \"300ms\"\nrescan = \"2s\"\nincomplete_grace = \"3s\"\npoll_interval = \"200ms\"\n{watch_extra}\n\
                 [runtime]\n{kind}{backend}{rest}\n"
            ),
        )
        .expect("write config");
        let log = home.path().join(format!(
            "cosmosd.{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("cosmosd"));
        cmd.current_dir(home.path())
            .env_remove("COSMOS_CONFIG")
            .env("COSMOS_LOG_LEVEL", "debug")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start cosmosd");
        let d = Daemon { child, log };
        d.wait_log("watching the inbox", Duration::from_secs(10));
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.log_text().contains(needle));
        assert!(ok, "cosmosd never logged {needle:?}:\n{}", self.log_text());
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "cosmosd did not stop on SIGTERM:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::time::Duration;

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Home {
    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    pub fn outbox(&self) -> PathBuf {
        self.root().join("outbox")
    }

    /// Every receipt in the outbox, parsed.
    pub fn receipts(&self) -> Vec<serde_json::Value> {
        let dir = self.outbox().join("receipts");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    if let Ok(v) = serde_json::from_str(&text) {
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    pub fn receipts_with(&self, status: &str) -> Vec<serde_json::Value> {
        self.receipts().into_iter().filter(|r| r["status"] == status).collect()
    }
}

/// worker/tests/fakes: fakes of NVIDIA's code laid out as its checkout (`runtime.model_code`).
pub fn nvidia_fakes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/fakes")
}

/// The calls the fake NVIDIA code recorded in `path` (`FAKE_NVIDIA_CALLS`), of one kind.
pub fn fake_calls(path: &Path, call: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["call"] == call)
        .collect()
}

impl Home {
    /// A JSONL job file body of `n` lines naming inbox-relative videos, made distinct by `tag`.
    pub fn jobs(&self, tag: &str, n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"name\": \"{tag}-{i}\", \"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"{tag} shot {i}\", \"control_overrides\": {{\"edge\": {{\"control_weight\": 0.5}}, \"depth\": {{\"input_control\": \"videos/city1/depth.mp4\", \"control_weight\": 0.3}}}}}}\n"
                )
            })
            .collect()
    }

    /// Puts the fixture videos at `inbox/videos/` (what top-level job files name).
    pub fn videos_in_inbox(&self) {
        let dst = self.inbox().join("videos");
        for scene in ["city1", "street1"] {
            std::fs::create_dir_all(dst.join(scene)).expect("mkdir");
            for e in std::fs::read_dir(self.path().join("videos").join(scene)).expect("videos").flatten() {
                std::fs::copy(e.path(), dst.join(scene).join(e.file_name())).expect("copy video");
            }
        }
    }

    /// Total runs in the store.
    pub fn run_count(&self) -> usize {
        self.json(&["list", "runs", "--json"]).as_array().map_or(0, Vec::len)
    }
}

/// Every entry in the inbox's claim folders (`inbox/.cosmos/claimed/<daemon>/`).
pub fn inbox_claims(home: &Home) -> Vec<PathBuf> {
    claims_under(&home.inbox())
}

/// Every entry in the claim folders of the inbox at `inbox`.
pub fn claims_under(inbox: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for daemon in std::fs::read_dir(inbox.join(".cosmos/claimed")).into_iter().flatten().flatten() {
        out.extend(std::fs::read_dir(daemon.path()).into_iter().flatten().flatten().map(|e| e.path()));
    }
    out
}

/// Drops `text` into the inbox as `name`, by rename (as rsync and `cosmos submit` do).
pub fn drop_file(home: &Home, name: &str, text: &str) {
    let tmp = home.inbox().join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, home.inbox().join(name)).expect("drop");
}

/// Every run, as `cosmos list runs --json` shows them.
pub fn runs(home: &Home) -> Vec<serde_json::Value> {
    home.json(&["list", "runs", "--json"]).as_array().cloned().unwrap_or_default()
}

/// The daemon's status.json (null before it exists).
pub fn status(home: &Home) -> serde_json::Value {
    std::fs::read_to_string(home.outbox().join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A FUSE mount of `backing` at `mount` made with bindfs: what an NFS or sshfs inbox looks
/// like to cosmosd (another filesystem, inotify blind to writes behind it). Unmounted when
/// dropped.
pub struct BindMount {
    pub backing: PathBuf,
    pub mount: PathBuf,
}

impl BindMount {
    /// Mounts, or returns `None` (printing why) where bindfs or FUSE is missing, unless
    /// `COSMOS_REQUIRE_FUSE=1` (CI), where that fails the test.
    pub fn new(backing: &Path, mount: &Path, options: &[&str]) -> Option<BindMount> {
        std::fs::create_dir_all(backing).expect("backing folder");
        std::fs::create_dir_all(mount).expect("mount point");
        let status = std::process::Command::new("bindfs").args(options).arg(backing).arg(mount).status();
        match status {
            Ok(s) if s.success() => Some(BindMount { backing: backing.to_path_buf(), mount: mount.to_path_buf() }),
            other => {
                let why = format!("cannot mount bindfs ({other:?}): install bindfs and fuse3, and allow FUSE mounts");
                if std::env::var("COSMOS_REQUIRE_FUSE").as_deref() == Ok("1") {
                    panic!("COSMOS_REQUIRE_FUSE=1 but {why}");
                }
                println!("skipped: {why} (set COSMOS_REQUIRE_FUSE=1 to make this a failure)");
                None
            }
        }
    }

    /// Unmounts and mounts again with other options (say `-o ro`), at the same place.
    pub fn remount(&mut self, options: &[&str]) {
        unmount(&self.mount);
        let ok = std::process::Command::new("bindfs").args(options).arg(&self.backing).arg(&self.mount).status().map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "bindfs remount of {}", self.mount.display());
    }
}

fn unmount(mount: &Path) {
    for cmd in [&["fusermount3", "-u", "-z"][..], &["fusermount", "-u", "-z"], &["umount", "-l"]] {
        if std::process::Command::new(cmd[0]).args(&cmd[1..]).arg(mount).status().is_ok_and(|s| s.success()) {
            return;
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        unmount(&self.mount);
    }
}

/// Whether `path` is on a FUSE filesystem (statfs).
pub fn is_fuse(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs fills the struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == 0x6573_5546
}
