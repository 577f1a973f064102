//! `cosmos submit FILE... [--inbox DIR] [--wait]`: validate here, deliver into the inbox
//! atomically (temp name, then rename), report the receipt, optionally follow the runs.
//!
//! A job file whose relative paths name files beside it travels as a bundle folder (the
//! file plus those files, marked `READY`), so the daemon sees the same paths the user meant.

use super::{usage, CliError, Result};
use crate::config::Config;
use crate::fsutil::{at, link_or_copy, PathIo};
use crate::intake::fate::submission_sha256;
use crate::layout::{stem_of, Layout};
use crate::spec;
use crate::store::{RunLink, RunStatus, Store, Submission, SubmissionStatus};
use crate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `submit` waits for the daemon to take a file in before it says so and stops.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);

pub fn submit(config: &Config, files: &[PathBuf], inbox: Option<PathBuf>, wait: bool, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let inbox = inbox.unwrap_or_else(|| config.paths.inbox.clone());
    if !inbox.is_dir() {
        return Err(usage(format!("--inbox {}: no such folder (is cosmosd's paths.inbox right?)", inbox.display())));
    }
    let mut roots = config.paths.input_roots.clone();
    roots.push(inbox.clone());

    // Validate everything first: a command that submits half of what it was given is worse
    // than one that submits nothing.
    let mut plans = Vec::new();
    let mut problems = 0u64;
    let rules = spec::Rules::from_config(config);
    for file in files {
        match plan(file, &roots, &rules) {
            Ok(p) => plans.push(p),
            Err(text) => {
                problems += 1;
                write!(out, "{text}")?;
            }
        }
    }
    if problems > 0 {
        return Err(CliError::Invalid(format!("nothing was submitted: {problems} of {} file(s) have problems", files.len())));
    }

    let since = Timestamp::now().rfc3339();
    let mut delivered = Vec::new();
    let mut shown = Vec::new();
    for p in &plans {
        let (name, path, sha) = deliver(p, &inbox)?;
        if !as_json {
            writeln!(out, "submitted {} as {}", p.source.display(), path.display())?;
        }
        shown.push(json!({"source": p.source, "delivered_as": path}));
        delivered.push((name, sha));
    }

    let store = Store::open(&config.paths.database())?;
    let mut subs = Vec::new();
    let mut missing = None;
    for (i, (name, sha)) in delivered.iter().enumerate() {
        match wait_for_submission(&store, name, sha, &since)? {
            Some(sub) => {
                let receipt = Layout::of(&config.paths).receipt(name, &sub.id);
                let before = sub.rejected_before.as_deref().map_or(String::new(), |b| format!("; rejected before as {b}"));
                let fate = match (sub.status, &sub.duplicate_of) {
                    (SubmissionStatus::Accepted, _) => format!("accepted, {} run(s) queued{before}", sub.runs),
                    (SubmissionStatus::Duplicate, of) => format!("duplicate of {}: nothing runs again", of.as_deref().unwrap_or("?")),
                    (_, Some(first)) => format!("rejected again, {} problem(s), the same as {first}", sub.problems),
                    _ => format!("rejected, {} problem(s){before}", sub.problems),
                };
                if !as_json {
                    writeln!(out, "receipt {} ({fate})", receipt.display())?;
                }
                shown[i]["receipt"] = json!(receipt); // ok: `shown` holds one object per `delivered` entry
                shown[i]["submission"] = super::json::submission(&sub);
                subs.push(sub);
            }
            None => {
                let why = format!(
                    "{name} is in the inbox but no daemon took it within {}s (is cosmosd running?); its receipt will be {}/{}.sb_*.json",
                    RECEIPT_WAIT.as_secs(),
                    Layout::of(&config.paths).receipts().display(),
                    stem_of(name)
                );
                if !as_json {
                    writeln!(out, "{why}")?;
                }
                shown[i]["receipt"] = Value::Null; // ok: `shown` holds one object per `delivered` entry
                shown[i]["submission"] = Value::Null;
                missing.get_or_insert(why);
            }
        }
    }
    let report = |out: &mut dyn Write, runs: Option<Vec<Value>>| -> Result<()> {
        if as_json {
            super::print_json(out, &json!({"submissions": shown, "runs": runs}))?;
        }
        Ok(())
    };
    if !wait {
        return report(out, None);
    }
    if let Some(why) = missing {
        report(out, None)?;
        return Err(CliError::Failed(format!("cannot --wait: cosmosd did not take the submission in ({why})")));
    }
    if let Some(rejected) = subs.iter().find(|s| s.status == SubmissionStatus::Rejected) {
        report(out, None)?;
        return Err(CliError::Invalid(format!("{} was rejected; see its receipt", rejected.file)));
    }
    let (runs, ended) = follow(&store, config, &subs, as_json, out)?;
    report(out, Some(runs))?;
    ended
}

