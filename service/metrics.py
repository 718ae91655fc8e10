"""Prometheus metrics of one app instance, in their own CollectorRegistry (Prometheus naming)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from xscreen.inference.base import MODEL_STAGES
from xscreen.model.classes import CLASS_NAMES
from xscreen.store.errors import FAILURE_REASONS as STORE_FAILURE_REASONS

# The /detect latency SLO that deploy/prometheus/alerts.yml checks: p99 of successful answers under 2 s.
LATENCY_SLO_SECONDS = 2.0
# Latency buckets from 5 ms to 2 min (CPU inference of a full scan takes ~0.1-10 s), with an edge at every
# alert threshold and 0.5 s steps around the SLO: the alert then counts answers slower than exactly 2 s
# (bucket le="2.0") instead of interpolating inside a wide 1-2.5 s bucket, which would put p99 at 2.485 s
# when every request takes 1.1 s and miss 2 % of requests at 2.4 s.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# Known label values, exported at 0 from the start so that panels and ratios read 0, not "no data".
REJECT_REASONS = ("queue_full", "deadline", "memory_budget")
# Scans refused after inference because their audit record could not be written (503 audit_unavailable):
# counted by errno in xscreen_audit_failures_total (XscreenAuditWriteFailing) and as the route's 503.
AUDIT_FAILURE_REASONS = ("ENOSPC", "EROFS", "EACCES", "EIO", "other")
SCAN_ROUTES = ("/detect", "/render")
REVIEW_VERDICTS = ("confirm", "false_alarm", "missed", "missed_removed")
SCAN_STATUSES = ("200", "500", "503", "504")
PREPARE_STAGES = ("decode", "convert")
BACKEND_STAGES = ("transfer",)  # what the torch backend times around the model's own MODEL_STAGES
# ``*_created`` series only clutter the exposition (they are not needed by PromQL rate()).
disable_created_metrics()

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """All service metrics; ``render()`` gives the text exposition for ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # The default registry's process (memory, CPU, start time, fds), platform (Python version) and GC
        # collectors: this registry is the service's own, so they are not there unless registered.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self._add_http_metrics(r)
        self._add_pipeline_metrics(r)
        self._add_dicos_metrics(r)
        self._add_model_and_audit_metrics(r)
        self._add_store_metrics(r)
        self._add_review_metrics(r)
        self._preinitialise()

    def _add_http_metrics(self, r: CollectorRegistry) -> None:
        """Request latency, counts and requests in flight, by route."""
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

    def _add_pipeline_metrics(self, r: CollectorRegistry) -> None:
        """Queue, memory budget, batches, detections and the loaded model."""
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
        self.budget_in_use = Gauge(
            "xscreen_scan_budget_in_use_pixels",
            "Pixels reserved by scans in flight (XSCREEN_MAX_INFLIGHT_MPIXELS, docs/service.md)",
            registry=r,
        )
        self.budget_capacity = Gauge(
            "xscreen_scan_budget_capacity_pixels",
            "The memory budget for scans in flight, in pixels",
            registry=r,
        )
        self.rejected = Counter(
            "xscreen_rejected_requests", "Scans refused before inference", ("reason",), registry=r
        )
        self.batch_failures = Counter("xscreen_batch_failures", "Model batches that raised", registry=r)
        self.detections = Counter(
            "xscreen_detections", "Detections returned, by class", ("class_name",), registry=r
        )
        self.bags = Counter(
            "xscreen_bags",
            "Bags answered (one view or several), by source (http, dicos) and alarm decision (true, false): "
            'the alarm rate a checkpoint watches (docs/service.md, "Alarm")',
            ("source", "alarm"),
            registry=r,
        )
        self.bag_views = Counter(
            "xscreen_bag_views", "Views in the bags answered, by source", ("source",), registry=r
        )
        self.alarm_classes = Counter(
            "xscreen_alarm_bags_by_class",
            "Alarmed bags by the classes that alarmed them (a bag counts once per class)",
            ("class_name",),
            registry=r,
        )
        self.model_info = Gauge(
            "xscreen_model_info",
            "Loaded model (value 1)",
            ("name", "version", "sha256", "backend", "device", "precision"),
            registry=r,
        )
        self.ready = Gauge("xscreen_ready", "1 when weights are loaded and warm-up is done", registry=r)

    def _add_dicos_metrics(self, r: CollectorRegistry) -> None:
        """The DICOS listener's (service/dicos_listener.py, docs/dicos.md)."""
        self.dicos_received = Counter(
            "xscreen_dicos_received", "DX images received over DICOS, by result", ("result",), registry=r
        )
        self.dicos_paired = Counter(
            "xscreen_dicos_paired", "Views (HIGH + LOW DX) of complete bags sent to detection", registry=r
        )
        self.dicos_bags_complete = Counter(
            "xscreen_dicos_bags_complete",
            "Bags complete and sent to detection, by the rule that completed them "
            "(views, release, wait, recovered)",
            ("rule",),
            registry=r,
        )
        self.dicos_timed_out = Counter(
            "xscreen_dicos_timed_out",
            "Bags rejected because a view's energy (or a view) never arrived",
            registry=r,
        )
        self.dicos_pending = Gauge(
            "xscreen_dicos_pending", "Studies (bags) waiting to be complete", registry=r
        )
        self.dicos_tdr_sent = Counter(
            "xscreen_dicos_tdr_sent", "TDRs delivered, by where (scp, folder, log)", ("to",), registry=r
        )
        self.dicos_tdr_failed = Counter(
            "xscreen_dicos_tdr_failed", "Bags without a delivered TDR, by reason", ("reason",), registry=r
        )
        self.dicos_aborted = Counter(
            "xscreen_dicos_aborted",
            "Associations aborted past a size limit (pdu_bytes, dataset_bytes, association_bytes)",
            ("reason",),
            registry=r,
        )
        self.dicos_retries = Counter(
            "xscreen_dicos_retries",
            "Spooled bags put back to wait, by stage (detection: queue full or model busy; delivery)",
            ("stage",),
            registry=r,
        )
        self.dicos_rejected = Counter(
            "xscreen_dicos_rejected",
            "Spooled studies moved to rejected/, by reason (timeout, scan, detection, spool)",
            ("reason",),
            registry=r,
        )
        self.dicos_spool_bytes = Gauge(
            "xscreen_dicos_spool_bytes", "Bytes of DX halves and TDRs held in the DICOS spool", registry=r
        )
        self.dicos_latency = Histogram(
            "xscreen_dicos_latency_seconds",
            "Bag complete -> TDR delivered",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _add_model_and_audit_metrics(self, r: CollectorRegistry) -> None:
        """Model switching and the audit trail (docs/service.md "Models", "Audit trail")."""
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

    def _add_store_metrics(self, r: CollectorRegistry) -> None:
        """The scan store's (xscreen/store, docs/operations.md "Scan store"); only moved when it is on."""
        self.store_failures = Counter(
            "xscreen_store_failures",
            "Answered bags the scan store did not keep, by reason (disk_full, unwritable, database, ...)",
            ("reason",),
            registry=r,
        )
        self.store_bags = Gauge(
            "xscreen_store_bags", "Bags in the scan store (being written included)", registry=r
        )
        self.store_bytes = Gauge(
            "xscreen_store_bytes",
            "Disk bytes of the scan store's bags (XSCREEN_STORE_MAX_BYTES bounds it)",
            registry=r,
        )

    def _add_review_metrics(self, r: CollectorRegistry) -> None:
        """The review console's (service/console, docs/console.md "Metrics"): verdicts as they are posted,
        and the shift summary's figures for the last XSCREEN_CONSOLE_SESSION_TTL_S (refreshed every minute
        while the store is on, and whenever the summary page is shown)."""
        self.review_verdicts = Counter(
            "xscreen_review_verdicts",
            "Reviewers' verdicts posted in the console, by class and verdict "
            "(confirm, false_alarm, missed, missed_removed)",
            ("class_name", "verdict"),
            registry=r,
        )
        self.review_alarm_rate = Gauge(
            "xscreen_review_shift_alarm_rate",
            "Alarmed bags / bags of the shift window (NaN: no bag)",
            registry=r,
        )
        self.review_false_alarm_ratio = Gauge(
            "xscreen_review_shift_false_alarm_ratio",
            "False alarms / (confirmed + false alarms) among the shift's reviewed detections (NaN: none)",
            registry=r,
        )
        self.review_score_ks = Gauge(
            "xscreen_review_score_ks_statistic",
            "Two-sample KS statistic of the shift's detection scores against the model's reference",
            registry=r,
        )
        self.review_drift = Gauge(
            "xscreen_review_score_drift",
            "1: the shift's scores part from the reference (KS, alpha 0.01); 0: they do not; -1: too few",
            registry=r,
        )
        for gauge in (self.review_alarm_rate, self.review_false_alarm_ratio, self.review_score_ks):
            gauge.set(float("nan"))
        self.review_drift.set(-1)

    def _preinitialise(self) -> None:
        """Create the series of every known label value at 0 (``labels()`` alone exports them)."""
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for reason in AUDIT_FAILURE_REASONS:
            self.audit_failures.labels(reason=reason)
        for reason in (*STORE_FAILURE_REASONS, "backlog"):  # backlog: service/scan_store.py
            self.store_failures.labels(reason=reason)
        for name in CLASS_NAMES:
            for verdict in REVIEW_VERDICTS:
                self.review_verdicts.labels(class_name=name, verdict=verdict)
            self.detections.labels(class_name=name)
            self.alarm_classes.labels(class_name=name)
        for source in ("http", "dicos"):
            self.bag_views.labels(source=source)
            for alarm in ("true", "false"):
                self.bags.labels(source=source, alarm=alarm)
        for rule in ("views", "release", "wait", "recovered"):
            self.dicos_bags_complete.labels(rule=rule)
        for stage in PREPARE_STAGES + tuple(MODEL_STAGES) + BACKEND_STAGES:
            self.stage_seconds.labels(stage=stage)
        for route in SCAN_ROUTES:
            for status in SCAN_STATUSES:
                self.requests.labels(route, "POST", status)

    def count_answer(self, response, *, source: str) -> None:
        """Count one answered bag (a ``DetectResponse`` or a ``BagResponse``): its detections by class, its
        alarm decision and the classes that alarmed it."""
        views = getattr(response, "views", None)
        found = [d for v in views for d in v.detections] if views is not None else response.detections
        for d in found:
            self.detections.labels(class_name=d.class_name).inc()
        self.bags.labels(source=source, alarm="true" if response.alarm else "false").inc()
        self.bag_views.labels(source=source).inc(len(views) if views is not None else 1)
        if response.alarm:
            for name in {d.class_name for d in found if d.score >= response.score_threshold}:
                self.alarm_classes.labels(class_name=name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
