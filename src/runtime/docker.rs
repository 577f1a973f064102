//! The `docker` runtime (DESIGN.md section 10): the worker is the main process of a
//! persistent container, driven with bollard.
//!
//! The container is found again by its labels (`cosmos.instance` and a hash of the
//! configuration that shaped it), so a restarted daemon re-attaches to the running worker
//! and its loaded model instead of starting over; a changed configuration recreates it.
//! stdin stays open across detaches (`StdinOnce = false`): the worker keeps running while
//! no daemon is attached. Host paths in specs are rewritten to the container's mounts and
//! the worker's output paths back.

use super::launch::{Launch, Side, CONTAINER_CHECKPOINTS, CONTAINER_HF_HOME};
use super::protocol::{Event, EventLines, Op, Outputs, WorkerLine, PROTOCOL_VERSION};
use super::worker::{
    await_event, forward_line, recv_msg, Awaited, Found, LocalizeError, LogLines, LogSink, Worker, WorkerError, WorkerInfo, WorkerMsg,
};
use crate::config::Config;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptions,
    RemoveContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The API version dockerd 20.10 (Debian 12) speaks; newer engines accept it too.
const API: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };
/// bollard's request timeout, in seconds. Its default (120 s) would cut a long run's
/// attach stream; a week outlasts any run_timeout we allow by default.
const REQUEST_TIMEOUT: u64 = 7 * 24 * 3600;
pub const WORKER_MOUNT: &str = "/opt/cosmos/worker";

pub use super::error::DockerError;

fn api(e: bollard::errors::Error) -> DockerError {
    DockerError::Api(e)
}

/// `docker rm -f`: a container is removed even while it runs.
fn force_remove() -> Option<RemoveContainerOptions> {
    Some(RemoveContainerOptionsBuilder::new().force(true).build())
}

/// A bind mount: a host folder and where the container sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

/// Host path <-> container path, by the longest mount prefix.
#[derive(Debug, Clone, Default)]
pub struct PathMap {
    pub mounts: Vec<Mount>,
}

impl PathMap {
    pub fn for_config(config: &Config, worker_path: &Path) -> PathMap {
        let mut mounts = vec![
            Mount { host: crate::layout::Layout::of(&config.paths).work(), container: "/cosmos/work".into(), read_only: false },
            // The staged inputs inside it, read-only: a run cannot change what later runs read.
            Mount { host: crate::layout::Layout::of(&config.paths).inputs(), container: "/cosmos/work/inputs".into(), read_only: true },
            Mount { host: config.paths.outbox.clone(), container: "/cosmos/outbox".into(), read_only: true },
            Mount { host: config.paths.inbox.clone(), container: "/cosmos/inbox".into(), read_only: true },
            Mount { host: worker_path.to_path_buf(), container: WORKER_MOUNT.into(), read_only: true },
        ];
        if config.runtime.checkpoints.is_dir() {
            mounts.push(Mount { host: config.runtime.checkpoints.clone(), container: CONTAINER_CHECKPOINTS.into(), read_only: true });
        }
        if !config.runtime.hf_home.as_os_str().is_empty() {
            // Read-only: with HF_HUB_OFFLINE=1 the cache is read, never filled.
            mounts.push(Mount { host: config.runtime.hf_home.clone(), container: CONTAINER_HF_HOME.into(), read_only: true });
        }
        for m in config.runtime.extra_mounts() {
            mounts.push(Mount { host: m.host, container: m.container, read_only: m.read_only });
        }
        for (i, root) in config.paths.input_roots.iter().enumerate() {
            mounts.push(Mount { host: root.clone(), container: PathBuf::from(format!("/cosmos/inputs/{i}")), read_only: true });
        }
        // Several hosts on one queue: the runs' inputs are in the shared folder (read-only,
        // as the local staged inputs are).
        if config.cluster.enabled() && config.cluster.shared_dir.is_absolute() {
            let inputs = config.cluster.shared_dir.join("inputs");
            mounts.push(Mount { host: inputs, container: "/cosmos/shared/inputs".into(), read_only: true });
        }
        // Canonical host paths: specs hold canonical paths (symlinks resolved).
        for m in &mut mounts {
            if let Ok(c) = std::fs::canonicalize(&m.host) {
                m.host = c;
            }
        }
        PathMap { mounts }
    }

