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


FAKES = os.path.join(HERE, "fakes")


class Proc:
    """`python -m cosmos_worker ARGS` as the daemon starts it. `fakes`: the fake NVIDIA
    checkout is the working directory and first on PYTHONPATH (runtime.model_code);
    `torchrun`: under (fake) torchrun with that many processes."""

    def __init__(self, *args, fakes=False, cwd=None, torchrun=0, env=None):
        e = dict(os.environ)
        path = ([FAKES] if fakes else []) + [WORKER]
        e["PYTHONPATH"] = os.pathsep.join(path)
        e.update(env or {})
        launcher = [sys.executable, "-u"]
        if torchrun:
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=%d" % torchrun]
        self.p = subprocess.Popen(
            launcher + ["-m", "cosmos_worker"] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True, bufsize=1,
            cwd=cwd or (FAKES if fakes else None),
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

    def test_an_oom_goes_away_once_the_memory_it_needs_is_saved(self):
        # Cured by two load options and fewer frames per chunk, all three, in any order given.
        fault = {"fail": "oom", "cured_by": ["offload_text_encoder_model", "offload_network", "num_video_frames_per_chunk"]}
        self.run_op("rs_1", spec(self.tmp, sim=fault))
        self.assertEqual(self.w.until("failed")["kind"], "oom", "nothing saved")
        self.w.send({"op": "load", "controls": ["edge"], "options": {"offload_text_encoder_model": True, "offload_network": True}})
        loaded = self.w.until("loaded")
        self.assertEqual(loaded["options"], {"offload_text_encoder_model": True, "offload_network": True})
        self.w.send({"op": "ping"})  # a re-attaching daemon learns what the model holds
        self.assertEqual(self.w.until("pong")["options"], {"offload_text_encoder_model": True, "offload_network": True})
        self.run_op("rs_2", spec(self.tmp, sim=fault), attempt=2)
        self.assertEqual(self.w.until("failed")["kind"], "oom", "the load options alone are not enough")
        self.run_op("rs_3", spec(self.tmp, sim=fault, num_video_frames_per_chunk=61), attempt=3)
        done = self.w.until("done")
        self.assertEqual(done["outputs"]["settings"]["num_video_frames_per_chunk"], 61)
        self.assertEqual(done["outputs"]["settings"]["load_options"], {"offload_text_encoder_model": True, "offload_network": True})
        # A group it needs: one process here, so no load option cures it.
        self.run_op("rs_4", spec(self.tmp, sim={"fail": "oom", "cured_by": ["gpus:2"]}, num_video_frames_per_chunk=29))
        self.assertEqual(self.w.until("failed")["kind"], "oom")
        # An option no backend has is refused, as a constructor refuses a keyword.
        self.w.send({"op": "load", "controls": ["edge"], "options": {"offload_everything": True}})
        failed = self.w.until("load_failed")
        self.assertIn("offload_everything", failed["message"])
        self.assertNotIn("kind", failed, "not an OOM")

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


class Calls:
    """The fake NVIDIA code's record of what every process called (FAKE_NVIDIA_CALLS)."""

    def __init__(self):
        fd, self.path = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)

    def env(self):
        return {"FAKE_NVIDIA_CALLS": self.path}

    def all(self, call=None):
        with open(self.path, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if call is None or e["call"] == call]


def t1_spec(tmp, prompt="p", **controls):
    """What the daemon sends the transfer1 worker: NVIDIA's --controlnet_specs for one run."""
    video = os.path.join(tmp, "in.mp4")
    with open(video, "wb") as f:
        f.write(b"a video")
    s = {"prompt": prompt, "input_video_path": video, "negative_prompt": "n", "seed": 7, "num_steps": 10, "guidance": 5.0,
         "sigma_max": 70.0, "fps": 24, "blur_strength": "low", "canny_threshold": "high"}
    s.update(controls or {"edge": {"control_weight": 0.5}})
    return s


