//! The documented, stable JSON shapes of `cosmos ... --json` (see README.md, "JSON
//! output"). Fields are only ever added, never renamed or removed.

use crate::spec::{nvidia, Hint};
use crate::store::{Batch, Event, Prompt, Run, Submission};
use serde_json::{json, Map, Value};

pub fn prompt(p: &Prompt) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt,
        "inputs": p.inputs,
        "created_at": p.created_at,
    })
}

/// A run; `settings` as the configured model gets them (its own defaults filled in).
pub fn run(r: &Run, model: crate::spec::Model) -> Value {
    let mut controls = Map::new();
    for (hint, c) in &r.spec.controls {
        controls.insert(hint.as_str().into(), json!({"weight": c.weight, "input": c.input}));
    }
    // The seed's four weights, 0 for a control that is off.
    let weight = |h: Hint| r.spec.controls.get(&h).map_or(0.0, |c| c.weight);
    let settings: Map<String, Value> = nvidia::model_settings(&r.spec, model).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    json!({
        "id": r.id,
        "prompt_id": r.prompt_id,
        "name": r.name,
        "status": r.status,
        "priority": r.priority,
        "prompt": r.spec.prompt,
        "visual_input": r.spec.visual_input,
        // The input video's probed facts (frames, width, height, fps, duration_seconds);
        // null for a run queued before the preflight existed.
        "video": r.spec.video,
        "control_set": r.control_set,
        "controls": controls,
        "weights": {"vis": weight(Hint::Vis), "edge": weight(Hint::Edge), "depth": weight(Hint::Depth), "seg": weight(Hint::Seg)},
        "settings": settings,
        "upscale_weight": r.spec.upscale_weight,
        "batch_id": r.batch_id,
        "submission_id": r.submission_id,
        "line": r.line,
        "parent_id": r.parent_id,
        "attempts": r.attempts,
        "outputs": r.outputs,
        "error": r.error,
        "created_at": r.created_at,
        "queued_at": r.queued_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "updated_at": r.updated_at,
    })
}

pub fn batch(b: &Batch) -> Value {
    json!({"id": b.id, "name": b.name, "kind": b.kind, "folder": b.folder_name(), "created_at": b.created_at})
}

pub fn submission(s: &Submission) -> Value {
    json!({
        "id": s.id,
        "file": s.file,
        "sha256": s.sha256,
        "status": s.status,
        "duplicate_of": s.duplicate_of,
        "runs": s.runs,
        "problems": s.problems,
        "rejected_before": s.rejected_before,
        "received_at": s.received_at,
    })
}

pub fn event(e: &Event) -> Value {
    json!({"seq": e.seq, "time": e.time, "kind": e.kind, "detail": e.detail})
}

/// `{id, status}` for lists of runs inside `show`.
pub fn run_ref(r: &Run) -> Value {
    json!({"id": r.id, "status": r.status, "name": r.name, "line": r.line})
}
