"""A fake of cosmos_transfer2.config: SetupArguments and InferenceArguments with the real
field names; InferenceArguments refuses unknown keys, as the real one does."""

CALLS = []

_INFERENCE_KEYS = {
    "name", "prompt", "prompt_path", "negative_prompt", "video_path", "seed", "guidance", "num_steps", "sigma_max",
    "resolution", "max_frames", "num_conditional_frames", "num_video_frames_per_chunk", "edge", "vis", "depth", "seg",
}


class SetupArguments:
    def __init__(self, context_parallel_size=1, output_dir=None, model="edge", keep_going=True, checkpoint_path=None,
                 experiment=None, disable_guardrails=False, offload_guardrail_models=False):
        self.context_parallel_size = context_parallel_size
        self.output_dir = output_dir
        self.model = model
        self.keep_going = keep_going


class InferenceArguments:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - _INFERENCE_KEYS
        if unknown:
            raise ValueError("unknown keys: %s" % sorted(unknown))
        if isinstance(kwargs.get("guidance"), float):
            raise ValueError("guidance must be an integer")
        self.__dict__.update(kwargs)
