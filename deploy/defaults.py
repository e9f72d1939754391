"""Serving defaults in one place, free of imports: the command line reads them for `--help` cheaply.

The Serve app (`deploy.serve.app`), `farm serve` (`deploy.serve.launch`, `deploy.cli.serve`) and
the cluster files describe the same service; these numbers are what they share.
"""

from __future__ import annotations

#: Concurrent /sample requests grouped into one forward pass; 1 turns batching off.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.005
#: Model-bound requests one replica holds (one batch running, one filling); more get 503 +
#: Retry-After.
DEFAULT_MAX_MODEL_QUEUE = 2 * DEFAULT_MAX_BATCH_SIZE
#: Requests in one replica at once: the model queue plus room for /health and /info while it is
#: full.
MAX_ONGOING_REQUESTS = 2 * DEFAULT_MAX_MODEL_QUEUE
#: Requests the proxy holds for a replica with no free slot; more get Serve's 503 + Retry-After.
MAX_QUEUED_REQUESTS = 128
DEFAULT_REQUEST_TIMEOUT_S = 30.0

__all__ = [
    "DEFAULT_BATCH_WAIT_S",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_MODEL_QUEUE",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "MAX_ONGOING_REQUESTS",
    "MAX_QUEUED_REQUESTS",
]
