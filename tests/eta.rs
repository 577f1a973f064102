//! The ETA that learns, end to end: the real daemon and the sim worker, whose per-run
//! `sim.seconds` makes every duration known. Before any run of a kind has finished there
//! is no estimate; after a few, the learned pace per frame (and per run, and per model
//! load) is within 10 % of the truth, and the queue's forecast follows from it.

mod common;

use common::{status, wait_until, Daemon, Home};
use cosmos_workflow::spec::{Control, Hint, RunSpec, Settings, SimFault, SpecStyle, VideoFacts};
use cosmos_workflow::store::{NewPrompt, PromptInputs, RunStatus, Store};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
/// The truth the estimate must find: each learning run has `FRAMES` frames and takes
/// `RUN_SECONDS`, so a frame takes 0.04 s; a model load takes `LOAD_SECONDS`.
const FRAMES: u64 = 25;
const RUN_SECONDS: f64 = 1.0;
const LOAD_SECONDS: f64 = 0.5;

fn within_10_percent(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.10
}

/// Queues a run on `video` (controls `hint`) straight into the store, with its frames known
/// (as intake's probe records them) or not.
fn queue(store: &mut Store, video: &Path, hint: Hint, frames: Option<u64>, seconds: f64) -> String {
    let prompt = store
        .create_prompt(NewPrompt {
            name: None,
            text: "a city at night".into(),
            negative_prompt: None,
            inputs: PromptInputs { color: video.to_path_buf(), depth: None, seg: None, edge: None },
        })
        .expect("create prompt");
    let spec = RunSpec {
        style: SpecStyle::Cli,
        name: None,
        prompt: "a city at night".into(),
        negative_prompt: None,
        visual_input: video.to_path_buf(),
        controls: [(hint, Control::generated(0.5))].into(),
        settings: Settings::default(),
        priority: 0,
        upscale_weight: None,
        sim: Some(SimFault { seconds: Some(seconds), ..SimFault::default() }),
        video: frames.map(|frames| VideoFacts { frames, width: 640, height: 360, fps: 25.0, duration_seconds: frames as f64 / 25.0 }),
    };
    let run = store.create_run(&prompt.id, spec).expect("create run");
    store.queue_single(std::slice::from_ref(&run.id), None).expect("queue run");
    run.id
}

/// status.json's `eta` once it counts `queued` queued runs.
fn eta_with(home: &Home, queued: u64) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        last = status(home)["eta"].clone();
        last["queued"] == queued && last["covered"] == queued
    });
    assert!(ok, "status.json never counted {queued} queued runs: {last}");
    last
}

fn pace(eta: &Value, controls: &str, unit: &str) -> Option<f64> {
    eta["paces"].as_array()?.iter().find(|p| p["control_set"] == controls && p["unit"] == unit)?["seconds"].as_f64()
}

