//! The daemon's metrics registry: what the scheduler threads and the intake record as they
//! go (durations, loads, intake fates), shared behind an `Arc` with the web endpoint and
//! the textfile writer; and the Prometheus text exposition format (0.0.4) they are written
//! in. A leaf module: it knows nothing of the parts that record into it.
//!
//! What is kept here lives in memory since the daemon started. Figures the store already
//! holds (runs by status, runs finished by outcome) are read from it at each scrape instead
//! (see `crate::web`), so they survive restarts.

use serde_json::Value;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Buckets (seconds) for a run's generation: GPU runs take minutes, up to hours for long
/// videos; the sim backend's runs take a second.
pub const RUN_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0];
/// Buckets (seconds) for a model load: tens of seconds to several minutes for checkpoints
/// read from a network disk.
pub const LOAD_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0];
/// Buckets (seconds) from an inbox file being ready to its runs being queued: milliseconds
/// for a small file on a local disk, seconds for a large one or a network inbox.
pub const INTAKE_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A cumulative histogram with fixed upper bounds (an implicit `+Inf` bucket last).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not yet cumulative), plus the `+Inf` bucket.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Records one value; a negative or non-finite one (a clock step, a worker's bad
    /// report) is dropped rather than poison the sum.
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, cumulative count)` for every bucket, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(b, n)| {
                total += n;
                (b, total)
            })
            .collect()
    }
}

/// What an inbox submission became, for `cosmos_intake_submissions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeFate {
    Accepted,
    Duplicate,
    Rejected,
}

impl IntakeFate {
    pub const ALL: [IntakeFate; 3] = [IntakeFate::Accepted, IntakeFate::Duplicate, IntakeFate::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            IntakeFate::Accepted => "accepted",
            IntakeFate::Duplicate => "duplicate",
            IntakeFate::Rejected => "rejected",
        }
    }
}

/// The shared registry. Every method takes `&self`: recording is a lock of a few
/// nanoseconds or an atomic add, never I/O.
#[derive(Debug)]
pub struct Registry {
    started: SystemTime,
    /// The last status.json document a scheduler built (served as `/status.json`).
    status: Mutex<Option<Value>>,
    run_seconds: Mutex<Histogram>,
    load_seconds: Mutex<Histogram>,
    intake_seconds: Mutex<Histogram>,
    loads_ok: AtomicU64,
    loads_failed: AtomicU64,
    intake: [AtomicU64; 3],
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// A copy of the registry's figures at one moment, for rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub started: SystemTime,
    pub status: Option<Value>,
    pub run_seconds: Histogram,
    pub load_seconds: Histogram,
    pub intake_seconds: Histogram,
    pub loads_ok: u64,
    pub loads_failed: u64,
    /// By [`IntakeFate::ALL`] order.
    pub intake: [u64; 3],
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            started: SystemTime::now(),
            status: Mutex::new(None),
            run_seconds: Mutex::new(Histogram::new(RUN_BUCKETS)),
            load_seconds: Mutex::new(Histogram::new(LOAD_BUCKETS)),
            intake_seconds: Mutex::new(Histogram::new(INTAKE_BUCKETS)),
            loads_ok: AtomicU64::new(0),
            loads_failed: AtomicU64::new(0),
            intake: Default::default(),
        }
    }

    /// A run the worker finished (its generation time, as the worker measured it).
    pub fn record_run(&self, seconds: f64) {
        observe(&self.run_seconds, seconds);
    }

    /// A model load: `Some(seconds)` when it loaded, `None` when it failed.
    pub fn record_load(&self, seconds: Option<f64>) {
        match seconds {
            Some(s) => {
                self.loads_ok.fetch_add(1, Ordering::Relaxed);
                observe(&self.load_seconds, s);
            }
            None => {
                self.loads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A submission taken in; `latency` from its file being ready to the decision, where
    /// known (an accepted file found ready; not one taken on a retry).
    pub fn record_intake(&self, fate: IntakeFate, latency: Option<Duration>) {
        self.intake[fate as usize].fetch_add(1, Ordering::Relaxed); // ok: three fates, three counters
        if let (IntakeFate::Accepted, Some(l)) = (fate, latency) {
            observe(&self.intake_seconds, l.as_secs_f64());
        }
    }

    /// The status.json document just built.
    pub fn set_status(&self, status: &Value) {
        if let Ok(mut s) = self.status.lock() {
            *s = Some(status.clone());
        }
    }

    pub fn status(&self) -> Option<Value> {
        self.status.lock().ok().and_then(|s| s.clone())
    }

    pub fn snapshot(&self) -> Snapshot {
        let h = |m: &Mutex<Histogram>, bounds| m.lock().map(|h| h.clone()).unwrap_or_else(|_| Histogram::new(bounds));
        Snapshot {
            started: self.started,
            status: self.status(),
            run_seconds: h(&self.run_seconds, RUN_BUCKETS),
            load_seconds: h(&self.load_seconds, LOAD_BUCKETS),
            intake_seconds: h(&self.intake_seconds, INTAKE_BUCKETS),
            loads_ok: self.loads_ok.load(Ordering::Relaxed),
            loads_failed: self.loads_failed.load(Ordering::Relaxed),
            intake: [0, 1, 2].map(|i| self.intake[i].load(Ordering::Relaxed)),
        }
    }
}

fn observe(h: &Mutex<Histogram>, value: f64) {
    if let Ok(mut h) = h.lock() {
        h.observe(value);
    }
}

/// The kind of a metric family, as `# TYPE` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A document in the Prometheus text exposition format, version 0.0.4: each family's
/// `# HELP` and `# TYPE` once, then its samples; label values and help text escaped.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    families: Vec<String>,
}

/// The `Content-Type` of an [`Exposition`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Opens a family. A family opened twice is a bug in the caller: its second header is
    /// left out so the document stays valid (a scraper refuses duplicate `# TYPE` lines).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "bad metric name {name}"); // ok: debug only; every name is a literal here
        if !self.families.iter().any(|f| f == name) {
            self.families.push(name.to_string());
            let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        }
        self
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// A histogram family: its buckets (cumulative, `le` last among the labels), `_sum`
    /// and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        for (bound, n) in h.cumulative() {
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, &[], Some(&format_value(bound)));
            let _ = writeln!(self.out, " {n}");
        }
        let _ = writeln!(self.out, "{name}_sum {}", format_value(h.sum()));
        let _ = writeln!(self.out, "{name}_count {}", h.count());
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|l| ("le", l))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
}

