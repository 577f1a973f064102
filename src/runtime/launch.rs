//! How the worker is started, the same in both runtimes (DESIGN.md section 10): its command
//! line, under `torchrun --nproc_per_node=N` when it has several GPUs; its environment; its
//! working directory. For `process` every path is a host path; for `docker`, a container path.

use crate::config::Config;
use std::path::PathBuf;

/// Where the container sees the checkpoints, the Hugging Face cache and the work folder.
pub const CONTAINER_CHECKPOINTS: &str = "/cosmos/checkpoints";
pub const CONTAINER_HF_HOME: &str = "/cosmos/hf";
pub const CONTAINER_WORK: &str = "/cosmos/work";

/// Which side of the runtime the paths are for.
#[derive(Debug, Clone)]
pub enum Side {
    /// A child process on the host: host paths, the daemon's own PYTHONPATH kept.
    Host { worker_path: PathBuf, work: PathBuf },
    /// The worker inside a container: container paths, the image's PYTHONPATH kept.
    Container { worker_mount: PathBuf, image_pythonpath: Option<String> },
}

/// A worker's command line, environment and working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

impl Launch {
    /// `ranks`: processes to start (one per GPU of this worker); more than one means torchrun.
    pub fn new(config: &Config, side: &Side, ranks: usize) -> Launch {
        let rt = &config.runtime;
        let mut argv = vec![rt.python.clone(), "-u".to_string()];
        if ranks > 1 {
            // NVIDIA's code runs context parallel over every GPU of the worker, each rank
            // its own process (its own server starts torchrun too).
            argv.extend(["-m", "torch.distributed.run", "--standalone", "--nnodes=1"].map(String::from));
            argv.push(format!("--nproc_per_node={ranks}"));
        }
        argv.extend(["-m", "cosmos_worker", "--backend"].map(String::from));
        argv.push(rt.backend.as_str().to_string());
        let given = |flag: &str| rt.backend_args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if !given("--checkpoint-dir") {
            let dir = match side {
                Side::Host { .. } => (!rt.checkpoints.as_os_str().is_empty()).then(|| rt.checkpoints.clone()),
                Side::Container { .. } => {
                    // Only a folder that exists can be mounted; NVIDIA's models then find no
                    // checkpoints, which `cosmosd check-host` names with the download command.
                    if !rt.checkpoints.is_dir() && rt.backend != crate::config::Backend::Sim {
                        tracing::warn!(
                            checkpoints = %rt.checkpoints.display(),
                            "runtime.checkpoints is not a folder on this host: nothing is mounted at {CONTAINER_CHECKPOINTS} and the model will find no checkpoints (see cosmosd check-host)"
                        );
                    }
                    rt.checkpoints.is_dir().then(|| PathBuf::from(CONTAINER_CHECKPOINTS))
                }
            };
            if let Some(dir) = dir {
                argv.push("--checkpoint-dir".into());
                argv.push(dir.display().to_string());
            }
        }
        if !given("--guardrails") {
            argv.push("--guardrails".into());
            argv.push(rt.guardrails.as_str().into());
        }
        if rt.av_sample && !given("--av-sample") {
            argv.push("--av-sample".into());
        }
        argv.extend(rt.backend_args.iter().cloned());

        // NVIDIA's checkout first (its packages, found by path), then the worker, then what
        // the host or image already had.
        let (worker, existing, work) = match side {
            Side::Host { worker_path, work } => {
                (worker_path.clone(), std::env::var("PYTHONPATH").ok().filter(|p| !p.is_empty()), work.clone())
            }
            Side::Container { worker_mount, image_pythonpath } => {
                (worker_mount.clone(), image_pythonpath.clone().filter(|p| !p.is_empty()), PathBuf::from(CONTAINER_WORK))
            }
        };
        let model_code = (!rt.model_code.as_os_str().is_empty()).then(|| rt.model_code.clone());
        let mut python_path: Vec<String> = Vec::new();
        if let Some(code) = &model_code {
            python_path.push(code.display().to_string());
        }
        python_path.push(worker.display().to_string());
        python_path.extend(existing);
        let mut env = vec![("PYTHONPATH".to_string(), python_path.join(":")), ("PYTHONUNBUFFERED".to_string(), "1".to_string())];
        if matches!(side, Side::Container { .. }) {
            env.push(("HOME".into(), "/tmp".into()));
        }
        if !rt.hf_home.as_os_str().is_empty() {
            let home = match side {
                Side::Host { .. } => rt.hf_home.display().to_string(),
                Side::Container { .. } => CONTAINER_HF_HOME.to_string(),
            };
            env.push(("HF_HOME".into(), home));
            // network = "none": checkpoints come from the cache or not at all.
            env.push(("HF_HUB_OFFLINE".into(), "1".into()));
        }
        // The operator's own settings come last and win.
        for (k, v) in &rt.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        Launch { argv, env, cwd: model_code.unwrap_or(work) }
    }

