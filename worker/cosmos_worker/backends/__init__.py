"""Backends: how a loaded model runs a job. Each has load(controls, options),
run(spec, output_dir, attempt, progress, cancelled, channel) -> outputs, close()."""


class RunFailure(Exception):
    """A run failed in a known way: kind is input | blocked | oom | internal."""

    def __init__(self, kind, message, retryable=False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable


class RunCancelled(Exception):
    pass


class Backend:
    """A model kept loaded across runs. Under torchrun every rank has one; `is_leader` (rank
    0) alone has output files to report."""

    def init_distributed(self):
        """Joins the process group the way the backend's own NVIDIA entry point does. The
        default, for backends without NVIDIA code (sim): plain torch.distributed from the
        environment torchrun sets."""
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", init_method="env://")

    def load(self, controls, options):
        raise NotImplementedError

    def run(self, spec, output_dir, attempt, progress, cancelled, channel):
        raise NotImplementedError

    def close(self):
        pass


def make_backend(args):
    if args.backend == "sim":
        from cosmos_worker.backends.sim import SimBackend

        return SimBackend(load_seconds=args.load_seconds, job_seconds=args.job_seconds)
    if args.backend == "transfer1":
        from cosmos_worker.backends.transfer1 import Transfer1Backend

        return Transfer1Backend(checkpoint_dir=args.checkpoint_dir, av_sample=args.av_sample, guardrails=args.guardrails)
    if args.backend == "transfer2_5":
        from cosmos_worker.backends.transfer2_5 import Transfer25Backend

        return Transfer25Backend(guardrails=args.guardrails, output_root=args.output_root)
    raise ValueError("unknown backend %r" % args.backend)
