"""Delivering a DICOS listener's TDR: a C-STORE to the configured destination, retried with a doubling
backoff (docs/dicos.md "Network"; service/dicos_listener.py decides when to try another round)."""

from __future__ import annotations

import io
import logging
import threading

from xscreen.scans.dicos.files import EXPLICIT_LE, TDR_SOP_CLASS

log = logging.getLogger("xscreen.service.dicos")

STATUS_SUCCESS = 0x0000


def send_tdr(settings, tdr: bytes, scan_id: str, study_uid: str, stopping: threading.Event) -> bool:
    """C-STORE the TDR to the destination: 1 + dicos_retries attempts, backoff doubling each time; False
    when none succeeded (each failure is logged) or ``stopping`` was set while waiting."""
    import pydicom
    from pynetdicom import AE

    s = settings
    ds = pydicom.dcmread(io.BytesIO(tdr))
    attempts = 1 + s.dicos_retries
    for attempt in range(1, attempts + 1):
        error = None
        ae = AE(ae_title=s.dicos_ae_title)
        ae.add_requested_context(TDR_SOP_CLASS, EXPLICIT_LE)
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
        try:
            assoc = ae.associate(s.dicos_dest_host, s.dicos_dest_port, ae_title=s.dicos_dest_ae_title)
            if assoc.is_established:
                status = assoc.send_c_store(ds)
                assoc.release()
                code = getattr(status, "Status", None)
                if code == STATUS_SUCCESS:
                    return True
                error = f"C-STORE status {code:#06x}" if code is not None else "no C-STORE response"
            else:
                error = "association rejected or aborted" if assoc.is_rejected else "destination unreachable"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ae.shutdown()
        log.warning(
            "DICOS: TDR C-STORE failed",
            extra={"scan_id": scan_id, "study_uid": study_uid, "attempt": attempt, "error": error},
        )
        if attempt < attempts and stopping.wait(s.dicos_retry_backoff_s * 2 ** (attempt - 1)):
            break  # shutting down: no more waiting
    log.error(
        "DICOS: TDR not delivered after retries",
        extra={
            "scan_id": scan_id,
            "study_uid": study_uid,
            "destination": f"{s.dicos_dest_ae_title}@{s.dicos_dest_host}:{s.dicos_dest_port}",
            "attempts": attempts,
        },
    )
    return False