    pub fn to_container(&self, host: &Path) -> Option<PathBuf> {
        self.mounts
            .iter()
            .filter(|m| host.starts_with(&m.host))
            .max_by_key(|m| m.host.as_os_str().len())
            .map(|m| m.container.join(host.strip_prefix(&m.host).unwrap_or(Path::new(""))))
    }

    pub fn to_host(&self, container: &Path) -> Option<PathBuf> {
        self.mounts
            .iter()
            .filter(|m| container.starts_with(&m.container))
            .max_by_key(|m| m.container.as_os_str().len())
            .map(|m| m.host.join(container.strip_prefix(&m.container).unwrap_or(Path::new(""))))
    }

    /// Every absolute path string in `v` that lies under a mount, rewritten for the
    /// container. Returns the host paths that lie under no mount (the run cannot see them).
    pub fn rewrite_spec(&self, v: &mut Value) -> Vec<String> {
        let mut unmounted = Vec::new();
        rewrite(v, &mut |s| match self.to_container(Path::new(s)) {
            Some(p) => Some(p.display().to_string()),
            None => {
                unmounted.push(s.to_string());
                None
            }
        });
        unmounted
    }

    fn binds(&self) -> Vec<String> {
        self.mounts
            .iter()
            .filter(|m| m.host.exists())
            .map(|m| format!("{}:{}:{}", m.host.display(), m.container.display(), if m.read_only { "ro" } else { "rw" }))
            .collect()
    }
}

