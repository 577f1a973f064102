"""NVIDIA Cosmos Transfer1 through its own serving wrapper, `TransferPipeline`
(cosmos_transfer1/diffusion/inference/transfer_pipeline.py), built once and kept warm.

What NVIDIA's code does, and so what this backend does:
- `TransferPipeline(num_gpus, checkpoint_dir, checkpoint_name, hint_keys)`: `hint_keys` is the
  set of hints the pipeline ALLOWS (the module's `hint_keys` = vis, seg, edge, depth, upscale;
  `hint_keys_av` = hdmap, lidar with the Sample-AV base). It is built with every hint this
  backend serves; the constructor loads one control, `next(iter(hint_keys))`, at weight 0.5.
  We pass the hints as a list whose first entry is the first control set's first hint: the
  same first control on every rank (a set's order differs between processes), and no
  reload when the first run uses just that control.
- A changed control set: `update_controlnet_spec` keeps the hints a spec names, removes the
  others, and reports a change; NVIDIA's `generate` then calls
  `self.pipeline.reload_model(self.control_inputs)`. The daemon's `load` op does exactly that
  ahead of the runs, so a load is timed as a load and a run as a run.
- "Controlnets are active even if the weights are set to 0": weight-0 hints are left out.
- `generate(...)` has no return statement: it always returns None. On rank 0 it writes
  `output_dir/output.mp4` and `output.txt` itself. Success is a non-empty `output.mp4`.
  Generated controls are `{hint}_input_control_{LOCAL_RANK}.mp4` (preprocessors.py).
- It builds its pipeline with `disable_guardrail=True`: no guardrails, whatever
  `runtime.guardrails` says (said once in the log).
- The model config is found by the relative path
  `cosmos_transfer1/diffusion/config/transfer/config.py` (world_generation_pipeline.py): the
  working directory must be NVIDIA's checkout (`runtime.model_code`).
- transfer.py sets `TOKENIZERS_PARALLELISM=false` (done at worker start) and turns gradients
  off (NVIDIA writes `torch.enable_grad(False)`; `torch.set_grad_enabled(False)` does it, before the
  pipeline is built).
- Multi-GPU: every rank builds the pipeline and calls `generate`; NVIDIA's
  `distributed.init()` (cosmos_transfer1/utils/distributed.py) joins the NCCL group.
- Memory-saving options (the daemon's `load` options after an OOM): `TransferPipeline`'s
  constructor takes none; it builds `DiffusionControl2WorldGenerationPipeline`
  (world_generation_pipeline.py), whose constructor has `offload_network`,
  `offload_tokenizer`, `offload_text_encoder_model` (and `offload_guardrail_models`,
  `offload_prompt_upsampler`, which save nothing here: TransferPipeline passes
  `disable_guardrail=True` and `upsample_prompt=False`), and passes them all False. With
  options the pipeline is built with them: TransferPipeline's own constructor runs, and
  the class it looks up in its module for the inner pipeline is, for that call, one that
  adds the options to NVIDIA's keywords. Other options are another load (the pipeline is
  let go and built again).
"""

import contextlib
import gc
import glob
import os
import sys

from cosmos_worker import ranks
from cosmos_worker.backends import Backend, RunFailure

CONFIG = "cosmos_transfer1/diffusion/config/transfer/config.py"
# transfer.py's --negative_prompt default (= transfer_pipeline.py default_negative_prompt).
# TransferPipeline.generate's own default is "", which would turn negative conditioning off.
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a game playing, with bad crappy graphics and cartoonish frames. It represents a recording of "
    "old outdated games. The lighting looks very fake. The textures are very raw and basic. The geometries are very "
    "primitive. The images are very pixelated and of poor CG quality. There are many subtitles in the footage. "
    "Overall, the video is unrealistic at all."
)
# TransferPipeline.generate's keywords besides controlnet_specs / input_video / prompt /
# output_dir, with transfer.py's defaults.
SETTINGS = {
    "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
    "guidance": 5,
    "num_steps": 35,
    "seed": 1,
    "sigma_max": 70.0,
    "blur_strength": "medium",
    "canny_threshold": "medium",
}
HINT_NAMES = ("vis", "edge", "depth", "seg", "keypoint", "hdmap", "lidar", "upscale")
# DiffusionControl2WorldGenerationPipeline keywords that save memory here.
LOAD_OPTIONS = ("offload_network", "offload_tokenizer", "offload_text_encoder_model")


@contextlib.contextmanager
def inner_pipeline_options(module, options):
    """While TransferPipeline is constructed, its inner pipeline gets `options` on top of
    the keywords TransferPipeline passes (which sets them all False)."""
    if not options:
        yield
        return
    original = module.DiffusionControl2WorldGenerationPipeline

    class WithOptions(original):
        def __init__(self, *args, **kwargs):
            kwargs.update(options)
            super().__init__(*args, **kwargs)

    module.DiffusionControl2WorldGenerationPipeline = WithOptions
    try:
        yield
    finally:
        module.DiffusionControl2WorldGenerationPipeline = original


