//! The scheduler's decisions as pure functions (DESIGN.md section 9): which run goes next,
//! whether a failed attempt is retried and after how long, what holds the queue, how long a
//! run has left, and when the queue will be done (the ETA). No I/O here: each is
//! table-tested below.

use crate::config::Backend;
use crate::gpu::GpuSample;
use crate::runtime::protocol::FailureKind;
use crate::store::{QueueCandidates, QueuedRun, Rate, RateUnit, Run};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

/// The run to start next: the queue head (priority, then age), unless a run of the head's
/// priority with the loaded control set is waiting (one load, many jobs) and the head has
/// not waited longer than `max_wait` (no starvation).
pub fn choose_next(c: QueueCandidates, loaded: Option<&str>, now: Timestamp, max_wait: Duration) -> Option<Run> {
    let head = c.head?;
    if loaded.is_none_or(|set| set == head.control_set) {
        return Some(head);
    }
    let waited_ms = head.queued_at.as_deref().and_then(Timestamp::parse_rfc3339).map_or(0, |t| (now.0 - t.0).max(0) as u128);
    if waited_ms > max_wait.as_millis() {
        return Some(head);
    }
    Some(c.same_set.unwrap_or(head))
}

/// What becomes of a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Back to the queue, not to start before `after` has passed.
    Retry { after: Duration },
    /// Failed for good, with this error.
    Fail { error: String },
}

/// A retryable failure is retried while attempts remain (`scheduler.max_attempts`), with
/// backoff; any other fails at once with its message.
pub fn retry_verdict(retryable: bool, attempts: u32, max_attempts: u32, message: &str) -> Verdict {
    if retryable && attempts < max_attempts {
        Verdict::Retry { after: retry_backoff(attempts) }
    } else if retryable {
        Verdict::Fail { error: format!("{message} (after {attempts} attempts)") }
    } else {
        Verdict::Fail { error: message.to_string() }
    }
}

/// The wait after failed attempt `attempt` (1-based): 1 s, 2 s, 4 s, ... at most 60 s.
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_secs(1 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// The wait before starting a worker again after `previous`: doubling, at most 60 s.
pub fn spawn_backoff(previous: Duration) -> Duration {
    (previous * 2).min(Duration::from_secs(60))
}

/// What holds the queue, checked before every pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// `cosmos pause`.
    Paused,
    /// Too little free space under the outbox or the state folder (`outbox.min_free`).
    Disk(String),
}

impl Gate {
    /// What status.json says while the gate holds.
    pub fn reason(&self) -> Option<String> {
        match self {
            Gate::Open => None,
            Gate::Paused => Some("paused (cosmos resume to continue)".into()),
            Gate::Disk(why) => Some(why.clone()),
        }
    }
}

/// Paused first, then the disk guard: each folder's free bytes (`None`: cannot tell, not
/// held) against `need`.
pub fn gate(paused: bool, free: &[(PathBuf, Option<u64>)], need: u64) -> Gate {
    if paused {
        return Gate::Paused;
    }
    for (dir, free) in free {
        if let Some(free) = free.filter(|f| *f < need) {
            return Gate::Disk(format!(
                "disk guard: {} free under {}, outbox.min_free is {}",
                crate::config::Size(free / (1 << 20) * (1 << 20)),
                dir.display(),
                crate::config::Size(need)
            ));
        }
    }
    Gate::Open
}

/// A worker starts only where its GPUs have `need_mib` free (DESIGN.md section 11): why
/// not, if not. `wanted`: its GPUs (`None`: all). Without samples nothing is held back.
pub fn gpu_short(samples: &[GpuSample], wanted: Option<&[u32]>, need_mib: u64) -> Option<String> {
    if need_mib == 0 {
        return None;
    }
    let short: Vec<String> = samples
        .iter()
        .filter(|g| wanted.is_none_or(|w| w.contains(&g.index)))
        .filter(|g| g.memory_free_mib() < need_mib)
        .map(|g| format!("GPU {} has {} MiB free", g.index, g.memory_free_mib()))
        .collect();
    (!short.is_empty()).then(|| format!("GPU memory: {}; runtime.min_free_gpu_mib is {need_mib}", short.join(", ")))
}

/// Seconds left of a run at `step` of `steps` after `elapsed`, at its pace so far; `None`
/// before the first step (no made-up number).
pub fn eta(elapsed: Duration, step: u64, steps: u64) -> Option<f64> {
    (step > 0 && steps >= step).then(|| ((steps - step) as f64 * elapsed.as_secs_f64() / step as f64).round())
}

/// Where an option reaches the model: a constructor option (a load with other options is a
/// new load) or a field of the run's own spec (per sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Load,
    Run,
}

/// One memory-saving change a backend offers, as NVIDIA's code names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Saving {
    pub name: &'static str,
    pub value: Value,
    pub scope: Scope,
    /// Whether the output is the same with it (from NVIDIA's code; see [`ladder`]).
    pub keeps_result: bool,
}

