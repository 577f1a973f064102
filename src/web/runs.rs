//! The last runs for the status page, and a read-only view of a finished run's outbox
//! folder. A folder is found by run id only (the id's syntax checked, then the layout
//! names the folder); a file in it is served only when the request names exactly one of
//! the regular files a walk of that folder found, so nothing in the request is ever used
//! as a path.

use super::http::{Body, Response};
use crate::layout::Layout;
use crate::store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How many runs `/runs.json` lists.
pub const RECENT: usize = 20;
/// A walk of a run folder stops after this many files (a run folder holds about ten).
const MAX_FILES: usize = 1000;
const MAX_DEPTH: usize = 4;

/// The runs that ended last, newest first, with where their folder is served.
pub fn recent(store: &Store, layout: &Layout) -> Result<Value, crate::store::StoreError> {
    let mut out = Vec::new();
    for f in store.recent_finished(RECENT)? {
        let run = match store.run(&f.run_id) {
            Ok(r) => Some(r),
            Err(crate::store::StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let folder = layout.run_dir(&f.run_id).is_dir();
        out.push(json!({
            "id": f.run_id,
            "name": run.as_ref().and_then(|r| r.name.clone()),
            // The ending the event recorded; `status` is the run's now (a failed run retried
            // since is queued again; a deleted one is gone).
            "outcome": f.kind,
            "status": run.as_ref().map_or("deleted", |r| r.status.as_str()),
            "finished_at": f.time,
            "started_at": run.as_ref().and_then(|r| r.started_at.clone()),
            "attempts": run.as_ref().map(|r| r.attempts),
            "error": run.as_ref().and_then(|r| r.error.clone()),
            "folder": folder.then(|| format!("/runs/{}/", f.run_id)),
        }));
    }
    Ok(Value::Array(out))
}

/// `rs_` + 12 id characters: the only ids a folder is looked up by.
fn run_id(text: &str) -> Option<&str> {
    (text.len() == 3 + crate::ids::ID_CHARS && crate::ids::parse_prefix(text) == Ok(crate::ids::IdKind::Run)).then_some(text)
}

/// The regular files under `dir` (symlinks not followed, hidden names skipped), as
/// `(relative path with /, full path, size)`, sorted.
fn walk(dir: &Path) -> Vec<(String, PathBuf, u64)> {
    fn go(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            if out.len() >= MAX_FILES {
                return;
            }
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() && depth < MAX_DEPTH {
                go(root, &path, depth + 1, out);
            } else if ft.is_file() {
                let Ok(rel) = path.strip_prefix(root) else { continue };
                let Some(rel) = rel.to_str() else { continue };
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((rel.to_string(), path.clone(), size));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, 0, &mut out);
    out.sort();
    out
}

/// `/runs/<id>/...`: the folder's listing (`rest` empty) or one of its files; `None`: 404.
pub fn serve(layout: &Layout, id: &str, rest: &str) -> Option<Response> {
    let id = run_id(id)?;
    let dir = layout.run_dir(id);
    // The folder itself, not a link somewhere else.
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let files = walk(&dir);
    if rest.is_empty() {
        return Some(Response::new(200, "text/html; charset=utf-8", listing(id, &files)));
    }
    let (_, path, _) = files.iter().find(|(rel, _, _)| rel == rest)?;
    let file = crate::fsutil::open_exact(path).ok()?;
    let len = file.metadata().ok().filter(|m| m.is_file())?.len();
    Some(Response { status: 200, content_type: content_type(path), body: Body::File(file, len), headers: Vec::new() })
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "mp4" => "video/mp4",
        "json" => "application/json",
        "txt" | "log" | "jsonl" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Text for HTML: `& < > " '` escaped.
pub fn escape_html(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// A path for an `href`: each byte outside the unreserved set and `/` %-escaped.
fn escape_href(path: &str) -> String {
    path.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn listing(id: &str, files: &[(String, PathBuf, u64)]) -> String {
    let rows: String = files
        .iter()
        .map(|(rel, _, size)| {
            format!(
                "<tr><td><a href=\"/runs/{id}/{}\">{}</a></td><td class=\"num\">{}</td></tr>\n",
                escape_href(rel),
                escape_html(rel),
                human_size(*size)
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>run {id}</title>\
         <link rel=\"stylesheet\" href=\"/assets/page.css\"></head><body>\n<header><h1>run <code>{id}</code></h1>\
         <a href=\"/\">status page</a></header>\n<main><section><table><thead><tr><th>file</th><th class=\"num\">size</th></tr></thead>\
         <tbody>\n{rows}</tbody></table></section></main></body></html>\n"
    )
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_a_walk_found_are_served_never_a_path_from_the_request() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(&root.path().join("in"), &root.path().join("out"), &root.path().join("state"));
        let id = "rs_abcdefghijkl";
        let dir = layout.run_dir(id);
        std::fs::create_dir_all(dir.join("controls")).unwrap();
        std::fs::write(dir.join("output.mp4"), b"video").unwrap();
        std::fs::write(dir.join("controls/edge.mp4"), b"edge").unwrap();
        std::fs::write(dir.join(".hidden"), b"no").unwrap();
        std::fs::write(root.path().join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.txt"), dir.join("link.txt")).unwrap();

        let page = serve(&layout, id, "").unwrap();
        let Body::Bytes(html) = page.body else { panic!("a listing is bytes") };
        let html = String::from_utf8(html).unwrap();
        assert!(html.contains("/runs/rs_abcdefghijkl/controls/edge.mp4") && html.contains("output.mp4"), "{html}");
        assert!(!html.contains("hidden") && !html.contains("link.txt"), "{html}");

        let file = serve(&layout, id, "controls/edge.mp4").unwrap();
        assert_eq!((file.status, file.content_type), (200, "video/mp4"));
        assert!(matches!(file.body, Body::File(_, 4)));
        for rest in ["../../secret.txt", "link.txt", ".hidden", "/etc/passwd", "controls/../output.mp4", "controls", "missing.mp4"] {
            assert!(serve(&layout, id, rest).is_none(), "{rest} must not be served");
        }
        for bad in ["rs_abc", "../out", "rs_ABCDEFGHIJKL", "ps_abcdefghijkl", "rs_abcdefghijkz/../x"] {
            assert!(serve(&layout, bad, "").is_none(), "{bad} is no run id");
        }
        assert!(serve(&layout, "rs_bbbbbbbbbbbb", "").is_none(), "no folder, no listing");
    }

    #[test]
    fn html_and_hrefs_are_escaped() {
        assert_eq!(escape_html("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape_href("controls/a b\"<.mp4"), "controls/a%20b%22%3C.mp4");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }
}
