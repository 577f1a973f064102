//! The video preflight (issue 13): every video a job names is probed when the file is taken
//! in, and `cosmos validate` and `cosmos submit` judge exactly as the daemon does. The
//! videos here are made by ffmpeg in the test (those tests are #[ignore]d: a fresh machine
//! may lack ffmpeg; .ci/run installs it and sets COSMOS_REQUIRE_FFMPEG=1, so there a missing
//! ffmpeg fails them); the committed example videos need nothing.

mod common;

use common::{drop_file, runs, wait_until, Daemon, Home};
use cosmos_workflow::probe::{probe, ProbeError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// Whether ffmpeg is here; with COSMOS_REQUIRE_FFMPEG=1 its absence fails the test.
fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg").arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    if !found {
        assert!(
            std::env::var("COSMOS_REQUIRE_FFMPEG").as_deref() != Ok("1"),
            "ffmpeg is required here (COSMOS_REQUIRE_FFMPEG=1) but not found; apt-get install -y ffmpeg"
        );
        eprintln!("skipped: no ffmpeg on this machine");
    }
    found
}

/// Runs `ffmpeg -v error -y ARGS OUT` and returns OUT.
fn ffmpeg(out: PathBuf, args: &[&str]) -> PathBuf {
    let o = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&out).output().expect("run ffmpeg");
    assert!(o.status.success(), "ffmpeg {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// An H.264 test-pattern video of `frames` frames of `size` at `rate` fps.
fn video(dir: &Path, name: &str, pattern: &str, size: &str, rate: &str, frames: u32) -> PathBuf {
    let source = format!("{pattern}=size={size}:rate={rate}");
    let n = frames.to_string();
    ffmpeg(dir.join(name), &["-f", "lavfi", "-i", &source, "-frames:v", &n, "-pix_fmt", "yuv420p", "-c:v", "libx264"])
}

/// The first `keep` bytes of `from`, as `name`: a copy cut off.
fn cut(dir: &Path, from: &Path, name: &str, keep: usize) -> PathBuf {
    let bytes = std::fs::read(from).unwrap();
    let out = dir.join(name);
    std::fs::write(&out, &bytes[..keep.min(bytes.len())]).unwrap();
    out
}

#[test]
#[ignore = "needs ffmpeg; cargo nextest run --run-ignored all runs it, as CI does"]
fn the_probe_reads_what_ffmpeg_wrote_and_refuses_what_is_no_video() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = probe(&video(d, "a.mp4", "testsrc", "64x48", "8", 16)).unwrap();
    assert_eq!((f.frames, f.width, f.height), (16, 64, 48));
    assert!((f.fps - 8.0).abs() < 1e-9 && (f.duration_seconds - 2.0).abs() < 1e-9, "{f:?}");
    // NTSC's 30000/1001, and a QuickTime .mov (ISO-BMFF too).
    let f = probe(&video(d, "ntsc.mov", "testsrc2", "96x64", "30000/1001", 30)).unwrap();
    assert_eq!((f.frames, f.width, f.height), (30, 96, 64));
    assert!((f.fps - 30000.0 / 1001.0).abs() < 1e-6, "{f:?}");
    // moov first (faststart), as web encoders write it.
    let fast = ffmpeg(
        d.join("fast.mp4"),
        &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-frames:v", "16", "-c:v", "libx264", "-movflags", "+faststart"],
    );
    assert_eq!(probe(&fast).unwrap().frames, 16);

    // Cut short: ffmpeg writes the index last, so most cuts lose it; a faststart file cut
    // keeps its index but loses frames it points at.
    let whole = std::fs::read(d.join("a.mp4")).unwrap().len();
    for (from, keep) in
        [(d.join("a.mp4"), whole / 2), (d.join("a.mp4"), whole - 10), (fast.clone(), std::fs::read(&fast).unwrap().len() - 200)]
    {
        let short = cut(d, &from, "short.mp4", keep);
        match probe(&short) {
            Err(e @ ProbeError::Truncated { .. }) => {
                assert!(e.to_string().contains("short.mp4") && e.to_string().contains("cut short"), "{e}")
            }
            other => panic!("{} cut to {keep}: {other:?}", from.display()),
        }
    }
    // Sound only.
    let audio = ffmpeg(d.join("audio.mp4"), &["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac"]);
    match probe(&audio) {
        Err(e @ ProbeError::NoVideo { .. }) => assert!(e.to_string().contains("an audio track"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Random bytes named .mp4, and a real video in another container.
    let mut noise = vec![0u8; 4096];
    getrandom::fill(&mut noise).unwrap();
    noise[4..8].copy_from_slice(b"zzzz");
    std::fs::write(d.join("noise.mp4"), &noise).unwrap();
    assert!(matches!(probe(&d.join("noise.mp4")), Err(ProbeError::NotMp4 { .. })));
    let mkv = ffmpeg(d.join("a.mkv"), &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-frames:v", "4", "-c:v", "libx264"]);
    let e = probe(&mkv).unwrap_err();
    assert!(matches!(e, ProbeError::NotMp4 { .. }) && e.to_string().contains("a.mkv"), "{e}");
    // A fragmented MP4 is refused with the line that remuxes it.
    let frag = ffmpeg(
        d.join("frag.mp4"),
        &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-frames:v", "16", "-c:v", "libx264", "-movflags", "frag_keyframe+empty_moov"],
    );
    let e = probe(&frag).unwrap_err();
    assert!(matches!(e, ProbeError::Fragmented { .. }) && e.to_string().contains("-movflags +faststart"), "{e}");
}

/// A job line on inbox-relative videos: `input`, and a depth control on `depth`.
fn line(name: &str, input: &str, depth: &str) -> String {
    format!(
        "{{\"name\": \"{name}\", \"visual_input\": \"videos/{input}\", \"prompt\": \"{name}\", \"control_overrides\": \
         {{\"depth\": {{\"input_control\": \"videos/{depth}\", \"control_weight\": 0.4}}}}}}\n"
    )
}

#[test]
#[ignore = "needs ffmpeg; cargo nextest run --run-ignored all runs it, as CI does"]
fn bad_videos_are_refused_alike_by_validate_submit_and_the_daemon_with_line_key_and_reason() {
    if !have_ffmpeg() {
        return;
    }
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    let out = home.path().join("outgoing");
    let v = out.join("videos");
    std::fs::create_dir_all(&v).unwrap();
    video(&v, "in.mp4", "testsrc", "64x48", "8", 16);
    video(&v, "depth.mp4", "testsrc2", "64x48", "8", 16);
    video(&v, "short.mp4", "testsrc2", "64x48", "8", 8);
    video(&v, "wide.mp4", "testsrc2", "96x48", "8", 16);
    cut(&v, &v.join("in.mp4"), "cut.mp4", 1000);
    ffmpeg(v.join("audio.mp4"), &["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"]);
    std::fs::write(v.join("noise.mp4"), b"\x13\x37 these bytes are no video at all, whatever the name says").unwrap();
    let text = [
        line("good", "in.mp4", "depth.mp4"),
        line("short", "in.mp4", "short.mp4"),
        line("wide", "in.mp4", "wide.mp4"),
        line("cut", "cut.mp4", "depth.mp4"),
        line("audio", "audio.mp4", "depth.mp4"),
        line("noise", "noise.mp4", "depth.mp4"),
    ]
    .concat();
    std::fs::write(out.join("jobs.jsonl"), &text).unwrap();
    let expected = [
        "jobs.jsonl:2: control_overrides.depth.input_control: ",
        "short.mp4 has 8 frames of 64x48; expected 16 frames of 64x48 like the input video",
        "jobs.jsonl:3: control_overrides.depth.input_control: ",
        "wide.mp4 has 16 frames of 96x48; expected 16 frames of 64x48",
        "jobs.jsonl:4: visual_input: ",
        "cut.mp4 is cut short",
        "jobs.jsonl:5: visual_input: ",
        "audio.mp4 has no video track (it holds an audio track); expected a video",
        "jobs.jsonl:6: visual_input: ",
        "noise.mp4 is not an MP4 or MOV video",
    ];
    let check = |what: &str, shown: &str| {
        for e in expected {
            assert!(shown.contains(e), "{what} does not say {e:?}:\n{shown}");
        }
        assert!(!shown.contains("jobs.jsonl:1:"), "{what}: the aligned line is good:\n{shown}");
    };
    let jobs = out.join("jobs.jsonl");
    check("cosmos validate", &home.usage_error(&["validate", jobs.to_str().unwrap()]));
    check("cosmos submit", &home.usage_error(&["submit", jobs.to_str().unwrap()]));
    assert!(!home.inbox().join("jobs.jsonl").exists(), "submit sent nothing");

    // The daemon: the same file with its videos in the inbox.
    home.ok(&["pause"]);
    let daemon = Daemon::start(&home, "", &[]);
    std::fs::rename(&v, home.inbox().join("videos")).unwrap();
    drop_file(&home, "jobs.jsonl", &text);
    assert!(wait_until(LONG, || home.receipts_with("rejected").len() == 1), "{:?}\n{}", home.receipts(), daemon.log_text());
    let receipt = &home.receipts_with("rejected")[0];
    assert_eq!(receipt["problems"], 5, "{receipt}");
    let errors = std::fs::read_to_string(receipt["errors"].as_str().unwrap()).unwrap();
    check("errors.txt", &errors);
    assert_eq!(home.run_count(), 0, "nothing of a rejected file runs");

    // Only the good line: accepted, its video's facts in the run.
    drop_file(&home, "good.jsonl", &line("good", "in.mp4", "depth.mp4"));
    assert!(wait_until(LONG, || home.receipts_with("accepted").len() == 1), "{:?}\n{}", home.receipts(), daemon.log_text());
    let run = &runs(&home)[0];
    assert_eq!(run["video"]["frames"], 16, "{run}");
    assert_eq!((run["video"]["width"].as_u64(), run["video"]["height"].as_u64()), (Some(64), Some(48)));
}

/// A run of a real video, end to end on the sim backend: the facts are in `cosmos show`
/// (human and JSON) and in the published manifest.
#[test]
fn the_probed_facts_are_in_the_run_its_show_and_its_manifest() {
    let home = Home::new();
    std::fs::create_dir_all(home.inbox()).unwrap();
    home.videos_in_inbox();
    // The padded video other tests use as a big input is still this video.
    std::fs::write(home.path().join("padded.mp4"), common::padded_video(1 << 20)).unwrap();
    let padded = probe(&home.path().join("padded.mp4")).unwrap();
    assert_eq!((padded.frames, padded.width, padded.height), (16, 64, 64));
    // min_free: the run is not held back on a host whose disk is fuller than the default allows.
    let daemon = Daemon::start(&home, "backend_args = [\"--job-seconds\", \"0.1\"]\n[outbox]\nmin_free = \"1MiB\"\n", &[]);
    drop_file(&home, "one.jsonl", &line("one", "city1/color.mp4", "city1/depth.mp4"));
    let done = || runs(&home).first().is_some_and(|r| r["status"] == "completed");
    assert!(wait_until(LONG, done), "{:?}\n{}", runs(&home), daemon.log_text());
    let run = &runs(&home)[0];
    let id = run["id"].as_str().unwrap();
    let shown: Value = home.json(&["show", id, "--json"]);
    let video = &shown["video"];
    assert_eq!((video["frames"].as_u64(), video["width"].as_u64(), video["height"].as_u64()), (Some(16), Some(64), Some(64)), "{shown}");
    assert_eq!((video["fps"].as_f64(), video["duration_seconds"].as_f64()), (Some(8.0), Some(2.0)));
    let plain = home.ok(&["show", id]);
    assert!(plain.contains("video:\n  frames: 16\n  width: 64\n  height: 64\n  fps: 8.0\n  duration_seconds: 2.0\n"), "{plain}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(home.outbox().join(format!("run_{id}/manifest.json"))).unwrap()).unwrap();
    assert_eq!(manifest["video"], *video, "{manifest}");
}

/// `cosmos batch-inference` queues runs without a job file: it probes their videos too, and
/// a control video that cannot run queues nothing.
#[test]
fn batch_inference_probes_the_videos_of_the_runs_it_queues() {
    let home = Home::new();
    let scene = home.path().join("videos/mixed");
    std::fs::create_dir_all(&scene).unwrap();
    std::fs::copy(home.path().join("videos/city1/color.mp4"), scene.join("color.mp4")).unwrap();
    // A depth video that is no video at all.
    std::fs::write(scene.join("depth.mp4"), b"fake depth").unwrap();
    let good = common::grep_id(&home.ok(&["create", "prompt", "good", "videos/city1"]), "ps_");
    let bad = common::grep_id(&home.ok(&["create", "prompt", "bad", "videos/mixed"]), "ps_");
    let run = |ps: &str| common::grep_id(&home.ok(&["create", "run", ps, "--weights", "0", "0", "0.5", "0"]), "rs_");
    let (good_run, bad_run) = (run(&good), run(&bad));
    let err = home.usage_error(&["batch-inference", &good_run, &bad_run]);
    assert!(
        err.contains("nothing was queued; the videos cannot run")
            && err.contains(&format!("{bad_run}: control_overrides.depth.input_control")),
        "{err}"
    );
    assert!(err.contains("depth.mp4 is not an MP4 or MOV video"), "{err}");
    assert!(!err.contains(&format!("{good_run}:")), "{err}");
    home.ok(&["batch-inference", &good_run]);
    let shown = home.json(&["show", &good_run, "--json"]);
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["video"]["frames"], 16, "{shown}");
}
