"""A fake torchrun (`python -m torch.distributed.run`, torch/distributed/run.py), single node:
`[--standalone] [--nnodes=1] --nproc_per_node=N [-m] SCRIPT_OR_MODULE ARGS...`.

As torchrun does: starts N processes of `python -u [-m] SCRIPT ARGS` with RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; they inherit its stdin,
stdout and stderr; when one fails the others are stopped and torchrun exits non-zero;
SIGTERM and SIGINT are passed on to them.

For tests only (no torchrun has it): with FAKE_TORCHRUN_UNTIL=PATH it exits 1 at once while
PATH does not exist, as a GPU group whose processes cannot start yet.
"""

import os
import signal
import socket
import subprocess
import sys
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv):
    until = os.environ.get("FAKE_TORCHRUN_UNTIL")
    if until and not os.path.exists(until):
        sys.stderr.write("fake torchrun: not starting until %s exists (FAKE_TORCHRUN_UNTIL)\n" % until)
        return 1
    nproc, module, rest = 1, False, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--nproc_per_node") or a.startswith("--nproc-per-node"):
            if "=" in a:
                nproc = int(a.split("=", 1)[1])
            else:
                i += 1
                nproc = int(argv[i])
        elif a in ("--standalone",) or a.startswith("--nnodes"):
            if a == "--nnodes":
                i += 1
        elif a in ("-m", "--module"):
            module = True
        else:
            rest = argv[i:]
            break
        i += 1
    if not rest:
        sys.stderr.write("torchrun: no script given\n")
        return 2
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, "-u"] + (["-m"] if module else []) + rest
        procs.append(subprocess.Popen(cmd, env=env))

    def forward(sig, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
