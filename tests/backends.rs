//! The transfer1 and transfer2_5 backends end to end on the `process` runtime: the real
//! daemon and worker, with worker/tests/fakes standing in for NVIDIA's checkout
//! (`runtime.model_code`): fakes that behave as NVIDIA's code does at its interface, each
//! behaviour citing its upstream file there. What the fakes were called with is read back
//! from `FAKE_NVIDIA_CALLS`.

mod common;

use common::{drop_file, fake_calls, nvidia_fakes, runs, wait_until, Daemon, Home};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn ended(home: &Home, n: usize) -> bool {
    let r = runs(home);
    r.len() == n && r.iter().all(|r| ["completed", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or("")))
}

fn manifest(home: &Home, run: &Value) -> Value {
    let path = home.outbox().join(format!("run_{}/manifest.json", run["id"].as_str().unwrap()));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn spec_json(home: &Home, run: &Value) -> Value {
    let path = home.outbox().join(format!("run_{}/spec.json", run["id"].as_str().unwrap()));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `[runtime]` keys for a backend on the fakes, with the fakes' call log.
fn runtime(backend: &str, home: &Home, extra: &str) -> (String, std::path::PathBuf) {
    let calls = home.path().join("calls.jsonl");
    let ckpt = home.path().join("checkpoints");
    let hf = home.path().join("hf");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::create_dir_all(&hf).unwrap();
    let text = format!(
        "backend = \"{backend}\"\nmodel_code = \"{}\"\ncheckpoints = \"{}\"\nhf_home = \"{}\"\nenv = {{ FAKE_NVIDIA_CALLS = \"{}\" }}\n{extra}",
        nvidia_fakes().display(),
        ckpt.display(),
        hf.display(),
        calls.display()
    );
    (text, calls)
}

#[test]
fn transfer1_runs_in_nvidias_checkout_with_nvidias_defaults_and_succeeds_by_its_output_file() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let (rt, calls) = runtime("transfer1", &home, "");
    let daemon = Daemon::start(&home, &rt, &[]);
    let jobs = concat!(
        r#"{"name": "defaults", "visual_input": "videos/city1/color.mp4", "prompt": "a city", "control_overrides": {"edge": {"control_weight": 0.5}, "seg": {"control_weight": 0}}}"#,
        "\n",
        r#"{"name": "own", "visual_input": "videos/city1/color.mp4", "prompt": "a city", "negative_prompt": "", "seed": 9, "blur_strength": "high", "control_overrides": {"vis": {"control_weight": 0.4}, "depth": {"control_weight": 0.3, "input_control": "videos/city1/depth.mp4"}}}"#,
        "\n",
    );
    drop_file(&home, "t1.jsonl", jobs);
    assert!(wait_until(LONG, || ended(&home, 2)), "{}", daemon.log_text());
    let all = runs(&home);
    for r in &all {
        assert_eq!(r["status"], "completed", "{r}\n{}", daemon.log_text());
    }
    let by_name = |n: &str| all.iter().find(|r| r["name"] == n).unwrap().clone();
    let (defaults, own) = (by_name("defaults"), by_name("own"));
    // The worker ran in NVIDIA's checkout, with runtime.checkpoints as its checkpoint folder.
    let inits = fake_calls(&calls, "TransferPipeline.__init__");
    assert_eq!(inits.len(), 1, "one pipeline for both runs");
    assert_eq!(inits[0]["cwd"], nvidia_fakes().display().to_string());
    assert_eq!(inits[0]["checkpoint_dir"], home.path().join("checkpoints").display().to_string());
    assert_eq!(inits[0]["hint_keys"].as_array().unwrap().len(), 5, "every hint the base model serves");
    // NVIDIA's defaults where the job is silent; the job's own values where it is not.
    let gens = fake_calls(&calls, "generate");
    let gen_of = |controls: &[&str]| gens.iter().find(|g| g["controls"] == serde_json::json!(controls)).unwrap().clone();
    let g = gen_of(&["edge"]);
    assert!(g["negative_prompt"].as_str().unwrap().starts_with("The video captures a game playing"), "{g}");
    assert_eq!(
        (g["seed"].clone(), g["guidance"].clone(), g["sigma_max"].clone()),
        (serde_json::json!(1), serde_json::json!(5.0), serde_json::json!(70.0))
    );
    let g = gen_of(&["depth", "vis"]);
    assert_eq!(
        (g["negative_prompt"].clone(), g["seed"].clone(), g["blur_strength"].clone()),
        (serde_json::json!(""), serde_json::json!(9), serde_json::json!("high"))
    );
    // spec.json and the manifest say what the model got.
    assert!(spec_json(&home, &defaults)["negative_prompt"].as_str().unwrap().starts_with("The video captures"));
    let m = manifest(&home, &own);
    assert_eq!(m["settings"]["negative_prompt"], "");
    assert_eq!(m["settings"]["controlnet_specs"]["depth"]["control_weight"], 0.3);
    assert!(
        home.outbox().join(format!("run_{}/controls/vis.mp4", own["id"].as_str().unwrap())).is_file(),
        "the generated control is published"
    );
    // The worker's environment: the Hugging Face cache, offline.
    assert!(daemon.log_text().contains(&format!("in {}", nvidia_fakes().display())), "{}", daemon.log_text());
    assert!(daemon.stop().success());
}

#[test]
fn intake_refuses_what_the_configured_transfer1_model_cannot_run() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let (rt, _) = runtime("transfer1", &home, "");
    let daemon = Daemon::start(&home, &rt, &[]);
    let jobs = concat!(
        r#"{"visual_input": "videos/city1/color.mp4", "prompt": "av", "control_overrides": {"hdmap": {"control_weight": 0.5, "input_control": "videos/city1/depth.mp4"}}}"#,
        "\n",
        r#"{"visual_input": "videos/city1/color.mp4", "prompt": "pose", "control_overrides": {"keypoint": {"control_weight": 0.5}}}"#,
        "\n",
        r#"{"visual_input": "videos/city1/color.mp4", "prompt": "fps", "fps": 30}"#,
        "\n",
    );
    drop_file(&home, "cannot.jsonl", jobs);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 1), "{}", daemon.log_text());
    let receipt = &home.receipts_with("rejected")[0];
    let errors = std::fs::read_to_string(receipt["errors"].as_str().unwrap()).unwrap();
    assert!(
        errors.contains("cannot.jsonl:1: control_overrides.hdmap: needs NVIDIA's Sample-AV base: set runtime.av_sample = true"),
        "{errors}"
    );
    assert!(errors.contains("cannot.jsonl:2: control_overrides.keypoint: NVIDIA's TransferPipeline does not serve keypoint"), "{errors}");
    assert!(errors.contains("cannot.jsonl:3: fps: NVIDIA's TransferPipeline writes 24 fps"), "{errors}");
    assert_eq!(runs(&home).len(), 0, "nothing reached the GPU");
    // `cosmos validate` applies the same rules as the daemon.
    let config = home.path().join("cosmosd.toml");
    let out = home
        .cosmos()
        .arg("--config")
        .arg(&config)
        .args([
            "validate",
            home.outbox().join("rejected").read_dir().unwrap().next().unwrap().unwrap().path().join("cannot.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    drop(daemon);
}

#[test]
fn transfer1_outside_nvidias_checkout_fails_with_the_fix_in_the_message() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // No model_code: NVIDIA's code is importable (on the daemon's PYTHONPATH, which the
    // worker keeps), but the worker runs elsewhere, where NVIDIA's relative config path misses.
    let fakes = nvidia_fakes();
    let rt = "backend = \"transfer1\"\n[scheduler]\nmax_attempts = 1\n";
    let daemon = Daemon::start(&home, rt, &[("PYTHONPATH", fakes.to_str().unwrap())]);
    drop_file(&home, "lost.jsonl", &home.jobs("lost", 1));
    assert!(wait_until(LONG, || ended(&home, 1)), "{}", daemon.log_text());
    let run = &runs(&home)[0];
    assert_eq!(run["status"], "failed");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("model load failed") && error.contains("runtime.model_code"), "{error}");
}

