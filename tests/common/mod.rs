//! Helpers shared by the integration tests: a temp home with the fixture videos, and the
//! real binaries run against it.
#![allow(dead_code)]

use assert_cmd::Command;
use std::path::{Path, PathBuf};

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// A temp folder with `videos/city1` and `videos/street1` copied from the shared fixtures
    /// (or made up when the fixtures are not beside the checkout).
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let videos = dir.path().join("videos");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/videos");
        for (scene, files) in [("city1", ["color.mp4", "depth.mp4"]), ("street1", ["color.mp4", "segmentation.mp4"])] {
            std::fs::create_dir_all(videos.join(scene)).expect("mkdir");
            for f in files {
                let src = fixtures.join(scene).join(f);
                let dst = videos.join(scene).join(f);
                match std::fs::read(&src) {
                    Ok(bytes) => std::fs::write(&dst, bytes).expect("copy fixture"),
                    Err(_) => std::fs::write(&dst, format!("fake {scene}/{f}")).expect("write fake video"),
                }
            }
        }
        Home { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `cosmos --root <home>` run in the temp folder, with no ambient config.
    pub fn cosmos(&self) -> Command {
        let mut cmd = Command::cargo_bin("cosmos").expect("cosmos binary");
        cmd.current_dir(self.path()).env_remove("COSMOS_CONFIG").arg("--root").arg(self.root());
        cmd
    }

    pub fn cosmosd(&self) -> Command {
        let mut cmd = Command::cargo_bin("cosmosd").expect("cosmosd binary");
        cmd.current_dir(self.path()).env_remove("COSMOS_CONFIG");
        cmd
    }

    /// Runs `cosmos ARGS`, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cosmos().args(args).output().expect("run cosmos");
        assert!(
            out.status.success(),
            "cosmos {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `cosmos ARGS`, expects exit 2, returns stderr + stdout.
    pub fn usage_error(&self, args: &[&str]) -> String {
        let out = self.cosmos().args(args).output().expect("run cosmos");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "cosmos {args:?} should exit 2, got {:?}: {text}", out.status.code());
        text
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON output")
    }
}

/// The first `prefix`-id in `text` (what the seed's scripts grep for).
pub fn grep_id(text: &str, prefix: &str) -> String {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix} id in {text:?}"));
    text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}