class Transfer1(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.calls = Calls()

    def start(self, *extra, cwd=None, torchrun=0):
        w = Proc("--backend", "transfer1", "--checkpoint-dir", "/ckpt", *extra, fakes=True, cwd=cwd, torchrun=torchrun,
                 env=self.calls.env())
        hello = w.read()
        self.assertEqual(hello["event"], "hello")
        return w, hello

    def run_spec(self, w, run_id, s):
        w.send({"op": "run", "run_id": run_id, "attempt": 1, "spec": s, "output_dir": os.path.join(self.tmp, run_id)})
        return w.until("done") if "FAIL" not in run_id else w.until("failed")

    def test_success_is_a_written_output_mp4_though_generate_returns_none(self):
        w, _ = self.start()
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        self.assertEqual(w.read()["event"], "loaded")  # the fake's print() stayed off the stream
        done = self.run_spec(w, "rs_a", t1_spec(self.tmp))
        self.assertTrue(done["outputs"]["video"].endswith("rs_a/output.mp4"))
        self.assertTrue(done["outputs"]["controls"]["edge"].endswith("edge_input_control_0.mp4"), done)
        self.assertEqual(done["outputs"]["settings"]["negative_prompt"], "n")
        # As transfer.py runs: gradients off, tokenizers not parallel.
        gen = self.calls.all("generate")[0]
        self.assertEqual((gen["grad_enabled"], gen["tokenizers_parallelism"]), (False, "false"))
        # generate() wrote nothing this time (it returns None either way): a failure, not a
        # success, and not a guardrail block.
        failed = self.run_spec(w, "rs_FAIL", t1_spec(self.tmp, prompt="WRITES_NOTHING"))
        self.assertEqual((failed["kind"], failed["retryable"]), ("internal", False))
        self.assertIn("wrote no output.mp4", failed["message"])
        oom = self.run_spec(w, "rs_FAIL2", t1_spec(self.tmp, prompt="RAISE_OOM"))
        self.assertEqual((oom["kind"], oom["retryable"]), ("oom", True))
        w.close()

    def test_memory_saving_options_reach_nvidias_inner_pipeline_and_other_options_are_another_load(self):
        w, _ = self.start()
        oom = self.run_spec(w, "rs_FAIL", t1_spec(self.tmp, prompt="OOM_UNLESS_T5_OFFLOADED"))
        self.assertEqual((oom["kind"], oom["retryable"]), ("oom", True))
        options = {"offload_text_encoder_model": True, "offload_tokenizer": True}
        w.send({"op": "load", "controls": ["edge"], "options": options})
        self.assertEqual(w.until("loaded")["options"], options)
        done = self.run_spec(w, "rs_healed", t1_spec(self.tmp, prompt="OOM_UNLESS_T5_OFFLOADED"))
        self.assertEqual(done["outputs"]["settings"]["load_options"], options)
        # The same options again: nothing is built; none: built again without them.
        w.send({"op": "load", "controls": ["edge"], "options": options})
        w.until("loaded")
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        w.until("loaded")
        w.send({"op": "load", "controls": ["edge"], "options": {"offload_guardrail_models": True}})
        refused = w.until("load_failed")
        self.assertIn("offload_guardrail_models", refused["message"], "TransferPipeline runs no guardrail: nothing to offload")
        w.close()
        inits = self.calls.all("TransferPipeline.__init__")
        self.assertEqual(len(inits), 3, "built at first, with the options, without them")
        loads = self.calls.all("pipeline.load")
        self.assertEqual([(l["offload_text_encoder_model"], l["offload_tokenizer"], l["offload_network"]) for l in loads],
                         [(False, False, False), (True, True, False), (False, False, False)])
        # NVIDIA's own keywords are kept: guardrail disabled, no upsampler, the others as
        # TransferPipeline passes them; the T5 and tokenizer are not loaded up front.
        self.assertEqual({(l["disable_guardrail"], l["upsample_prompt"], l["offload_guardrail_models"]) for l in loads},
                         {(True, False, False)})
        self.assertEqual(loads[1]["loaded"], ["network"])
        self.assertEqual(loads[0]["loaded"], ["text_encoder", "network", "tokenizer"])
        with fakes_on_path():
            from cosmos_transfer1.diffusion.inference import transfer_pipeline
            from cosmos_transfer1.diffusion.inference.world_generation_pipeline import DiffusionControl2WorldGenerationPipeline

            self.assertIs(transfer_pipeline.DiffusionControl2WorldGenerationPipeline, DiffusionControl2WorldGenerationPipeline)
            with self.assertRaises(TypeError):  # the fake takes NVIDIA's keywords, none more
                DiffusionControl2WorldGenerationPipeline(checkpoint_dir="c", checkpoint_name="n", offload_everything=True)

    def test_a_load_out_of_gpu_memory_says_oom_and_the_offload_cures_it(self):
        self.calls = Calls()
        w = Proc("--backend", "transfer1", "--checkpoint-dir", "/ckpt", fakes=True,
                 env=dict(self.calls.env(), FAKE_T1_LOAD_NEEDS_T5_OFFLOAD="1"))
        self.assertEqual(w.read()["event"], "hello")
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        failed = w.until("load_failed")
        self.assertEqual(failed["kind"], "oom", failed)
        self.assertIn("CUDA out of memory", failed["message"])
        w.send({"op": "load", "controls": ["edge"], "options": {"offload_text_encoder_model": True}})
        self.assertEqual(w.until("loaded")["options"], {"offload_text_encoder_model": True})
        self.run_spec(w, "rs_a", t1_spec(self.tmp))
        w.close()

    def test_outside_nvidias_checkout_the_load_fails_and_says_how_to_fix_it(self):
        w, _ = self.start(cwd=self.tmp)
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        failed = w.read()
        self.assertEqual(failed["event"], "load_failed")
        self.assertIn("runtime.model_code", failed["message"])
        self.assertIn("cosmos_transfer1/diffusion/config/transfer/config.py", failed["message"])
        w.close()

    def test_one_pipeline_allows_every_hint_and_a_set_change_reloads_it(self):
        w, _ = self.start()
        for controls in (["edge"], ["vis", "depth"], ["vis", "depth"], ["edge"]):
            w.send({"op": "load", "controls": controls, "options": {}})
            self.assertEqual(w.read()["event"], "loaded")
        spec = t1_spec(self.tmp, edge={"control_weight": 0.5}, seg={"control_weight": 0.0})
        self.run_spec(w, "rs_e", spec)
        w.close()
        inits = self.calls.all("TransferPipeline.__init__")
        self.assertEqual(len(inits), 1, "built once")
        self.assertEqual(sorted(inits[0]["hint_keys"]), ["depth", "edge", "seg", "upscale", "vis"], "every hint it allows")
        self.assertEqual((inits[0]["first_key"], inits[0]["checkpoint_name"]), ("edge", "nvidia/Cosmos-Transfer1-7B/base_model.pt"))
        self.assertEqual(inits[0]["cwd"], FAKES, "run in NVIDIA's checkout")
        reloads = [c["controls"] for c in self.calls.all("reload_model")]
        self.assertEqual(reloads, [["depth", "vis"], ["edge"]], "one reload per change of set, none for the same set")
        gen = self.calls.all("generate")[0]
        self.assertEqual(gen["controls"], ["edge"], "weight 0 left out: NVIDIA runs a controlnet even at weight 0")
        self.assertEqual((gen["seed"], gen["num_steps"], gen["blur_strength"], gen["canny_threshold"]), (7, 10, "low", "high"))

    def test_nvidias_default_negative_prompt_unless_the_run_gives_one(self):
        w, _ = self.start()
        spec = t1_spec(self.tmp)
        del spec["negative_prompt"]
        self.run_spec(w, "rs_d", spec)
        self.run_spec(w, "rs_e", dict(t1_spec(self.tmp), negative_prompt=""))
        w.close()
        negs = [c["negative_prompt"] for c in self.calls.all("generate")]
        self.assertTrue(negs[0].startswith("The video captures a game playing"), negs[0])
        self.assertEqual(negs[1], "", "an explicit empty negative prompt stays empty")

    def test_the_sample_av_base_serves_hdmap_and_lidar_only(self):
        w, _ = self.start("--av-sample")
        w.send({"op": "load", "controls": ["hdmap"], "options": {}})
        self.assertEqual(w.read()["event"], "loaded")
        w.send({"op": "load", "controls": ["edge"], "options": {}})
        refused = w.read()
        self.assertEqual(refused["event"], "load_failed")
        self.assertIn("hdmap, lidar", refused["message"])
        w.close()
        init = self.calls.all("TransferPipeline.__init__")[0]
        self.assertEqual(init["hint_keys"], ["hdmap", "lidar"])
        self.assertEqual(init["checkpoint_name"], "nvidia/Cosmos-Transfer1-7B-Sample-AV/base_model.pt")

    def test_under_torchrun_every_rank_builds_and_generates_and_rank_0_reports(self):
        w, hello = self.start(torchrun=2)
        self.assertEqual(hello["ranks"], 2)
        w.send({"op": "load", "controls": ["edge", "vis"], "options": {}})
        self.assertEqual(w.read()["event"], "loaded")
        done = self.run_spec(w, "rs_t", t1_spec(self.tmp, edge={"control_weight": 0.5}, vis={"control_weight": 0.2}))
        self.assertTrue(os.path.getsize(done["outputs"]["video"]) > 0)
        w.close()  # stdin closed: rank 0 stops the others, torchrun exits 0
        self.assertEqual(w.p.returncode, 0)
        self.assertEqual(sorted(c["rank"] for c in self.calls.all("distributed.init")), [0, 1], "the group exists first")
        inits = self.calls.all("TransferPipeline.__init__")
        self.assertEqual(sorted(c["rank"] for c in inits), [0, 1], "every rank builds the pipeline")
        self.assertEqual({c["num_gpus"] for c in inits}, {2})
        self.assertEqual(len({c["first_key"] for c in inits}), 1, "the same first control on every rank")
        gens = self.calls.all("generate")
        self.assertEqual(sorted(g["rank"] for g in gens), [0, 1], "every rank calls generate")
        self.assertEqual(gens[0]["controls"], gens[1]["controls"])
        out = os.path.join(self.tmp, "rs_t")
        self.assertTrue(os.path.isfile(os.path.join(out, "edge_input_control_1.mp4")), "rank 1 made its own control files")


class FakeTorch(unittest.TestCase):
    def test_a_broadcast_before_the_process_group_exists_raises_as_in_torch(self):
        code = (
            "import torch.distributed as dist\n"
            "try:\n    dist.broadcast_object_list([1], src=0)\nexcept RuntimeError as e:\n    print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=FAKES), capture_output=True, text=True)
        self.assertIn("Default process group has not been initialized", out.stdout)

    def test_ranks_refuse_a_backend_that_leaves_no_group(self):
        with fakes_on_path():
            from cosmos_worker.ranks import Ranks

            saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
            os.environ.update(WORLD_SIZE="2", RANK="1")
            try:
                with self.assertRaises(RuntimeError):
                    Ranks(lambda: None)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def have_pydantic():
    try:
        import pydantic  # noqa: F401

        return True
    except ImportError:
        if os.environ.get("COSMOS_REQUIRE_PYDANTIC") == "1":
            raise
        return False


def t25_spec(tmp, prompt="p", **extra):
    """What the daemon sends the transfer2_5 worker: NVIDIA's InferenceArguments."""
    video = os.path.join(tmp, "in.mp4")
    with open(video, "wb") as f:
        f.write(b"a video")
    s = {"name": "output", "prompt": prompt, "video_path": video, "negative_prompt": "n", "seed": 2025, "num_steps": 35,
         "guidance": 3, "resolution": "720", "num_conditional_frames": 1, "num_video_frames_per_chunk": 93}
    s.update(extra)
    return s


@unittest.skipUnless(have_pydantic(), "pydantic is not installed (pip install pydantic; CI sets COSMOS_REQUIRE_PYDANTIC=1)")
class Transfer25(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.calls = Calls()

    def start(self, *extra, torchrun=0):
        w = Proc("--backend", "transfer2_5", "--output-root", os.path.join(self.tmp, "setup"), *extra, fakes=True,
                 torchrun=torchrun, env=self.calls.env())
        self.assertEqual(w.read()["event"], "hello")
        return w

    def run_spec(self, w, run_id, s, expect="done"):
        w.send({"op": "run", "run_id": run_id, "attempt": 1, "spec": s, "output_dir": os.path.join(self.tmp, run_id)})
        return w.until(expect)

    def test_multicontrol_is_one_model_for_every_control_and_weights_go_by_position(self):
        w = self.start()
        # One control: that control's model.
        done = self.run_spec(w, "rs_e", t25_spec(self.tmp, edge={"control_weight": 0.7, "preset_edge_threshold": "high"}))
        self.assertTrue(done["outputs"]["video"].endswith("rs_e/output.mp4"))
        self.assertIn("edge", done["outputs"]["controls"])
        # Two different multi-control sets: one model, all four controls, built once.
        self.run_spec(w, "rs_m1", t25_spec(self.tmp, vis={"control_weight": 0.3}, depth={"control_weight": 0.6}))
        self.run_spec(w, "rs_m2", t25_spec(self.tmp, seg={"control_weight": 0.2}, edge={"control_weight": 0.9}))
        w.close()
        inits = self.calls.all("Control2WorldInference.__init__")
        self.assertEqual([(i["model"], i["batch_hint_keys"]) for i in inits],
                         [("edge", ["edge"]), ("edge", ["edge", "vis", "depth", "seg"])])
        self.assertTrue(all(i["guardrails"] for i in inits), "guardrails on by default, as NVIDIA's")
        gens = self.calls.all("generate")
        self.assertEqual(gens[0]["preset_edge_threshold"], "high")
        self.assertEqual(gens[1]["control_weight"], "0.0,0.3,0.6,0.0", "edge, vis, depth, seg by position")
        self.assertEqual(gens[1]["hint_key"], ["vis", "depth"])
        self.assertEqual(gens[2]["control_weight"], "0.9,0.0,0.0,0.2")
        # As NVIDIA's entry points run: gradients off, tokenizers not parallel.
        self.assertEqual({(g["grad_enabled"], g["tokenizers_parallelism"]) for g in gens}, {(False, "false")})

    def test_nvidias_models_refuse_what_they_refuse_and_the_run_says_why(self):
        w = self.start()
        bad = self.run_spec(w, "rs_g", t25_spec(self.tmp, guidance=5.5, edge={"control_weight": 0.5}), expect="failed")
        self.assertEqual((bad["kind"], bad["retryable"]), ("input", False))
        self.assertIn("guidance", bad["message"])
        # A float sigma_max (what Transfer1 takes) is turned into the string Transfer2.5 takes.
        done = self.run_spec(w, "rs_s", t25_spec(self.tmp, sigma_max=80.0, edge={"control_weight": 0.5}))
        self.assertEqual(done["outputs"]["settings"]["sigma_max"], "80.0")
        w.close()
        self.assertEqual(self.calls.all("generate")[0]["sigma_max"], 80.0)
        with fakes_on_path():
            from cosmos_transfer2.config import InferenceArguments, SetupArguments

            with self.assertRaises(Exception) as e:
                SetupArguments(output_dir="/tmp/x")
            self.assertIn("model is required", str(e.exception))
            with self.assertRaises(Exception):
                InferenceArguments(**t25_spec(self.tmp, sigma_max=70.0, edge={"control_weight": 0.5}))

    def test_guardrails_follow_the_configuration_and_a_block_is_reported_as_one(self):
        w = self.start()
        blocked = self.run_spec(w, "rs_b", t25_spec(self.tmp, prompt="GUARDRAIL_BLOCK me", edge={"control_weight": 0.5}), expect="failed")
        self.assertEqual(blocked["kind"], "blocked")
        w.close()
        for mode, off, offload in (("off", False, False), ("offload", True, True)):
            self.calls = Calls()
            w = self.start("--guardrails", mode)
            self.run_spec(w, "rs_" + mode, t25_spec(self.tmp, edge={"control_weight": 0.5}))
            w.close()
            init = self.calls.all("Control2WorldInference.__init__")[0]
            self.assertEqual((init["guardrails"], init["offload_guardrail_models"]), (off, offload), mode)

    def test_memory_saving_reaches_setup_arguments_and_the_run_the_chunk_length(self):
        w = self.start()
        self.run_spec(w, "rs_a", t25_spec(self.tmp, edge={"control_weight": 0.5}))
        w.send({"op": "load", "controls": ["edge"], "options": {"offload_guardrail_models": True}})
        self.assertEqual(w.until("loaded")["options"], {"offload_guardrail_models": True})
        done = self.run_spec(w, "rs_b", t25_spec(self.tmp, edge={"control_weight": 0.5}, num_video_frames_per_chunk=61))
        self.assertEqual(done["outputs"]["settings"]["num_video_frames_per_chunk"], 61)
        self.assertEqual(done["outputs"]["settings"]["load_options"], {"offload_guardrail_models": True})
        w.send({"op": "load", "controls": ["edge"], "options": {"offload_text_encoder_model": True}})
        self.assertIn("offload_text_encoder_model", w.until("load_failed")["message"], "SetupArguments has no such option")
        w.close()
        inits = self.calls.all("Control2WorldInference.__init__")
        self.assertEqual([(i["guardrails"], i["offload_guardrail_models"]) for i in inits], [(True, False), (True, True)],
                         "another load, guardrails still on")
        self.assertEqual([g["num_video_frames_per_chunk"] for g in self.calls.all("generate")], [93, 61])
        with fakes_on_path():
            from cosmos_transfer2.config import InferenceArguments

            with self.assertRaises(Exception):  # pydantic: a chunk length must be positive
                InferenceArguments(**t25_spec(self.tmp, edge={"control_weight": 0.5}, num_video_frames_per_chunk=0))

    def test_under_torchrun_every_rank_runs_context_parallel(self):
        w = self.start(torchrun=2)
        done = self.run_spec(w, "rs_t", t25_spec(self.tmp, edge={"control_weight": 0.5}, depth={"control_weight": 0.5}))
        self.assertTrue(os.path.isfile(done["outputs"]["video"]))
        w.close()
        self.assertEqual(w.p.returncode, 0)
        inits = self.calls.all("Control2WorldInference.__init__")
        self.assertEqual(sorted(i["rank"] for i in inits), [0, 1])
        self.assertEqual({i["context_parallel_size"] for i in inits}, {2})
        self.assertEqual(sorted(g["rank"] for g in self.calls.all("generate")), [0, 1])


if __name__ == "__main__":
    unittest.main()
