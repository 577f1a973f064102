//! A private PostgreSQL for a test: `initdb` in a temp folder, `postgres` on 127.0.0.1 on a
//! free port, stopped when dropped. PostgreSQL refuses to run as root: under root (CI) the
//! server runs as `nobody` through setpriv. Without the binaries a test skips with the
//! reason, unless COSMOS_REQUIRE_POSTGRES=1 (CI), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

const NOBODY: u32 = 65534;

pub struct Pg {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
    pub port: u16,
}

fn running_as_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin.
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.into_iter().rev().find(|d| d.join("initdb").is_file())
    })
}

impl Pg {
    /// A fresh instance, or `None` (with the reason on stderr) where PostgreSQL is missing
    /// and not required.
    pub fn start() -> Option<Pg> {
        Pg::start_on(&[], &[])
    }

    /// As [`Pg::start`], listening on the addresses `also` too (say a veth's, for a host in
    /// a network namespace) and trusting the clients in the networks `clients` (CIDR).
    pub fn start_on(also: &[&str], clients: &[&str]) -> Option<Pg> {
        let Some(bin) = find_bin() else {
            let why = "PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql";
            if std::env::var("COSMOS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("{why} (COSMOS_REQUIRE_POSTGRES=1)");
            }
            eprintln!("skipped: {why}");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("pg");
        std::fs::create_dir(&home).expect("mkdir pg");
        if running_as_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
            std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown pg folder");
        }
        let data = home.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let pg = Pg {
            options: format!(
                "-c listen_addresses={} -p {port} -k {} -c fsync=off -c max_connections=200",
                std::iter::once("127.0.0.1").chain(also.iter().copied()).collect::<Vec<_>>().join(","),
                home.display()
            ),
            log: home.join("server.log"),
            _dir: dir,
            bin,
            data,
            port,
        };
        pg.tool("initdb", &["-U", "cosmos", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "-D"], Some(&pg.data));
        if !clients.is_empty() {
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new().append(true).open(pg.data.join("pg_hba.conf")).expect("open pg_hba.conf");
            for net in clients {
                writeln!(hba, "host all all {net} trust").expect("write pg_hba.conf");
            }
        }
        pg.ctl(&["start"]);
        Some(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://cosmos@127.0.0.1:{}/postgres", self.port)
    }

    /// A plain client, for what the queue does not expose (schema version, clock).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to the test database")
    }

    /// `pg_ctl restart -m MODE` (`immediate`: a crash, recovered at start-up).
    pub fn restart(&self, mode: &str) {
        self.ctl(&["restart", "-m", mode]);
    }

    pub fn stop(&self, mode: &str) {
        self.ctl(&["stop", "-m", mode]);
    }

    pub fn start_again(&self) {
        self.ctl(&["start"]);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) {
        let mut all = vec!["-D", self.data.to_str().expect("utf-8 path"), "-l", self.log.to_str().expect("utf-8 path"), "-w", "-t", "60"];
        all.extend_from_slice(args);
        if args[0] != "stop" {
            all.extend_from_slice(&["-o", &self.options]);
        }
        self.tool("pg_ctl", &all, None);
    }

    fn tool(&self, name: &str, args: &[&str], last: Option<&Path>) {
        let program = self.bin.join(name);
        let mut cmd = if running_as_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args);
        if let Some(p) = last {
            cmd.arg(p);
        }
        // pg_ctl's server keeps the tool's stdout: a pipe would hold the test's output open.
        let out = cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).output().expect("run a PostgreSQL tool");
        assert!(out.status.success(), "{name} {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log_text());
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd.args(["-D"]).arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
