"""Several GPUs: the worker under torchrun (`--nproc_per_node=N`), one process per GPU.

NVIDIA's code runs context parallel: with N GPUs EVERY rank builds the model and every rank
calls `generate` with the same arguments, rank 0 saves the output (transfer_pipeline.py,
cosmos_transfer2/inference.py; NVIDIA's own model server starts torchrun and has every rank
call `infer`). Here rank 0 alone speaks the protocol with the daemon and hands each op to
the other ranks, which follow.

Handing an op over needs a process group, and `broadcast_object_list` before
`init_process_group` raises. So every rank first joins the group the way NVIDIA's own entry
points do (the backend's `init_distributed`: NVIDIA's `distributed.init()`, NCCL), then
a CPU (gloo) group is made for the ops, with a long timeout: a follower may wait hours for
the next op, far past NCCL's 30-minute default.
"""

import os
import sys
from datetime import timedelta

# Idle followers wait in a broadcast for the next op: weeks, not minutes.
OPS_TIMEOUT = timedelta(days=365)


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


class Ranks:
    """Rank 0 shares each op; the other ranks receive them, in the same order."""

    def __init__(self, init_distributed):
        self.world = world_size()
        self.rank = rank()
        self.group = None
        if self.world > 1:
            init_distributed()
            import torch.distributed as dist

            if not dist.is_initialized():
                raise RuntimeError("the backend's distributed init left no process group (WORLD_SIZE=%d)" % self.world)
            self.group = dist.new_group(backend="gloo", timeout=OPS_TIMEOUT)

    def is_leader(self):
        return self.rank == 0

    def share(self, op):
        """Rank 0: hands `op` (a picklable tuple) to every other rank."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        box = [op]
        dist.broadcast_object_list(box, src=0, group=self.group)

    def receive(self):
        """Ranks other than 0: the next op from rank 0."""
        import torch.distributed as dist

        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def follow(self, backend):
        """The loop of a rank other than 0: do what rank 0 does, until it says stop."""
        while True:
            op = self.receive()
            if op is None or op[0] == "stop":
                return 0
            try:
                if op[0] == "load":
                    backend.load(op[1], op[2])
                elif op[0] == "run":
                    _, spec, output_dir, attempt = op
                    os.makedirs(output_dir, exist_ok=True)
                    backend.run(spec, output_dir, attempt, lambda *_: None, lambda: False, None)
            except Exception as e:  # rank 0 reports the failure; followers keep following
                sys.stderr.write("cosmos_worker rank %d: %s: %s\n" % (self.rank, type(e).__name__, e))
                sys.stderr.flush()
