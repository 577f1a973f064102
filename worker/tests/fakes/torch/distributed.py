"""A fake torch.distributed for one process: ranks are threads (set_rank), and
broadcast_object_list hands rank src's object to every other rank, as the real call does."""

import queue
import threading

_local = threading.local()
_queues = {}
_lock = threading.Lock()


def set_rank(rank, world_size):
    _local.rank = rank
    with _lock:
        for r in range(world_size):
            _queues.setdefault(r, queue.Queue())


def broadcast_object_list(object_list, src=0):
    rank = _local.rank
    if rank == src:
        for r, q in list(_queues.items()):
            if r != src:
                q.put(list(object_list))
    else:
        object_list[:] = _queues[rank].get(timeout=10)
