//! `cosmosd check-host`: the host as the daemon will use it, as a checklist with the fix for
//! each miss: NVML and the GPUs, the Docker engine and its nvidia runtime, the image,
//! NVIDIA's code importable where the worker runs (a throwaway container for docker), the
//! checkpoint files the backend needs, the Hugging Face cache, disk space.
//!
//! A check is `Miss` only when the configuration needs it (a GPU for a GPU backend, the
//! engine for the docker runtime); what it does not need is `Skip`; what is worth knowing
//! but not fatal is `Warn`.

use crate::config::{Backend, Config, RuntimeKind};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Miss,
    Skip,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a miss or a warning.
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check { name, verdict, detail: detail.into(), fix: None }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Transfer1's checkpoint files under `runtime.checkpoints` (cosmos-transfer1
/// checkpoints.py; scripts/download_checkpoints.py fetches them).
const T1_BASE: &[&str] = &[
    "nvidia/Cosmos-Transfer1-7B/base_model.pt",
    "nvidia/Cosmos-Transfer1-7B/vis_control.pt",
    "nvidia/Cosmos-Transfer1-7B/edge_control.pt",
    "nvidia/Cosmos-Transfer1-7B/seg_control.pt",
    "nvidia/Cosmos-Transfer1-7B/depth_control.pt",
    "nvidia/Cosmos-Transfer1-7B/4kupscaler_control.pt",
    "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
    "google-t5/t5-11b",
];
const T1_AV: &[&str] = &[
    "nvidia/Cosmos-Transfer1-7B-Sample-AV/base_model.pt",
    "nvidia/Cosmos-Transfer1-7B-Sample-AV/hdmap_control.pt",
    "nvidia/Cosmos-Transfer1-7B-Sample-AV/lidar_control.pt",
    "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
    "google-t5/t5-11b",
];
/// Hugging Face models Transfer1 loads by id for controls it makes on the fly (depth:
/// depth_anything.py; seg: sam2_model.py), from the cache when offline.
const T1_ON_THE_FLY: &[&str] =
    &["depth-anything/Depth-Anything-V2-Small-hf", "facebook/sam2-hiera-large", "IDEA-Research/grounding-dino-tiny"];
/// Transfer2.5's control checkpoints, resolved by Hugging Face id (checkpoint_db.py,
/// cosmos_oss/checkpoints_transfer2.py): repository and file.
const T25_CHECKPOINTS: &[(&str, &str)] = &[
    ("nvidia/Cosmos-Transfer2.5-2B", "general/edge/61f5694b-0ad5-4ecd-8ad7-c8545627d125_ema_bf16.pt"),
    ("nvidia/Cosmos-Transfer2.5-2B", "general/depth/626e6618-bfcd-4d9a-a077-1409e2ce353f_ema_bf16.pt"),
    ("nvidia/Cosmos-Transfer2.5-2B", "general/blur/ba2f44f2-c726-4fe7-949f-597069d9b91c_ema_bf16.pt"),
    ("nvidia/Cosmos-Transfer2.5-2B", "general/seg/5136ef49-6d8d-42e8-8abf-7dac722a304a_ema_bf16.pt"),
];

/// The script run where the worker runs: imports NVIDIA's code as the backend does, and
/// looks for what it looks for. Prints `OK ...` or says what is missing.
const IMPORT_CHECK: &str = r#"
import os, sys
backend = sys.argv[1]
if backend == "transfer1":
    cfg = "cosmos_transfer1/diffusion/config/transfer/config.py"
    if not os.path.isfile(cfg):
        print("NO_CONFIG: %s is not under the working directory %s" % (cfg, os.getcwd()))
        sys.exit(3)
    import cosmos_transfer1.diffusion.inference.transfer_pipeline
elif backend == "transfer2_5":
    import cosmos_transfer2.inference
import cosmos_worker
print("OK python %s in %s" % (sys.version.split()[0], os.getcwd()))
"#;

