"""A fake of cosmos_transfer2.inference.Control2WorldInference."""

import os

from cosmos_transfer2.config import CALLS


class Control2WorldInference:
    def __init__(self, setup_args, batch_hint_keys=None):
        CALLS.append(("init", setup_args.model, sorted(batch_hint_keys or [])))
        self.hints = sorted(batch_hint_keys or [])

    def generate(self, samples, output_dir):
        out = []
        for s in samples:
            CALLS.append(("generate", s.name, s.video_path, getattr(s, "guidance", None)))
            if "BLOCK" in s.prompt:
                continue
            os.makedirs(str(output_dir), exist_ok=True)
            path = os.path.join(str(output_dir), s.name + ".mp4")
            with open(s.video_path, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
            for hint in self.hints:
                with open(os.path.join(str(output_dir), "%s_control_%s.mp4" % (s.name, hint)), "wb") as f:
                    f.write(b"c")
            out.append(path)
        return out
