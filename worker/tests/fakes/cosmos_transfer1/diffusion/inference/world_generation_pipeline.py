"""A fake of cosmos-transfer1 diffusion/inference/world_generation_pipeline.py:
`DiffusionControl2WorldGenerationPipeline` with NVIDIA's constructor signature (every keyword
the real one takes, none more: an unknown one is a TypeError, as in Python), and no model.

Kept from the real one:
- `__init__` keywords and defaults (world_generation_pipeline.py), offload flags stored as
  attributes and read at call time (utils/base_world_generation_pipeline.py);
- what is loaded at construction (base_world_generation_pipeline.py `__init__`): the T5 text
  encoder unless `offload_text_encoder_model`, the guardrails unless
  `offload_guardrail_models` or `disable_guardrail`, the network unless `offload_network`,
  the tokenizer unless `offload_tokenizer`; recorded as `loaded`;
- the model config found by a path relative to the working directory
  (`_load_model` -> utils/config_helper.py `get_config_module`);
- `reload_model(control_inputs)`: `_offload_network()` then `_load_network()`;
- `generate(...)` with disable_guardrail=True blocks nothing: (videos, final prompts).
For tests: with FAKE_T1_LOAD_NEEDS_T5_OFFLOAD set, building it with the T5 encoder on the
GPU runs out of memory as torch says it (the 11B encoder is what a smaller GPU cannot hold).
"""

import os

from calls import record

CONFIG_FILE = "cosmos_transfer1/diffusion/config/transfer/config.py"


class DiffusionControl2WorldGenerationPipeline:
    def __init__(self, checkpoint_dir, checkpoint_name, has_text_input=True, offload_network=False, offload_tokenizer=False,
                 offload_text_encoder_model=False, offload_guardrail_models=False, guidance=7.0, num_steps=35, height=704,
                 width=1280, fps=24, num_video_frames=121, seed=0, num_input_frames=1, control_inputs=None, sigma_max=70.0,
                 blur_strength="medium", canny_threshold="medium", upsample_prompt=False, offload_prompt_upsampler=False,
                 process_group=None, regional_prompts=None, region_definitions=None, waymo_example=False, disable_guardrail=False,
                 save_input_noise=False):
        assert os.path.isfile(CONFIG_FILE), f"Cosmos config file ({CONFIG_FILE}) not found."
        if os.environ.get("FAKE_T1_LOAD_NEEDS_T5_OFFLOAD") and not offload_text_encoder_model:
            raise RuntimeError("CUDA out of memory. Tried to allocate 22.00 GiB (GPU 0; 39.39 GiB total capacity)")
        self.fps = fps
        self.num_video_frames = num_video_frames
        self.offload_network = offload_network
        self.offload_tokenizer = offload_tokenizer
        self.offload_text_encoder_model = offload_text_encoder_model
        self.offload_guardrail_models = offload_guardrail_models
        self.disable_guardrail = disable_guardrail
        loaded = []
        if not offload_text_encoder_model:
            loaded.append("text_encoder")
        if not offload_guardrail_models and not disable_guardrail:
            loaded.append("guardrails")
        if not offload_network:
            loaded.append("network")
        if not offload_tokenizer:
            loaded.append("tokenizer")
        record("pipeline.load", checkpoint_dir=checkpoint_dir, checkpoint_name=checkpoint_name,
               controls=sorted(control_inputs or {}), disable_guardrail=disable_guardrail, offload_network=offload_network,
               offload_tokenizer=offload_tokenizer, offload_text_encoder_model=offload_text_encoder_model,
               offload_guardrail_models=offload_guardrail_models, offload_prompt_upsampler=offload_prompt_upsampler,
               upsample_prompt=upsample_prompt, num_video_frames=num_video_frames, loaded=loaded)

    def reload_model(self, control_inputs):
        record("reload_model", controls=sorted(control_inputs))

    def generate(self, prompt, video_path, negative_prompt, control_inputs, save_folder, batch_size):
        record("pipeline.generate", offload_network=self.offload_network, offload_tokenizer=self.offload_tokenizer,
               offload_text_encoder_model=self.offload_text_encoder_model)
        return [video_path[0]], list(prompt)
