//! The scheduler's decisions as pure functions (DESIGN.md section 9): which run goes next,
//! whether a failed attempt is retried and after how long, what holds the queue, how long a
//! run has left. No I/O here: each is table-tested below.

use crate::gpu::GpuSample;
use crate::store::{QueueCandidates, Run};
use crate::time::Timestamp;
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
}
