"""cosmos-transfer1 utils/distributed.py `init()`: returns at once when a process group
exists; else joins one from the environment torchrun sets (`init_method="env://"`). The real
one uses NCCL on the local GPU (`torch.cuda.set_device(LOCAL_RANK)`); this one gloo-like TCP."""

import torch.distributed as dist

from calls import record


def init():
    if dist.is_initialized():
        return 0
    dist.init_process_group(backend="nccl", init_method="env://")
    record("distributed.init", world_size=dist.get_world_size())
