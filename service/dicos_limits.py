"""Size limits of the DICOS listener, enforced while the bytes arrive (docs/dicos.md "Limits").

pynetdicom reads each PDU whole (its announced length, up to 4 GiB) and gathers a DIMSE message's
fragments in memory; nothing there bounds either. ``bounded_request_handler`` refuses to read a PDU longer
than ``PDU_READ_LIMIT``; ``ByteLimits`` counts P-DATA bytes per message and per association as each PDU
is decoded (``EVT_PDU_RECV``) and aborts the association past a limit, before the message is whole.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

log = logging.getLogger("xscreen.service.dicos")

# What this SCP reads at once: P-DATA PDUs up to MAX_PDU_BYTES (advertised in the A-ASSOCIATE-AC); a PDU
# whose header announces more than PDU_READ_LIMIT is not read: the connection is closed at its header.
MAX_PDU_BYTES = 256 * 1024
PDU_READ_LIMIT = 1024 * 1024


@dataclass
class _Received:
    """Bytes one association has sent so far: in all, and in the DIMSE message now arriving."""

    total: int = 0
    message: int = 0
    aborted: bool = False


class ByteLimits:
    """Counts P-DATA bytes as the PDUs arrive (EVT_PDU_RECV) and aborts an association past a limit."""

    def __init__(self, dataset_limit: int, association_limit: int, metrics):
        self.dataset_limit, self.association_limit, self.metrics = dataset_limit, association_limit, metrics
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def on_pdu(self, event) -> None:
        from pynetdicom.pdu import P_DATA_TF

        if not isinstance(event.pdu, P_DATA_TF):
            return
        with self._lock:
            seen = self._seen.setdefault(event.assoc, _Received())
        for item in event.pdu.presentation_data_value_items:
            data = item.presentation_data_value or b""
            seen.total += len(data)
            seen.message += len(data)
            if seen.message > self.dataset_limit:
                self._abort(event.assoc, seen, "dataset_bytes", self.dataset_limit)
            elif seen.total > self.association_limit:
                self._abort(event.assoc, seen, "association_bytes", self.association_limit)
            if data and data[0] & 2:  # the last fragment of a command set or a dataset
                seen.message = 0

    def _abort(self, assoc, seen: _Received, reason: str, limit: int) -> None:
        if seen.aborted:
            return
        seen.aborted = True
        self.metrics.dicos_aborted.labels(reason=reason).inc()
        log.warning(
            "DICOS association aborted: size limit",
            extra={
                "calling_ae": str(assoc.requestor.ae_title).strip(),
                "limit": reason,
                "limit_bytes": limit,
            },
        )
        assoc.abort()  # non-blocking inside an event handler (pynetdicom)

    def exceeded(self, assoc) -> bool:
        with self._lock:
            seen = self._seen.get(assoc)
        return seen is not None and seen.aborted


def bounded_request_handler(metrics):
    """A pynetdicom request handler whose socket refuses to read a PDU longer than PDU_READ_LIMIT."""
    from pynetdicom.transport import RequestHandler

    class BoundedRequestHandler(RequestHandler):
        def _create_association(self):
            assoc = super()._create_association()
            sock = assoc.dul.socket
            read = sock.recv

            def recv(nr_bytes: int) -> bytearray:
                if nr_bytes > PDU_READ_LIMIT:  # pynetdicom reads a PDU's whole announced length at once
                    metrics.dicos_aborted.labels(reason="pdu_bytes").inc()
                    log.warning(
                        "DICOS association closed: PDU too long",
                        extra={"pdu_bytes": nr_bytes, "limit_bytes": PDU_READ_LIMIT},
                    )
                    raise OSError(f"PDU of {nr_bytes} bytes is over the {PDU_READ_LIMIT} byte limit")
                return read(nr_bytes)

            sock.recv = recv
            return assoc

    return BoundedRequestHandler
