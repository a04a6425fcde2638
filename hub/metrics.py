"""Prometheus metrics of one hub application (its own registry, served at ``/metrics``).

A registry per application, not the process-wide default, so several apps in one process
(the test suite) never collide.  Route labels are the route's pattern
(``/v1/packets/{id}/body``), never a concrete path, to keep cardinality bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lienthong_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lienthong_http_request_seconds",
            "Time to answer an HTTP request, by route pattern.",
            ["route"],
            registry=self.registry,
        )
        self.packets_accepted = Counter(
            "lienthong_packets_accepted",
            "Packets accepted (envelope and body stored, deliveries created).",
            registry=self.registry,
        )
        self.policy_refused = Counter(
            "lienthong_policy_refused",
            "Authentic envelopes refused by policy, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.body_bytes = Counter(
            "lienthong_body_bytes",
            "Body bytes received (in) and served (out).",
            ["direction"],
            registry=self.registry,
        )
        self.receipts = Counter(
            "lienthong_receipts",
            "Office receipts stored, by status code.",
            ["status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
