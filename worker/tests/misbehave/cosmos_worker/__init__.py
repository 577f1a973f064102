"""A misbehaving worker for cosmosd's tests (tests/misbehaving_worker.rs): put first on
PYTHONPATH (runtime.worker_path), it stands in for cosmos_worker."""
