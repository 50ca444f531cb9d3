"""Retry policies the assets declare (wiring below the assets, so no asset imports jobs.py)."""

from __future__ import annotations

import dagster as dg

# Steps that can fail for reasons that go away on their own: training on a device (CUDA OOM from a
# neighbour, a lost device, a preempted node) and image feature extraction (a slow disk, a large
# image batch). Deterministic steps (parsing, SQL) get no retry: bad data fails the same way twice.
TRANSIENT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
