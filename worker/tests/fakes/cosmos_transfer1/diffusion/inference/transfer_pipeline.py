"""A fake of cosmos-transfer1 diffusion/inference/transfer_pipeline.py: `TransferPipeline`
with NVIDIA's names, signatures and behaviour at its interface, and no model.

What it keeps of the real one (each from transfer_pipeline.py unless named):
- module-level `hint_keys` (vis, seg, edge, depth, upscale; keypoint left out) and
  `hint_keys_av` (hdmap, lidar);
- the constructor loads the model config by a path relative to the working directory and
  fails with NVIDIA's assertion when it is not there (world_generation_pipeline.py
  `_load_model` -> utils/config_helper.py `get_config_module`);
- `num_gpus > 1`: `distributed.init()` and the rank from the process group;
- `hint_keys` is what the pipeline ALLOWS: the constructor loads only
  `next(iter(hint_keys))` at weight 0.5;
- `update_controlnet_spec`: allowed hints named in the spec are kept (ckpt_path always set from
  checkpoint_dir + default_model_names), allowed hints not named are removed, hints not
  allowed are ignored; returns whether the set changed;
- `generate(...)` reloads the model when the set changed, runs the preprocessors (which write
  `{hint}_input_control_{LOCAL_RANK}.mp4` for hints without an input_control,
  preprocessors.py), and on rank 0 writes `output.mp4` and `output.txt`. It has NO return
  statement: it always returns None. Its `negative_prompt` default is "".
- The constructor takes none of the memory-saving options: it builds
  `DiffusionControl2WorldGenerationPipeline` (looked up in this module's globals, imported
  from world_generation_pipeline.py as NVIDIA's does) with `offload_network`,
  `offload_text_encoder_model`, `offload_guardrail_models`, `offload_prompt_upsampler` False,
  `upsample_prompt=False`, `fps=24`, `num_input_frames=1`, `disable_guardrail=True`: nothing
  is ever blocked.
It prints to stdout, as model code does; the worker must keep that out of its event stream.
"""

import copy
import os
import shutil

import torch
from calls import record
from cosmos_transfer1 import checkpoints
from cosmos_transfer1.diffusion.inference.world_generation_pipeline import DiffusionControl2WorldGenerationPipeline
from cosmos_transfer1.utils import distributed

hint_keys = {"vis", "seg", "edge", "depth", "upscale"}
hint_keys_av = {"hdmap", "lidar"}

# inference_utils.py default_model_names
default_model_names = {
    "vis": checkpoints.VIS2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "seg": checkpoints.SEG2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "edge": checkpoints.EDGE2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "depth": checkpoints.DEPTH2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "keypoint": checkpoints.KEYPOINT2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "upscale": checkpoints.UPSCALER_CONTROLNET_7B_CHECKPOINT_PATH,
    "hdmap": checkpoints.HDMAP2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
    "lidar": checkpoints.LIDAR2WORLD_CONTROLNET_7B_CHECKPOINT_PATH,
}

# preprocessors.py: the hints it can make from the input video.
GENERATED = ("depth", "seg", "keypoint", "vis", "edge")


