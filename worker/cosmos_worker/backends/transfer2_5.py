"""NVIDIA Cosmos Transfer2.5: `Control2WorldInference` (cosmos_transfer2/inference.py), set
up the way NVIDIA's own worker does it (cosmos_transfer2/gradio/control2world_worker.py):

- one control: `Control2WorldInference(SetupArguments(model=<that control>, ...),
  batch_hint_keys=[<that control>])`, its single-control checkpoint;
- several controls: ONE inference object with `batch_hint_keys = ["edge", "vis", "depth",
  "seg"]` (config.py `CONTROL_KEYS`, in that order), which loads every control's
  checkpoint. The weights reach the model as a string in `batch_hint_keys` order, read by
  position; a control a run does not use gets "0.0" there (inference.py
  `sample.control_weight_dict.get(key, "0.0")`). So every multi-control set shares the one
  model: switching between them loads nothing.
- `SetupArguments` refuses a missing `model` ("model is required"); `disable_guardrails`
  (default False: guardrails on) and `offload_guardrail_models` follow
  `runtime.guardrails`; `keep_going=True`, so a blocked sample is left out of the result.
- The daemon sends each run as an `InferenceArguments` object (pydantic, `extra="forbid"`:
  `sigma_max` a string, `guidance` an int in 0..7, presets per control); NVIDIA's own model
  validates it here, and a refusal is the run's input error, not a crash.
- `generate(samples, output_dir) -> list[str]` writes `{name}.mp4`, `{name}_control_{key}.mp4`
  on rank 0. The sample is named `output`.
- Memory-saving options (after an OOM): the load option `offload_guardrail_models`
  (SetupArguments; inference.py hands it to the guardrail runners as
  `offload_model_to_cpu`), a constructor option: other options are another load. The
  per-run one, `num_video_frames_per_chunk`, is an `InferenceArguments` field the daemon
  writes into the run's spec.
- Multi-GPU: `context_parallel_size` = WORLD_SIZE; NVIDIA's `init_environment()`
  (cosmos_oss/init.py) joins the process group when RANK is set, and sets
  TOKENIZERS_PARALLELISM=false.
"""

import gc
import os
import tempfile
from pathlib import Path

from cosmos_worker import ranks
from cosmos_worker.backends import Backend, RunFailure

CONTROL_KEYS = ["edge", "vis", "depth", "seg"]
LOAD_OPTIONS = ("offload_guardrail_models",)
# The daemon's keys that are not InferenceArguments fields.
PRIVATE_KEYS = ("sim",)


class Transfer25Backend(Backend):
    def __init__(self, guardrails="on", output_root=None):
        self.guardrails = guardrails
        self.output_root = output_root or os.path.join(tempfile.gettempdir(), "cosmos-transfer2-setup")
        self.inference = None
        self.model_key = None  # "edge" ... or "multicontrol"
        self.options = {}  # the load options it was set up with

    def init_distributed(self):
        from cosmos_oss.init import init_environment

        init_environment()

    @staticmethod
    def key_of(controls):
        hints = [k for k in CONTROL_KEYS if k in controls]
        return hints[0] if len(hints) == 1 else "multicontrol"

    def load(self, controls, options):
        refused = [c for c in controls if c not in CONTROL_KEYS]
        if refused or not controls:
            raise RuntimeError("Transfer2.5 serves %s; asked for %s" % (", ".join(CONTROL_KEYS), ", ".join(controls) or "nothing"))
        options = {k: bool(v) for k, v in (options or {}).items()}
        unknown = sorted(set(options) - set(LOAD_OPTIONS))
        if unknown:
            raise TypeError("transfer2_5: %s not a memory-saving option of SetupArguments here; it has %s"
                            % (", ".join(unknown), ", ".join(LOAD_OPTIONS)))
        key = self.key_of(controls)
        if self.inference is not None and key == self.model_key and options == self.options:
            return
        import torch
        from cosmos_transfer2.config import SetupArguments
        from cosmos_transfer2.inference import Control2WorldInference

        # Inference only: NVIDIA's constructor means to turn gradients off
        # (`torch.enable_grad(False)` in inference.py, which torch reads as a context manager
        # left unused); this does.
        torch.set_grad_enabled(False)

        setup = SetupArguments(
            output_dir=Path(self.output_root),
            # NVIDIA's worker: the control's own model, or the default ("edge") for multicontrol.
            model=key if key != "multicontrol" else "edge",
            context_parallel_size=ranks.world_size(),
            keep_going=True,
            disable_guardrails=self.guardrails == "off",
            offload_guardrail_models=self.guardrails == "offload" or options.get("offload_guardrail_models", False),
        )
        batch_hint_keys = list(CONTROL_KEYS) if key == "multicontrol" else [key]
        # Let go of the old model first: two need not fit at once.
        self.inference = None
        self.model_key = None
        gc.collect()
        self.inference = Control2WorldInference(setup, batch_hint_keys=batch_hint_keys)
        self.model_key = key
        self.options = options

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        sample = {k: v for k, v in spec.items() if k not in PRIVATE_KEYS}
        sample["name"] = "output"
        if isinstance(sample.get("sigma_max"), (int, float)):
            sample["sigma_max"] = str(sample["sigma_max"])  # `str | None` in InferenceArguments
        hints = [k for k in CONTROL_KEYS if isinstance(sample.get(k), dict)]
        others = sorted(k for k, v in sample.items() if isinstance(v, dict) and k not in CONTROL_KEYS)
        if others:
            raise RunFailure("input", "Transfer2.5 serves %s; this run asks for %s" % (", ".join(CONTROL_KEYS), ", ".join(others)))
        if not hints:
            raise RunFailure("input", "no control (edge, vis, depth, seg) in the run")
        video = sample.get("video_path")
        if not video or not os.path.isfile(video):
            raise RunFailure("input", "input video not found: %s" % video)
        from cosmos_transfer2.config import InferenceArguments

        try:
            args = InferenceArguments(**sample)
        except Exception as e:  # pydantic's ValidationError: NVIDIA's model refused the run
            raise RunFailure("input", "NVIDIA's InferenceArguments refused the run: %s" % " ".join(str(e).split()))
        self.load(hints, self.options)
        paths = self.inference.generate([args], Path(output_dir))
        if ranks.rank() != 0:
            return {}
        if not paths:
            raise RunFailure("blocked", "Guardrail blocked generation (NVIDIA's Transfer2.5 guardrails; runtime.guardrails)")
        produced = str(paths[0])
        if not produced.endswith(".mp4"):
            raise RunFailure("input", "the model made a single image (%s), not a video: give max_frames > 1" % os.path.basename(produced))
        if not os.path.isfile(produced) or os.path.getsize(produced) == 0:
            raise RunFailure("internal", "Control2WorldInference reported %s but wrote no video there" % produced)
        controls = {}
        for hint in hints:
            path = os.path.join(output_dir, "output_control_%s.mp4" % hint)
            if os.path.isfile(path):
                controls[hint] = path
        settings = args.model_dump(mode="json") if hasattr(args, "model_dump") else dict(sample)
        settings["model"] = self.model_key
        settings["num_gpus"] = ranks.world_size()
        settings["guardrails"] = self.guardrails
        settings["load_options"] = dict(self.options)
        return {"video": produced, "controls": controls, "settings": settings}
