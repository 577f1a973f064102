"""A fake of cosmos-transfer2.5 cosmos_transfer2/inference.py `Control2WorldInference`, with
no model. Kept from the real one:
- one hint key: that control's checkpoint; several: EVERY control's checkpoint (the
  "multibranch" experiment), whatever weights the samples give;
- `context_parallel_size > 1`: joins the process group (`distributed.init()`);
- guardrails on (`not disable_guardrails`) and rank 0: the text guardrail may block a
  sample, which with `keep_going` is left out of the returned list (here: a prompt holding
  "GUARDRAIL_BLOCK");
- the weights reach the model as one string in `batch_hint_keys` order, "0.0" for a control
  the sample does not have (`sample.control_weight_dict.get(key, "0.0")`), with
  `hint_key=sample.hint_keys`;
- `generate(samples, output_dir) -> list[str]`: on rank 0 writes `{name}.json`,
  `{name}_control_{key}.mp4` for the sample's controls, `{name}.mp4` and `{name}.txt`;
  returns `f"{output_dir/name}.mp4"` per sample not blocked (every rank).
- `__init__` writes `torch.enable_grad(False)`, which in torch builds an unused context
  manager and leaves gradients on: the fake leaves them as they are, so only a worker that
  calls `torch.set_grad_enabled(False)` itself runs without them.
"""

import os
import shutil
from pathlib import Path

import torch
from calls import record
from cosmos_transfer2.config import CONTROL_KEYS, InferenceArguments, SetupArguments


class Control2WorldInference:
    def __init__(self, args: SetupArguments, batch_hint_keys: list[str]) -> None:
        self.setup_args = args
        self.batch_hint_keys = batch_hint_keys
        if len(batch_hint_keys) == 1:
            checkpoints = [batch_hint_keys[0]]
        else:
            checkpoints = list(CONTROL_KEYS)
        self.device_rank = 0
        if args.context_parallel_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl", init_method="env://")
            self.device_rank = dist.get_rank()
        self.guardrails = args.enable_guardrails and self.device_rank == 0
        record("Control2WorldInference.__init__", model=args.model, batch_hint_keys=list(batch_hint_keys),
               checkpoints=checkpoints, context_parallel_size=args.context_parallel_size,
               guardrails=args.enable_guardrails, offload_guardrail_models=args.offload_guardrail_models,
               keep_going=args.keep_going)
        if self.device_rank == 0:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            (args.output_dir / "config.yaml").write_text("fake: config\n")

    def generate(self, samples: list[InferenceArguments], output_dir: Path) -> list[str]:
        return [p for p in (self._generate_sample(s, output_dir) for s in samples) if p is not None]

    def _generate_sample(self, sample: InferenceArguments, output_dir: Path):
        output_path = output_dir / sample.name
        if self.device_rank == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            (Path(f"{output_path}.json")).write_text(sample.model_dump_json())
            if self.guardrails and "GUARDRAIL_BLOCK" in sample.prompt:
                if self.setup_args.keep_going:
                    return None
                raise Exception("Guardrail blocked generation. Prompt: %s" % sample.prompt)
        control_weight = ",".join(sample.control_weight_dict.get(key, "0.0") for key in self.batch_hint_keys)
        record("generate", name=sample.name, control_weight=control_weight, hint_key=sample.hint_keys,
               sigma_max=None if sample.sigma_max is None else float(sample.sigma_max), guidance=sample.guidance,
               seed=sample.seed, negative_prompt=sample.negative_prompt, num_steps=sample.num_steps,
               preset_blur_strength=sample.preset_blur_strength, preset_edge_threshold=sample.preset_edge_threshold,
               resolution=sample.resolution, num_video_frames_per_chunk=sample.num_video_frames_per_chunk,
               device_rank=self.device_rank,
               grad_enabled=torch.is_grad_enabled(), tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"))
        if self.device_rank == 0:
            for key in sample.hint_keys:
                shutil.copyfile(str(sample.video_path), f"{output_path}_control_{key}.mp4")
            shutil.copyfile(str(sample.video_path), f"{output_path}.mp4")
            with open(f"{output_path}.txt", "w") as f:
                f.write(sample.prompt)
        return f"{output_path}.mp4"