#[test]
fn the_estimate_converges_on_the_sim_backend_and_says_none_before_a_run_finished() {
    let home = Home::new();
    // ffmpeg (where the host has it) would add its encode to every run: a PATH without it
    // keeps the sim's durations exactly what `sim.seconds` says.
    let python = python3();
    let bare_path = home.path().join("no-ffmpeg");
    std::fs::create_dir_all(&bare_path).unwrap();
    let extra = format!(
        "python = \"{}\"\nbackend_args = [\"--load-seconds\", \"{LOAD_SECONDS}\"]\n[daemon]\nstatus_interval = \"200ms\"",
        python.display()
    );
    let daemon = Daemon::start(&home, &extra, &[("PATH", bare_path.to_str().unwrap())]);
    let video = home.path().join("videos/city1/color.mp4");
    home.ok(&["pause"]);
    let mut store = Store::open(&home.root().join("state/cosmos.db")).expect("open the store");
    let learning: Vec<String> = (0..4).map(|_| queue(&mut store, &video, Hint::Edge, Some(FRAMES), RUN_SECONDS)).collect();

    // Nothing has run: no estimate anywhere, and no number made up.
    let eta = eta_with(&home, 4);
    assert_eq!(eta["seconds"], Value::Null, "{eta}");
    assert_eq!((eta["unknown_runs"].as_u64(), eta["unknown_loads"].as_u64(), eta["loads"].as_u64()), (Some(4), Some(1), Some(1)), "{eta}");
    assert!(eta["no_estimate"].to_string().contains("run of controls edge"), "{eta}");
    assert!(eta["next"].as_array().unwrap().iter().all(|r| r["seconds"].is_null() && r["done_in"].is_null()), "{eta}");
    let listed = home.json(&["list", "runs", "--json"]);
    for r in listed.as_array().unwrap() {
        assert_eq!(r["eta"]["done_in"], Value::Null, "{r}");
        assert_eq!(r["eta"]["seconds"], Value::Null, "{r}");
    }
    let text = home.ok(&["list", "runs"]);
    assert!(text.lines().next().unwrap().contains("ETA") && text.contains("no estimate"), "{text}");
    let text = home.ok(&["status"]);
    assert!(text.contains("eta: no estimate yet for 4 queued run(s)"), "{text}");

    // A few runs later the paces are learned.
    home.ok(&["resume"]);
    let all_done = wait_until(LONG, || learning.iter().all(|id| store.run(id).map(|r| r.status == RunStatus::Completed).unwrap_or(false)));
    assert!(all_done, "the learning runs did not complete:\n{}", daemon.log_text());
    home.ok(&["pause"]);
    let truth = RUN_SECONDS / FRAMES as f64;
    let mut eta = Value::Null;
    let learned = wait_until(LONG, || {
        eta = status(&home)["eta"].clone();
        pace(&eta, "edge", "frame").is_some()
    });
    assert!(learned, "no pace learned: {eta}");
    let per_frame = pace(&eta, "edge", "frame").unwrap();
    assert!(within_10_percent(per_frame, truth), "per frame: learned {per_frame} s, truth {truth} s: {eta}");
    let per_run = pace(&eta, "edge", "run").unwrap();
    assert!(within_10_percent(per_run, RUN_SECONDS), "per run: learned {per_run} s, truth {RUN_SECONDS} s");
    let load = pace(&eta, "edge", "load").unwrap();
    assert!(within_10_percent(load, LOAD_SECONDS), "per load: learned {load} s, truth {LOAD_SECONDS} s");
    eprintln!("learned after 4 runs: {per_frame:.4} s per frame (truth {truth}), {per_run:.3} s per run (truth {RUN_SECONDS}), {load:.3} s per load (truth {LOAD_SECONDS})");
    let samples = eta["paces"].as_array().unwrap().iter().find(|p| p["unit"] == "frame").unwrap()["samples"].as_u64();
    assert_eq!(samples, Some(4), "one sample per finished run");

    // The forecast: three runs of twice the frames (by frames), one whose frames are not
    // known (per run), on the model the worker holds: no load.
    let long: Vec<String> = (0..3).map(|_| queue(&mut store, &video, Hint::Edge, Some(2 * FRAMES), 2.0 * RUN_SECONDS)).collect();
    let unprobed = queue(&mut store, &video, Hint::Edge, None, RUN_SECONDS);
    let eta = eta_with(&home, 4);
    let want = 3.0 * 2.0 * RUN_SECONDS + RUN_SECONDS;
    let seconds = eta["seconds"].as_f64().unwrap_or_else(|| panic!("no queue ETA: {eta}"));
    eprintln!("queue ETA {seconds} s for 4 runs (truth {want} s)");
    assert!(within_10_percent(seconds, want), "queue ETA {seconds} s, truth {want} s: {eta}");
    assert_eq!(eta["loads"], 0, "the worker holds edge already: {eta}");
    let listed = home.json(&["list", "runs", "--status", "queued", "--json"]);
    let by_id = |id: &str| listed.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()["eta"].clone();
    let mut previous = 0.0;
    for id in &long {
        let e = by_id(id);
        assert_eq!(e["basis"], "frames", "{e}");
        assert!(within_10_percent(e["seconds"].as_f64().unwrap(), 2.0 * RUN_SECONDS), "{e}");
        let done_in = e["done_in"].as_f64().unwrap();
        assert!(done_in > previous, "each after the one before it: {e}");
        previous = done_in;
    }
    let e = by_id(&unprobed);
    assert_eq!(e["basis"], "run", "frames unknown: seconds per run, and it says so: {e}");
    assert!(within_10_percent(e["seconds"].as_f64().unwrap(), RUN_SECONDS), "{e}");
    let text = home.ok(&["status"]);
    eprintln!("{text}");
    assert!(text.contains("eta: queue done in") && text.contains("0 model load(s) ahead") && text.contains("s per frame"), "{text}");

    // A control set never run: a load and a run of a kind not measured, so no queue ETA.
    queue(&mut store, &video, Hint::Vis, Some(FRAMES), RUN_SECONDS);
    let eta = eta_with(&home, 5);
    assert_eq!(eta["seconds"], Value::Null, "{eta}");
    assert_eq!((eta["unknown_runs"].as_u64(), eta["unknown_loads"].as_u64()), (Some(1), Some(1)), "{eta}");
    assert!(eta["no_estimate"].to_string().contains("controls vis"), "{eta}");
    daemon.stop();
}

/// The Python interpreter itself (not a shim script, which would need a shell on PATH).
fn python3() -> std::path::PathBuf {
    let out = std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("run python3");
    assert!(out.status.success(), "python3 does not run");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