fn rewrite(v: &mut Value, f: &mut dyn FnMut(&str) -> Option<String>) {
    match v {
        Value::String(s) if s.starts_with('/') => {
            if let Some(new) = f(s) {
                *s = new;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| rewrite(i, f)),
        _ => {}
    }
}

/// The container's confinement, for the worker and for check-host's throwaway container
/// alike: every capability dropped, no privilege gained through setuid files, a process
/// limit, `runtime.network` ("none" by default), the inputs, inbox and outbox mounted
/// read-only. The worker needs none of what is taken away.
fn hardened(config: &Config, map: &PathMap) -> HostConfig {
    HostConfig {
        binds: Some(map.binds()),
        network_mode: Some(config.runtime.network.clone()),
        shm_size: Some(config.runtime.shm_size.0 as i64),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        pids_limit: (config.runtime.pids_limit > 0).then_some(config.runtime.pids_limit as i64),
        ..Default::default()
    }
}

/// `--gpus all` (`None`) or `--gpus '"device=0,1"'`: the nvidia runtime's device request.
fn device_requests(gpus: Option<&[u32]>) -> Option<Vec<DeviceRequest>> {
    let request = |count, device_ids| DeviceRequest {
        driver: Some("nvidia".into()),
        count,
        device_ids,
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    };
    match gpus {
        Some([]) => None,
        None => Some(vec![request(Some(-1), None)]),
        Some(ids) => Some(vec![request(None, Some(ids.iter().map(u32::to_string).collect()))]),
    }
}

/// What shapes the container: a change to any of it means a new container.
fn config_hash(config: &Config, map: &PathMap, user: &str, launch: &Launch, gpus: Option<&[u32]>) -> String {
    use sha2::{Digest, Sha256};
    let rt = &config.runtime;
    let text = format!(
        "{}|{:?}|{:?}|{}|{:?}|{}|{}|{}|{:?}|{}|hardened:{}",
        rt.image,
        launch.argv,
        launch.env,
        launch.cwd.display(),
        map.binds(),
        user,
        rt.network,
        rt.shm_size.0,
        gpus,
        rt.ipc_host,
        rt.pids_limit
    );
    crate::fsutil::hex(&Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The `PYTHONPATH` the image sets, kept behind NVIDIA's checkout and the worker.
fn image_pythonpath(rt: &tokio::runtime::Runtime, docker: &Docker, image: &str) -> Option<String> {
    let inspected = rt.block_on(docker.inspect_image(image)).ok()?;
    inspected.config?.env?.into_iter().find_map(|e| e.strip_prefix("PYTHONPATH=").map(str::to_string))
}

pub struct DockerWorker {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    pub container_id: String,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    events: Receiver<WorkerMsg>,
    pub backend: String,
    pub version: String,
    pub pid: u32,
    pub map: PathMap,
    /// Set when re-attached to a worker that was already running.
    pub found: Option<Found>,
}

impl DockerWorker {
    /// Re-attaches to this instance's container when its configuration still matches,
    /// else creates and starts a new one; then speaks to the worker in it.
    /// `slot` of `slots`: one container per GPU or GPU group; `gpus` are this one's
    /// (`None`: all); `ranks`: its worker processes (more than one: under torchrun).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &Config,
        worker_path: &Path,
        log: LogSink,
        hello_timeout: Duration,
        load_limit: Duration,
        slot: usize,
        slots: usize,
        gpus: Option<&[u32]>,
        ranks: usize,
        stop: &AtomicBool,
    ) -> Result<DockerWorker, DockerError> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(DockerError::Runtime)?;
        let socket = docker_socket();
        let docker = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT, &API)
            .map_err(|source| DockerError::Engine { socket: socket.clone(), source })?;
        rt.block_on(docker.ping()).map_err(|source| DockerError::Engine { socket: socket.clone(), source })?;

        let map = PathMap::for_config(config, worker_path);
        // SAFETY: getuid/getgid cannot fail.
        let user = format!("{}:{}", unsafe { libc::getuid() }, unsafe { libc::getgid() });
        // The hash leaves the image's own PYTHONPATH out: the image is in it by name, and
        // an image that is gone must not make a running container look stale.
        let side = |image_pythonpath| Side::Container { worker_mount: WORKER_MOUNT.into(), image_pythonpath };
        let hash = config_hash(config, &map, &user, &Launch::new(config, &side(None), ranks), gpus);
        let instance = config.runtime.instance.clone();
        let name = if slots > 1 { format!("cosmos-{instance}-{slot}") } else { format!("cosmos-{instance}") };

        let mut labels = HashMap::new();
        labels.insert("cosmos.instance".to_string(), instance.clone());
        labels.insert("cosmos.slot".to_string(), slot.to_string());
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_string(), vec![format!("cosmos.instance={instance}"), format!("cosmos.slot={slot}")])]);
        let existing = rt
            .block_on(docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build())))
            .map_err(api)?;
        let mut reuse = None;
        for c in existing {
            let id = c.id.clone().unwrap_or_default();
            let same = c.labels.as_ref().and_then(|l| l.get("cosmos.config-hash")).map(String::as_str) == Some(hash.as_str());
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            if same && running && reuse.is_none() {
                reuse = Some(id);
            } else {
                tracing::info!(container = %id, same_config = same, running, "removing an old worker container");
                let _ = rt.block_on(docker.remove_container(&id, force_remove()));
            }
        }

        let (container_id, fresh) = match reuse {
            Some(id) => (id, false),
            None => {
                let image = config.runtime.image.clone();
                if rt.block_on(docker.inspect_image(&image)).is_err() {
                    return Err(DockerError::MissingImage { image });
                }
                labels.insert("cosmos.config-hash".to_string(), hash.clone());
                let launch = Launch::new(config, &side(image_pythonpath(&rt, &docker, &image)), ranks);
                tracing::info!(command = %launch.command_line(), cwd = %launch.cwd.display(), %image, "creating the worker container");
                // Fake GPUs (COSMOS_FAKE_GPUS, tests) have no driver to request them from.
                let fake = std::env::var_os("COSMOS_FAKE_GPUS").is_some_and(|v| !v.is_empty());
                let device_requests = if fake { None } else { device_requests(gpus) };
                let host_config =
                    HostConfig { ipc_mode: config.runtime.ipc_host.then(|| "host".to_string()), device_requests, ..hardened(config, &map) };
                let body = ContainerCreateBody {
                    image: Some(image),
                    cmd: Some(launch.argv.clone()),
                    env: Some(launch.env_entries()),
                    user: Some(user.clone()),
                    working_dir: Some(launch.cwd.display().to_string()),
                    labels: Some(labels),
                    open_stdin: Some(true),
                    stdin_once: Some(false),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    host_config: Some(host_config),
                    ..Default::default()
                };
                let created = rt
                    .block_on(docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body))
                    .map_err(api)?;
                (created.id, true)
            }
        };

        // Attach before starting a fresh container, so its hello is not missed.
        let attached = rt
            .block_on(docker.attach_container(
                &container_id,
                Some(AttachContainerOptionsBuilder::new().stdin(true).stdout(true).stderr(true).stream(true).logs(false).build()),
            ))
            .map_err(api)?;
        if fresh {
            rt.block_on(docker.start_container(&container_id, None)).map_err(api)?;
            tracing::info!(container = %container_id, image = %config.runtime.image, "worker container started");
        } else {
            tracing::info!(container = %container_id, "re-attached to the running worker container");
        }
        let (tx, events) = mpsc::channel();
        let mut output = attached.output;
        rt.spawn(async move {
            let mut lines = EventLines::default();
            let mut err_lines = LogLines::default();
            let mut each = |line: WorkerLine| forward_line(line, &tx, &log);
            while let Some(item) = output.next().await {
                let Ok(item) = item else { break };
                match item {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => lines.push(&message, &mut each),
                    LogOutput::StdErr { message } => err_lines.push(&message, &log),
                    LogOutput::StdIn { .. } => {}
                }
            }
            lines.finish(&mut each);
            err_lines.finish(&log);
            let _ = tx.send(WorkerMsg::Exited);
        });
        let mut w = DockerWorker {
            rt,
            docker,
            container_id,
            input: attached.input,
            events,
            backend: config.runtime.backend.as_str().into(),
            version: String::new(),
            pid: 0,
            map,
            found: None,
        };
        if fresh {
            let hello = await_event(
                |t| w.recv(t),
                hello_timeout,
                stop,
                |ev| match ev {
                    Event::Hello { protocol, backend, version, pid } => Some((protocol, backend, version, pid)),
                    _ => None,
                },
            );
            return match hello {
                Awaited::Got((protocol, _, _, _)) if protocol != PROTOCOL_VERSION => {
                    w.kill();
                    Err(DockerError::Protocol(protocol))
                }
                Awaited::Got((_, backend, version, pid)) => {
                    w.backend = backend;
                    w.version = version;
                    w.pid = pid;
                    Ok(w)
                }
                Awaited::Exited => Err(DockerError::Exited),
                Awaited::TimedOut => {
                    w.kill();
                    Err(DockerError::NoHello(hello_timeout))
                }
                Awaited::Stopped => Err(DockerError::Stopped),
            };
        }
        // Re-attached: the worker said hello long ago; ask what it is doing.
        w.send(&Op::Ping)?;
        let pong = await_event(
            |t| w.recv(t),
            Duration::from_secs(15),
            stop,
            |ev| match ev {
                Event::Pong { state, run_id, controls, options, version, pid } => Some((state, run_id, controls, options, version, pid)),
                _ => None,
            },
        );
        let (state, run_id, controls, options) = match pong {
            Awaited::Got((state, run_id, controls, options, version, pid)) => {
                w.version = version.unwrap_or_default();
                w.pid = pid.unwrap_or(0);
                tracing::info!(%state, run = ?run_id, controls = ?controls, "the re-attached worker reports");
                (state, run_id, controls.unwrap_or_default(), options.unwrap_or_else(|| Value::Object(Default::default())))
            }
            Awaited::Exited => return Err(DockerError::Exited),
            Awaited::TimedOut => {
                w.kill();
                return Err(DockerError::NoPong);
            }
            Awaited::Stopped => return Err(DockerError::Stopped),
        };
        if state == "loading" {
            // A load the previous daemon asked for: let it finish and keep it. A stop
            // request ends the wait, the container keeps loading for the next daemon.
            let loaded = await_event(
                |t| w.recv(t),
                load_limit,
                stop,
                |ev| match ev {
                    Event::Loaded { controls, options, .. } => {
                        Some((controls, options.unwrap_or_else(|| Value::Object(Default::default()))))
                    }
                    Event::LoadFailed { .. } => Some((Vec::new(), Value::Object(Default::default()))),
                    _ => None,
                },
            );
            return match loaded {
                Awaited::Got((controls, options)) => {
                    w.found = Some(Found { running: None, controls, options });
                    Ok(w)
                }
                Awaited::Exited => Err(DockerError::Exited),
                Awaited::TimedOut => {
                    w.kill();
                    Err(DockerError::NoPong)
                }
                Awaited::Stopped => Err(DockerError::Stopped),
            };
        }
        w.found = Some(Found { running: (state == "running").then_some(run_id).flatten(), controls, options });
        Ok(w)
    }

    pub fn send(&mut self, op: &Op) -> Result<(), DockerError> {
        let line = op.to_line();
        let input = &mut self.input;
        self.rt
            .block_on(async {
                input.write_all(line.as_bytes()).await?;
                input.flush().await
            })
            .map_err(DockerError::Write)
    }

    pub fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        recv_msg(&self.events, timeout)
    }

    /// Removes the container (a dead or hung worker is replaced by a new one).
    pub fn kill(&mut self) {
        let _ = self.rt.block_on(self.docker.remove_container(&self.container_id, force_remove()));
    }
}