/// Every check, in order.
pub fn check_host(config: &Config) -> Vec<Check> {
    let rt = &config.runtime;
    let gpu_backend = rt.backend != Backend::Sim;
    let wants_gpus = !matches!(&rt.gpus, crate::config::Gpus::Each(v) if v.is_empty());
    let mut out = vec![Check::new(
        "configuration",
        Verdict::Ok,
        format!("backend {}, runtime {}, gpus {}", rt.backend.as_str(), runtime_name(rt.kind), gpus_text(&rt.gpus)),
    )];

    // NVML and the GPUs.
    let mut probe = crate::gpu::probe();
    let samples = probe.sample();
    let needs_gpu = gpu_backend && wants_gpus;
    out.push(if samples.is_empty() {
        let verdict = if needs_gpu { Verdict::Miss } else { Verdict::Skip };
        Check::new("NVML and GPUs", verdict, probe.describe())
            .fix("install the NVIDIA driver (NVML is libnvidia-ml.so.1); `nvidia-smi` must list the GPUs")
    } else {
        let list: Vec<String> = samples
            .iter()
            .map(|g| format!("{} {} ({} of {} MiB free)", g.index, g.name, g.memory_free_mib(), g.memory_total_mib))
            .collect();
        Check::new("NVML and GPUs", Verdict::Ok, format!("{}: {}", probe.describe(), list.join("; ")))
    });

    // The engine, its nvidia runtime, the image, and NVIDIA's code inside it.
    let worker_path = crate::runtime::process::worker_path(config);
    match rt.kind {
        RuntimeKind::Docker => match crate::runtime::docker::engine_info(config) {
            Err(e) => {
                out.push(
                    Check::new("Docker engine", Verdict::Miss, e.to_string())
                        .fix("start dockerd (systemctl start docker) and give cosmosd's user the socket (group docker)"),
                );
                for name in ["nvidia container runtime", "image", "NVIDIA's code in the image"] {
                    out.push(Check::new(name, Verdict::Skip, "no engine to ask"));
                }
            }
            Ok(info) => {
                out.push(Check::new("Docker engine", Verdict::Ok, format!("{} at {}", info.version, info.socket)));
                let has_nvidia = info.runtimes.iter().any(|r| r == "nvidia");
                out.push(match (has_nvidia, needs_gpu) {
                    (true, _) => Check::new("nvidia container runtime", Verdict::Ok, format!("runtimes: {}", info.runtimes.join(", "))),
                    (false, need) => Check::new(
                        "nvidia container runtime",
                        if need { Verdict::Miss } else { Verdict::Skip },
                        format!("runtimes: {}", info.runtimes.join(", ")),
                    )
                    .fix("install nvidia-container-toolkit, then `nvidia-ctk runtime configure --runtime=docker` and restart dockerd"),
                });
                match info.image {
                    None => {
                        out.push(
                            Check::new("image", Verdict::Miss, format!("{} is not on this host", rt.image))
                                .fix("build or load it (packaging/docker/README.md), or set runtime.image"),
                        );
                        out.push(Check::new("NVIDIA's code in the image", Verdict::Skip, "no image"));
                    }
                    Some((id, size)) => {
                        out.push(Check::new(
                            "image",
                            Verdict::Ok,
                            format!(
                                "{} ({}, {})",
                                rt.image,
                                id.chars().take(19).collect::<String>(),
                                crate::config::Size(size / (1 << 20) * (1 << 20))
                            ),
                        ));
                        let argv = vec![rt.python.clone(), "-c".into(), IMPORT_CHECK.into(), rt.backend.as_str().into()];
                        out.push(import_verdict(
                            "NVIDIA's code in the image",
                            crate::runtime::docker::run_once(config, &worker_path, argv, Duration::from_secs(600))
                                .map_err(|e| e.to_string()),
                            config,
                        ));
                    }
                }
            }
        },
        RuntimeKind::Process => {
            for name in ["Docker engine", "nvidia container runtime", "image"] {
                out.push(Check::new(name, Verdict::Skip, "runtime.kind = \"process\""));
            }
            out.push(import_verdict("NVIDIA's code on this host", run_on_host(config, &worker_path), config));
        }
    }

    out.push(checkpoints(config));
    out.push(hf_cache(config));
    out.extend(disk(config));
    if rt.backend == Backend::Transfer1 && rt.guardrails != crate::config::Guardrails::Off {
        out.push(
            Check::new(
                "guardrails",
                Verdict::Warn,
                format!(
                    "runtime.guardrails = \"{}\", but NVIDIA's TransferPipeline runs without guardrails (disable_guardrail=True)",
                    rt.guardrails.as_str()
                ),
            )
            .fix("nothing to fix here; set runtime.guardrails = \"off\" to say so, or use the transfer2_5 backend for guardrails"),
        );
    }
    if config.cluster.enabled() {
        out.extend(cluster_checks(config));
    }
    out
}