/// What to deliver for one argument.
struct Plan {
    source: PathBuf,
    /// Files to carry beside the job file (relative path inside the bundle, source).
    carry: Vec<(PathBuf, PathBuf)>,
    bundle: bool,
}

/// Validates `file` (a job file or a bundle folder) as the daemon will, and works out what
/// must travel with it. `Err` holds the problems, one per line.
fn plan(file: &Path, roots: &[PathBuf], rules: &spec::Rules) -> std::result::Result<Plan, String> {
    if file.is_dir() {
        let (report, layout) = spec::parse_bundle(file, roots, rules, &mut |_| {});
        let shown = layout.map_or_else(|| file.to_path_buf(), |l| l.jobs().to_path_buf());
        return if report.is_ok() {
            Ok(Plan { source: file.to_path_buf(), carry: Vec::new(), bundle: true })
        } else {
            Err(report.render(&shown))
        };
    }
    let mut inputs: BTreeSet<PathBuf> = BTreeSet::new();
    let report = spec::parse_job_file(file, roots, rules, &mut |job| {
        inputs.insert(job.spec.visual_input.clone());
        for c in job.spec.controls.values() {
            inputs.extend(c.input.iter().cloned());
            inputs.extend(c.mask_path.iter().cloned());
        }
    });
    if !report.is_ok() {
        return Err(report.render(file));
    }
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let folder = std::fs::canonicalize(folder).map_err(|e| format!("{}: {e}\n", file.display()))?;
    // Inputs under one of the roots are reachable from the daemon as they are; inputs
    // beside the job file travel with it.
    let canonical_roots: Vec<PathBuf> = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    let carry: Vec<(PathBuf, PathBuf)> = inputs
        .into_iter()
        .filter(|p| !canonical_roots.iter().any(|r| p.starts_with(r)))
        .filter_map(|p| p.strip_prefix(&folder).ok().map(|rel| (rel.to_path_buf(), p.clone())))
        .collect();
    let bundle = !carry.is_empty();
    Ok(Plan { source: file.to_path_buf(), carry, bundle })
}

/// A name not yet taken in the inbox: `jobs.jsonl`, else `jobs-2.jsonl`, ...
fn free_name(inbox: &Path, name: &str) -> String {
    if !inbox.join(name).exists() {
        return name.to_string();
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (name.to_string(), String::new()),
    };
    (2..).map(|n| format!("{stem}-{n}{ext}")).find(|n| !inbox.join(n).exists()).unwrap_or_else(|| name.to_string())
}

/// Writes the plan into the inbox under a hidden temp name, then renames it into place.
/// Returns the name in the inbox, its path and the sha256 the daemon will record (taken
/// before the rename: the daemon may claim it the moment it appears).
fn deliver(p: &Plan, inbox: &Path) -> std::result::Result<(String, PathBuf, String), PathIo> {
    let file_name = p.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "jobs.jsonl".into());
    let tmp = inbox.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = crate::fsutil::remove_any(&tmp);
    let name = if p.bundle && !p.source.is_dir() {
        std::fs::create_dir_all(&tmp).map_err(at("cannot create", &tmp))?;
        link_or_copy(&p.source, &tmp.join(&file_name)).map_err(at("cannot copy", &p.source))?;
        for (rel, src) in &p.carry {
            let dst = tmp.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(at("cannot create", parent))?;
            }
            link_or_copy(src, &dst).map_err(at("cannot copy", src))?;
        }
        std::fs::write(tmp.join("READY"), b"").map_err(at("cannot write in", &tmp))?;
        free_name(inbox, &stem_of(&file_name))
    } else if p.source.is_dir() {
        let options = fs_extra::dir::CopyOptions::new().copy_inside(true);
        fs_extra::dir::copy(&p.source, &tmp, &options)
            .map_err(|e| at("cannot copy", &p.source)(std::io::Error::other(format!("{e} (into {})", tmp.display()))))?;
        std::fs::write(tmp.join("READY"), b"").map_err(at("cannot write in", &tmp))?;
        free_name(inbox, &file_name)
    } else {
        std::fs::copy(&p.source, &tmp).map_err(at("cannot copy", &p.source))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(at("cannot sync", &tmp))?;
        free_name(inbox, &file_name)
    };
    super::share::share_delivery(inbox, &tmp).map_err(at("cannot open to the group", &tmp))?;
    let sha = submission_sha256(&tmp).map_err(at("cannot hash", &tmp))?;
    let dst = inbox.join(&name);
    std::fs::rename(&tmp, &dst).map_err(at("cannot deliver into", &dst))?;
    Ok((name, dst, sha))
}

