"""Prometheus metrics of one app instance, in their own CollectorRegistry (Prometheus naming)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 5 ms to 2 min: CPU inference of a full scan takes ~0.1-10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# ``*_created`` series only clutter the exposition (they are not needed by PromQL rate()).
disable_created_metrics()

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """All service metrics; ``render()`` gives the text exposition for ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "xscreen_http_request_duration_seconds",
            "HTTP request latency by route template, method and status code",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "xscreen_http_requests", "HTTP requests answered", ("route", "method", "status"), registry=r
        )
        self.in_flight = Gauge("xscreen_in_flight_requests", "HTTP requests being handled", registry=r)
        self.stage_seconds = Histogram(
            "xscreen_inference_stage_seconds",
            "Seconds per pipeline stage (decode, convert per scan; model stages per batch)",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "xscreen_queue_wait_seconds",
            "Time a scan waited in the micro-batching queue",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "xscreen_batch_size",
            "Scans per model batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=r,
        )
        self.queue_depth = Gauge(
            "xscreen_queue_depth", "Scans waiting in the micro-batching queue", registry=r
        )
        self.queue_capacity = Gauge("xscreen_queue_capacity", "Bound of the micro-batching queue", registry=r)
        self.rejected = Counter(
            "xscreen_rejected_requests", "Scans refused before inference", ("reason",), registry=r
        )
        self.batch_failures = Counter("xscreen_batch_failures", "Model batches that raised", registry=r)
        self.detections = Counter(
            "xscreen_detections", "Detections returned, by class", ("class_name",), registry=r
        )
        self.model_info = Gauge(
            "xscreen_model_info",
            "Loaded model (value 1)",
            ("name", "version", "sha256", "backend", "device", "precision"),
            registry=r,
        )
        self.ready = Gauge("xscreen_ready", "1 when weights are loaded and warm-up is done", registry=r)
        # model switching and the audit trail (docs/service.md "Models", "Audit trail")
        self.model_reloads = Counter(
            "xscreen_model_reloads",
            "Model switch attempts by result (switched, unchanged, or why the old model was kept)",
            ("result",),
            registry=r,
        )
        self.model_loaded = Gauge(
            "xscreen_model_loaded_timestamp_seconds",
            "When the serving model was loaded (Unix time)",
            registry=r,
        )
        self.audit_records = Counter("xscreen_audit_records", "Audit records written and fsync'd", registry=r)
        self.audit_failures = Counter(
            "xscreen_audit_failures",
            "Scans refused (503 audit_unavailable) because their audit record could not be written, by errno",
            ("reason",),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
