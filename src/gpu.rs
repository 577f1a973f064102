//! GPUs through NVML (DESIGN.md section 11). NVML is optional: without a driver the daemon
//! runs and says "no NVML". A probe samples memory, utilisation, temperature and power; the
//! scheduler puts samples in status.json and a run's peak and mean in its manifest.json,
//! and holds a worker back while its GPUs have less free memory than
//! `runtime.min_free_gpu_mib`.
//!
//! `COSMOS_FAKE_GPUS=N[:TOTAL_MIB[:USED_MIB]]` replaces NVML with N fake GPUs behind the
//! same trait: how the tests (and a laptop) exercise GPU handling.

use serde::Serialize;

/// One GPU at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    pub memory_used_mib: u64,
    pub memory_total_mib: u64,
    pub utilization_pct: u32,
    pub temperature_c: u32,
    pub power_w: f64,
}

impl GpuSample {
    pub fn memory_free_mib(&self) -> u64 {
        self.memory_total_mib.saturating_sub(self.memory_used_mib)
    }
}

pub trait GpuProbe: Send {
    /// "NVML 12.4 (2 GPUs)", "no NVML: ...", "fake (2 GPUs)".
    fn describe(&self) -> String;
    /// Every GPU now; empty without NVML.
    fn sample(&mut self) -> Vec<GpuSample>;
}

/// No NVML: the daemon runs without GPU figures.
pub struct NoNvml(pub String);

impl GpuProbe for NoNvml {
    fn describe(&self) -> String {
        format!("no NVML: {}", self.0)
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        Vec::new()
    }
}

pub struct NvmlProbe {
    nvml: nvml_wrapper::Nvml,
}

impl GpuProbe for NvmlProbe {
    fn describe(&self) -> String {
        let count = self.nvml.device_count().unwrap_or(0);
        let driver = self.nvml.sys_driver_version().unwrap_or_else(|_| "?".into());
        format!("NVML, driver {driver} ({count} GPUs)")
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let mem = d.memory_info().ok();
                Some(GpuSample {
                    index: i,
                    name: d.name().unwrap_or_default(),
                    memory_used_mib: mem.as_ref().map_or(0, |m| m.used >> 20),
                    memory_total_mib: mem.as_ref().map_or(0, |m| m.total >> 20),
                    utilization_pct: d.utilization_rates().map_or(0, |u| u.gpu),
                    temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                    power_w: d.power_usage().map_or(0.0, |mw| mw as f64 / 1000.0),
                })
            })
            .collect()
    }
}

/// Fake GPUs: fixed memory, a utilisation that moves so means and peaks differ.
pub struct FakeProbe {
    gpus: Vec<GpuSample>,
    tick: u32,
}

impl FakeProbe {
    /// `N[:TOTAL_MIB[:USED_MIB]]`.
    pub fn parse(spec: &str) -> Option<FakeProbe> {
        let mut parts = spec.split(':').map(|p| p.trim().parse::<u64>());
        let n = parts.next()?.ok()?;
        let total = parts.next().map_or(Some(81_920), |p| p.ok())?;
        let used = parts.next().map_or(Some(0), |p| p.ok())?;
        if n > 64 || used > total {
            return None;
        }
        let gpus = (0..n as u32)
            .map(|index| GpuSample {
                index,
                name: "Fake GPU".into(),
                memory_used_mib: used,
                memory_total_mib: total,
                utilization_pct: 0,
                temperature_c: 40,
                power_w: 60.0,
            })
            .collect();
        Some(FakeProbe { gpus, tick: 0 })
    }
}

impl GpuProbe for FakeProbe {
    fn describe(&self) -> String {
        format!("fake ({} GPUs, COSMOS_FAKE_GPUS)", self.gpus.len())
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        self.tick = self.tick.wrapping_add(1);
        let util = [20, 90, 60, 100][(self.tick % 4) as usize];
        self.gpus
            .iter()
            .map(|g| GpuSample { utilization_pct: util, temperature_c: 40 + util / 4, power_w: 60.0 + util as f64 * 3.0, ..g.clone() })
            .collect()
    }
}

/// The probe for this host: fake GPUs if asked, else NVML, else none.
pub fn probe() -> Box<dyn GpuProbe> {
    if let Some(spec) = std::env::var("COSMOS_FAKE_GPUS").ok().filter(|s| !s.is_empty()) {
        match FakeProbe::parse(&spec) {
            Some(p) => return Box::new(p),
            None => return Box::new(NoNvml(format!("COSMOS_FAKE_GPUS={spec:?} is not N[:TOTAL_MIB[:USED_MIB]]"))),
        }
    }
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => Box::new(NvmlProbe { nvml }),
        Err(e) => Box::new(NoNvml(e.to_string())),
    }
}

