//! The scheduler's decisions as pure functions (DESIGN.md section 9): which run goes next,
//! whether a failed attempt is retried and after how long, what holds the queue, how long a
//! run has left. No I/O here: each is table-tested below.

use crate::config::Backend;
use crate::gpu::GpuSample;
use crate::runtime::protocol::FailureKind;
use crate::store::{QueueCandidates, Run};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
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
}