    /// The command line as one string, for logs and errors.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// `KEY=VALUE` entries (Docker's form).
    pub fn env_entries(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// How many processes a worker with these GPUs runs: one per GPU of its group; for `"all"`
/// (`None`), one per GPU the probe sees; at least one.
pub fn ranks_for(gpus: Option<&[u32]>, visible: usize) -> usize {
    match gpus {
        Some(ids) => ids.len().max(1),
        None => visible.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Guardrails};
    use std::path::Path;

    fn config() -> Config {
        let mut c = Config::default();
        c.runtime.backend = Backend::Transfer1;
        c.runtime.checkpoints = "/srv/ckpt".into();
        c.runtime.model_code = "/opt/cosmos-transfer1".into();
        c.runtime.hf_home = "/srv/hf".into();
        c.runtime.guardrails = Guardrails::Offload;
        c.runtime.env.insert("NCCL_DEBUG".into(), "WARN".into());
        c
    }

    fn get<'a>(l: &'a Launch, key: &str) -> Option<&'a str> {
        l.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn on_the_host_paths_are_host_paths_and_nvidias_checkout_comes_first() {
        let l =
            Launch::new(&config(), &Side::Host { worker_path: "/usr/share/cosmos/worker".into(), work: "/var/lib/cosmos/work".into() }, 1);
        assert_eq!(
            l.argv,
            ["python3", "-u", "-m", "cosmos_worker", "--backend", "transfer1", "--checkpoint-dir", "/srv/ckpt", "--guardrails", "offload"]
        );
        assert_eq!(l.cwd, Path::new("/opt/cosmos-transfer1"), "NVIDIA's code finds its config relative to the working directory");
        assert!(get(&l, "PYTHONPATH").unwrap().starts_with("/opt/cosmos-transfer1:/usr/share/cosmos/worker"));
        assert_eq!((get(&l, "HF_HOME"), get(&l, "HF_HUB_OFFLINE")), (Some("/srv/hf"), Some("1")));
        assert_eq!(get(&l, "NCCL_DEBUG"), Some("WARN"));
    }

    #[test]
    fn in_a_container_paths_are_container_paths_and_the_images_pythonpath_is_kept() {
        let mut c = config();
        c.runtime.checkpoints = std::env::temp_dir(); // a folder that exists: mounted
        c.runtime.env.insert("HF_HUB_OFFLINE".into(), "0".into());
        let side = Side::Container { worker_mount: "/opt/cosmos/worker".into(), image_pythonpath: Some("/workspace".into()) };
        let l = Launch::new(&c, &side, 2);
        assert_eq!(&l.argv[..7], ["python3", "-u", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]);
        assert!(l.argv.windows(2).any(|w| w == ["--checkpoint-dir", CONTAINER_CHECKPOINTS]));
        assert_eq!(get(&l, "PYTHONPATH"), Some("/opt/cosmos-transfer1:/opt/cosmos/worker:/workspace"));
        assert_eq!(get(&l, "HF_HOME"), Some(CONTAINER_HF_HOME));
        assert_eq!(get(&l, "HF_HUB_OFFLINE"), Some("0"), "runtime.env wins");
        c.runtime.model_code = PathBuf::new();
        assert_eq!(Launch::new(&c, &side, 1).cwd, Path::new(CONTAINER_WORK));
    }

    #[test]
    fn ranks_follow_the_gpu_group() {
        assert_eq!(ranks_for(Some(&[0, 1]), 8), 2);
        assert_eq!(ranks_for(Some(&[]), 8), 1);
        assert_eq!(ranks_for(None, 4), 4);
        assert_eq!(ranks_for(None, 0), 1);
    }
}
