"""A fake of cosmos-transfer2.5 cosmos_transfer2/config.py: the pydantic models NVIDIA's code
validates with, field by field for what the worker sends, with the same validators. Real
pydantic (a test dependency; the worker itself stays standard library only).

Kept from the real module:
- `CommonSetupArguments`: `extra="forbid"`, frozen; `output_dir` required; a "before"
  validator that raises "model is required" when `model` is absent and fills
  `context_parallel_size` from WORLD_SIZE; `disable_guardrails` False (guardrails on),
  `offload_guardrail_models` False, `keep_going` True. `SetupArguments.model` is one of edge,
  depth, seg, vis.
- `InferenceArguments`: `extra="forbid"`; `name` required; `prompt` or `prompt_path`;
  `video_path` must be an existing file; `sigma_max: str | None` (a float is refused:
  pydantic does not turn numbers into strings); `guidance: int` in 0..7, default 3; `seed`
  2025; `negative_prompt` NVIDIA's text; `num_steps` 35; `resolution` "720";
  `num_conditional_frames` 0, 1 or 2; `num_video_frames_per_chunk` 93; at least one control.
- Controls: `control_path` (an existing file), `control_weight` in [0, 1] default 1.0,
  `mask_path`, `mask_prompt`; `edge.preset_edge_threshold`, `vis.preset_blur_strength`,
  `seg.control_prompt`.
- `CONTROL_KEYS = ["edge", "vis", "depth", "seg"]`, `hint_keys` in that order,
  `control_weight_dict` with the weights as strings.
"""

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

DEFAULT_NEGATIVE_PROMPT = "The video captures a game playing, with bad crappy graphics and cartoonish frames. It represents a recording of old outdated games. The lighting looks very fake. The textures are very raw and basic. The geometries are very primitive. The images are very pixelated and of poor CG quality. There are many subtitles in the footage. Overall, the video is unrealistic at all."

CONTROL_KEYS = ["edge", "vis", "depth", "seg"]
MODELS = ("edge", "depth", "seg", "vis")


class CommonSetupArguments(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    output_dir: Path
    model: Literal["edge", "depth", "seg", "vis"] = "edge"
    checkpoint_path: str | None = None
    experiment: str | None = None
    config_file: str = ""
    context_parallel_size: pydantic.PositiveInt | None = None
    disable_guardrails: bool = False
    offload_guardrail_models: bool = False
    keep_going: bool = True

    @cached_property
    def enable_guardrails(self) -> bool:
        return not self.disable_guardrails

    @pydantic.model_validator(mode="before")
    @classmethod
    def validate_model(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("model") is None:
            raise ValueError("model is required")
        if data.get("context_parallel_size") is None:
            data["context_parallel_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        return data


class SetupArguments(CommonSetupArguments):
    pass


ResolvedFilePath = Annotated[pydantic.FilePath, pydantic.AfterValidator(lambda v: v.expanduser().absolute())]
Threshold = Literal["very_low", "low", "medium", "high", "very_high"]
ControlWeight = Annotated[float, pydantic.Field(ge=0.0, le=1.0)]


class ControlConfig(pydantic.BaseModel):
    control_path: ResolvedFilePath | None = None
    control_weight: ControlWeight = 1.0
    mask_path: ResolvedFilePath | None = None
    mask_prompt: str | None = None


class DepthConfig(ControlConfig):
    pass


class BlurConfig(ControlConfig):
    preset_blur_strength: Threshold = "medium"


class EdgeConfig(ControlConfig):
    preset_edge_threshold: Threshold = "medium"


class SegConfig(ControlConfig):
    control_prompt: str | None = None


class InferenceArguments(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    prompt_path: ResolvedFilePath | None = None
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 2025
    guidance: Annotated[int, pydantic.Field(ge=0, le=7)] = 3
    video_path: ResolvedFilePath
    max_frames: pydantic.PositiveInt | None = None
    context_frame_index: pydantic.PositiveInt | None = None
    image_context_path: ResolvedFilePath | None = None
    num_conditional_frames: Literal[0, 1, 2] = 1
    resolution: str = "720"
    sigma_max: str | None = None
    num_video_frames_per_chunk: pydantic.PositiveInt = 93
    num_steps: pydantic.PositiveInt = 35
    show_control_condition: bool = False
    show_input: bool = False
    keep_input_resolution: bool = True
    edge: EdgeConfig | None = None
    depth: DepthConfig | None = None
    vis: BlurConfig | None = None
    seg: SegConfig | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def validate_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prompt") is None and data.get("prompt_path") is not None:
            data["prompt"] = Path(data["prompt_path"]).read_text().strip()
        return data

    @cached_property
    def hint_keys(self) -> list[str]:
        return [key for key in CONTROL_KEYS if getattr(self, key, None) is not None]

    def model_post_init(self, __context) -> None:
        if len(self.hint_keys) == 0:
            raise ValueError("No controls provided, please provide at least one control key (edge, blur, depth, seg)")

    @cached_property
    def control_weight_dict(self) -> dict[str, str]:
        return {key: str(getattr(self, key).control_weight) for key in self.hint_keys}

    @cached_property
    def preset_edge_threshold(self) -> str:
        return self.edge.preset_edge_threshold if self.edge is not None else "medium"

    @cached_property
    def preset_blur_strength(self) -> str:
        return self.vis.preset_blur_strength if self.vis is not None else "medium"
