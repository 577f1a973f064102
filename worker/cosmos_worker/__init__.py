"""cosmos_worker: the half of Cosmos Workflow that runs next to the model.

A long-lived process driven by cosmosd over JSON lines on stdin/stdout (DESIGN.md section 8).
Standard library only; the model code (NVIDIA's cosmos_transfer1 / cosmos_transfer2) is
imported lazily by its backend, so this package imports and tests without it.
"""

__version__ = "0.1.0"
PROTOCOL = 1