class Transfer1Backend(Backend):
    def __init__(self, checkpoint_dir, av_sample=False, guardrails="on"):
        self.checkpoint_dir = checkpoint_dir
        self.av_sample = av_sample
        self.guardrails = guardrails
        self.pipeline = None
        self.loaded = None  # the hints the pipeline holds, as a set
        self.options = {}  # the constructor options it was built with

    def init_distributed(self):
        self._check_code()
        from cosmos_transfer1.utils import distributed

        distributed.init()

    def _check_code(self):
        if not os.path.isfile(CONFIG):
            raise RuntimeError(
                "NVIDIA's Transfer1 model config %s is not under the working directory %s: set runtime.model_code to "
                "the cosmos-transfer1 checkout (the worker runs there)" % (CONFIG, os.getcwd())
            )

    def _allowed(self):
        from cosmos_transfer1.diffusion.inference import transfer_pipeline

        return transfer_pipeline.hint_keys_av if self.av_sample else transfer_pipeline.hint_keys

    def load(self, controls, options):
        self._check_code()
        options = {k: bool(v) for k, v in (options or {}).items()}
        unknown = sorted(set(options) - set(LOAD_OPTIONS))
        if unknown:
            raise TypeError("transfer1: %s not a memory-saving option of DiffusionControl2WorldGenerationPipeline here; it has %s"
                            % (", ".join(unknown), ", ".join(LOAD_OPTIONS)))
        allowed = self._allowed()
        wanted = [c for c in controls if c in HINT_NAMES]
        refused = [c for c in wanted if c not in allowed]
        if refused or not wanted:
            raise RuntimeError(
                "TransferPipeline%s serves %s; asked for %s"
                % (" (Sample-AV)" if self.av_sample else "", ", ".join(sorted(allowed)), ", ".join(controls) or "nothing")
            )
        if self.pipeline is not None and options != self.options:
            # Constructor options: another load. The old pipeline goes first (two need not fit).
            self.pipeline = None
            self.loaded = None
            gc.collect()
            import torch

            if hasattr(torch, "cuda") and hasattr(torch.cuda, "empty_cache"):
                torch.cuda.empty_cache()
        if self.pipeline is None:
            import torch

            torch.set_grad_enabled(False)
            from cosmos_transfer1 import checkpoints
            from cosmos_transfer1.diffusion.inference import transfer_pipeline
            from cosmos_transfer1.diffusion.inference.transfer_pipeline import TransferPipeline

            if self.guardrails != "off":
                sys.stderr.write(
                    "cosmos_worker: transfer1: NVIDIA's TransferPipeline runs without guardrails "
                    "(disable_guardrail=True in transfer_pipeline.py); runtime.guardrails = %r has no effect\n" % self.guardrails
                )
            order = wanted + sorted(set(allowed) - set(wanted))
            with inner_pipeline_options(transfer_pipeline, options):
                self.pipeline = TransferPipeline(
                    num_gpus=ranks.world_size(),
                    checkpoint_dir=self.checkpoint_dir,
                    checkpoint_name=checkpoints.BASE_7B_CHECKPOINT_AV_SAMPLE_PATH if self.av_sample else checkpoints.BASE_7B_CHECKPOINT_PATH,
                    hint_keys=order,
                )
            self.options = options
        # What generate() does when the set changes, done now (transfer_pipeline.py generate).
        specs = {c: {"control_weight": 0.5} for c in wanted}
        if self.pipeline.update_controlnet_spec(checkpoint_dir=self.pipeline.checkpoint_dir, controlnet_specs=specs):
            self.pipeline.pipeline.reload_model(self.pipeline.control_inputs)
        self.loaded = set(wanted)

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        controlnet_specs = {}
        for hint in HINT_NAMES:
            block = spec.get(hint)
            if not isinstance(block, dict):
                continue
            weight = float(block.get("control_weight", 0.5))
            if weight <= 0:
                continue  # active even at weight 0 in NVIDIA's pipeline: leave it out
            entry = {"control_weight": weight}
            if block.get("input_control"):
                entry["input_control"] = block["input_control"]
            if block.get("input_control_prompt"):
                entry["input_control_prompt"] = block["input_control_prompt"]
            controlnet_specs[hint] = entry
        if not controlnet_specs:
            raise RunFailure("input", "no control with control_weight > 0")
        refused = sorted(set(controlnet_specs) - set(self._allowed()))
        if refused:
            # NVIDIA's update_controlnet_spec would drop them silently.
            raise RunFailure("input", "TransferPipeline does not serve %s" % ", ".join(refused))
        input_video = spec.get("input_video_path")
        if not input_video or not os.path.isfile(input_video):
            raise RunFailure("input", "input video not found: %s" % input_video)
        if self.pipeline is None or set(controlnet_specs) != self.loaded:
            self.load(list(controlnet_specs), self.options)
        kwargs = {key: spec.get(key, default) for key, default in SETTINGS.items()}
        result = self.pipeline.generate(
            controlnet_specs=controlnet_specs,
            input_video=input_video,
            prompt=spec.get("prompt", ""),
            output_dir=output_dir,
            **kwargs
        )
        if result is not None:
            sys.stderr.write("cosmos_worker: transfer1: generate returned %r (NVIDIA's returns nothing)\n" % (result,))
        if not ranks.rank() == 0:
            return {}
        video = os.path.join(output_dir, "output.mp4")
        if not os.path.isfile(video) or os.path.getsize(video) == 0:
            raise RunFailure(
                "internal",
                "TransferPipeline.generate wrote no output.mp4 in %s (it returns nothing; its log above says why)" % output_dir,
            )
        controls = {}
        for hint, entry in controlnet_specs.items():
            if entry.get("input_control"):
                controls[hint] = entry["input_control"]
                continue
            made = sorted(glob.glob(os.path.join(output_dir, "%s_input_control_%d.mp4" % (hint, ranks.local_rank()))))
            if made:
                controls[hint] = made[0]
        settings = dict(kwargs, controlnet_specs=controlnet_specs, fps=24, num_gpus=ranks.world_size(),
                        checkpoint="Sample-AV" if self.av_sample else "7B", load_options=dict(self.options))
        return {"video": video, "controls": controls, "settings": settings}
