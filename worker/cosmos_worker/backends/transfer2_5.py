"""NVIDIA Cosmos Transfer2.5: one Control2WorldInference per control set, kept while runs of
that set come; `generate([InferenceArguments(...)], output_dir)` per run. An empty result is
a guardrail block (`keep_going` only covers those)."""

import os

from cosmos_worker.backends import Backend, RunFailure

HINTS = ("edge", "vis", "depth", "seg")


class Transfer25Backend(Backend):
    def __init__(self, checkpoint_dir, num_gpus=1, output_root=None):
        self.checkpoint_dir = checkpoint_dir
        self.num_gpus = num_gpus
        self.output_root = output_root or os.getcwd()
        self.inference = None
        self.controls = None

    def load(self, controls, options):
        controls = sorted(c for c in controls if c in HINTS)
        if self.inference is not None and controls == self.controls:
            return
        from pathlib import Path

        from cosmos_transfer2.config import SetupArguments
        from cosmos_transfer2.inference import Control2WorldInference

        setup = dict(context_parallel_size=self.num_gpus, output_dir=Path(self.output_root), keep_going=True)
        if len(controls) == 1:
            setup["model"] = controls[0]
        # Drop the old model first: two 2B models need not fit at once.
        self.inference = None
        self.inference = Control2WorldInference(SetupArguments(**setup), batch_hint_keys=controls)
        self.controls = controls

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        from pathlib import Path

        from cosmos_transfer2.config import InferenceArguments

        hints = sorted(k for k in HINTS if isinstance(spec.get(k), dict))
        if self.inference is None or hints != self.controls:
            self.load(hints, {})
        sample = {"name": "output", "prompt": spec.get("prompt", ""), "video_path": spec.get("input_video_path")}
        for key in ("negative_prompt", "seed", "num_steps", "sigma_max", "resolution", "max_frames",
                    "num_conditional_frames", "num_video_frames_per_chunk"):
            if key in spec:
                sample[key] = spec[key]
        if "guidance" in spec:
            sample["guidance"] = int(round(spec["guidance"]))
        for hint in hints:
            block = spec[hint]
            out = {"control_weight": block.get("control_weight", 1.0)}
            if block.get("input_control"):
                out["control_path"] = block["input_control"]
            for key in ("mask_path", "mask_prompt"):
                if block.get(key):
                    out[key] = block[key]
            if hint == "seg" and block.get("input_control_prompt"):
                out["control_prompt"] = block["input_control_prompt"]
            sample[hint] = out
        if not sample["video_path"] or not os.path.isfile(sample["video_path"]):
            raise RunFailure("input", "input video not found: %s" % sample["video_path"])
        paths = self.inference.generate([InferenceArguments(**sample)], Path(output_dir))
        if not paths:
            raise RunFailure("blocked", "Guardrail blocked generation")
        produced = str(paths[0])
        video = os.path.join(output_dir, "output.mp4")
        if os.path.abspath(produced) != os.path.abspath(video):
            os.replace(produced, video)
        controls = {}
        for hint in hints:
            path = os.path.join(output_dir, "output_control_%s.mp4" % hint)
            if os.path.isfile(path):
                controls[hint] = path
        return {"video": video, "controls": controls}