/// One rung of the ladder: options applied together, or a larger GPU group.
#[derive(Debug, Clone, PartialEq)]
pub enum Rung {
    Options(Vec<Saving>),
    LargerGroup,
}

fn load(name: &'static str) -> Saving {
    Saving { name, value: Value::Bool(true), scope: Scope::Load, keeps_result: true }
}

fn chunk(frames: u32) -> Saving {
    Saving { name: "num_video_frames_per_chunk", value: Value::from(frames), scope: Scope::Run, keeps_result: false }
}

/// The memory-saving steps of each backend, cheapest first. From NVIDIA's code:
/// - Transfer1: `TransferPipeline.__init__` (transfer_pipeline.py) takes none of them; it
///   builds `DiffusionControl2WorldGenerationPipeline` (world_generation_pipeline.py) with
///   `offload_network`, `offload_text_encoder_model`, `offload_guardrail_models`,
///   `offload_prompt_upsampler` all False (`offload_tokenizer` left at its False default)
///   and `disable_guardrail=True`, `upsample_prompt=False`: so no guardrail or upsampler to
///   offload. Offloading the T5 text encoder and the tokenizer deletes them after use and
///   loads them again for the next run (base_world_generation_pipeline.py): same output,
///   seconds per run. `offload_network` does the same with the diffusion network and its
///   control nets: same output, a reload of the 7B network per run. Its chunk length
///   (`num_video_frames=121`) is the trained one and not exposed: not offered.
/// - Transfer2.5: `SetupArguments.offload_guardrail_models` (config.py; inference.py passes
///   it as `offload_model_to_cpu` to the guardrail runners): same output, only with
///   guardrails on and not offloaded already. `InferenceArguments.num_video_frames_per_chunk`
///   (93, the trained chunk) lower: the video is made in more, shorter chunks, each
///   conditioned on the last `num_conditional_frames` of the one before
///   (inference_pipeline.py): same length and resolution, different frames. Taken only with
///   `scheduler.oom_may_change_result`. 61 and 29 frames are 16 and 8 latent frames (the
///   tokenizer compresses time 4x: 4k+1 frames).
/// - sim: both kinds, in the same scopes, so the tests cover both paths.
///
/// A larger GPU group (context parallel over more GPUs: less activation memory per GPU, the
/// same output) comes after the options that keep the result and before those that do not.
pub fn ladder(backend: Backend, guardrails: crate::config::Guardrails) -> Vec<Rung> {
    use crate::config::Guardrails;
    match backend {
        Backend::Transfer1 => vec![
            Rung::Options(vec![load("offload_text_encoder_model"), load("offload_tokenizer")]),
            Rung::Options(vec![load("offload_network")]),
            Rung::LargerGroup,
        ],
        Backend::Transfer2_5 => {
            let mut l = Vec::new();
            if guardrails == Guardrails::On {
                l.push(Rung::Options(vec![load("offload_guardrail_models")]));
            }
            l.extend([Rung::LargerGroup, Rung::Options(vec![chunk(61)]), Rung::Options(vec![chunk(29)])]);
            l
        }
        Backend::Sim => vec![
            Rung::Options(vec![load("offload_guardrail_models"), load("offload_text_encoder_model"), load("offload_tokenizer")]),
            Rung::Options(vec![load("offload_network")]),
            Rung::LargerGroup,
            Rung::Options(vec![chunk(61)]),
            Rung::Options(vec![chunk(29)]),
        ],
    }
}

/// What an OOM changed so far: the run's next attempt uses it (kept in the store with the
/// run; its manifest shows it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Remedy {
    /// Constructor options for the model load.
    #[serde(default)]
    pub load: BTreeMap<String, Value>,
    /// Keys of the run's spec changed.
    #[serde(default)]
    pub run: BTreeMap<String, Value>,
    /// The run goes to a GPU group of at least this many GPUs (0: any).
    #[serde(default)]
    pub min_gpus: usize,
    /// Each change, with the attempt that failed before it.
    #[serde(default)]
    pub steps: Vec<RemedyStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemedyStep {
    /// The attempt that ran out of memory.
    pub after_attempt: u32,
    /// What changed, e.g. `offload_tokenizer = true`, `GPU group of 2`.
    pub changes: Vec<String>,
    pub keeps_result: bool,
}

impl Remedy {
    /// How the remedy reads in a log line or an error.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.steps.iter().flat_map(|s| s.changes.clone()).collect();
        if all.is_empty() {
            "nothing".into()
        } else {
            all.join(", ")
        }
    }
}

