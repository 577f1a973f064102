"""Where the fakes record what they were called with: one JSON line per call, with the rank
(tests read `$FAKE_NVIDIA_CALLS` to see what every process did)."""

import json
import os


def record(call, **fields):
    path = os.environ.get("FAKE_NVIDIA_CALLS")
    if not path:
        return
    entry = {"call": call, "rank": int(os.environ.get("RANK", "0")), "pid": os.getpid()}
    entry.update(fields)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")
