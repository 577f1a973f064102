"""A fake of cosmos-transfer2.5 packages/cosmos-oss/cosmos_oss/init.py `init_environment()`:
sets TOKENIZERS_PARALLELISM=false and, when RANK is set (torchrun), joins the process group
through `distributed.init()` (NCCL in the real one)."""

import os

from calls import record


def init_environment():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "RANK" in os.environ:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl", init_method="env://")
        record("init_environment", distributed=True)