/// Peak and mean per GPU over a run, for its manifest.
#[derive(Debug, Default, Clone)]
pub struct RunGpuStats {
    samples: u64,
    per_gpu: std::collections::BTreeMap<u32, Acc>,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    name: String,
    peak_memory_mib: u64,
    sum_memory_mib: u64,
    peak_utilization_pct: u32,
    sum_utilization_pct: u64,
    peak_temperature_c: u32,
    sum_power_w: f64,
    peak_power_w: f64,
}

impl RunGpuStats {
    pub fn add(&mut self, samples: &[GpuSample]) {
        if samples.is_empty() {
            return;
        }
        self.samples += 1;
        for s in samples {
            let a = self.per_gpu.entry(s.index).or_default();
            a.name.clone_from(&s.name);
            a.peak_memory_mib = a.peak_memory_mib.max(s.memory_used_mib);
            a.sum_memory_mib += s.memory_used_mib;
            a.peak_utilization_pct = a.peak_utilization_pct.max(s.utilization_pct);
            a.sum_utilization_pct += s.utilization_pct as u64;
            a.peak_temperature_c = a.peak_temperature_c.max(s.temperature_c);
            a.sum_power_w += s.power_w;
            a.peak_power_w = a.peak_power_w.max(s.power_w);
        }
    }

    /// `null` when there were no samples (no NVML).
    pub fn to_json(&self) -> serde_json::Value {
        if self.samples == 0 {
            return serde_json::Value::Null;
        }
        let n = self.samples as f64;
        let gpus: Vec<_> = self
            .per_gpu
            .iter()
            .map(|(i, a)| {
                serde_json::json!({
                    "index": i,
                    "name": a.name,
                    "peak_memory_mib": a.peak_memory_mib,
                    "mean_memory_mib": (a.sum_memory_mib as f64 / n).round(),
                    "peak_utilization_pct": a.peak_utilization_pct,
                    "mean_utilization_pct": (a.sum_utilization_pct as f64 / n * 10.0).round() / 10.0,
                    "peak_temperature_c": a.peak_temperature_c,
                    "peak_power_w": a.peak_power_w,
                    "mean_power_w": (a.sum_power_w / n * 10.0).round() / 10.0,
                })
            })
            .collect();
        serde_json::json!({"samples": self.samples, "gpus": gpus})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_gpus_parse_and_stats_keep_peak_and_mean() {
        assert!(FakeProbe::parse("x").is_none());
        assert!(FakeProbe::parse("1:100:200").is_none(), "used above total");
        let mut p = FakeProbe::parse("2:1000:400").unwrap();
        let mut stats = RunGpuStats::default();
        for _ in 0..4 {
            let s = p.sample();
            assert_eq!(s.len(), 2);
            assert_eq!(s[0].memory_free_mib(), 600);
            stats.add(&s);
        }
        let j = stats.to_json();
        assert_eq!(j["samples"], 4);
        assert_eq!(j["gpus"][0]["peak_utilization_pct"], 100);
        assert_eq!(j["gpus"][0]["mean_utilization_pct"], 67.5);
        assert_eq!(RunGpuStats::default().to_json(), serde_json::Value::Null);
    }

    #[test]
    fn nvml_reads_the_gpus_where_a_driver_is_and_is_reported_missing_where_none_is() {
        if std::env::var_os("COSMOS_FAKE_GPUS").is_some() {
            println!("skipped: COSMOS_FAKE_GPUS replaces NVML in this environment");
            return;
        }
        // A loaded NVIDIA kernel driver shows here; COSMOS_REQUIRE_NVML=1 says one must be.
        let driver =
            std::path::Path::new("/proc/driver/nvidia/version").exists() || std::env::var("COSMOS_REQUIRE_NVML").as_deref() == Ok("1");
        let mut p = probe();
        let d = p.describe();
        let samples = p.sample();
        println!("{d}: {samples:?}");
        if driver {
            assert!(d.starts_with("NVML, driver"), "a driver is here but: {d}");
            assert!(!samples.is_empty(), "NVML answers but lists no GPU");
            for g in &samples {
                assert!(g.memory_total_mib > 0 && !g.name.is_empty(), "{g:?}");
                assert!(g.memory_used_mib <= g.memory_total_mib && g.utilization_pct <= 100, "{g:?}");
            }
        } else {
            assert!(d.starts_with("no NVML: "), "no driver here, yet: {d}");
            assert!(samples.is_empty(), "{samples:?}");
        }
    }
}