impl Worker for DockerWorker {
    fn send(&mut self, op: &Op) -> Result<(), WorkerError> {
        DockerWorker::send(self, op).map_err(WorkerError::from)
    }

    fn recv(&self, timeout: Duration) -> Option<WorkerMsg> {
        DockerWorker::recv(self, timeout)
    }

    fn kill(&mut self) {
        DockerWorker::kill(self)
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            backend: self.backend.clone(),
            version: self.version.clone(),
            pid: self.pid,
            container_id: Some(self.container_id.clone()),
        }
    }

    /// The container keeps running, with its model, for the next daemon.
    fn leave(self: Box<Self>) {}

    fn localize(&self, spec: &mut Value, output_dir: &Path) -> Result<String, LocalizeError> {
        if let Some(p) = self.map.rewrite_spec(spec).into_iter().next() {
            return Err(LocalizeError::Unmounted(p));
        }
        self.map.to_container(output_dir).map(|p| p.display().to_string()).ok_or(LocalizeError::WorkNotMounted)
    }

    fn to_host(&self, outputs: Outputs) -> Outputs {
        let back = |p: String| self.map.to_host(Path::new(&p)).map_or(p, |h| h.display().to_string());
        Outputs {
            video: outputs.video.map(back),
            controls: outputs.controls.into_iter().map(|(k, v)| (k, back(v))).collect(),
            settings: outputs.settings,
        }
    }

    fn take_found(&mut self) -> Option<Found> {
        self.found.take()
    }
}

