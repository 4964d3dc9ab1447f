"""The engine's counters: one namespace and one way to count (Beam Metrics), for every DoFn
and the shard writer alike, so the launcher reads them all back from one place."""
from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "isicflow"


def count(name: str, n: int = 1) -> None:
    """Adds n to the engine counter `name` (a failure path, a decode, a shard written)."""
    Metrics.counter(NAMESPACE, name).inc(n)
