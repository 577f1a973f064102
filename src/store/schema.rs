//! The schema, as forward migrations. `PRAGMA user_version` holds how many have run; a
//! migration never changes once released: add a new one instead.

pub const MIGRATIONS: &[&str] = &[
    // 1: the tables of DESIGN.md section 7. Lists are newest first by rowid (insertion
    // order), so no index on created_at is kept up to date on every insert.
    r#"
    CREATE TABLE prompts (
        id              TEXT PRIMARY KEY,
        name            TEXT,
        text            TEXT NOT NULL,
        negative_prompt TEXT,
        inputs          TEXT NOT NULL,          -- JSON {color, depth?, seg?, edge?}
        created_at      TEXT NOT NULL
    );

    CREATE TABLE batches (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,              -- batch_inference | submission
        created_at  TEXT NOT NULL
    );

    CREATE TABLE submissions (
        id           TEXT PRIMARY KEY,
        file         TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        status       TEXT NOT NULL,             -- accepted | duplicate | rejected
        duplicate_of TEXT REFERENCES submissions(id),
        runs         INTEGER NOT NULL DEFAULT 0,
        problems     INTEGER NOT NULL DEFAULT 0,
        received_at  TEXT NOT NULL
    );
    CREATE INDEX submissions_sha256 ON submissions(sha256);

    CREATE TABLE runs (
        id            TEXT PRIMARY KEY,
        prompt_id     TEXT NOT NULL REFERENCES prompts(id),
        name          TEXT,
        status        TEXT NOT NULL CHECK (status IN ('pending','queued','running','completed','failed','cancelled')),
        spec          TEXT NOT NULL,            -- JSON RunSpec
        control_set   TEXT NOT NULL,
        priority      INTEGER NOT NULL DEFAULT 0,
        batch_id      TEXT REFERENCES batches(id),
        submission_id TEXT REFERENCES submissions(id),
        line          INTEGER,
        parent_id     TEXT REFERENCES runs(id) ON DELETE SET NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        outputs       TEXT,                     -- JSON {type, output_dir, primary_output, batch_name}
        error         TEXT,
        created_at    TEXT NOT NULL,
        queued_at     TEXT,
        started_at    TEXT,
        finished_at   TEXT,
        updated_at    TEXT NOT NULL
    );
    CREATE INDEX runs_queue ON runs(status, priority DESC, queued_at);
    CREATE INDEX runs_prompt ON runs(prompt_id);
    CREATE INDEX runs_batch ON runs(batch_id);
    CREATE INDEX runs_submission ON runs(submission_id);

    -- Append-only audit: run, time, kind, detail. No foreign key: the trail outlives a
    -- deleted run. `seq` is the rowid: rows are never deleted (trigger below), so it only
    -- grows, without AUTOINCREMENT's extra write per insert.
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY,
        run_id  TEXT,
        time    TEXT NOT NULL,
        kind    TEXT NOT NULL,
        detail  TEXT
    );
    CREATE INDEX events_run ON events(run_id, seq);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    "#,
    // 2: what the scheduler needs: retry backoff, cancel of a running run, pause.
    r#"
    ALTER TABLE runs ADD COLUMN not_before TEXT;
    ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE daemon_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 3: a file identical to a rejected one is judged again (the reason may be gone): what
    // the problems were, to tell "rejected again for the same problems" (no second
    // rejected/ folder) from new ones, and which rejection came before.
    r#"
    ALTER TABLE submissions ADD COLUMN problems_digest TEXT;
    ALTER TABLE submissions ADD COLUMN rejected_before TEXT REFERENCES submissions(id);
    "#,
    // 4: run counts by status, so status.json reads six rows, not every run (one million
    // runs cost a full index scan otherwise). Status changes and deletions are counted by
    // triggers; inserts by the code that inserts (a submission adds all its runs at once:
    // a trigger per inserted row would cost a statement journal per row).
    r#"
    CREATE TABLE run_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO run_counts (status, n) VALUES ('pending', 0), ('queued', 0), ('running', 0), ('completed', 0), ('failed', 0), ('cancelled', 0);
    UPDATE run_counts SET n = (SELECT count(*) FROM runs WHERE runs.status = run_counts.status);
    CREATE TRIGGER runs_count_delete AFTER DELETE ON runs
        BEGIN UPDATE run_counts SET n = n - 1 WHERE status = OLD.status; END;
    CREATE TRIGGER runs_count_update AFTER UPDATE OF status ON runs WHEN OLD.status != NEW.status
        BEGIN
            UPDATE run_counts SET n = n - 1 WHERE status = OLD.status;
            UPDATE run_counts SET n = n + 1 WHERE status = NEW.status;
        END;
    "#,
    // 5: completion hooks owed (at least once across restarts). A row is written in the
    // transaction that ends its run (or the last open run of its submission) and marked
    // done once every hook configured for it was delivered or given up on. `delivered`
    // lists the hooks already done, so a retry does not run a succeeded one again. The
    // partial indexes keep "what is owed" and "does the submission have open runs" cheap
    // at a million runs; `hooks` in daemon_state says which kinds the daemon wants.
    r#"
    CREATE TABLE hooks_owed (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('run', 'submission')),
        subject     TEXT NOT NULL,            -- run or submission id
        status      TEXT NOT NULL,            -- the run's final status; 'ended' for a submission
        created_at  TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        not_before  TEXT,
        delivered   TEXT NOT NULL DEFAULT '[]',
        done_at     TEXT
    );
    CREATE INDEX hooks_owed_open ON hooks_owed(id) WHERE done_at IS NULL;
    CREATE INDEX runs_open_by_submission ON runs(submission_id) WHERE status IN ('pending', 'queued', 'running');
    "#,
    // 6: OOM healing: the memory-saving options a run's next attempt uses (JSON, the
    // scheduler's `policy::Remedy`) and the smallest GPU group it may run on.
    r#"
    ALTER TABLE runs ADD COLUMN remedy TEXT;
    ALTER TABLE runs ADD COLUMN min_gpus INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: the learned pace of runs and model loads (the ETA, DESIGN.md section 9): per
    // backend, control set and GPU group, seconds per output frame (`frame`), per run where
    // the frames were not known (`run`) and per model load (`load`). `seconds` is the
    // median of `recent` (a JSON array of the last samples, oldest first); `samples`
    // counts every sample ever taken.
    r#"
    CREATE TABLE rates (
        backend     TEXT NOT NULL,
        control_set TEXT NOT NULL,
        gpus        TEXT NOT NULL,
        unit        TEXT NOT NULL CHECK (unit IN ('frame', 'run', 'load')),
        seconds     REAL NOT NULL,
        samples     INTEGER NOT NULL,
        recent      TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (backend, control_set, gpus, unit)
    ) WITHOUT ROWID;
    "#,
    // 8: how many of a submission's runs are open (pending, queued, running), so that "was
    // that its last open run?" (the submission hooks) reads one row. It replaces the partial
    // index runs_open_by_submission, which every inserted run had to enter: a twentieth of
    // a large submission's intake. Status changes and deletions are counted by triggers;
    // inserts by the code that inserts (as in run_counts, and for the same reason).
    r#"
    ALTER TABLE submissions ADD COLUMN open_runs INTEGER NOT NULL DEFAULT 0;
    UPDATE submissions SET open_runs = (
        SELECT count(*) FROM runs WHERE runs.submission_id = submissions.id AND runs.status IN ('pending', 'queued', 'running')
    );
    DROP INDEX runs_open_by_submission;
    CREATE TRIGGER runs_open_update AFTER UPDATE OF status ON runs
        WHEN NEW.submission_id IS NOT NULL
            AND (OLD.status IN ('pending', 'queued', 'running')) != (NEW.status IN ('pending', 'queued', 'running'))
        BEGIN
            UPDATE submissions SET open_runs = open_runs + (CASE WHEN NEW.status IN ('pending', 'queued', 'running') THEN 1 ELSE -1 END)
                WHERE id = NEW.submission_id;
        END;
    CREATE TRIGGER runs_open_delete AFTER DELETE ON runs
        WHEN OLD.submission_id IS NOT NULL AND OLD.status IN ('pending', 'queued', 'running')
        BEGIN UPDATE submissions SET open_runs = open_runs - 1 WHERE id = OLD.submission_id; END;
    "#,
    // 9: several hosts on one queue: the host a run ran on, when it was not this one (the
    // receipt says it).
    r#"
    ALTER TABLE runs ADD COLUMN ran_on TEXT;
    "#,
];
