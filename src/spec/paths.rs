//! The path rules of DESIGN.md section 4: relative paths resolve against the job file's
//! folder; every path, after `..` and symlinks are resolved, must lie under the job file's
//! folder or one of `paths.input_roots`; every named file must be a regular file.

use crate::fsutil::{absolute, require_regular};
pub use crate::fsutil::{normalize, open_regular_file};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Resolves and checks the paths one job file names. Results are cached per raw text:
/// a 100,000-line file naming the same video costs one `stat`, not 100,000.
pub struct PathPolicy {
    base: PathBuf,
    /// Allowed folders as written (made absolute), for the `..` check.
    roots_lexical: Vec<PathBuf>,
    /// The same folders with symlinks resolved, for the symlink check. Missing roots drop out.
    roots_canonical: Vec<PathBuf>,
    cache: HashMap<String, Result<PathBuf, String>>,
    /// The video preflight, where this policy judges as intake does.
    videos: Option<super::VideoCheck>,
}

impl PathPolicy {
    /// `base`: the folder of the job file. `roots`: `paths.input_roots` plus the inbox.
    pub fn new(base: &Path, roots: &[PathBuf]) -> PathPolicy {
        let base = absolute(base);
        let mut roots_lexical = vec![base.clone()];
        roots_lexical.extend(roots.iter().map(|r| absolute(r)));
        let roots_canonical = roots_lexical.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
        PathPolicy { base, roots_lexical, roots_canonical, cache: HashMap::new(), videos: None }
    }

    /// This policy with the video preflight on: every run parsed under it has its videos
    /// probed and aligned ([`super::preflight`]).
    pub fn checking_videos(mut self) -> PathPolicy {
        self.videos = Some(super::VideoCheck::new());
        self
    }

    /// Runs the video preflight on a parsed run, where it is on.
    pub(crate) fn preflight(&mut self, spec: &mut super::RunSpec, p: &mut super::fields::Problems) {
        if let Some(videos) = &mut self.videos {
            videos.check_into(spec, p);
        }
    }

    /// The checked, symlink-free absolute path of the regular file `raw` names, or a
    /// message saying why it cannot be used.
    pub fn resolve(&mut self, raw: &str) -> Result<PathBuf, String> {
        if let Some(hit) = self.cache.get(raw) {
            return hit.clone();
        }
        let result = self.resolve_uncached(raw);
        if self.cache.len() < 100_000 {
            self.cache.insert(raw.to_string(), result.clone());
        }
        result
    }

    fn resolve_uncached(&self, raw: &str) -> Result<PathBuf, String> {
        if raw.is_empty() {
            return Err("expected a file path, got an empty string".into());
        }
        if raw.contains('\0') {
            return Err("expected a file path, got text with a NUL character".into());
        }
        let given = Path::new(raw);
        let joined = if given.is_absolute() { given.to_path_buf() } else { self.base.join(given) };
        let lexical = normalize(&joined);
        if !self.roots_lexical.iter().any(|r| lexical.starts_with(r)) {
            return Err(if given.is_absolute() {
                format!("{raw:?} is outside the allowed folders ({}); add its folder to paths.input_roots", self.allowed())
            } else {
                format!("{raw:?} uses `..` to leave the allowed folders ({})", self.allowed())
            });
        }
        let canonical = match std::fs::canonicalize(&lexical) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("no such file: {}", lexical.display())),
            Err(e) => return Err(format!("cannot resolve {}: {e}", lexical.display())),
        };
        if !self.roots_canonical.iter().any(|r| canonical.starts_with(r)) {
            return Err(format!(
                "{} leads through a symlink to {}, outside the allowed folders ({})",
                lexical.display(),
                canonical.display(),
                self.allowed()
            ));
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| format!("cannot read {}: {e}", canonical.display()))?;
        require_regular(&meta, &canonical)?;
        Ok(canonical)
    }

    fn allowed(&self) -> String {
        self.roots_lexical.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(jobs.join("city1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(jobs.join("city1/color.mp4"), b"v").unwrap();
        std::fs::write(outside.join("secret.mp4"), b"s").unwrap();
        (dir, jobs, outside)
    }

    #[test]
    fn relative_paths_resolve_against_the_file_folder() {
        let (_d, jobs, _o) = setup();
        let mut p = PathPolicy::new(&jobs, &[]);
        let got = p.resolve("city1/color.mp4").unwrap();
        assert_eq!(got, std::fs::canonicalize(jobs.join("city1/color.mp4")).unwrap());
        assert!(p.resolve("./city1/../city1/color.mp4").is_ok());
    }

    #[test]
    fn escapes_symlinks_and_non_files_are_refused_with_reasons() {
        let (_d, jobs, outside) = setup();
        symlink(outside.join("secret.mp4"), jobs.join("link.mp4")).unwrap();
        let mut p = PathPolicy::new(&jobs, &[]);
        let e = p.resolve("../outside/secret.mp4").unwrap_err();
        assert!(e.contains("`..`"), "{e}");
        let e = p.resolve(outside.join("secret.mp4").to_str().unwrap()).unwrap_err();
        assert!(e.contains("input_roots"), "{e}");
        let e = p.resolve("link.mp4").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        let e = p.resolve("city1").unwrap_err();
        assert!(e.contains("a folder"), "{e}");
        let e = p.resolve("city1/nope.mp4").unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        // Allowed once the outside folder is an input root.
        let mut p = PathPolicy::new(&jobs, std::slice::from_ref(&outside));
        assert!(p.resolve("link.mp4").is_ok());
        assert!(p.resolve(outside.join("secret.mp4").to_str().unwrap()).is_ok());
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let (_d, jobs, _o) = setup();
        let fifo = jobs.join("pipe.mp4");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let mut p = PathPolicy::new(&jobs, &[]);
        let e = p.resolve("pipe.mp4").unwrap_err();
        assert!(e.contains("a fifo"), "{e}");
        assert!(open_regular_file(&fifo).unwrap_err().contains("a fifo"));
    }
}