/// The engine's socket: `$DOCKER_HOST` when it is a unix socket, else the default.
fn docker_socket() -> String {
    std::env::var("DOCKER_HOST").ok().filter(|h| h.starts_with("unix://")).unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// What `cosmosd check-host` asks of the engine.
pub struct EngineInfo {
    pub socket: String,
    pub version: String,
    /// Container runtimes the engine knows (`nvidia` is what GPU device requests need).
    pub runtimes: Vec<String>,
    /// The image: its id and size, or `None` when it is not on this host.
    pub image: Option<(String, u64)>,
}

fn connect() -> Result<(tokio::runtime::Runtime, Docker, String), DockerError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DockerError::Runtime)?;
    let socket = docker_socket();
    let docker = Docker::connect_with_unix(&socket, 600, &API).map_err(|source| DockerError::Engine { socket: socket.clone(), source })?;
    rt.block_on(docker.ping()).map_err(|source| DockerError::Engine { socket: socket.clone(), source })?;
    Ok((rt, docker, socket))
}

/// The engine, its runtimes and the configured image, as they are now.
pub fn engine_info(config: &Config) -> Result<EngineInfo, DockerError> {
    let (rt, docker, socket) = connect()?;
    let info = rt.block_on(docker.info()).map_err(api)?;
    let mut runtimes: Vec<String> = info.runtimes.map(|r| r.into_keys().collect()).unwrap_or_default();
    runtimes.sort();
    let image = rt
        .block_on(docker.inspect_image(&config.runtime.image))
        .ok()
        .map(|i| (i.id.unwrap_or_default(), i.size.unwrap_or(0).max(0) as u64));
    Ok(EngineInfo { socket, version: info.server_version.unwrap_or_default(), runtimes, image })
}