/// What the healing may use for a run.
pub struct HealContext<'a> {
    pub backend: Backend,
    pub guardrails: crate::config::Guardrails,
    /// The GPUs of the group that ran the attempt.
    pub group_gpus: usize,
    /// The sizes of every configured group.
    pub groups: &'a [usize],
    /// `scheduler.oom_may_change_result`.
    pub may_change_result: bool,
    /// The run's own `num_video_frames_per_chunk`, if it set one.
    pub run_chunk: Option<u32>,
}

/// The remedy for the attempt after `attempt` failed with `kind`: the next rung of the
/// backend's [`ladder`] not yet taken, added to `tried`. `None`: not an OOM, or nothing is
/// left (the run is retried as it is, up to `scheduler.max_attempts`).
pub fn next_remedy(kind: &FailureKind, tried: &Remedy, attempt: u32, ctx: &HealContext) -> Option<Remedy> {
    if *kind != FailureKind::Oom {
        return None;
    }
    for rung in ladder(ctx.backend, ctx.guardrails) {
        let mut next = tried.clone();
        let changes: Vec<String> = match &rung {
            Rung::LargerGroup => {
                let have = tried.min_gpus.max(ctx.group_gpus);
                let Some(size) = ctx.groups.iter().copied().filter(|s| *s > have).min() else { continue };
                next.min_gpus = size;
                vec![format!("a GPU group of {size}")]
            }
            Rung::Options(savings) => {
                let mut changes = Vec::new();
                for s in savings {
                    if s.scope == Scope::Run && !s.keeps_result && !ctx.may_change_result {
                        continue;
                    }
                    let map = if s.scope == Scope::Load { &mut next.load } else { &mut next.run };
                    let current = map.get(s.name).cloned();
                    if let (Value::Number(want), Some(own)) =
                        (&s.value, current.as_ref().and_then(Value::as_u64).or(ctx.run_chunk.map(u64::from)))
                    {
                        // Fewer frames only: never more than the run (or the last step) had.
                        if want.as_u64().is_some_and(|w| w >= own) {
                            continue;
                        }
                    } else if current.as_ref() == Some(&s.value) {
                        continue;
                    }
                    map.insert(s.name.to_string(), s.value.clone());
                    changes.push(format!("{} = {}", s.name, s.value));
                }
                changes
            }
        };
        if changes.is_empty() {
            continue;
        }
        let keeps_result = match &rung {
            Rung::LargerGroup => true,
            Rung::Options(savings) => savings.iter().all(|s| s.keeps_result),
        };
        next.steps.push(RemedyStep { after_attempt: attempt, changes, keeps_result });
        return Some(next);
    }
    None
}

/// Seconds left of the run in hand: at its pace so far once it has reported a step, else
/// what it is expected to take (`expected`, learned) less what it has run; `None` with
/// neither. `elapsed` and `expected` cover the same span (the load still to come and the
/// run, or the run alone).
pub fn remaining(elapsed: Duration, step: u64, steps: u64, expected: Option<f64>) -> Option<f64> {
    eta(elapsed, step, steps).or_else(|| expected.map(|e| (e - elapsed.as_secs_f64()).max(0.0).round()))
}

/// The GPU group a pace is learned on, as the store keys it: `all` (every GPU), `none`, or
/// the GPU indexes, `0,1`.
pub fn gpu_group_key(gpus: Option<&[u32]>) -> String {
    match gpus {
        None => "all".into(),
        Some([]) => "none".into(),
        Some(g) => g.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    }
}

/// The learned pace of one control set on one GPU group (of one backend).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pace {
    pub per_frame: Option<f64>,
    pub per_run: Option<f64>,
    pub load: Option<f64>,
}

/// Paces by (control set, GPU group).
pub type Paces = HashMap<(String, String), Pace>;

/// The paces of the store's rates (those of one backend).
pub fn paces(rates: &[Rate]) -> Paces {
    let mut out = Paces::new();
    for r in rates {
        let p = out.entry((r.key.control_set.clone(), r.key.gpus.clone())).or_default();
        match r.unit {
            RateUnit::Frame => p.per_frame = Some(r.seconds),
            RateUnit::Run => p.per_run = Some(r.seconds),
            RateUnit::Load => p.load = Some(r.seconds),
        }
    }
    out
}

/// What a run's expected duration was reckoned in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Its input's frames at the learned seconds per frame.
    Frames,
    /// Its frames unknown (not probed), or no pace per frame yet: seconds per run.
    Run,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Frames => "frames",
            Basis::Run => "run",
        }
    }
}

/// How long a run of `frames` takes at `pace`: by its frames where both are known, else
/// the learned seconds per run; `None` while no run of its kind has finished.
pub fn run_seconds(pace: Option<&Pace>, frames: Option<u64>) -> Option<(f64, Basis)> {
    let pace = pace?;
    match (pace.per_frame, frames) {
        (Some(per), Some(n)) if n > 0 => Some((per * n as f64, Basis::Frames)),
        _ => pace.per_run.map(|s| (s, Basis::Run)),
    }
}

