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
    def is_leader(self):
        return True

    def follow(self):
        return 0

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

        return Transfer1Backend(checkpoint_dir=args.checkpoint_dir, num_gpus=args.num_gpus)
    if args.backend == "transfer2_5":
        from cosmos_worker.backends.transfer2_5 import Transfer25Backend

        return Transfer25Backend(checkpoint_dir=args.checkpoint_dir, num_gpus=args.num_gpus, output_root=args.output_root)
    raise ValueError("unknown backend %r" % args.backend)
