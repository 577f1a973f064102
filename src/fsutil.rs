//! Small filesystem helpers shared by intake, the outbox and the CLI: hashing, linking,
//! syncing, and an I/O error that names what was being done and where.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// An I/O failure with its context: "cannot publish /outbox/run_rs_x: No space left".
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct PathIo {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// For `map_err`: `std::fs::rename(a, b).map_err(at("cannot publish", b))?`.
pub fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathIo + 'a {
    move |source| PathIo { what, path: path.to_path_buf(), source }
}

/// sha256 of a regular file's bytes, as lowercase hex. Refuses fifos and devices (which
/// could block or never end).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = crate::spec::paths::open_regular_file(path).map_err(io::Error::other)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `src` as `dst`: a hard link where the filesystem allows (same filesystem, permitted),
/// else a copy.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst)?;
    }
    Ok(())
}

/// fsync of a folder, so that a rename in it survives power loss. Best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
