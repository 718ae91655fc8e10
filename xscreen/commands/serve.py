"""Run the HTTP inference service (FastAPI on uvicorn): POST /detect, /render, /healthz, /readyz, /metrics;
with ``--dicos-port`` also the DICOS network listener beside it (docs/dicos.md).

Every option is also an ``XSCREEN_*`` environment variable (flags win); see docs/service.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

log = logging.getLogger("xscreen.service")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--host", help="bind address (default 127.0.0.1; a non-loopback address needs API keys)")
    a("--port", type=int, help="TCP port (default 8000)")
    a("--weights", help="safetensors weights (default: the bundled model/weights/xscreen-small-lacls)")
    a("--weights-sha256", help="refuse to start unless the weights' sha256 equals this")
    a("--device", choices=("auto", "cuda", "cpu"), help="inference device (default auto: CUDA when present)")
    a("--backend", choices=("torch", "onnxruntime"), help="inference backend (default torch)")
    a("--onnx-path", help="exported .onnx model for --backend onnxruntime")
    a("--max-batch-size", type=int, help="scans per model batch (default 4)")
    a("--max-queue-delay-ms", type=float, help="longest wait for a batch to fill (default 5 ms)")
    a("--queue-size", type=int, help="scans allowed to wait; beyond it 503 (default 64)")
    a("--request-timeout-s", type=float, help="per-request deadline, answered with 504 (default 30)")
    a("--max-upload-bytes", type=int, help="request body limit (default 64 MiB)")
    a("--max-pixels", type=int, help="pixels per energy image limit (default 25,000,000)")
    a("--formats", help="accepted scan encodings, comma-separated (default png,tiff,npy,raw,dicom)")
    a("--api-keys-file", help="file with one API key per line")
    a("--protect-metrics", action="store_true", default=None, help="require an API key for /metrics")
    a(
        "--score-threshold",
        type=float,
        help="minimum score when a request sends none (default: the model's own)",
    )
    a("--log-level", choices=("debug", "info", "warning", "error"), help="log level (default info)")
    a("--dicos-port", type=int, help="also run the DICOS network listener on this port (docs/dicos.md)")
    a("--dicos-ae-title", help="the DICOS listener's AE title (default XSCREEN)")
    a("--no-warmup", dest="warmup", action="store_false", default=None, help="skip the warm-up inference")


def _overrides(args: argparse.Namespace) -> dict:
    names = vars(args).keys() & {
        "host", "port", "weights", "weights_sha256", "device", "backend", "onnx_path", "max_batch_size",
        "max_queue_delay_ms", "queue_size", "request_timeout_s", "max_upload_bytes", "max_pixels",
        "formats",
        "api_keys_file", "protect_metrics", "score_threshold", "log_level", "warmup",
        "dicos_port", "dicos_ae_title",
    }  # fmt: skip
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT that led to a graceful stop ends the process with status 0
        (uvicorn re-raises the signal after shutting down, which would make the exit status -15)."""

        stopped_by: list[int] = []

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        self.stopped_by = list(captured)
                        captured.clear()

    return GracefulServer


def run(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from xscreen.inference.backend import make_backend
    from xscreen.service.app import create_app
    from xscreen.service.http_protocol import head_protocol
    from xscreen.service.logs import configure_logging
    from xscreen.service.settings import load_settings

    settings = load_settings(**_overrides(args))  # SettingsError -> one line, exit 2
    # Load (and sha256-check) the weights before binding: a bad file stops start-up with one line
    # (the CLI prints the XscreenError); JSON logging starts once the model is loaded.
    backend = make_backend(settings)  # device 'cuda' without a usable GPU: one line, exit 2
    configure_logging(settings.log_level)
    if settings.device == "auto" and backend.device != "cuda":
        log.warning(
            "XSCREEN_DEVICE=auto found no usable CUDA device: serving on %s (set XSCREEN_DEVICE=cuda to "
            "refuse to start without a GPU)",
            backend.device,
            extra={"device": backend.device, "requested_device": settings.device},
        )
    app = create_app(settings, backend)
    config = uvicorn.Config(
        app,
        # httptools (uvicorn[standard]) with a request-head timeout and size limit: slow or endless heads
        # are cut (service/http_protocol.py); slow bodies by the request guard (service/middleware.py).
        http=head_protocol(settings.header_timeout_s, settings.max_header_bytes),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
    )
    server = _server_class()(config)
    server.run()
    if server.stopped_by:
        log.info(
            "stopped by %s after finishing in-flight requests", signal.Signals(server.stopped_by[0]).name
        )
    return 0 if server.started else 1