/// Several hosts on one queue: the database answers (its schema is one this program
/// knows) and the shared folder takes a file and gives it back.
fn cluster_checks(config: &Config) -> Vec<Check> {
    let c = &config.cluster;
    let host = c.effective_host_id();
    let queue = crate::cluster::PgQueue::connect_within(&c.database, &host, std::time::Duration::from_secs(5)).and_then(|mut q| {
        let counts = q.counts()?;
        let hosts = q.hosts()?;
        Ok((q.target().to_string(), counts, hosts))
    });
    let db = match queue {
        Ok((target, counts, hosts)) => Check::new(
            "shared queue",
            Verdict::Ok,
            format!("{target} as host {host}: {} queued, {} running; {} host(s) registered", counts.queued, counts.running, hosts.len()),
        ),
        Err(e) => Check::new("shared queue", Verdict::Miss, e.to_string()).fix(
            "check cluster.database (user, host, port, database) and that PostgreSQL accepts this host (pg_hba.conf, listen_addresses)",
        ),
    };
    let probe = c.shared_dir.join(format!(".cosmos-check-{host}-{}", std::process::id()));
    let written = std::fs::create_dir_all(&c.shared_dir)
        .and_then(|()| std::fs::write(&probe, host.as_bytes()))
        .and_then(|()| std::fs::read(&probe))
        .map(|back| back == host.as_bytes());
    let _ = std::fs::remove_file(&probe);
    let shared = match written {
        Ok(true) => Check::new("shared folder", Verdict::Ok, format!("{} is writable", c.shared_dir.display())),
        Ok(false) => {
            Check::new("shared folder", Verdict::Miss, format!("{}: a file written there reads back different", c.shared_dir.display()))
        }
        Err(e) => Check::new("shared folder", Verdict::Miss, format!("{}: {e}", c.shared_dir.display()))
            .fix("mount the storage every host shares (NFS, CephFS, ...) at cluster.shared_dir, writable by cosmosd's user"),
    };
    vec![db, shared]
}

fn runtime_name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Docker => "docker",
        RuntimeKind::Process => "process",
    }
}

fn gpus_text(g: &crate::config::Gpus) -> String {
    toml::Value::try_from(g).map(|v| v.to_string()).unwrap_or_else(|_| "?".into())
}

/// `python3 -c IMPORT_CHECK` as the process runtime would start the worker.
fn run_on_host(config: &Config, worker_path: &Path) -> Result<(i64, String), String> {
    let work = crate::layout::Layout::of(&config.paths).work();
    let side = crate::runtime::launch::Side::Host { worker_path: worker_path.to_path_buf(), work: work.clone() };
    let launch = crate::runtime::launch::Launch::new(config, &side, 1);
    // The daemon makes the work folder at start; the check may come first.
    if launch.cwd == work {
        let _ = std::fs::create_dir_all(&launch.cwd);
    }
    let cwd = launch.cwd.clone();
    let out = std::process::Command::new(&config.runtime.python)
        .arg("-c")
        .arg(IMPORT_CHECK)
        .arg(config.runtime.backend.as_str())
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", config.runtime.python))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1) as i64, text))
}

fn import_verdict(name: &'static str, result: Result<(i64, String), String>, config: &Config) -> Check {
    let rt = &config.runtime;
    let last = |text: &str| text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    match result {
        Err(e) => Check::new(name, Verdict::Miss, e).fix("see the message; the worker will fail the same way"),
        Ok((0, text)) => Check::new(name, Verdict::Ok, last(&text)),
        Ok((_, text)) => {
            let fix = if text.contains("NO_CONFIG") || text.contains("No module named 'cosmos_transfer") {
                format!(
                    "set runtime.model_code to NVIDIA's checkout ({}); it becomes the working directory and goes first on PYTHONPATH{}",
                    if rt.backend == Backend::Transfer2_5 { "cosmos-transfer2.5" } else { "cosmos-transfer1" },
                    if rt.kind == RuntimeKind::Docker { " (a container path: mount the checkout with runtime.mounts)" } else { "" }
                )
            } else {
                "install NVIDIA's dependencies where the worker runs (their Dockerfile), or set runtime.python".into()
            };
            Check::new(name, Verdict::Miss, last(&text)).fix(fix)
        }
    }
}

fn checkpoints(config: &Config) -> Check {
    let rt = &config.runtime;
    let dir = &rt.checkpoints;
    let wanted: &[&str] = match rt.backend {
        Backend::Transfer1 if rt.av_sample => T1_AV,
        Backend::Transfer1 => T1_BASE,
        Backend::Transfer2_5 => {
            return Check::new(
                "checkpoints",
                Verdict::Skip,
                "Transfer2.5 resolves its checkpoints by Hugging Face id: see the cache below",
            );
        }
        Backend::Sim => return Check::new("checkpoints", Verdict::Skip, "the sim backend has no model"),
    };
    let missing: Vec<&str> = wanted.iter().copied().filter(|f| !dir.join(f).exists()).collect();
    if missing.is_empty() {
        Check::new("checkpoints", Verdict::Ok, format!("{} files under {}", wanted.len(), dir.display()))
    } else {
        Check::new("checkpoints", Verdict::Miss, format!("under {}: missing {}", dir.display(), missing.join(", "))).fix(format!(
            "in NVIDIA's checkout: python scripts/download_checkpoints.py --output_dir {} --model {}",
            dir.display(),
            if rt.av_sample { "7b_av" } else { "7b" }
        ))
    }
}

