"""A fake of the few parts of torch the worker and the NVIDIA fakes touch (real torch with its
CUDA libraries is a 900 MB download): grad mode, `torch.cuda` housekeeping, and
`torch.distributed` (a package beside this file)."""

from calls import record

_grad_enabled = True


def set_grad_enabled(mode):
    """torch.set_grad_enabled: inference turns gradients off."""
    global _grad_enabled
    _grad_enabled = bool(mode)
    record("torch.set_grad_enabled", mode=bool(mode))


def is_grad_enabled():
    return _grad_enabled


class cuda:  # noqa: N801 - torch.cuda is a module in torch
    @staticmethod
    def empty_cache():
        pass

    @staticmethod
    def set_device(device):
        pass

    @staticmethod
    def current_device():
        return 0
