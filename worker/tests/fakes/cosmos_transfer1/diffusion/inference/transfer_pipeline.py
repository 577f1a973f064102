"""A fake of NVIDIA's cosmos_transfer1 TransferPipeline: same names and call signatures,
no model. Records every construction and call in CALLS; prints to stdout as real model
code does (the worker must keep that out of its event stream)."""

import os

BASE_7B_CHECKPOINT_PATH = "nvidia/Cosmos-Transfer1-7B"
CALLS = []


class TransferPipeline:
    def __init__(self, num_gpus=1, checkpoint_dir=None, checkpoint_name=BASE_7B_CHECKPOINT_PATH, hint_keys=None):
        print("loading the 7B model (fake)")
        CALLS.append(("init", num_gpus, checkpoint_dir, sorted(hint_keys or [])))
        self.hint_keys = set(hint_keys or [])

    def reload_model(self, hint_keys):
        CALLS.append(("reload_model", sorted(hint_keys)))
        self.hint_keys = set(hint_keys)

    def generate(self, controlnet_specs, input_video=None, prompt="", negative_prompt="", guidance=5, num_steps=35,
                 seed=1, sigma_max=70.0, blur_strength="medium", canny_threshold="medium", num_input_frames=1,
                 output_dir="outputs/"):
        if set(controlnet_specs) != self.hint_keys:
            self.reload_model(set(controlnet_specs))
        CALLS.append(("generate", sorted(controlnet_specs), input_video, prompt, seed, num_steps, output_dir))
        print("generating (fake)")
        if "BLOCK" in prompt:
            return None
        if "EXPLODE" in prompt:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        os.makedirs(output_dir, exist_ok=True)
        with open(input_video, "rb") as src, open(os.path.join(output_dir, "output.mp4"), "wb") as dst:
            dst.write(src.read())
        for hint in controlnet_specs:
            with open(os.path.join(output_dir, "%s_input_control.mp4" % hint), "wb") as f:
                f.write(b"control")
        with open(os.path.join(output_dir, "output.txt"), "w") as f:
            f.write(prompt)
        return "video"

    def infer(self, args):
        return self.generate(**args)
