"""The protocol loop: ops in on stdin, events out on a private copy of stdout.

Model libraries print to stdout; the event stream must not be corrupted by them. At start-up
the original stdout is duplicated for events and fd 1 is pointed at stderr, so anything else
printed (by Python or by C extensions) lands in the log.

One reader thread takes ops from stdin: `ping` is answered at once (even mid-run), `cancel`
sets the cancel flag of the running run, everything else is queued for the main thread, which
loads models and runs jobs one at a time. stdin closing means the daemon is gone: the worker
exits rather than linger as an orphan.
"""

import argparse
import json
import os
import queue
import sys
import threading
import time
import traceback

from cosmos_worker import PROTOCOL, __version__
from cosmos_worker.backends import RunCancelled, RunFailure, make_backend
from cosmos_worker.ranks import Ranks


class Channel:
    """Writes events as JSON lines to the protected stream, one writer at a time."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self.silenced = False  # sim "hang": stop answering anything

    def send(self, event):
        if self.silenced:
            return
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def protect_stdout():
    """Returns a writer on a private duplicate of stdout; fd 1 then points at stderr."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def log(message):
    sys.stderr.write("cosmos_worker: %s\n" % message)
    sys.stderr.flush()


class Worker:
    def __init__(self, backend, channel, ranks=None):
        self.backend = backend
        self.channel = channel
        self.ranks = ranks
        self.ops = queue.Queue()
        self.state = "idle"
        self.run_id = None
        self.controls = None  # the control set loaded, as the daemon named it
        self.options = {}  # the constructor options it was loaded with
        self.cancel = threading.Event()

    # -- the reader thread ------------------------------------------------------------
    def read_ops(self, stream):
        for raw in stream:
            raw = raw.strip()
            if not raw:
                continue
            try:
                op = json.loads(raw)
                kind = op["op"]
            except (ValueError, KeyError, TypeError) as e:
                log("ignoring a bad op line (%s): %.200s" % (e, raw))
                continue
            if kind == "ping":
                self.channel.send({"event": "pong", "state": self.state, "run_id": self.run_id, "controls": self.controls,
                                   "options": self.options, "version": __version__, "pid": os.getpid()})
            elif kind == "cancel":
                if op.get("run_id") == self.run_id:
                    self.cancel.set()
            else:
                # Accepted now: a ping answered before the main thread starts it must
                # already say so, and a cancel must already find it.
                if kind == "run":
                    self.run_id = op.get("run_id")
                    self.state = "running"
                elif kind == "load":
                    self.state = "loading"
                self.ops.put(op)
        # stdin closed: the daemon is gone.
        self.ops.put({"op": "eof"})

    # -- the main thread --------------------------------------------------------------
    def serve(self):
        while True:
            op = self.ops.get()
            kind = op.get("op")
            if kind in ("eof", "shutdown"):
                return 0
            if kind == "load":
                self.do_load(op)
            elif kind == "run":
                self.do_run(op)
            else:
                log("unknown op %r" % kind)

    def do_load(self, op):
        self.state = "loading"
        controls = list(op.get("controls") or [])
        options = op.get("options") or {}
        start = time.monotonic()
        try:
            if self.ranks is not None:
                self.ranks.share(("load", controls, options))
            self.backend.load(controls, options)
        except Exception as e:  # a failed load is reported; the worker stays up
            log("load failed: %s\n%s" % (e, traceback.format_exc()))
            self.state = "idle"
            event = {"event": "load_failed", "controls": controls, "message": str(e)}
            if isinstance(e, MemoryError) or classify(e)[0] == "oom":
                event["kind"] = "oom"  # healed like a run's OOM: the next load saves memory
            self.channel.send(event)
            return
        self.state = "idle"
        self.controls = controls
        self.options = options
        self.channel.send({"event": "loaded", "controls": controls, "options": options,
                           "seconds": round(time.monotonic() - start, 3)})

    def do_run(self, op):
        run_id = op.get("run_id")
        output_dir = op.get("output_dir") or "."
        attempt = int(op.get("attempt") or 1)
        spec = op.get("spec") or {}
        self.run_id = run_id
        self.state = "running"
        start = time.monotonic()

        def progress(step, steps):
            self.channel.send({"event": "progress", "run_id": run_id, "step": step, "steps": steps})

        try:
            os.makedirs(output_dir, exist_ok=True)
            if self.ranks is not None:
                # Every rank makes the same call (context parallel); rank 0 reports.
                self.ranks.share(("run", spec, output_dir, attempt))
            outputs = self.backend.run(
                spec, output_dir, attempt=attempt, progress=progress, cancelled=self.cancel.is_set, channel=self.channel
            )
            event = {"event": "done", "run_id": run_id, "outputs": outputs, "seconds": round(time.monotonic() - start, 3)}
        except RunCancelled:
            event = {"event": "failed", "run_id": run_id, "kind": "cancelled", "retryable": False, "message": "cancelled"}
        except RunFailure as f:
            event = {"event": "failed", "run_id": run_id, "kind": f.kind, "retryable": f.retryable, "message": f.message}
        except MemoryError as e:
            event = {"event": "failed", "run_id": run_id, "kind": "oom", "retryable": True, "message": "out of memory: %s" % e}
        except Exception as e:  # one run never takes down another
            kind, retryable = classify(e)
            log("run %s failed:\n%s" % (run_id, traceback.format_exc()))
            event = {"event": "failed", "run_id": run_id, "kind": kind, "retryable": retryable, "message": "%s: %s" % (type(e).__name__, e)}
        event["attempt"] = attempt
        write_result(output_dir, event)
        self.state = "idle"
        self.run_id = None
        self.cancel.clear()
        self.channel.send(event)