fn wait_for_submission(store: &Store, name: &str, sha: &str, since: &str) -> Result<Option<Submission>> {
    let deadline = Instant::now() + RECEIPT_WAIT;
    loop {
        if let Some(sub) = store.submissions_of(name, sha, since)?.into_iter().next() {
            return Ok(Some(sub));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follows the runs of the submissions until every one has ended. Exit 0 only if every run
/// completed.
/// Returns the runs as they ended (JSON) and whether that is a success.
fn follow(store: &Store, config: &Config, subs: &[Submission], as_json: bool, out: &mut dyn Write) -> Result<(Vec<Value>, Result<()>)> {
    // A duplicate's runs are the original's. (A rejected one never gets here.)
    let ids: Vec<String> = subs
        .iter()
        .map(
            |s| if s.status == SubmissionStatus::Duplicate { s.duplicate_of.clone().unwrap_or_else(|| s.id.clone()) } else { s.id.clone() },
        )
        .collect();
    let runs_of = |store: &Store| -> Result<Vec<crate::store::Run>> {
        let mut all = Vec::new();
        for id in &ids {
            all.extend(store.runs_where(RunLink::Submission, id)?);
        }
        Ok(all)
    };
    let total = runs_of(store)?.len() as u64;
    let bar = (std::io::stderr().is_terminal() && !as_json).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs ended  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_line = String::new();
    let mut outlook: Option<(Instant, super::control::Outlook)> = None;
    loop {
        let runs = runs_of(store)?;
        let count = |s: RunStatus| runs.iter().filter(|r| r.status == s).count();
        let (done, failed, cancelled) = (count(RunStatus::Completed), count(RunStatus::Failed), count(RunStatus::Cancelled));
        let (running, queued) = (count(RunStatus::Running), count(RunStatus::Queued) + count(RunStatus::Pending));
        let ended = (done + failed + cancelled) as u64;
        let line = format!("{done} completed, {failed} failed, {cancelled} cancelled, {running} running, {queued} queued");
        if line != last_line || outlook.as_ref().is_none_or(|(at, _)| at.elapsed() >= OUTLOOK_EVERY) {
            outlook = super::control::Outlook::of(store, config).ok().map(|o| (Instant::now(), o));
        }
        let eta = outlook.as_ref().map_or_else(|| "no ETA".to_string(), |(at, o)| submission_eta(o, &runs, at.elapsed()));
        match &bar {
            Some(b) => {
                b.set_position(ended);
                b.set_message(format!("{line}, {eta}"));
            }
            // Not a terminal: a line when the counts change, with the ETA of that moment.
            None if line != last_line && !as_json => writeln!(out, "{line}, {eta}")?,
            None => {}
        }
        last_line = line;
        if ended == runs.len() as u64 {
            if let Some(b) = &bar {
                b.finish();
            }
            if !as_json {
                for r in runs.iter().filter(|r| r.status != RunStatus::Completed) {
                    writeln!(out, "{} {}: {}", r.id, r.status, r.error.as_deref().unwrap_or(""))?;
                }
            }
            let shown = runs
                .iter()
                .map(|r| json!({"id": r.id, "status": r.status, "error": r.error, "outputs": r.outputs, "line": r.line, "name": r.name}))
                .collect();
            let ended = if done == runs.len() {
                Ok(())
            } else {
                Err(CliError::Failed(format!("{} of {} runs did not complete", runs.len() - done, runs.len())))
            };
            return Ok((shown, ended));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How often `submit --wait` forecasts the queue again while its runs' counts hold (it
/// reads up to [`crate::scheduler::ETA_RUNS`] queued runs each time).
const OUTLOOK_EVERY: Duration = Duration::from_secs(2);

/// When the last of `runs` not ended yet is expected to end (`age`: how old the outlook
/// is): `ETA 3m05s`, or `no ETA yet` while any of them has no estimate.
fn submission_eta(outlook: &super::control::Outlook, runs: &[crate::store::Run], age: Duration) -> String {
    let open: Vec<&crate::store::Run> = runs.iter().filter(|r| !r.status.is_final()).collect();
    if open.is_empty() {
        return "all ended".to_string();
    }
    let mut last: Option<f64> = Some(0.0);
    for r in open {
        // A pending run (not queued) has no place in the queue: no estimate.
        let done_in = outlook.done_in(r).flatten();
        last = last.zip(done_in).map(|(a, b)| a.max(b));
    }
    match last {
        Some(s) => format!("ETA {}", crate::scheduler::policy::duration_words((s - age.as_secs_f64()).max(0.0))),
        None => "no ETA yet (nothing of this kind has finished)".to_string(),
    }
}
