"""The worker through its real protocol: a subprocess speaking JSON lines."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.dirname(HERE)


@contextlib.contextmanager
def fakes_on_path():
    """The fake NVIDIA modules (and the worker) importable in this process, for a while."""
    added = [os.path.join(HERE, "fakes"), WORKER]
    for p in added:
        sys.path.insert(0, p)
    try:
        yield
    finally:
        for p in added:
            sys.path.remove(p)


class Proc:
    def __init__(self, *args, fakes=False):
        env = dict(os.environ)
        path = [WORKER] + ([os.path.join(HERE, "fakes")] if fakes else [])
        env["PYTHONPATH"] = os.pathsep.join(path)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "cosmos_worker"] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1,
        )

    def send(self, op):
        self.p.stdin.write(json.dumps(op) + "\n")
        self.p.stdin.flush()

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            raise EOFError("worker closed stdout; stderr:\n" + self.p.stderr.read())
        return json.loads(line)

    def until(self, kind):
        while True:
            ev = self.read()
            if ev["event"] == kind:
                return ev
            if ev["event"] in ("done", "failed") and kind not in ("done", "failed"):
                raise AssertionError("unexpected %r" % ev)

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait(timeout=10)
        for stream in (self.p.stdout, self.p.stderr):
            stream.close()


def spec(tmp, prompt="p", **extra):
    video = os.path.join(tmp, "in.mp4")
    with open(video, "wb") as f:
        f.write(b"a video")
    s = {"prompt": prompt, "input_video_path": video, "num_steps": 10, "edge": {"control_weight": 0.5}}
    s.update(extra)
    return s


class SimWorker(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.w = Proc("--backend", "sim", "--job-seconds", "0.2")
        hello = self.w.read()
        self.assertEqual(hello["event"], "hello")
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["backend"], "sim")

    def tearDown(self):
        self.w.close()

    def run_op(self, run_id, s, attempt=1):
        out = os.path.join(self.tmp, run_id)
        self.w.send({"op": "run", "run_id": run_id, "attempt": attempt, "spec": s, "output_dir": out})
        return out

    def test_load_run_progress_done_and_result_json(self):
        self.w.send({"op": "load", "controls": ["edge"], "options": {}})
        self.assertEqual(self.w.read()["event"], "loaded")
        out = self.run_op("rs_a", spec(self.tmp))
        progress = self.w.read()
        self.assertEqual(progress["event"], "progress")
        done = self.w.until("done")
        self.assertEqual(done["run_id"], "rs_a")
        self.assertTrue(os.path.getsize(done["outputs"]["video"]) > 0)
        self.assertIn("edge", done["outputs"]["controls"])
        with open(os.path.join(out, "result.json")) as f:
            self.assertEqual(json.load(f)["event"], "done")

    def test_one_failing_run_never_ends_the_worker(self):
        self.run_op("rs_e", spec(self.tmp, sim={"fail": "error"}))
        failed = self.w.until("failed")
        self.assertEqual((failed["kind"], failed["retryable"], failed["message"]), ("internal", False, "simulated error"))
        self.run_op("rs_o", spec(self.tmp, sim={"fail": "oom"}))
        failed = self.w.until("failed")
        self.assertEqual((failed["kind"], failed["retryable"]), ("oom", True))
        self.run_op("rs_x", spec(self.tmp, sim={"fail": "error", "attempts": 1}), attempt=2)
        self.assertEqual(self.w.until("done")["run_id"], "rs_x")
        self.run_op("rs_missing", {"prompt": "p", "input_video_path": "/nope.mp4", "edge": {"control_weight": 1}})
        self.assertEqual(self.w.until("failed")["kind"], "input")

    def test_ping_mid_run_and_cancel(self):
        self.run_op("rs_c", spec(self.tmp, sim={"seconds": 5}))
        self.w.send({"op": "ping"})
        pong = self.w.until("pong")
        self.assertEqual((pong["state"], pong["run_id"]), ("running", "rs_c"))
        self.w.send({"op": "cancel", "run_id": "rs_c"})
        failed = self.w.until("failed")
        self.assertEqual(failed["kind"], "cancelled")

    def test_crash_exits_and_hang_goes_silent(self):
        self.run_op("rs_k", spec(self.tmp, sim={"fail": "crash"}))
        self.assertEqual(self.w.p.wait(timeout=10), 3)


class Stdin(unittest.TestCase):
    def test_closed_stdin_ends_the_worker(self):
        w = Proc("--backend", "sim")
        self.assertEqual(w.read()["event"], "hello")
        w.p.stdin.close()
        self.assertEqual(w.p.wait(timeout=10), 0)
        w.p.stdout.close()
        w.p.stderr.close()


class Transfer1(unittest.TestCase):
    def test_pipeline_built_once_prints_kept_off_the_protocol_and_blocks_reported(self):
        tmp = tempfile.mkdtemp()
        w = Proc("--backend", "transfer1", "--checkpoint-dir", "/ckpt", fakes=True)
        self.assertEqual(w.read()["event"], "hello")
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        self.assertEqual(w.read()["event"], "loaded")
        for i in range(3):
            w.send({"op": "run", "run_id": "rs_%d" % i, "attempt": 1, "spec": spec(tmp, seed=i), "output_dir": os.path.join(tmp, str(i))})
            done = w.read()  # a print() in the model would break this parse
            self.assertEqual(done["event"], "done", done)
        w.send({"op": "run", "run_id": "rs_b", "attempt": 1, "spec": spec(tmp, prompt="BLOCK"), "output_dir": os.path.join(tmp, "b")})
        blocked = w.read()
        self.assertEqual((blocked["event"], blocked["kind"]), ("failed", "blocked"))
        w.send({"op": "run", "run_id": "rs_m", "attempt": 1, "spec": spec(tmp, prompt="EXPLODE"), "output_dir": os.path.join(tmp, "m")})
        oom = w.read()
        self.assertEqual((oom["kind"], oom["retryable"]), ("oom", True))
        w.close()

    def test_backend_calls_match_nvidia_signatures(self):
        with fakes_on_path():
            from cosmos_transfer1.diffusion.inference import transfer_pipeline as fake
            from cosmos_worker.backends.transfer1 import Transfer1Backend

            fake.CALLS.clear()
            tmp = tempfile.mkdtemp()
            b = Transfer1Backend(checkpoint_dir="/ckpt", num_gpus=1)
            b.load(["edge"], {})
            b.load(["edge"], {})
            out = b.run(spec(tmp, seed=7), os.path.join(tmp, "o"), 1, lambda *a: None, lambda: False, None)
            self.assertTrue(out["video"].endswith("output.mp4"))
            self.assertEqual(fake.CALLS[0], ("init", 1, "/ckpt", ["edge"]))
            self.assertEqual(sum(1 for c in fake.CALLS if c[0] == "init"), 1, "built once")
            gen = [c for c in fake.CALLS if c[0] == "generate"][0]
            self.assertEqual((gen[1], gen[4], gen[5]), (["edge"], 7, 10))


class Torchrun(unittest.TestCase):
    def test_rank_0_broadcasts_every_op_and_followers_make_the_same_calls(self):
        import threading

        with fakes_on_path():
            import torch.distributed as dist
            from cosmos_transfer1.diffusion.inference import transfer_pipeline as fake
            from cosmos_worker.backends.transfer1 import Transfer1Backend

            fake.CALLS.clear()
            tmp = tempfile.mkdtemp()
            leader, follower = Transfer1Backend("/ckpt", num_gpus=2), Transfer1Backend("/ckpt", num_gpus=2)
            leader.world_size = follower.world_size = 2
            follower.rank = 1
            self.assertTrue(leader.is_leader())
            self.assertFalse(follower.is_leader())
            exit_code = []

            def follow():
                dist.set_rank(1, 2)
                exit_code.append(follower.follow())

            dist.set_rank(0, 2)
            t = threading.Thread(target=follow)
            t.start()
            leader.load(["edge"], {})
            leader.run(spec(tmp, seed=3), os.path.join(tmp, "o"), 1, lambda *a: None, lambda: False, None)
            leader.close()
            t.join(timeout=10)
            self.assertEqual(exit_code, [0], "the follower stops when rank 0 closes")
            self.assertEqual(sum(1 for c in fake.CALLS if c[0] == "init"), 2, "one pipeline per rank")
            gens = [c for c in fake.CALLS if c[0] == "generate"]
            self.assertEqual(len(gens), 2)
            self.assertEqual(gens[0], gens[1], "every rank makes the same call")


class Transfer25(unittest.TestCase):
    def test_one_inference_per_control_set(self):
        with fakes_on_path():
            from cosmos_transfer2 import config as fake
            from cosmos_worker.backends.transfer2_5 import Transfer25Backend

            fake.CALLS.clear()
            tmp = tempfile.mkdtemp()
            b = Transfer25Backend(checkpoint_dir="/ckpt")
            for i in range(2):
                out = b.run(spec(tmp, guidance=3.0), os.path.join(tmp, "e%d" % i), 1, None, lambda: False, None)
                self.assertTrue(os.path.isfile(out["video"]))
            b.run(dict(spec(tmp, guidance=3), depth={"control_weight": 0.4}), os.path.join(tmp, "d"), 1, None, lambda: False, None)
            inits = [c for c in fake.CALLS if c[0] == "init"]
            self.assertEqual(inits, [("init", "edge", ["edge"]), ("init", "edge", ["depth", "edge"])])
            self.assertEqual([c[3] for c in fake.CALLS if c[0] == "generate"], [3, 3, 3], "guidance as an integer")


if __name__ == "__main__":
    unittest.main()