class TransferPipeline:
    def __init__(self, num_gpus=1, checkpoint_dir="/mnt/pvc/cosmos-transfer1", checkpoint_name=checkpoints.BASE_7B_CHECKPOINT_PATH,
                 hint_keys=hint_keys):
        print("TransferPipeline: loading the 7B model (fake)")
        self.device_rank = 0
        if num_gpus > 1:
            import torch.distributed as dist

            distributed.init()
            self.device_rank = dist.get_rank()
        self.valid_hint_keys = hint_keys
        first_key = next(iter(self.valid_hint_keys))
        self.control_inputs = {
            first_key: {"ckpt_path": os.path.join(checkpoint_dir, default_model_names[first_key]), "control_weight": 0.5},
        }
        self.checkpoint_dir = checkpoint_dir
        self.video_save_name = "output"
        record("TransferPipeline.__init__", num_gpus=num_gpus, checkpoint_dir=checkpoint_dir, checkpoint_name=checkpoint_name,
               hint_keys=list(hint_keys), first_key=first_key, cwd=os.getcwd())
        self.pipeline = DiffusionControl2WorldGenerationPipeline(
            checkpoint_dir=checkpoint_dir,
            checkpoint_name=checkpoint_name,
            control_inputs=self.control_inputs,
            process_group=None,
            offload_network=False,
            offload_text_encoder_model=False,
            offload_guardrail_models=False,
            offload_prompt_upsampler=False,
            upsample_prompt=False,
            fps=24,
            num_input_frames=1,
            disable_guardrail=True,
        )

    def update_controlnet_spec(self, checkpoint_dir, controlnet_specs):
        config_changed = False
        for hint_key in self.valid_hint_keys:
            if hint_key in controlnet_specs:
                if hint_key not in self.control_inputs:
                    config_changed = True
                self.control_inputs[hint_key] = copy.deepcopy(controlnet_specs[hint_key])
                self.control_inputs[hint_key]["ckpt_path"] = os.path.join(checkpoint_dir, default_model_names[hint_key])
            elif hint_key in self.control_inputs:
                del self.control_inputs[hint_key]
                config_changed = True
        return config_changed

    def generate(self, controlnet_specs, input_video=None, prompt="", negative_prompt="", guidance=5, num_steps=35, seed=1,
                 sigma_max=70.0, blur_strength="medium", canny_threshold="medium", num_input_frames=1, output_dir="outputs/"):
        config_changed = self.update_controlnet_spec(checkpoint_dir=self.checkpoint_dir, controlnet_specs=controlnet_specs)
        if config_changed:
            self.pipeline.reload_model(self.control_inputs)
        current = copy.deepcopy(self.control_inputs)
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        os.makedirs(output_dir, exist_ok=True)
        for hint, spec in current.items():
            if hint in GENERATED and spec.get("input_control") is None:
                path = os.path.join(output_dir, f"{hint}_input_control_{local_rank}.mp4")
                shutil.copyfile(input_video, path)
                spec["input_control"] = path
        print("TransferPipeline: generating (fake)")
        record("generate", controls=sorted(current), weights={k: v.get("control_weight") for k, v in current.items()},
               input_video=input_video, prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, num_steps=num_steps,
               seed=seed, sigma_max=sigma_max, blur_strength=blur_strength, canny_threshold=canny_threshold,
               output_dir=output_dir, device_rank=self.device_rank,
               # What transfer.py sets before any model runs: gradients off, tokenizers serial.
               grad_enabled=torch.is_grad_enabled(), tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"))
        if "RAISE_OOM" in prompt:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        # An OOM that the T5 encoder's memory cures (it is freed after encoding with
        # offload_text_encoder_model, base_world_generation_pipeline.py).
        if "OOM_UNLESS_T5_OFFLOADED" in prompt and not self.pipeline.offload_text_encoder_model:
            raise RuntimeError("CUDA out of memory. Tried to allocate 11.00 GiB")
        batch_outputs = self.pipeline.generate(prompt=[prompt], video_path=[input_video], negative_prompt=negative_prompt,
                                               control_inputs=[current], save_folder=output_dir, batch_size=1)
        if batch_outputs is None:
            print("Guardrail blocked generation for entire batch.")
        elif self.device_rank == 0 and "WRITES_NOTHING" not in prompt:
            videos, final_prompts = batch_outputs
            for video, final_prompt in zip(videos, final_prompts):
                shutil.copyfile(video, os.path.join(output_dir, f"{self.video_save_name}.mp4"))
                with open(os.path.join(output_dir, f"{self.video_save_name}.txt"), "wb") as f:
                    f.write(final_prompt.encode("utf-8"))
        # No return statement, as in NVIDIA's generate().
