//! The seed's workflow through the real `cosmos` binary, on temp folders.

mod common;

use common::{grep_id, Home};
use serde_json::Value;

fn two_runs(home: &Home) -> (String, String) {
    let p1 = grep_id(&home.ok(&["create", "prompt", "A futuristic cityscape at night", "videos/city1"]), "ps_");
    let p2 = grep_id(&home.ok(&["create", "prompt", "Cyberpunk street scene", "videos/street1", "--name", "street"]), "ps_");
    let r1 = grep_id(&home.ok(&["create", "run", &p1, "--weights", "0.3", "0.4", "0.2", "0.1"]), "rs_");
    let r2 = grep_id(&home.ok(&["create", "run", &p2, "--weights", "0.4", "0.3", "0.3", "0.0", "--seed", "7"]), "rs_");
    (r1, r2)
}

#[test]
fn seed_workflow_creates_lists_previews_and_queues() {
    let home = Home::new();
    let (r1, r2) = two_runs(&home);
    assert!(home.root().join("state/cosmos.db").is_file(), "--root puts the store under DIR/state");

    let prompts = home.json(&["list", "prompts", "--json"]);
    assert_eq!(prompts.as_array().map(Vec::len), Some(2));
    let street = prompts.as_array().unwrap().iter().find(|p| p["name"] == "street").expect("named prompt");
    assert!(street["inputs"]["seg"].as_str().unwrap().ends_with("street1/segmentation.mp4"));

    let runs = home.json(&["list", "runs", "--status", "pending", "--json"]);
    assert_eq!(runs.as_array().map(Vec::len), Some(2));
    let run2 = home.json(&["show", &r2, "--json"]);
    assert_eq!(run2["status"], "pending");
    assert_eq!(run2["control_set"], "vis,edge,depth", "seg weight 0 is off");
    assert_eq!(run2["settings"]["seed"], 7);
    assert!(run2["controls"].get("seg").is_none());
    assert_eq!(run2["events"][0]["kind"], "created");

    // Dry run: NVIDIA's files, and nothing changes.
    let preview = home.ok(&["batch-inference", &r1, &r2, "--dry-run", "--batch-name", "urban_scenes_v1"]);
    let lines: Vec<Value> =
        preview.lines().filter(|l| l.starts_with('{') && l.ends_with('}')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{preview}");
    assert_eq!(lines[1]["control_overrides"]["seg"]["control_weight"], 0.0, "run 2 must not get run 1's seg");
    assert!(lines[0]["control_overrides"]["depth"]["input_control"].as_str().unwrap().ends_with("city1/depth.mp4"));
    assert!(lines[1]["control_overrides"]["depth"].get("input_control").is_none(), "run 2 must not get run 1's depth video");
    assert!(preview.contains("seed differs"), "{preview}");
    assert_eq!(home.json(&["list", "runs", "--status", "pending", "--json"]).as_array().map(Vec::len), Some(2));

    // Queue them by unique prefixes.
    let queued = home.ok(&["batch-inference", &r1[..9], &r2, "--batch-name", "urban_scenes_v1"]);
    let batch_id = grep_id(&queued, "bt_");
    let batch = home.json(&["show", &batch_id, "--json"]);
    assert_eq!(batch["name"], "urban_scenes_v1");
    assert!(batch["folder"].as_str().unwrap().starts_with("batch_urban_scenes_v1_"));
    assert_eq!(batch["runs"].as_array().map(Vec::len), Some(2));
    let queued_runs = home.json(&["list", "runs", "--status", "queued", "--json"]);
    assert_eq!(queued_runs.as_array().map(Vec::len), Some(2));

    // Queued runs cannot be queued again; the whole command is refused.
    let err = home.usage_error(&["batch-inference", &r1]);
    assert!(err.contains("already queued"), "{err}");
}

#[test]
fn seed_scripts_grep_ids_from_output() {
    let home = Home::new();
    let out = home.ok(&["create", "prompt", "A city", "videos/city1"]);
    assert_eq!(out.matches("ps_").count(), 1, "{out}");
    let ps = grep_id(&out, "ps_");
    let out = home.ok(&["create", "run", &ps, "--weights", "0.3", "0.4", "0.2", "0.1"]);
    // `grep -o 'rs_[a-z0-9]*'` must find exactly the run id.
    assert_eq!(out.matches("rs_").count(), 1, "{out}");
    let ids: Vec<String> = home
        .json(&["list", "prompts", "--limit", "50", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![ps]);
}

#[test]
fn inference_queues_singly_with_upscale() {
    let home = Home::new();
    let (r1, _) = two_runs(&home);
    let dry = home.ok(&["inference", &r1, "--upscale-weight", "0.7", "--dry-run"]);
    assert!(dry.contains("\"input_video_path\"") && dry.contains("upscale run"), "{dry}");
    let out = home.ok(&["inference", &r1, "--upscale-weight", "0.7"]);
    assert!(out.contains(&r1));
    let run = home.json(&["show", &r1, "--json"]);
    assert_eq!(run["status"], "queued");
    assert_eq!(run["upscale_weight"], 0.7);
    assert!(run["batch_id"].is_null());
    home.usage_error(&["inference", &r1, "--upscale-weight", "1.5"]);
}

#[test]
fn mistakes_get_one_line_errors_and_exit_2() {
    let home = Home::new();
    let (r1, r2) = two_runs(&home);
    let ps = home.json(&["show", &r1, "--json"])["prompt_id"].as_str().unwrap().to_string();
    for (args, needle) in [
        (vec!["create", "run", ps.as_str(), "--weights", "0.3", "1.4", "0", "0"], "edge weight must be in [0, 1]"),
        (vec!["create", "run", ps.as_str(), "--weights", "0", "0", "0", "0"], "at least one weight"),
        (vec!["create", "run", ps.as_str(), "--weights", "0.3", "x", "0", "0"], "invalid value"),
        (vec!["create", "run", ps.as_str(), "--weights", "0.3", "0.1"], "--weights"),
        (vec!["create", "run", ps.as_str(), "--weights", "0.3", "0", "0", "0", "--steps", "0"], "--steps"),
        (vec!["create", "run", "rs_abc", "--weights", "0.3", "0", "0", "0"], "is a run id; expected a prompt id"),
        (vec!["create", "prompt", "x", "videos"], "no color.mp4"),
        (vec!["create", "prompt", "x", "nowhere"], "VIDEO_DIR nowhere"),
        (vec!["create", "prompt", "", "videos/city1"], "prompt TEXT"),
        (vec!["show", "rs_"], "matches 2 runs"),
        (vec!["show", "rs_zzzz"], "no run has an id starting with `rs_zzzz`"),
        (vec!["show", "banana"], "is not an id"),
        (vec!["show", "rs_A!"], "is not a run id"),
        (vec!["list", "prompts", "--status", "queued"], "--status applies to runs"),
        (vec!["list", "runs", "--status", "done"], "invalid value"),
        (vec!["batch-inference", r1.as_str(), "--batch-name", "../evil"], "--batch-name"),
        (vec!["batch-inference", r1.as_str(), r1.as_str()], "named twice"),
        (vec!["delete", "run", "rs_qqqq"], "no run"),
    ] {
        let err = home.usage_error(&args);
        assert!(err.contains(needle), "cosmos {args:?}: expected {needle:?} in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Nothing above changed anything.
    assert_eq!(home.json(&["list", "runs", "--status", "pending", "--json"]).as_array().map(Vec::len), Some(2));
    let _ = r2;
}

#[test]
fn delete_refuses_queued_without_force_and_cleans_prompts_with_force() {
    let home = Home::new();
    let (r1, r2) = two_runs(&home);
    home.ok(&["inference", &r1]);
    let err = home.usage_error(&["delete", "run", &r1]);
    assert!(err.contains("--force"), "{err}");
    home.ok(&["delete", "run", &r1, "--force"]);
    let ps = home.json(&["show", &r2, "--json"])["prompt_id"].as_str().unwrap().to_string();
    assert!(home.usage_error(&["delete", "prompt", &ps]).contains("has 1 run"));
    home.ok(&["delete", "prompt", &ps, "--force"]);
    assert_eq!(home.json(&["list", "runs", "--json"]).as_array().map(Vec::len), Some(0));
}

#[test]
fn validate_lists_every_problem_of_a_broken_jsonl() {
    let home = Home::new();
    let jobs = home.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        concat!(
            r#"{"visual_input": "videos/city1/color.mp4", "prompt": "ok", "control_overrides": {"vis": {"control_weight": 0.3}}}"#, "\n",
            r#"{"visual_input": "videos/city1/color.mp4", "promt": "typo", "control_overrides": {"vis": {"control_weight": 0.3}}}"#, "\n",
            "\n",
            r#"{"visual_input": "../../etc/passwd", "prompt": "escape", "control_overrides": {"edge": {"control_weight": 2}}}"#, "\n",
            r#"{"visual_input": "videos/city1/color.mp4", "prompt": "x", "control_overrides": {"depth": {"control_weight": 0.5, "input_control": "videos/nope.mp4"}}, "blur_strength": "extreme"}"#, "\n",
            "{ not json\n",
        ),
    )
    .unwrap();
    let out = home.cosmos().args(["validate", "jobs.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "jobs.jsonl:2: promt: unknown key; did you mean `prompt`?",
        "jobs.jsonl:2: prompt: missing",
        "jobs.jsonl:4: visual_input: \"../../etc/passwd\" uses `..` to leave the allowed folders",
        "jobs.jsonl:4: control_overrides.edge.control_weight: expected a number in [0, 1], got 2",
        "jobs.jsonl:5: control_overrides.depth.input_control: no such file",
        "jobs.jsonl:5: blur_strength: expected one of very_low, low, medium, high, very_high",
        "jobs.jsonl:6: invalid JSON",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("jobs.jsonl:1:"), "line 1 is fine:\n{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("problems in 1 of 1 file"), "{err}");

    // A good file passes, and a bundle folder is validated file by file.
    std::fs::create_dir_all(home.path().join("bundle")).unwrap();
    std::fs::write(
        home.path().join("bundle/jobs.jsonl"),
        r#"{"visual_input": "city1/color.mp4", "prompt": "ok", "control_overrides": {"vis": {"control_weight": 0.3}}}"#.to_string() + "\n",
    )
    .unwrap();
    std::fs::create_dir_all(home.path().join("bundle/city1")).unwrap();
    std::fs::copy(home.path().join("videos/city1/color.mp4"), home.path().join("bundle/city1/color.mp4")).unwrap();
    let ok = home.ok(&["validate", "bundle"]);
    assert!(ok.contains("jobs.jsonl: ok, 1 run"), "{ok}");
}

#[test]
fn validate_reads_run_spec_files_of_both_styles() {
    let home = Home::new();
    std::fs::write(
        home.path().join("t1.json"),
        r#"{"prompt": "p", "input_video_path": "videos/city1/color.mp4", "edge": {"control_weight": 0.5}, "depth": {"input_control": "videos/city1/depth.mp4"}}"#,
    )
    .unwrap();
    std::fs::write(
        home.path().join("t25.json"),
        r#"{"name": "a", "prompt": "p", "video_path": "videos/street1/color.mp4", "seg": {"control_path": "videos/street1/segmentation.mp4", "control_weight": 0.4}}"#,
    )
    .unwrap();
    std::fs::write(
        home.path().join("bad.json"),
        r#"{"prompt": "p", "video_path": "videos/street1/color.mp4", "edge": {"control_weight": 0.4, "preset_edge_threshold": "huge"}}"#,
    )
    .unwrap();
    let ok = home.ok(&["validate", "t1.json", "t25.json"]);
    assert!(ok.contains("t1.json: ok, 1 run") && ok.contains("t25.json: ok, 1 run"), "{ok}");
    let err = home.usage_error(&["validate", "bad.json", "missing.jsonl", "notes.txt"]);
    assert!(err.contains("bad.json: edge.preset_edge_threshold: expected one of"), "{err}");
    assert!(err.contains("missing.jsonl: no such file"), "{err}");
    assert!(err.contains("notes.txt: expected a .jsonl job file or a .json run-spec file"), "{err}");
}

#[test]
fn input_roots_allow_absolute_paths_outside_the_file_folder() {
    let home = Home::new();
    let jobs_dir = home.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    let video = home.path().join("videos/city1/color.mp4");
    let line =
        format!(r#"{{"visual_input": "{}", "prompt": "p", "control_overrides": {{"vis": {{"control_weight": 0.3}}}}}}"#, video.display());
    std::fs::write(jobs_dir.join("abs.jsonl"), line + "\n").unwrap();
    let err = home.usage_error(&["validate", "jobs/abs.jsonl"]);
    assert!(err.contains("outside the allowed folders"), "{err}");
    let config = home.path().join("config.toml");
    std::fs::write(&config, format!("[paths]\ninput_roots = [\"{}\"]\n", home.path().join("videos").display())).unwrap();
    let out = home.cosmos().args(["--config"]).arg(&config).args(["validate", "jobs/abs.jsonl"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn config_errors_name_the_file_and_key() {
    let home = Home::new();
    let config = home.path().join("bad.toml");
    std::fs::write(&config, "[watch]\nsetle = \"2s\"\n").unwrap();
    let out = home.cosmosd().arg("check-config").arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("setle"), "{err}");
    // $COSMOS_CONFIG is read when --config is absent.
    let out = home.cosmos().env("COSMOS_CONFIG", &config).args(["list", "runs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let good = home.path().join("good.toml");
    std::fs::write(&good, "[runtime]\nkind = \"process\"\nbackend = \"sim\"\ngpus = []\n[watch]\nsettle = \"500ms\"\n").unwrap();
    let out = home.cosmosd().env("COSMOS_CONFIG", &good).args(["check-config", "--root"]).arg(home.root()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("settle = \"500ms\""), "{text}");
    assert!(text.contains("backend = \"sim\""), "{text}");
    assert!(text.contains(&format!("inbox = \"{}\"", home.root().join("inbox").display())), "--root wins over the file: {text}");
    assert!(home.root().join("outbox").is_dir());
}

/// Peak resident memory of this test's finished children, in MiB.
fn children_peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_CHILDREN is a valid target.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as f64 / 1024.0
}

#[test]
fn a_100_mb_line_is_refused_without_being_read_whole() {
    let home = Home::new();
    let path = home.path().join("huge.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(b"{\"visual_input\": \"videos/city1/color.mp4\", \"prompt\": \"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
        f.write_all(
            br#"{"visual_input": "videos/city1/color.mp4", "prompt": "ok", "control_overrides": {"vis": {"control_weight": 0.3}}}"#,
        )
        .unwrap();
        f.write_all(b"\n").unwrap();
    }
    let out = home.cosmos().args(["validate", "huge.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("huge.jsonl:1: line is 104857656 bytes, over the limit of 1048576 bytes"), "{text}");
    assert!(!text.contains("huge.jsonl:2"), "line 2 is good: {text}");
    let peak = children_peak_rss_mib();
    assert!(peak < 64.0, "validating a 100 MB line must not hold it: peak {peak:.0} MiB");
}

#[test]
fn every_command_that_prints_speaks_json() {
    let home = Home::new();
    let prompt = home.json(&["create", "prompt", "A futuristic cityscape", "videos/city1", "--name", "city", "--json"]);
    let ps = prompt["id"].as_str().expect("prompt id").to_string();
    assert!(ps.starts_with("ps_"));
    assert_eq!(prompt["name"], "city");
    assert!(prompt["inputs"]["depth"].as_str().unwrap().ends_with("city1/depth.mp4"));
    let run = home.json(&["create", "run", &ps, "--weights", "0.3", "0.4", "0.2", "0", "--seed", "7", "--json"]);
    let r1 = run["id"].as_str().expect("run id").to_string();
    assert_eq!((run["status"].as_str(), run["prompt_id"].as_str()), (Some("pending"), Some(ps.as_str())));
    assert_eq!(run["settings"]["seed"], 7);
    assert_eq!(
        run,
        home.json(&["show", &r1, "--json"])
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                for k in ["spec", "children", "events"] {
                    o.remove(k);
                }
                Value::Object(o)
            })
            .unwrap(),
        "create run --json prints the run as show --json does"
    );
    let r2 = home.json(&["create", "run", &ps, "--weights", "0.5", "0", "0", "0", "--json"])["id"].as_str().unwrap().to_string();

    let dry = home.json(&["batch-inference", &r1, &r2, "--batch-name", "b1", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["jsonl"].as_array().map(Vec::len), Some(2), "{dry}");
    assert!(dry["base_spec"].is_object(), "{dry}");
    assert_eq!(dry["refused"], serde_json::json!([]));
    assert!(dry["folder"].as_str().unwrap().contains("batch_b1_"));
    let queued = home.json(&["batch-inference", &r1, &r2, "--batch-name", "b1", "--json"]);
    assert_eq!(queued["runs"], serde_json::json!([r1, r2]));
    assert_eq!(queued["batch"]["name"], "b1");
    assert!(queued["batch_folder"].as_str().unwrap().ends_with(queued["batch"]["folder"].as_str().unwrap()));

    let cancelled = home.json(&["cancel", &r2, "--json"]);
    assert_eq!(cancelled["runs"], serde_json::json!([{"id": r2, "status": "cancelled", "stopping": false}]));
    let retried = home.json(&["retry", &r2, "--json"]);
    assert_eq!(retried["runs"], serde_json::json!([{"id": r2, "status": "queued"}]));

    let r3 = home.json(&["create", "run", &ps, "--weights", "0", "0.5", "0", "0", "--json"])["id"].as_str().unwrap().to_string();
    let dry = home.json(&["inference", &r3, "--dry-run", "--upscale-weight", "0.5", "--json"]);
    assert_eq!(dry["runs"][0]["id"], r3.as_str());
    assert_eq!(dry["runs"][0]["upscale_weight"], 0.5);
    assert!(dry["runs"][0]["spec"].is_object());
    assert_eq!(home.json(&["show", &r3, "--json"])["status"], "pending", "a dry run queues nothing");
    let single = home.json(&["inference", &r3, "--json"]);
    assert_eq!(single["queued"], serde_json::json!([{"id": r3, "upscale_weight": null}]));

    let paused = home.json(&["pause", "--json"]);
    assert_eq!(paused["paused"], true);
    assert!(paused["paused_since"].is_string());
    assert_eq!(home.json(&["resume", "--json"]), serde_json::json!({"paused": false, "paused_since": null}));

    let deleted = home.json(&["delete", "run", &r3, "--force", "--json"]);
    assert_eq!(deleted, serde_json::json!({"prompts": [], "runs": [r3], "work_folders": []}));
    let pruned = home.json(&["prune", "--older-than", "30d", "--json"]);
    assert_eq!(pruned["removed"], serde_json::json!([]));
    assert_eq!(pruned["older_than"], "30d");
    for kind in ["work", "archive", "input", "log", "outbox"] {
        assert_eq!(pruned["counts"][kind], 0, "{pruned}");
    }
}

#[test]
fn validate_json_lists_each_file_and_exits_as_the_text_form_does() {
    let home = Home::new();
    std::fs::write(
        home.path().join("good.jsonl"),
        r#"{"visual_input": "videos/city1/color.mp4", "prompt": "ok", "control_overrides": {"edge": {"control_weight": 0.5}}}"#.to_owned()
            + "\n",
    )
    .unwrap();
    std::fs::write(home.path().join("bad.jsonl"), "{\"prompt\": 3}\nnot json\n").unwrap();
    let v = home.json(&["validate", "good.jsonl", "--json"]);
    assert_eq!((v["ok"].as_bool(), v["problems"].as_u64()), (Some(true), Some(0)), "{v}");
    assert_eq!(v["files"][0]["runs"], 1);
    let out = home.cosmos().args(["validate", "good.jsonl", "bad.jsonl", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "problems exit 2 with --json too");
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["ok"], false);
    let bad = &v["files"][1];
    assert_eq!(bad["ok"], false);
    let problems = bad["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["line"] == 1 && p["key"] == "prompt"), "{bad}");
    assert!(problems.iter().any(|p| p["line"] == 2), "{bad}");
    assert_eq!(v["problems"].as_u64(), Some(problems.len() as u64));
}

#[test]
fn help_describes_every_argument_and_status_exits_3_without_a_daemon() {
    let home = Home::new();
    for cmd in [&["create", "prompt"][..], &["create", "run"], &["list"], &["delete"], &["prune"], &["submit"], &["status"]] {
        let mut args = vec!["help"];
        args.extend_from_slice(cmd);
        let text = home.ok(&args);
        // An argument or option with no description is a line of just its name, not followed
        // by a line indented further (where clap puts a long description).
        let lines: Vec<&str> = text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("  ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let name_only = words.iter().all(|w| w.starts_with('-') || w.starts_with('<') || w.starts_with('[') || w.ends_with(','));
            let described_below = lines.get(i + 1).is_some_and(|next| indent(next) > indent(line) && !next.trim().is_empty());
            assert!(!name_only || described_below, "cosmos help {cmd:?}: {line:?} has no description:\n{text}");
        }
    }
    let text = home.ok(&["help", "create", "prompt"]);
    assert!(text.contains("The prompt text") && text.contains("--json"), "{text}");
    let out = home.cosmos().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cosmosd is not running"));
}