/// Runs `argv` once in a throwaway container shaped like the worker's (image, mounts,
/// environment, working directory, user, network) and returns its exit code and output:
/// how `cosmosd check-host` sees NVIDIA's code as the worker will.
pub fn run_once(config: &Config, worker_path: &Path, argv: Vec<String>, timeout: Duration) -> Result<(i64, String), DockerError> {
    let (rt, docker, _) = connect()?;
    let image = config.runtime.image.clone();
    if rt.block_on(docker.inspect_image(&image)).is_err() {
        return Err(DockerError::MissingImage { image });
    }
    let map = PathMap::for_config(config, worker_path);
    let side = Side::Container { worker_mount: WORKER_MOUNT.into(), image_pythonpath: image_pythonpath(&rt, &docker, &image) };
    let launch = Launch::new(config, &side, 1);
    // SAFETY: getuid/getgid cannot fail.
    let user = format!("{}:{}", unsafe { libc::getuid() }, unsafe { libc::getgid() });
    let name = format!("cosmos-check-{}", crate::ids::token());
    let body = ContainerCreateBody {
        image: Some(image),
        cmd: Some(argv),
        env: Some(launch.env_entries()),
        user: Some(user),
        working_dir: Some(launch.cwd.display().to_string()),
        labels: Some(HashMap::from([("cosmos.check-host".to_string(), "1".to_string())])),
        host_config: Some(hardened(config, &map)),
        ..Default::default()
    };
    let created =
        rt.block_on(docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)).map_err(api)?;
    let result = (|| {
        rt.block_on(docker.start_container(&created.id, None)).map_err(api)?;
        let waited = rt.block_on(async {
            let mut wait = docker.wait_container(&created.id, None);
            tokio::time::timeout(timeout, wait.next()).await
        });
        let code = match waited {
            Ok(Some(Ok(r))) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
            Ok(Some(Err(e))) => return Err(api(e)),
            Ok(None) => -1,
            Err(_) => return Err(DockerError::CheckTimeout(timeout)),
        };
        let mut output = String::new();
        let mut logs = docker.logs(&created.id, Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()));
        rt.block_on(async {
            while let Some(Ok(chunk)) = logs.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        });
        Ok((code, output))
    })();
    let _ = rt.block_on(docker.remove_container(&created.id, force_remove()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The request body as the engine reads it (the API's names, nothing left unset sent).
    fn wire(host: &HostConfig) -> Value {
        serde_json::to_value(host).unwrap_or_default()
    }

    #[test]
    fn gpu_device_requests_have_the_engines_shape() {
        let all = HostConfig { device_requests: device_requests(None), ..Default::default() };
        assert_eq!(wire(&all)["DeviceRequests"], json!([{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]));
        let some = HostConfig { device_requests: device_requests(Some(&[2, 3])), ..Default::default() };
        assert_eq!(wire(&some)["DeviceRequests"], json!([{"Driver": "nvidia", "DeviceIDs": ["2", "3"], "Capabilities": [["gpu"]]}]));
        assert_eq!(device_requests(Some(&[])), None);
    }

    #[test]
    fn the_confinement_reaches_the_request_body() {
        let mut config = Config::default();
        config.runtime.pids_limit = 512;
        let map = PathMap { mounts: vec![Mount { host: "/".into(), container: "/host".into(), read_only: true }] };
        let body = wire(&hardened(&config, &map));
        assert_eq!(body["CapDrop"], json!(["ALL"]));
        assert_eq!(body["SecurityOpt"], json!(["no-new-privileges"]));
        assert_eq!(body["PidsLimit"], 512);
        assert_eq!(body["NetworkMode"], "none");
        assert_eq!(body["Binds"], json!(["/:/host:ro"]));
        config.runtime.pids_limit = 0;
        assert!(wire(&hardened(&config, &map)).get("PidsLimit").is_none(), "0 means no limit: the key is left out");
    }

    #[test]
    fn on_a_shared_queue_the_shared_inputs_are_mounted_read_only() {
        let mut config = Config::default();
        let alone = PathMap::for_config(&config, Path::new("/w"));
        assert!(alone.mounts.iter().all(|m| m.container != Path::new("/cosmos/shared/inputs")));
        config.cluster.database = "postgres://cosmos@db/q".into();
        config.cluster.shared_dir = "/mnt/cosmos".into();
        let map = PathMap::for_config(&config, Path::new("/w"));
        let input = Path::new("/mnt/cosmos/inputs/ab12.mp4");
        assert_eq!(map.to_container(input), Some(PathBuf::from("/cosmos/shared/inputs/ab12.mp4")));
        assert!(map.mounts.iter().any(|m| m.container == Path::new("/cosmos/shared/inputs") && m.read_only));
    }
}