/// Metric and label names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label values: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Values as the format writes them: `+Inf`, `-Inf`, `NaN`, else Go-style floats (Rust's
/// shortest round-trip form, which Prometheus parses).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a document line by line as a scraper would: every sample belongs to the
    /// family declared last, each family is declared once with HELP before TYPE, and every
    /// value parses. Returns the samples as `(name{labels}, value)`.
    fn parse(doc: &str) -> Vec<(String, f64)> {
        let mut current: Option<(String, String)> = None;
        let mut declared = std::collections::HashSet::new();
        let mut samples = Vec::new();
        let mut pending_help: Option<String> = None;
        for line in doc.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(declared.insert(name.clone()), "{name} declared twice");
                pending_help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(pending_help.take().as_deref(), Some(name), "TYPE without its HELP first");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                current = Some((name.to_string(), kind.to_string()));
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                let (family, kind) = current.as_ref().expect("a sample before any TYPE");
                let ok = match kind.as_str() {
                    "histogram" => {
                        [format!("{family}_bucket"), format!("{family}_sum"), format!("{family}_count")].contains(&name.to_string())
                    }
                    _ => name == family,
                };
                assert!(ok, "{name} is not of family {family}");
                let v = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}")),
                };
                samples.push((series.to_string(), v));
            }
        }
        samples
    }

    #[test]
    fn histograms_are_cumulative_with_sum_count_and_inf() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 20.0, f64::NAN, -1.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![(1.0, 2), (10.0, 3), (f64::INFINITY, 4)]);
        let mut e = Exposition::new();
        e.histogram("cosmos_x_seconds", "X.", &h);
        let doc = e.finish();
        let s = parse(&doc);
        assert_eq!(
            s,
            vec![
                ("cosmos_x_seconds_bucket{le=\"1\"}".to_string(), 2.0),
                ("cosmos_x_seconds_bucket{le=\"10\"}".to_string(), 3.0),
                ("cosmos_x_seconds_bucket{le=\"+Inf\"}".to_string(), 4.0),
                ("cosmos_x_seconds_sum".to_string(), 24.5),
                ("cosmos_x_seconds_count".to_string(), 4.0),
            ]
        );
        assert!(doc.starts_with("# HELP cosmos_x_seconds X.\n# TYPE cosmos_x_seconds histogram\n"), "{doc}");
    }

    #[test]
    fn labels_and_help_are_escaped_and_families_declared_once() {
        let mut e = Exposition::new();
        e.family("cosmos_gpu_info", Kind::Gauge, "Back\\slash\nand newline.");
        e.sample("cosmos_gpu_info", &[("gpu", "0"), ("name", "A \"quoted\"\\name\nx")], 1.0);
        e.family("cosmos_gpu_info", Kind::Gauge, "again");
        e.sample("cosmos_gpu_info", &[("gpu", "1"), ("name", "plain")], 1.0);
        let doc = e.finish();
        assert!(doc.contains("# HELP cosmos_gpu_info Back\\\\slash\\nand newline.\n"), "{doc}");
        assert!(doc.contains("cosmos_gpu_info{gpu=\"0\",name=\"A \\\"quoted\\\"\\\\name\\nx\"} 1\n"), "{doc}");
        assert_eq!(doc.matches("# TYPE").count(), 1);
        assert_eq!(parse(&doc).len(), 2);
    }

    #[test]
    fn values_use_the_formats_spellings() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1.5e12), "1500000000000");
    }

    #[test]
    fn the_registry_counts_loads_and_intake_and_keeps_the_status() {
        let r = Registry::new();
        r.record_load(Some(12.0));
        r.record_load(None);
        r.record_run(90.0);
        r.record_intake(IntakeFate::Accepted, Some(Duration::from_millis(30)));
        r.record_intake(IntakeFate::Accepted, None);
        r.record_intake(IntakeFate::Rejected, Some(Duration::from_millis(30)));
        r.set_status(&serde_json::json!({"queue": {"queued": 2}}));
        let s = r.snapshot();
        assert_eq!((s.loads_ok, s.loads_failed), (1, 1));
        assert_eq!(s.load_seconds.count(), 1, "a failed load has no duration");
        assert_eq!(s.run_seconds.cumulative()[5], (120.0, 1));
        assert_eq!(s.intake, [2, 0, 1]);
        assert_eq!(s.intake_seconds.count(), 1, "only accepted files with a known ready time");
        assert_eq!(s.status.unwrap()["queue"]["queued"], 2);
    }
}
