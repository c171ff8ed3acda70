"""Prometheus metrics, named by Prometheus conventions, on a registry of this app's own.

Served at /metrics to operator keys, and, when SOUVERAIN_METRICS_BIND is set, without a
credential on that separate (private) address for a scraper.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from souverain.gateway.routing import RouteTable
from souverain.metering.usage import Settlement

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class FleetCollector(Collector):
    """Replicas by state and measured energy and CO2e, as of the last route-table refresh."""

    def __init__(self, routes: RouteTable) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily("souverain_replicas", "Replicas by state.", labels=["state"])
        for state, count in sorted(self._routes.replica_states.items()):
            replicas.add_metric([state], count)
        yield replicas
        energy = CounterMetricFamily(
            "souverain_energy_joules",
            "Energy measured or estimated on replicas.",
            labels=["datacenter"],
        )
        co2e = CounterMetricFamily(
            "souverain_co2e_grams", "CO2e of that energy.", labels=["datacenter"]
        )
        for datacenter, (joules, grams) in sorted(self._routes.energy_totals.items()):
            energy.add_metric([datacenter], joules)
            co2e.add_metric([datacenter], grams)
        yield energy
        yield co2e


class Metrics:
    def __init__(self, routes: RouteTable) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "souverain_requests",
            "Inference requests settled.",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "souverain_tokens", "Tokens processed.", ["model", "kind"], registry=self.registry
        )
        self.latency = Histogram(
            "souverain_request_duration_seconds",
            "Time from admission to the last byte.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "souverain_time_to_first_token_seconds",
            "Time from admission to the first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_lines = Counter(
            "souverain_batch_lines",
            "Batch lines answered by this server's batch runner, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.batches = Counter(
            "souverain_batches", "Batches this server ended, by status.", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(FleetCollector(routes))

    def observe(self, *, model: str, endpoint: str, settlement: Settlement) -> None:
        self.requests.labels(model, endpoint, settlement.status).inc()
        self.tokens.labels(model, "prompt").inc(settlement.prompt_tokens)
        self.tokens.labels(model, "completion").inc(settlement.completion_tokens)
        if settlement.latency_ms is not None:
            self.latency.labels(model, endpoint).observe(settlement.latency_ms / 1000)
        if settlement.ttft_ms is not None:
            self.ttft.labels(model).observe(settlement.ttft_ms / 1000)
