//! Property tests of the JSONL parser: no input makes it panic, every problem points at a
//! real line, and whatever valid jobs we generate come back exactly.

use cosmos_workflow::spec::{parse_jsonl, Hint, Job, JsonlLimits, PathPolicy, Rules};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::Cursor;
use std::path::Path;

fn video_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("color.mp4"), b"v").unwrap();
    std::fs::write(dir.path().join("depth.mp4"), b"d").unwrap();
    dir
}

fn parse(bytes: Vec<u8>, dir: &Path, max_line: usize) -> (cosmos_workflow::spec::Report, Vec<Job>) {
    let mut jobs = Vec::new();
    let mut policy = PathPolicy::new(dir, &[]);
    let rules = Rules { limits: JsonlLimits { max_line_bytes: max_line }, ..Rules::default() };
    let report = parse_jsonl(Cursor::new(bytes), &mut policy, &rules, &mut |j| jobs.push(j));
    (report, jobs)
}

/// A JSON value that is sometimes right for a key and often wrong.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-2.0f64..2.0).prop_map(|f| json!(f)),
        "[a-z_./ ]{0,12}".prop_map(Value::String),
        Just(json!("color.mp4")),
        Just(json!("../escape.mp4")),
        Just(json!("/etc/passwd")),
        Just(json!("medium")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("control_weight".to_string()), Just("input_control".to_string()), "[a-z]{1,6}"],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_job_object() -> impl Strategy<Value = Value> {
    let keys = prop_oneof![
        Just("visual_input"),
        Just("prompt"),
        Just("control_overrides"),
        Just("name"),
        Just("seed"),
        Just("num_steps"),
        Just("guidance"),
        Just("blur_strength"),
        Just("priority"),
        Just("upscale_weight"),
        Just("sim"),
        Just("promt"),
    ];
    prop::collection::btree_map(keys, any_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_problems_point_at_lines(
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\n'), Just(b'{'), Just(b'"')], 0..2048),
        max_line in 8usize..512,
    ) {
        let dir = video_dir();
        let total_lines = bytes.split(|b| *b == b'\n').count() as u64;
        let (report, jobs) = parse(bytes, dir.path(), max_line);
        prop_assert!(jobs.len() as u64 <= report.lines);
        for p in &report.problems {
            if let Some(line) = p.line {
                prop_assert!(line >= 1 && line <= total_lines, "line {} of {}", line, total_lines);
            }
        }
    }

    #[test]
    fn arbitrary_job_objects_never_panic_and_good_ones_are_sane(objs in prop::collection::vec(any_job_object(), 1..6)) {
        let dir = video_dir();
        let text: String = objs.iter().map(|o| format!("{o}\n")).collect();
        let (report, jobs) = parse(text.into_bytes(), dir.path(), 1 << 20);
        prop_assert_eq!(report.runs as usize, jobs.len());
        for job in &jobs {
            prop_assert!(!job.spec.controls.is_empty());
            for c in job.spec.controls.values() {
                prop_assert!(c.weight > 0.0 && c.weight <= 1.0);
            }
            prop_assert!(job.spec.visual_input.starts_with(std::fs::canonicalize(dir.path()).unwrap()));
        }
        // A file is either wholly good or says what is wrong.
        prop_assert!(report.is_ok() || !report.problems.is_empty());
    }

    #[test]
    fn valid_jobs_round_trip(
        jobs in prop::collection::vec(
            ("[A-Za-z ,.]{1,40}", 0.0f64..=1.0, 0.01f64..=1.0, prop::option::of(0u32..100_000), -100i32..=100, any::<bool>()),
            1..20
        ),
        blank_every in 0usize..4,
    ) {
        let dir = video_dir();
        let mut text = String::new();
        for (i, (prompt, depth_w, edge_w, seed, priority, with_file)) in jobs.iter().enumerate() {
            let mut line = json!({
                "visual_input": "color.mp4",
                "prompt": prompt,
                "name": format!("job-{i}"),
                "priority": priority,
                "control_overrides": {
                    "edge": {"control_weight": edge_w},
                    "depth": {"control_weight": depth_w, "input_control": if *with_file { json!("depth.mp4") } else { Value::Null }},
                },
            });
            if let Some(s) = seed {
                line["seed"] = json!(s);
            }
            text.push_str(&line.to_string());
            text.push('\n');
            if blank_every > 0 && i % blank_every == 0 {
                text.push_str("   \n");
            }
        }
        let (report, parsed) = parse(text.into_bytes(), dir.path(), 1 << 20);
        prop_assert!(report.is_ok(), "{:?}", report.problems);
        prop_assert_eq!(parsed.len(), jobs.len());
        for (job, (prompt, depth_w, edge_w, seed, priority, with_file)) in parsed.iter().zip(&jobs) {
            prop_assert_eq!(&job.spec.prompt, prompt);
            prop_assert_eq!(job.spec.settings.seed, seed.map(u64::from));
            prop_assert_eq!(job.spec.priority, *priority);
            prop_assert_eq!(job.spec.controls[&Hint::Edge].weight, *edge_w);
            match job.spec.controls.get(&Hint::Depth) {
                None => prop_assert_eq!(*depth_w, 0.0, "weight 0 is the only way depth is off"),
                Some(c) => {
                    prop_assert_eq!(c.weight, *depth_w);
                    prop_assert_eq!(c.input.is_some(), *with_file);
                }
            }
        }
    }
}
