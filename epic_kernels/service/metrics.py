"""The service's Prometheus metrics (``/metrics``), in a registry of its own."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Requests by outcome, queue and batch sizes, steps, tokens, time to first token and latency."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("epic_requests", "Requests by outcome (completed, failed, rejected, cancelled, "
                                "timeout, shutdown)", ["outcome"], registry=r)
        self.running = Gauge("epic_running_sequences", "Sequences in the running batches", registry=r)
        self.waiting = Gauge("epic_waiting_requests", "Requests queued for admission", registry=r)
        self.steps = Counter("epic_steps", "EPIC steps run (one batch each)", registry=r)
        self.tokens = Counter("epic_generated_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram("epic_step_batch_size", "Sequences in the batch of each step",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=r)
        self.ttft = Histogram("epic_time_to_first_token_seconds", "From arrival to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("epic_request_seconds", "From arrival to the last token of completed requests",
                                 buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
