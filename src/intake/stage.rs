//! Input staging: an accepted run's input files are hard-linked (copied across
//! filesystems) into `<state>/work/rs_<id>/input/`, and the run's spec is rewritten to name
//! those copies. From then on the sender may clear or reuse the inbox at once.

use crate::spec::RunSpec;
use std::io;
use std::path::{Path, PathBuf};

/// Stages the inputs of one run and points `spec` at the staged files.
pub fn stage_run(work: &Path, run_id: &str, spec: &mut RunSpec) -> io::Result<()> {
    let dir = work.join(run_id).join("input");
    std::fs::create_dir_all(&dir)?;
    spec.visual_input = place(&spec.visual_input, &dir, "video")?;
    for (hint, control) in spec.controls.iter_mut() {
        if let Some(input) = &control.input {
            control.input = Some(place(input, &dir, hint.as_str())?);
        }
        if let Some(mask) = &control.mask_path {
            control.mask_path = Some(place(mask, &dir, &format!("{hint}_mask"))?);
        }
    }
    Ok(())
}

/// `src` as `dir/<role>.<ext>`: a hard link where possible, else a copy.
fn place(src: &Path, dir: &Path, role: &str) -> io::Result<PathBuf> {
    let dst = match src.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.chars().all(|c| c.is_ascii_alphanumeric()) && ext.len() <= 8 => dir.join(format!("{role}.{ext}")),
        _ => dir.join(role),
    };
    if dst.exists() {
        // A restart finishing an interrupted staging: the link is already there.
        return Ok(dst);
    }
    match std::fs::hard_link(src, &dst) {
        Ok(()) => Ok(dst),
        // Another filesystem (EXDEV), or a file we may read but not link (EPERM under
        // fs.protected_hardlinks): copy it, whole or not at all.
        // The copy is synced before the run that names it is committed.
        Err(_) => {
            let tmp = crate::fsutil::move_temp(&dst);
            crate::fsutil::remove_any(&tmp)?;
            crate::fsutil::copy_synced(src, &tmp).map_err(|e| io::Error::new(e.kind(), format!("cannot copy {}: {e}", src.display())))?;
            std::fs::rename(&tmp, &dst)?;
            Ok(dst)
        }
    }
}

/// Removes what [`stage_run`] made for runs whose submission was rolled back. These are our
/// own links and copies, never a user's file.
pub fn unstage(work: &Path, run_ids: &[String]) {
    for id in run_ids {
        let _ = std::fs::remove_dir_all(work.join(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Control, Hint, Settings, SpecStyle};
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn staged_inputs_are_links_and_the_spec_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("inbox");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("color.mp4"), b"color").unwrap();
        std::fs::write(src.join("d.mp4"), b"depth").unwrap();
        let mut controls = BTreeMap::new();
        controls.insert(Hint::Depth, Control::from_file(0.5, src.join("d.mp4")));
        controls.insert(Hint::Edge, Control::generated(0.5));
        let mut spec = RunSpec {
            style: SpecStyle::Jsonl,
            name: None,
            prompt: "p".into(),
            negative_prompt: None,
            visual_input: src.join("color.mp4"),
            controls,
            settings: Settings::default(),
            priority: 0,
            upscale_weight: None,
            sim: None,
        };
        let work = dir.path().join("work");
        stage_run(&work, "rs_x", &mut spec).unwrap();
        assert_eq!(spec.visual_input, work.join("rs_x/input/video.mp4"));
        assert_eq!(spec.controls[&Hint::Depth].input.as_deref(), Some(work.join("rs_x/input/depth.mp4").as_path()));
        let a = std::fs::metadata(src.join("color.mp4")).unwrap();
        let b = std::fs::metadata(&spec.visual_input).unwrap();
        assert_eq!(a.ino(), b.ino(), "a hard link, not a copy");
        // The sender clears the inbox; the staged input stays.
        std::fs::remove_file(src.join("color.mp4")).unwrap();
        assert_eq!(std::fs::read(&spec.visual_input).unwrap(), b"color");
        unstage(&work, &["rs_x".to_string()]);
        assert!(!work.join("rs_x").exists());
    }
}
