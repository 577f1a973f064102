"""NVIDIA Cosmos Transfer1: one TransferPipeline built once and kept warm.

`generate(...)` is called per run with the run's own controlnet spec; the pipeline reloads
its weights only when the set of hint keys changes (NVIDIA's `reload_model`), which the
daemon avoids by grouping runs by control set. A `None` result is a guardrail block.

Under torchrun (`--num-gpus N`, WORLD_SIZE > 1) every rank must make the same calls in the
same order: rank 0 speaks the protocol and broadcasts each op; the other ranks follow.
"""

import glob
import os

from cosmos_worker.backends import Backend, RunFailure

SETTINGS = ("negative_prompt", "guidance", "num_steps", "seed", "sigma_max", "blur_strength", "canny_threshold")


class Transfer1Backend(Backend):
    def __init__(self, checkpoint_dir, num_gpus=1):
        self.checkpoint_dir = checkpoint_dir
        self.num_gpus = num_gpus
        self.pipeline = None
        self.hint_keys = None
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))

    # -- torchrun ---------------------------------------------------------------------
    def is_leader(self):
        return self.rank == 0

    def _sync(self, op):
        """Rank 0 sends `op` to every rank; the others receive it."""
        if self.world_size <= 1:
            return op
        import torch.distributed as dist

        box = [op]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def follow(self):
        while True:
            op = self._sync(None)
            if op is None or op[0] == "stop":
                return 0
            try:
                if op[0] == "load":
                    self._load(op[1])
                elif op[0] == "run":
                    self._generate(op[1], op[2])
            except Exception as e:  # rank 0 reports; followers must keep following
                import sys

                sys.stderr.write("rank %d: %s\n" % (self.rank, e))

    # -- the model --------------------------------------------------------------------
    def load(self, controls, options):
        self._sync(("load", list(controls)))
        self._load(list(controls))

    def _load(self, controls):
        keys = set(controls) or {"vis", "edge", "depth", "seg"}
        if self.pipeline is None:
            from cosmos_transfer1.diffusion.inference.transfer_pipeline import TransferPipeline

            self.pipeline = TransferPipeline(num_gpus=self.num_gpus, checkpoint_dir=self.checkpoint_dir, hint_keys=keys)
        self.hint_keys = keys

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        if self.pipeline is None:
            self.load([k for k, v in spec.items() if isinstance(v, dict)], {})
        self._sync(("run", spec, output_dir))
        result = self._generate(spec, output_dir)
        if result is None:
            raise RunFailure("blocked", "Guardrail blocked generation")
        video = os.path.join(output_dir, "output.mp4")
        if not os.path.isfile(video) or os.path.getsize(video) == 0:
            raise RunFailure("internal", "the pipeline wrote no output video")
        controls = {}
        for path in sorted(glob.glob(os.path.join(output_dir, "*_input_control*.mp4"))):
            controls.setdefault(os.path.basename(path).split("_input_control")[0], path)
        return {"video": video, "controls": controls}

    def _generate(self, spec, output_dir):
        controlnet_specs = {k: dict(v) for k, v in spec.items() if isinstance(v, dict)}
        kwargs = {k: spec[k] for k in SETTINGS if k in spec}
        input_video = spec.get("input_video_path")
        if not input_video or not os.path.isfile(input_video):
            raise RunFailure("input", "input video not found: %s" % input_video)
        return self.pipeline.generate(
            controlnet_specs=controlnet_specs,
            input_video=input_video,
            prompt=spec.get("prompt", ""),
            output_dir=output_dir,
            **kwargs
        )

    def close(self):
        self._sync(("stop",))