#[test]
#[ignore = "needs pydantic for python3 (pip install pydantic); cargo nextest run --run-ignored all runs it, as CI does"]
fn transfer2_5_gets_inference_arguments_with_its_own_defaults_and_one_multicontrol_model() {
    if std::process::Command::new("python3").args(["-c", "import pydantic"]).status().map(|s| !s.success()).unwrap_or(true) {
        assert!(std::env::var("COSMOS_REQUIRE_PYDANTIC").as_deref() != Ok("1"), "COSMOS_REQUIRE_PYDANTIC=1 but python3 has no pydantic");
        println!("skipped: python3 has no pydantic (pip install pydantic), which the Transfer2.5 fakes use as NVIDIA's code does");
        return;
    }
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    let (rt, calls) = runtime("transfer2_5", &home, "guardrails = \"offload\"\n");
    let daemon = Daemon::start(&home, &rt, &[]);
    // NVIDIA's own per-sample format, sigma_max as the string it is there.
    std::fs::write(
        home.inbox().join(".s.tmp"),
        r#"{"name": "s1", "prompt": "rain", "video_path": "videos/city1/color.mp4", "sigma_max": "80", "guidance": 4,
            "vis": {"control_weight": 0.3, "preset_blur_strength": "low"}, "depth": {"control_weight": 0.6, "control_path": "videos/city1/depth.mp4"}}"#,
    )
    .unwrap();
    std::fs::rename(home.inbox().join(".s.tmp"), home.inbox().join("sample.json")).unwrap();
    drop_file(
        &home,
        "lines.jsonl",
        concat!(
            r#"{"name": "plain", "visual_input": "videos/city1/color.mp4", "prompt": "plain", "control_overrides": {"seg": {"control_weight": 0.2}, "edge": {"control_weight": 0.9}}}"#,
            "\n",
            r#"{"name": "bad", "visual_input": "videos/city1/color.mp4", "prompt": "bad", "guidance": 5.5, "control_overrides": {"edge": {"control_weight": 0.9}}}"#,
            "\n",
        ),
    );
    assert!(wait_until(LONG, || ended(&home, 1) && home.receipts().len() == 2), "{}", daemon.log_text());
    // The file with a guidance Transfer2.5 cannot take was refused whole, at intake.
    let rejected = home.receipts_with("rejected");
    assert_eq!(rejected.len(), 1);
    let errors = std::fs::read_to_string(rejected[0]["errors"].as_str().unwrap()).unwrap();
    assert!(errors.contains("lines.jsonl:2: guidance: Transfer2.5 takes a whole number from 0 to 7"), "{errors}");
    let run = &runs(&home)[0];
    assert_eq!(run["status"], "completed", "{}", daemon.log_text());
    let spec = spec_json(&home, run);
    assert_eq!(spec["sigma_max"], "80", "a string, as InferenceArguments wants: {spec}");
    assert_eq!(
        (spec["guidance"].clone(), spec["seed"].clone()),
        (serde_json::json!(4), serde_json::json!(2025)),
        "Transfer2.5's own seed default"
    );
    assert_eq!(spec["vis"]["preset_blur_strength"], "low");
    assert!(spec["negative_prompt"].as_str().unwrap().starts_with("The video captures"));
    let inits = fake_calls(&calls, "Control2WorldInference.__init__");
    assert_eq!(inits[0]["batch_hint_keys"], serde_json::json!(["edge", "vis", "depth", "seg"]), "NVIDIA's multicontrol setup");
    assert_eq!(inits[0]["offload_guardrail_models"], true);
    let gen = &fake_calls(&calls, "generate")[0];
    assert_eq!(gen["control_weight"], "0.0,0.3,0.6,0.0", "weights by position: edge, vis, depth, seg");
    let m = manifest(&home, run);
    assert_eq!(m["settings"]["sigma_max"], "80");
    assert_eq!(m["settings"]["model"], "multicontrol");
    assert!(home.outbox().join(format!("run_{}/controls/depth.mp4", run["id"].as_str().unwrap())).is_file());
    assert!(Path::new(&home.outbox().join(format!("run_{}/output.mp4", run["id"].as_str().unwrap()))).is_file());
    drop(daemon);
}

