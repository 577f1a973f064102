"""A fake torch.distributed between real processes, over TCP, for the calls the worker makes.

As in torch (torch/distributed/distributed_c10d.py):
- `init_process_group(init_method="env://")` reads MASTER_ADDR, MASTER_PORT, RANK and
  WORLD_SIZE (what torchrun sets) and blocks until every rank has joined; a second call
  raises;
- a collective before `init_process_group` raises "Default process group has not been
  initialized, please make sure to call init_process_group.";
- `broadcast_object_list(object_list, src)` replaces the list's contents on every rank with
  src's, in place, and blocks until src sends;
- `new_group(backend=..., timeout=...)` needs the default group.
Only src=0 is supported: the worker broadcasts from rank 0 alone.
"""

import os
import pickle
import socket
import struct
import time

_NOT_INIT = "Default process group has not been initialized, please make sure to call init_process_group."
_state = {"initialized": False, "rank": 0, "world": 1, "peers": {}, "leader": None}


class ProcessGroup:
    def __init__(self, backend, timeout):
        self.backend = backend
        self.timeout = timeout


def is_available():
    return True


def is_initialized():
    return _state["initialized"]


def _require():
    if not _state["initialized"]:
        raise RuntimeError(_NOT_INIT)


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None):
    if _state["initialized"]:
        raise RuntimeError("trying to initialize the default process group twice!")
    rank = int(os.environ["RANK"]) if rank < 0 else rank
    world = int(os.environ["WORLD_SIZE"]) if world_size < 0 else world_size
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    if world > 1:
        if rank == 0:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((addr, port))
            server.listen(world)
            while len(_state["peers"]) < world - 1:
                conn, _ = server.accept()
                peer = struct.unpack("!I", _recv_exact(conn, 4))[0]
                _state["peers"][peer] = conn
            server.close()
        else:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = socket.create_connection((addr, port), timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            conn.settimeout(None)
            conn.sendall(struct.pack("!I", rank))
            _state["leader"] = conn
    _state.update(initialized=True, rank=rank, world=world)


def new_group(ranks=None, timeout=None, backend=None, pg_options=None):
    _require()
    return ProcessGroup(backend, timeout)


def get_rank(group=None):
    _require()
    return _state["rank"]


def get_world_size(group=None):
    _require()
    return _state["world"]


def broadcast_object_list(object_list, src=0, group=None, device=None):
    _require()
    if src != 0:
        raise NotImplementedError("this fake broadcasts from rank 0 only")
    if _state["world"] == 1:
        return
    if _state["rank"] == 0:
        data = pickle.dumps(list(object_list))
        for conn in _state["peers"].values():
            conn.sendall(struct.pack("!Q", len(data)) + data)
    else:
        conn = _state["leader"]
        size = struct.unpack("!Q", _recv_exact(conn, 8))[0]
        object_list[:] = pickle.loads(_recv_exact(conn, size))


def destroy_process_group(group=None):
    for conn in list(_state["peers"].values()) + ([_state["leader"]] if _state["leader"] else []):
        conn.close()
    _state.update(initialized=False, peers={}, leader=None)


def _recv_exact(conn, n):
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise RuntimeError("Connection closed by peer")
        out += chunk
    return out
