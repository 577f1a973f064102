"""The sim backend: no model. Simulates load and run time, writes a real output video (a copy
of the input, or an ffmpeg transform where ffmpeg exists) and the control videos, and injects
the faults a per-run `sim` key asks for: error, crash, hang, oom; `attempts` fails only the
first N attempts; `seconds` overrides this run's duration.

Its `oom` behaves as a real model's: with `cured_by` it goes away once enough memory is
saved, and only then. The sim takes the memory-saving options both NVIDIA backends have, in
the scopes they have them: constructor options at load (Transfer1's
DiffusionControl2WorldGenerationPipeline offload_network / offload_tokenizer /
offload_text_encoder_model, Transfer2.5's SetupArguments offload_guardrail_models; other
options are refused, as a constructor refuses an unknown keyword), and the run's own
`num_video_frames_per_chunk` (Transfer2.5's InferenceArguments, default 93)."""

import os
import shutil
import subprocess
import time

from cosmos_worker import ranks
from cosmos_worker.backends import Backend, RunCancelled, RunFailure

GENERATED = ("vis", "edge", "depth", "seg", "keypoint")
SETTINGS = ("negative_prompt", "seed", "num_steps", "guidance", "sigma_max", "fps", "blur_strength", "canny_threshold",
            "num_video_frames_per_chunk")
LOAD_OPTIONS = ("offload_guardrail_models", "offload_text_encoder_model", "offload_tokenizer", "offload_network")
DEFAULT_FRAMES_PER_CHUNK = 93


class SimBackend(Backend):
    def __init__(self, load_seconds=0.0, job_seconds=0.0):
        self.load_seconds = load_seconds
        self.job_seconds = job_seconds
        self.loaded = None
        self.options = {}
        self.ffmpeg = shutil.which("ffmpeg")
        # Under torchrun, as with NVIDIA's models, only rank 0 writes the outputs.
        self.leader = ranks.rank() == 0

    def load(self, controls, options):
        unknown = sorted(set(options or {}) - set(LOAD_OPTIONS))
        if unknown:
            raise TypeError("sim: unexpected load option(s) %s; it takes %s" % (", ".join(unknown), ", ".join(LOAD_OPTIONS)))
        time.sleep(self.load_seconds)
        self.loaded = sorted(controls)
        self.options = {k: bool(v) for k, v in (options or {}).items()}

    def _cured(self, spec, cured_by):
        """Whether every memory saving the fault needs is in effect for this run."""
        for need in cured_by:
            if need.startswith("gpus:"):
                if ranks.world_size() < int(need[5:]):
                    return False
            elif need == "num_video_frames_per_chunk":
                if int(spec.get(need) or DEFAULT_FRAMES_PER_CHUNK) >= DEFAULT_FRAMES_PER_CHUNK:
                    return False
            elif not self.options.get(need):
                return False
        return True

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        sim = spec.get("sim") or {}
        seconds = float(sim.get("seconds", self.job_seconds))
        fail = sim.get("fail")
        limit = sim.get("attempts")
        failing = fail is not None and (limit is None or attempt <= int(limit))
        cured_by = sim.get("cured_by")
        if failing and fail == "oom" and cured_by is not None and self._cured(spec, cured_by):
            failing = False
        if failing and fail == "crash":
            os._exit(3)
        if failing and fail == "hang":
            channel.silenced = True
            while True:
                time.sleep(3600)
        steps = int(spec.get("num_steps") or 35)
        reports = min(steps, 10)
        start = time.monotonic()
        for i in range(1, reports + 1):
            # Deadlines from the start: the run takes `seconds`, however long reports take.
            deadline = start + seconds * i / reports
            while time.monotonic() < deadline:
                if cancelled():
                    raise RunCancelled()
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            progress(i * steps // reports, steps)
        if failing and fail == "oom":
            raise RunFailure("oom", "CUDA out of memory (simulated)", retryable=True)
        if failing and fail == "error":
            raise RunFailure("internal", "simulated error", retryable=False)
        source = spec.get("input_video_path")
        if not source or not os.path.isfile(source):
            raise RunFailure("input", "input video not found: %s" % source)
        if not self.leader:
            return {}
        video = os.path.join(output_dir, "output.mp4")
        self._make_video(source, video)
        controls = {}
        for hint, block in spec.items():
            if not isinstance(block, dict) or "control_weight" not in block:
                continue
            path = os.path.join(output_dir, "%s_input_control.mp4" % hint)
            shutil.copyfile(block.get("input_control") or source, path)
            controls[hint] = path
        with open(os.path.join(output_dir, "output.txt"), "w", encoding="utf-8") as f:
            f.write(spec.get("prompt", ""))
        settings = {k: spec[k] for k in SETTINGS if k in spec}
        settings["world_size"] = ranks.world_size()
        settings["load_options"] = dict(self.options)
        return {"video": video, "controls": controls, "settings": settings}

    def _make_video(self, source, target):
        if self.ffmpeg:
            done = subprocess.run(
                [self.ffmpeg, "-y", "-loglevel", "error", "-i", source, "-vf", "hflip", target],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if done.returncode == 0 and os.path.getsize(target) > 0:
                return
        shutil.copyfile(source, target)
