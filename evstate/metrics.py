"""Prometheus metrics: what an operator watches (exported by ``evstate serve`` at /metrics).

Counters and histograms are process-wide, labelled by topic, so several clients in one
process add up per topic.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECORDS_APPLIED = Counter(
    "evstate_view_records_applied",
    "State-topic records applied to the local view.",
    ["topic"],
)
POISON_RECORDS = Counter(
    "evstate_view_poison_records",
    "State-topic records the view could not read and skipped (see the log for positions).",
    ["topic"],
)
WRITES = Counter(
    "evstate_writes",
    "Events written, by outcome (ok, failed).",
    ["topic", "outcome"],
)
WRITE_SECONDS = Histogram(
    "evstate_write_seconds",
    "Time from a write's call to Kafka's acknowledgement (commit, with history).",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