/// A worker as the ETA sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub slot: usize,
    /// Its GPU group ([`gpu_group_key`]).
    pub gpus: String,
    /// The control set it holds loaded.
    pub loaded: Option<String>,
    /// Seconds until it is free for the next run: 0 when idle; `None`: busy for how long
    /// no one can say.
    pub free_in: Option<f64>,
}

/// When one queued run is expected to run, on which worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RunForecast {
    pub run_id: String,
    pub slot: usize,
    /// Whether a model load comes before it.
    pub load: bool,
    /// Its own duration (the load not included).
    pub seconds: Option<f64>,
    pub basis: Option<Basis>,
    /// From now until it starts (its load first, if any), and until it ends; `None` once
    /// anything before it on its worker has no estimate.
    pub starts_in: Option<f64>,
    pub done_in: Option<f64>,
}

/// When the queue will be done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forecast {
    pub runs: Vec<RunForecast>,
    /// Until every worker is done with the queue and its current run; `None` unless
    /// everything has an estimate.
    pub seconds: Option<f64>,
    /// Model loads the queue will need.
    pub loads: u64,
    /// Runs and loads of a kind not measured yet.
    pub unknown_runs: u64,
    pub unknown_loads: u64,
    /// What has no estimate yet, in words (`run of controls edge on GPU 0`).
    pub missing: BTreeSet<String>,
}

/// The queue as the schedulers will take it: each worker, as it frees up (the first to be
/// free first; the lowest slot on a tie), picks by the rule of [`choose_next`] (the queue
/// head, or the oldest run of the head's priority with the control set it holds), loading
/// the run's control set when it holds another. So a control set costs one load per
/// worker that takes it up, and none while a worker holds it. `queue` is in queue order
/// (priority, then age). Assumes the affinity holds: a head that waits past
/// `scheduler.max_affinity_wait` can only add loads. Pieces with no estimate count as
/// nothing and make everything after them on their worker unknown.
pub fn forecast(queue: &[QueuedRun], workers: &[WorkerView], paces: &Paces) -> Forecast {
    struct Timeline {
        at: f64,
        sure: bool,
        loaded: Option<String>,
    }
    let mut f = Forecast::default();
    let mut lines: Vec<Timeline> = workers
        .iter()
        .map(|w| Timeline { at: w.free_in.unwrap_or(0.0).max(0.0), sure: w.free_in.is_some(), loaded: w.loaded.clone() })
        .collect();
    if lines.is_empty() {
        f.unknown_runs = queue.len() as u64;
        f.missing.insert("no worker to run the queue".into());
        return f;
    }
    let mut by_set: HashMap<(i32, String), VecDeque<usize>> = HashMap::new();
    for (i, r) in queue.iter().enumerate() {
        by_set.entry((r.priority, r.control_set.clone())).or_default().push_back(i);
    }
    let mut taken = vec![false; queue.len()];
    let mut head = 0;
    for _ in 0..queue.len() {
        // ok: each pass takes one run, so an untaken one is left at or after `head`.
        while taken[head] {
            head += 1;
        }
        let wi = (0..lines.len()).min_by(|a, b| lines[*a].at.total_cmp(&lines[*b].at)).unwrap_or(0);
        let h = &queue[head];
        let pick = match lines[wi].loaded.clone() {
            Some(set) if set != h.control_set => by_set
                .get_mut(&(h.priority, set))
                .and_then(|q| {
                    while q.front().is_some_and(|i| taken[*i]) {
                        q.pop_front();
                    }
                    q.front().copied()
                })
                .unwrap_or(head),
            _ => head,
        };
        taken[pick] = true;
        let run = &queue[pick];
        let group = &workers[wi].gpus; // ok: `lines` has one entry per worker, wi < lines.len()
        let pace = paces.get(&(run.control_set.clone(), group.clone()));
        let line = &mut lines[wi];
        let (starts_in, load) = (line.sure.then_some(line.at), line.loaded.as_deref() != Some(run.control_set.as_str()));
        if load {
            f.loads += 1;
            match pace.and_then(|p| p.load) {
                Some(s) => line.at += s,
                None => {
                    line.sure = false;
                    f.unknown_loads += 1;
                    f.missing.insert(format!("model load of controls {} on {}", run.control_set, group_words(group)));
                }
            }
            line.loaded = Some(run.control_set.clone());
        }
        let own = run_seconds(pace, run.frames);
        match own {
            Some((s, _)) => line.at += s,
            None => {
                line.sure = false;
                f.unknown_runs += 1;
                f.missing.insert(format!("run of controls {} on {}", run.control_set, group_words(group)));
            }
        }
        f.runs.push(RunForecast {
            run_id: run.id.clone(),
            slot: workers[wi].slot,
            load,
            seconds: own.map(|o| o.0),
            basis: own.map(|o| o.1),
            starts_in,
            done_in: line.sure.then_some(line.at),
        });
    }
    f.seconds = lines.iter().all(|l| l.sure).then(|| lines.iter().map(|l| l.at).fold(0.0, f64::max));
    f
}