/// `cosmosd check-host` with this home's configuration: its exit code and checklist.
fn check_host(home: &Home, runtime: &str, env: &[(&str, &str)]) -> (i32, String) {
    let config = home.path().join("check.toml");
    std::fs::write(&config, format!("[runtime]\nkind = \"process\"\ngpus = []\n{runtime}")).unwrap();
    let mut cmd = home.cosmosd();
    cmd.arg("--config").arg(&config).arg("--root").arg(home.root()).arg("check-host");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_host_names_each_miss_with_its_fix_and_passes_when_all_is_there() {
    let home = Home::new();
    let (rt, _) = runtime("transfer1", &home, "guardrails = \"off\"\n");
    // Nothing downloaded yet: the checkpoints are missing, with NVIDIA's download command.
    let (code, text) = check_host(&home, &rt, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("[ok  ] NVIDIA's code on this host: OK python"), "{text}");
    assert!(text.contains("[MISS] checkpoints:") && text.contains("nvidia/Cosmos-Transfer1-7B/base_model.pt"), "{text}");
    assert!(text.contains("fix: in NVIDIA's checkout: python scripts/download_checkpoints.py"), "{text}");
    assert!(text.contains("[warn] Hugging Face cache:") && text.contains("depth-anything/Depth-Anything-V2-Small-hf"), "{text}");
    assert!(text.contains("[skip] NVML and GPUs"), "no GPU asked for: {text}");
    // Everything in place: exit 0.
    let ckpt = home.path().join("checkpoints");
    for f in ["base_model.pt", "vis_control.pt", "edge_control.pt", "seg_control.pt", "depth_control.pt", "4kupscaler_control.pt"] {
        std::fs::create_dir_all(ckpt.join("nvidia/Cosmos-Transfer1-7B")).unwrap();
        std::fs::write(ckpt.join("nvidia/Cosmos-Transfer1-7B").join(f), b"w").unwrap();
    }
    std::fs::create_dir_all(ckpt.join("nvidia/Cosmos-Tokenize1-CV8x8x8-720p")).unwrap();
    std::fs::create_dir_all(ckpt.join("google-t5/t5-11b")).unwrap();
    for repo in ["depth-anything--Depth-Anything-V2-Small-hf", "facebook--sam2-hiera-large", "IDEA-Research--grounding-dino-tiny"] {
        std::fs::create_dir_all(home.path().join("hf/hub").join(format!("models--{repo}"))).unwrap();
    }
    let (code, text) = check_host(&home, &rt, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the host has what the configuration needs"), "{text}");
    // Without runtime.model_code, NVIDIA's code is not found as the worker would look for it.
    let no_code: String = rt.lines().filter(|l| !l.starts_with("model_code")).map(|l| format!("{l}\n")).collect();
    let fakes = nvidia_fakes();
    let (code, text) = check_host(&home, &no_code, &[("PYTHONPATH", fakes.to_str().unwrap())]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("[MISS] NVIDIA's code on this host: NO_CONFIG"), "{text}");
    assert!(text.contains("fix: set runtime.model_code to NVIDIA's checkout (cosmos-transfer1)"), "{text}");
}