/// `models--org--name` in a Hugging Face cache's `hub/`.
fn hf_model_dir(home: &Path, repo: &str) -> PathBuf {
    home.join("hub").join(format!("models--{}", repo.replace('/', "--")))
}

fn hf_cache(config: &Config) -> Check {
    let rt = &config.runtime;
    let home = &rt.hf_home;
    let (needed, names): (bool, Vec<String>) = match rt.backend {
        Backend::Sim => return Check::new("Hugging Face cache", Verdict::Skip, "the sim backend has no model"),
        Backend::Transfer1 => (false, T1_ON_THE_FLY.iter().map(|s| s.to_string()).collect()),
        Backend::Transfer2_5 => (true, T25_CHECKPOINTS.iter().map(|(r, f)| format!("{r}/{f}")).collect()),
    };
    let offline = rt.network == "none";
    if home.as_os_str().is_empty() {
        let verdict = if needed && offline { Verdict::Miss } else { Verdict::Warn };
        return Check::new(
            "Hugging Face cache",
            verdict,
            format!("runtime.hf_home is not set; with network = \"{}\" nothing can be downloaded", rt.network),
        )
        .fix(format!("fill a cache on a host with network (huggingface-cli download {}) and set runtime.hf_home to it", names.join(" ")));
    }
    let missing: Vec<String> = match rt.backend {
        Backend::Transfer2_5 => T25_CHECKPOINTS
            .iter()
            .filter(|(repo, file)| {
                let snapshots = hf_model_dir(home, repo).join("snapshots");
                !std::fs::read_dir(&snapshots).into_iter().flatten().flatten().any(|s| s.path().join(file).exists())
            })
            .map(|(r, f)| format!("{r}/{f}"))
            .collect(),
        _ => T1_ON_THE_FLY.iter().filter(|r| !hf_model_dir(home, r).is_dir()).map(|r| r.to_string()).collect(),
    };
    if missing.is_empty() {
        return Check::new("Hugging Face cache", Verdict::Ok, format!("{}: {}", home.display(), names.join(", ")));
    }
    let verdict = if needed { Verdict::Miss } else { Verdict::Warn };
    let why = if needed { "" } else { " (needed only by runs that make depth or seg controls on the fly)" };
    Check::new("Hugging Face cache", verdict, format!("{}: missing {}{why}", home.display(), missing.join(", "))).fix(format!(
        "HF_HOME={} huggingface-cli download {}",
        home.display(),
        missing.join(" ")
    ))
}

fn disk(config: &Config) -> Vec<Check> {
    let need = config.outbox.min_free.0;
    let mut out = Vec::new();
    for (name, dir) in [("disk (outbox)", &config.paths.outbox), ("disk (state)", &config.paths.state)] {
        out.push(match crate::fsutil::free_bytes(dir) {
            None => Check::new(name, Verdict::Miss, format!("cannot look at {}", dir.display()))
                .fix("create the folder and give cosmosd's user write access"),
            Some(free) if free < need => Check::new(
                name,
                Verdict::Miss,
                format!(
                    "{} free under {}, outbox.min_free is {}",
                    crate::config::Size(free / (1 << 20) * (1 << 20)),
                    dir.display(),
                    config.outbox.min_free
                ),
            )
            .fix("free space there, or lower outbox.min_free; runs wait until there is room"),
            Some(free) => {
                Check::new(name, Verdict::Ok, format!("{} free under {}", crate::config::Size(free / (1 << 30) * (1 << 30)), dir.display()))
            }
        });
    }
    out
}

/// The checklist as text, and whether anything the configuration needs is missing.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut text = String::new();
    let mut missing = 0;
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Miss => "MISS",
            Verdict::Skip => "skip",
        };
        let _ = writeln!(text, "[{tag}] {}: {}", c.name, c.detail);
        if let (Some(fix), Verdict::Miss | Verdict::Warn) = (&c.fix, c.verdict) {
            let _ = writeln!(text, "       fix: {fix}");
        }
        if c.verdict == Verdict::Miss {
            missing += 1;
        }
    }
    let _ = writeln!(
        text,
        "{}",
        if missing == 0 {
            "the host has what the configuration needs".to_string()
        } else {
            format!("{missing} thing(s) the configuration needs are missing")
        }
    );
    (text, missing > 0)
}
