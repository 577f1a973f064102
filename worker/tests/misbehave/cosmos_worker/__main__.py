"""A worker that speaks cosmosd's protocol (worker/cosmos_worker/protocol.py) and misbehaves
once per scenario, chosen by the run's prompt, on its first attempt:

  garbage      text lines on the event stream before `done`
  huge         a 100 MB line on the event stream before `done`
  badutf8      a line of invalid UTF-8 before `done`
  stranger     `progress` and `done` for a run it was not given, then its own `done`
  nooutput     `done` naming an output video it never wrote
  exitmidline  half an event line, then exit
  hangload     (any run whose controls include `seg`) the model load never ends, and the
               process answers nothing meanwhile

With MISBEHAVE_PROTOCOL=N in its environment it says hello with protocol N.

Otherwise it behaves: hello, loaded, progress, output.mp4 written, done. Standard library
only; single-threaded on purpose (a hung load answers no ping)."""

import json
import os
import shutil
import sys
import time

out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)


def send(event):
    out.write((json.dumps(event) + "\n").encode())


def main():
    send({"event": "hello", "protocol": int(os.environ.get("MISBEHAVE_PROTOCOL", "1")), "backend": "misbehave", "version": "0", "pid": os.getpid()})
    hung_once = os.path.join(os.environ.get("MISBEHAVE_STATE", "/tmp"), "hangload.done")
    for raw in sys.stdin:
        op = json.loads(raw)
        kind = op.get("op")
        if kind == "shutdown":
            return
        if kind == "ping":
            send({"event": "pong", "state": "idle"})
        elif kind == "load":
            controls = op.get("controls") or []
            if "seg" in controls and not os.path.exists(hung_once):
                open(hung_once, "w").close()
                while True:
                    time.sleep(3600)
            send({"event": "loaded", "controls": controls, "seconds": 0.01})
        elif kind == "run":
            run(op)


def run(op):
    run_id, spec, output_dir = op["run_id"], op["spec"], op["output_dir"]
    scenario = spec.get("prompt", "").split()[0] if op.get("attempt", 1) == 1 else ""
    os.makedirs(output_dir, exist_ok=True)
    send({"event": "progress", "run_id": run_id, "step": 1, "steps": 2})
    if scenario == "garbage":
        out.write(b"Loading checkpoint shards: 100%|##########| 4/4\n{not json either}\n")
    elif scenario == "huge":
        block = b"x" * (1 << 20)
        for _ in range(100):
            out.write(block)
        out.write(b"\n")
    elif scenario == "badutf8":
        out.write(b"\xff\xfe\xfd broken \xc3\x28\n")
    elif scenario == "stranger":
        send({"event": "progress", "run_id": "rs_strangerrun00", "step": 1, "steps": 2})
        send({"event": "done", "run_id": "rs_strangerrun00", "outputs": {"video": "/nowhere.mp4"}, "seconds": 1})
    elif scenario == "nooutput":
        send({"event": "done", "run_id": run_id, "outputs": {"video": os.path.join(output_dir, "output.mp4")}, "seconds": 0.1})
        return
    elif scenario == "exitmidline":
        out.write(b'{"event":"do')
        os._exit(1)
    video = os.path.join(output_dir, "output.mp4")
    shutil.copyfile(spec["input_video_path"], video)
    send({"event": "done", "run_id": run_id, "outputs": {"video": video, "controls": {}}, "seconds": 0.1})


if __name__ == "__main__":
    main()