def classify(exc):
    """CUDA out of memory is retryable (another attempt may fit); other errors are not."""
    text = "%s %s" % (type(exc).__name__, exc)
    if "out of memory" in text.lower() or "OutOfMemory" in text:
        return "oom", True
    return "internal", False


def write_result(output_dir, event):
    """result.json before the report: a daemon that was down learns the result from disk."""
    path = os.path.join(output_dir, "result.json")
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(event, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log("cannot write %s: %s" % (path, e))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cosmos_worker", description="Cosmos Workflow worker")
    p.add_argument("--backend", required=True, choices=["sim", "transfer1", "transfer2_5"])
    p.add_argument("--load-seconds", type=float, default=0.0, help="sim: simulated model load time")
    p.add_argument("--job-seconds", type=float, default=0.0, help="sim: simulated run time")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="transfer1: NVIDIA's checkpoints folder")
    p.add_argument("--guardrails", default="on", choices=["on", "off", "offload"],
                   help="NVIDIA's guardrail models, where the backend has them")
    p.add_argument("--av-sample", action="store_true", help="transfer1: the Sample-AV base (hdmap, lidar)")
    p.add_argument("--output-root", default=None, help="transfer2_5: the setup output folder (config.yaml)")
    return p.parse_args(argv)


def main(argv=None):
    # What NVIDIA's entry points set before anything else (transfer.py top;
    # cosmos_oss/init.py init_environment).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # What the worker writes into state/work is group-writable, as what cosmosd writes is
    # (the folders are setgid to the operators' group): a container starts with Docker's 0022.
    os.umask(0o002)
    events = protect_stdout()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    channel = Channel(events)
    backend = make_backend(args)
    # Under torchrun every rank joins the process group first; then ranks other than 0
    # follow rank 0's ops, and only rank 0 speaks to the daemon.
    ranks = Ranks(backend.init_distributed)
    if not ranks.is_leader():
        return ranks.follow(backend)
    worker = Worker(backend, channel, ranks)
    reader = threading.Thread(target=worker.read_ops, args=(sys.stdin,), daemon=True)
    reader.start()
    channel.send({"event": "hello", "protocol": PROTOCOL, "backend": args.backend, "version": __version__, "pid": os.getpid(),
                  "ranks": ranks.world})
    code = worker.serve()
    ranks.share(("stop",))
    backend.close()
    return code