/// A GPU group key in words: `all GPUs`, `no GPU`, `GPU 0,1`.
pub fn group_words(key: &str) -> String {
    match key {
        "all" => "all GPUs".into(),
        "none" => "no GPU".into(),
        g => format!("GPU {g}"),
    }
}

/// A duration for people: `45s`, `3m05s`, `2h10m`.
pub fn duration_words(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Control, Hint, RunSpec, Settings, SpecStyle};
    use crate::store::RunStatus;

    fn run(id: &str, set: &str, priority: i32, queued_at: i64) -> Run {
        Run {
            id: id.into(),
            prompt_id: "ps_x".into(),
            name: None,
            status: RunStatus::Queued,
            spec: RunSpec {
                video: None,
                style: SpecStyle::Cli,
                name: None,
                prompt: "p".into(),
                negative_prompt: None,
                visual_input: "/v".into(),
                controls: [(Hint::Edge, Control::generated(0.5))].into(),
                settings: Settings::default(),
                priority,
                upscale_weight: None,
                sim: None,
            },
            control_set: set.into(),
            priority,
            batch_id: None,
            submission_id: None,
            line: None,
            parent_id: None,
            attempts: 0,
            outputs: None,
            error: None,
            created_at: String::new(),
            queued_at: Some(Timestamp(queued_at).rfc3339()),
            started_at: None,
            finished_at: None,
            updated_at: String::new(),
        }
    }

    #[test]
    fn next_run_prefers_the_loaded_set_until_the_head_has_waited_too_long() {
        let now = Timestamp(1_000_000);
        let wait = Duration::from_secs(600);
        let head = run("rs_head", "vis", 0, now.0 - 1000);
        let same = run("rs_same", "edge", 0, now.0 - 500);
        let old_head = run("rs_old", "vis", 0, now.0 - 601_000);
        let pick = |h: &Run, s: Option<&Run>, loaded: Option<&str>| {
            choose_next(QueueCandidates { head: Some(h.clone()), same_set: s.cloned() }, loaded, now, wait).map(|r| r.id)
        };
        let table: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            // (case, loaded, same-set candidate, expected)
            ("nothing loaded: the head", None, Some("rs_same"), "rs_head"),
            ("the head has the loaded set", Some("vis"), None, "rs_head"),
            ("a run of the loaded set goes first", Some("edge"), Some("rs_same"), "rs_same"),
            ("no run of the loaded set: the head", Some("edge"), None, "rs_head"),
        ];
        for (case, loaded, same_id, want) in table {
            let s = same_id.map(|_| &same);
            assert_eq!(pick(&head, s, *loaded).as_deref(), Some(*want), "{case}");
        }
        assert_eq!(pick(&old_head, Some(&same), Some("edge")).as_deref(), Some("rs_old"), "no starvation past max_affinity_wait");
        assert_eq!(choose_next(QueueCandidates::default(), Some("edge"), now, wait).map(|r| r.id), None, "an empty queue");
    }

    #[test]
    fn retries_back_off_and_end_at_max_attempts() {
        let table: &[(bool, u32, u32, Verdict)] = &[
            (true, 1, 3, Verdict::Retry { after: Duration::from_secs(1) }),
            (true, 2, 3, Verdict::Retry { after: Duration::from_secs(2) }),
            (true, 3, 3, Verdict::Fail { error: "oom (after 3 attempts)".into() }),
            (false, 1, 3, Verdict::Fail { error: "oom".into() }),
        ];
        for (retryable, attempts, max, want) in table {
            assert_eq!(retry_verdict(*retryable, *attempts, *max, "oom"), *want, "{retryable} {attempts}/{max}");
        }
        let waits: Vec<u64> = (1..=9).map(|a| retry_backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(spawn_backoff(Duration::from_secs(40)), Duration::from_secs(60));
    }

    #[test]
    fn gates_say_why_the_queue_is_held() {
        let dirs = |free: Option<u64>| vec![(PathBuf::from("/out"), Some(50 << 30)), (PathBuf::from("/state"), free)];
        assert_eq!(gate(true, &dirs(Some(0)), 1 << 30), Gate::Paused, "pause comes first");
        assert_eq!(gate(false, &dirs(Some(2 << 30)), 1 << 30), Gate::Open);
        assert_eq!(gate(false, &dirs(None), 1 << 30), Gate::Open, "cannot tell: not held");
        let disk = gate(false, &dirs(Some(512 << 20)), 1 << 30);
        assert_eq!(disk.reason().unwrap(), "disk guard: 512MiB free under /state, outbox.min_free is 1GiB");
        assert_eq!(Gate::Paused.reason().unwrap(), "paused (cosmos resume to continue)");
        let gpu = |index: u32, used: u64| GpuSample {
            index,
            name: "g".into(),
            memory_used_mib: used,
            memory_total_mib: 1000,
            utilization_pct: 0,
            temperature_c: 0,
            power_w: 0.0,
        };
        let samples = [gpu(0, 900), gpu(1, 100)];
        assert_eq!(gpu_short(&samples, Some(&[1]), 500), None, "this worker's GPU has room");
        assert_eq!(gpu_short(&samples, None, 500).unwrap(), "GPU memory: GPU 0 has 100 MiB free; runtime.min_free_gpu_mib is 500");
        assert_eq!(gpu_short(&samples, None, 0), None, "no admission asked");
    }

    #[test]
    fn eta_only_once_there_is_a_pace() {
        assert_eq!(eta(Duration::from_secs(10), 0, 35), None);
        assert_eq!(eta(Duration::from_secs(10), 5, 35), Some(60.0));
        assert_eq!(eta(Duration::from_secs(10), 35, 35), Some(0.0));
        assert_eq!(eta(Duration::from_secs(10), 36, 35), None, "a step past the end is no pace");
    }

    fn ctx(backend: Backend, group_gpus: usize, groups: &[usize], may_change_result: bool) -> HealContext<'_> {
        HealContext { backend, guardrails: crate::config::Guardrails::On, group_gpus, groups, may_change_result, run_chunk: None }
    }

    /// Follows the healing from a first OOM until nothing is left: each remedy's steps.
    fn walk(c: &HealContext) -> Vec<Vec<String>> {
        let mut tried = Remedy::default();
        let mut out = Vec::new();
        let mut attempt = 1;
        while let Some(next) = next_remedy(&FailureKind::Oom, &tried, attempt, c) {
            out.push(next.steps.last().unwrap().changes.clone());
            assert_eq!(next.steps.len(), out.len(), "one step per OOM");
            tried = next;
            attempt += 1;
            assert!(attempt < 20, "the ladder ends");
        }
        out
    }

    #[test]
    fn oom_healing_climbs_each_backends_ladder_cheapest_first() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // Transfer1 on one GPU of [[0], [1, 2]]: the cheap offloads, the network, the larger group.
        assert_eq!(
            walk(&ctx(Backend::Transfer1, 1, &[1, 2], false)),
            [
                s(&["offload_text_encoder_model = true", "offload_tokenizer = true"]),
                s(&["offload_network = true"]),
                s(&["a GPU group of 2"])
            ]
        );
        // Already on the largest group: no group step; equal groups neither.
        assert_eq!(walk(&ctx(Backend::Transfer1, 2, &[1, 2], false)).len(), 2);
        assert_eq!(walk(&ctx(Backend::Transfer1, 1, &[1, 1], false)).len(), 2);
        // Transfer2.5: guardrail offload, a group, and fewer frames per chunk only where allowed.
        // Groups are climbed one size at a time: an OOM on the group of 2 goes to the group of 4.
        assert_eq!(
            walk(&ctx(Backend::Transfer2_5, 1, &[1, 4, 2], false)),
            [s(&["offload_guardrail_models = true"]), s(&["a GPU group of 2"]), s(&["a GPU group of 4"])]
        );
        assert_eq!(
            walk(&ctx(Backend::Transfer2_5, 1, &[1], true)),
            [s(&["offload_guardrail_models = true"]), s(&["num_video_frames_per_chunk = 61"]), s(&["num_video_frames_per_chunk = 29"])]
        );
        // Guardrails off or offloaded already: nothing to offload.
        let mut c = ctx(Backend::Transfer2_5, 1, &[1], true);
        c.guardrails = crate::config::Guardrails::Offload;
        assert_eq!(walk(&c).first().unwrap(), &s(&["num_video_frames_per_chunk = 61"]));
        // A run that asked for 45 frames per chunk itself: only fewer than that.
        c.run_chunk = Some(45);
        assert_eq!(walk(&c), [s(&["num_video_frames_per_chunk = 29"])]);
    }

    #[test]
    fn oom_remedies_accumulate_say_whether_they_keep_the_result_and_only_follow_an_oom() {
        let c = ctx(Backend::Sim, 1, &[1, 2], true);
        let first = next_remedy(&FailureKind::Oom, &Remedy::default(), 1, &c).unwrap();
        assert_eq!(first.load.len(), 3);
        assert!(first.run.is_empty() && first.min_gpus == 0);
        let second = next_remedy(&FailureKind::Oom, &first, 2, &c).unwrap();
        assert_eq!(second.load.get("offload_network"), Some(&Value::Bool(true)));
        assert_eq!(second.load.len(), 4, "earlier options stay");
        let third = next_remedy(&FailureKind::Oom, &second, 3, &c).unwrap();
        assert_eq!(third.min_gpus, 2);
        let fourth = next_remedy(&FailureKind::Oom, &third, 4, &c).unwrap();
        assert_eq!(fourth.run.get("num_video_frames_per_chunk"), Some(&Value::from(61)));
        let keeps: Vec<(u32, bool)> = fourth.steps.iter().map(|s| (s.after_attempt, s.keeps_result)).collect();
        assert_eq!(keeps, [(1, true), (2, true), (3, true), (4, false)]);
        assert!(fourth.describe().starts_with("offload_guardrail_models = true, "), "{}", fourth.describe());
        for kind in [FailureKind::Crash, FailureKind::Internal, FailureKind::Timeout, FailureKind::Load] {
            assert_eq!(next_remedy(&kind, &Remedy::default(), 1, &c), None, "{kind}");
        }
        assert_eq!(Remedy::default().describe(), "nothing");
        // The remedy is kept in the store as JSON and read back the same.
        let back: Remedy = serde_json::from_value(serde_json::to_value(&fourth).unwrap()).unwrap();
        assert_eq!(back, fourth);
    }

    #[test]
    fn a_runs_duration_is_by_its_frames_else_per_run_else_unknown() {
        let both = Pace { per_frame: Some(0.5), per_run: Some(30.0), load: None };
        let per_run = Pace { per_run: Some(30.0), ..Pace::default() };
        let per_frame = Pace { per_frame: Some(0.5), ..Pace::default() };
        type Case<'a> = (Option<&'a Pace>, Option<u64>, Option<(f64, Basis)>);
        let table: &[Case] = &[
            (None, Some(10), None),
            (Some(&both), Some(10), Some((5.0, Basis::Frames))),
            (Some(&both), None, Some((30.0, Basis::Run))),
            (Some(&both), Some(0), Some((30.0, Basis::Run))),
            (Some(&per_run), Some(10), Some((30.0, Basis::Run))),
            (Some(&per_frame), None, None),
            (Some(&Pace::default()), Some(10), None),
        ];
        for (pace, frames, want) in table {
            assert_eq!(run_seconds(*pace, *frames), *want, "{pace:?} {frames:?}");
        }
        let keys: &[(Option<&[u32]>, &str)] = &[(None, "all"), (Some(&[]), "none"), (Some(&[2]), "2"), (Some(&[0, 1]), "0,1")];
        for (gpus, want) in keys {
            assert_eq!(gpu_group_key(*gpus), *want);
        }
        let ten = Duration::from_secs(10);
        assert_eq!(remaining(ten, 5, 35, Some(100.0)), Some(60.0), "its own pace once it reports steps");
        assert_eq!(remaining(ten, 0, 35, Some(25.0)), Some(15.0), "else the learned duration");
        assert_eq!(remaining(ten, 0, 35, Some(4.0)), Some(0.0), "overdue: nothing left, not negative");
        assert_eq!(remaining(ten, 0, 35, None), None);
        let words: &[(f64, &str)] = &[(0.4, "0s"), (45.0, "45s"), (185.0, "3m05s"), (7800.0, "2h10m")];
        for (s, want) in words {
            assert_eq!(duration_words(*s), *want);
        }
    }

    fn queued(id: &str, set: &str, priority: i32, frames: Option<u64>) -> QueuedRun {
        QueuedRun { id: id.into(), control_set: set.into(), priority, frames }
    }

    fn worker(slot: usize, gpus: &str, loaded: Option<&str>, free_in: Option<f64>) -> WorkerView {
        WorkerView { slot, gpus: gpus.into(), loaded: loaded.map(str::to_string), free_in }
    }

    /// (control set, GPU group, per frame, per run, per load).
    type PaceRow<'a> = (&'a str, &'a str, Option<f64>, Option<f64>, Option<f64>);

    fn pace_table(rows: &[PaceRow]) -> Paces {
        rows.iter()
            .map(|(set, gpus, per_frame, per_run, load)| {
                ((set.to_string(), gpus.to_string()), Pace { per_frame: *per_frame, per_run: *per_run, load: *load })
            })
            .collect()
    }

    /// (run, slot, load, seconds, done_in) of each forecast run, in the order they start.
    type Step<'a> = (&'a str, usize, bool, Option<f64>, Option<f64>);

    fn plan(f: &Forecast) -> Vec<Step<'_>> {
        f.runs.iter().map(|r| (r.run_id.as_str(), r.slot, r.load, r.seconds, r.done_in)).collect()
    }

    #[test]
    fn the_queue_forecast_drains_the_loaded_set_first_with_one_load_per_set_switch() {
        let paces = pace_table(&[("edge", "0", Some(0.1), None, Some(10.0)), ("vis", "0", None, Some(5.0), Some(10.0))]);
        let queue = [
            queued("a", "vis", 0, None),
            queued("b", "edge", 0, Some(20)),
            queued("c", "vis", 0, Some(7)),
            queued("d", "edge", 0, Some(10)),
        ];
        let f = forecast(&queue, &[worker(0, "0", Some("edge"), Some(0.0))], &paces);
        assert_eq!(
            plan(&f),
            vec![
                ("b", 0, false, Some(2.0), Some(2.0)),
                ("d", 0, false, Some(1.0), Some(3.0)),
                ("a", 0, true, Some(5.0), Some(18.0)),
                ("c", 0, false, Some(5.0), Some(23.0)),
            ],
            "edge runs on the loaded model, then one load for vis; vis has no pace per frame: per run"
        );
        assert_eq!((f.seconds, f.loads, f.unknown_runs, f.unknown_loads), (Some(23.0), 1, 0, 0));
        assert_eq!(f.runs[2].basis, Some(Basis::Run));
        assert_eq!(f.runs[0].basis, Some(Basis::Frames));

        // A higher priority goes first even though the loaded set has runs waiting.
        let urgent = [queued("low", "edge", 0, Some(10)), queued("high", "vis", 5, None)];
        let mut order = urgent.to_vec();
        order.sort_by_key(|r| -r.priority);
        let f = forecast(&order, &[worker(0, "0", Some("edge"), Some(0.0))], &paces);
        assert_eq!(f.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["high", "low"]);
        assert_eq!((f.seconds, f.loads), (Some(10.0 + 5.0 + 10.0 + 1.0), 2), "vis loaded, then edge again");
    }

    #[test]
    fn several_workers_share_the_queue_each_at_its_own_pace() {
        let paces = pace_table(&[
            ("edge", "0", None, Some(3.0), Some(10.0)),
            ("vis", "1", None, Some(2.0), Some(6.0)),
            ("edge", "1", None, Some(3.0), Some(8.0)),
        ]);
        let queue = [queued("x", "edge", 0, None), queued("y", "vis", 0, None), queued("z", "edge", 0, None)];
        // Worker 0 idle with nothing loaded; worker 1 busy for 4 s more, holding vis.
        let workers = [worker(0, "0", None, Some(0.0)), worker(1, "1", Some("vis"), Some(4.0))];
        let f = forecast(&queue, &workers, &paces);
        assert_eq!(
            plan(&f),
            vec![("x", 0, true, Some(3.0), Some(13.0)), ("y", 1, false, Some(2.0), Some(6.0)), ("z", 1, true, Some(3.0), Some(17.0))]
        );
        assert_eq!((f.seconds, f.loads), (Some(17.0), 2), "the last worker to finish");
        assert_eq!(f.runs[1].starts_in, Some(4.0), "after worker 1's current run");

        let nothing = forecast(&[], &workers, &paces);
        assert_eq!(nothing.seconds, Some(4.0), "an empty queue: the running run's end");
        let unsure = forecast(&[], &[worker(0, "0", Some("vis"), None)], &paces);
        assert_eq!(unsure.seconds, None, "a run in hand whose end no one can tell");
    }

    #[test]
    fn what_has_never_been_measured_has_no_estimate_never_a_made_up_one() {
        let queue = [queued("a", "edge", 0, Some(10)), queued("b", "edge", 0, Some(10)), queued("c", "vis", 0, None)];
        let none = forecast(&queue, &[worker(0, "0", None, Some(0.0))], &Paces::new());
        assert_eq!(none.seconds, None);
        assert!(none.runs.iter().all(|r| r.seconds.is_none() && r.done_in.is_none() && r.basis.is_none()), "{none:?}");
        assert_eq!((none.unknown_runs, none.unknown_loads, none.loads), (3, 2, 2));
        assert_eq!(
            none.missing.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "model load of controls edge on GPU 0",
                "model load of controls vis on GPU 0",
                "run of controls edge on GPU 0",
                "run of controls vis on GPU 0"
            ]
        );
        // Edge measured, vis not: edge's runs have times, vis's none, and nor has the queue.
        let paces = pace_table(&[("edge", "0", Some(0.2), None, Some(4.0))]);
        let some = forecast(&queue, &[worker(0, "0", None, Some(0.0))], &paces);
        assert_eq!(plan(&some)[..2], [("a", 0, true, Some(2.0), Some(6.0)), ("b", 0, false, Some(2.0), Some(8.0))]);
        assert_eq!((some.runs[2].starts_in, some.runs[2].done_in, some.seconds), (Some(8.0), None, None));
        // A pace learned on another GPU group is not this one's.
        let elsewhere = forecast(&queue[..1], &[worker(0, "1", None, Some(0.0))], &paces);
        assert_eq!((elsewhere.seconds, elsewhere.unknown_runs), (None, 1));
        let nobody = forecast(&queue, &[], &paces);
        assert_eq!((nobody.seconds, nobody.unknown_runs, nobody.runs.len()), (None, 3, 0));
    }
}
