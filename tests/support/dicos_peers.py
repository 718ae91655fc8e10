"""DICOS network peers for the listener tests: a destination SCP that keeps the TDRs it receives, one
C-STORE, and a wait for a condition (tests/service/test_dicos_network.py, test_dicos_durable.py)."""

from __future__ import annotations

import io
import queue
import time

import pydicom
from pynetdicom import AE, evt

from xscreen.scans.dicos import files
from xscreen.service.dicos_listener import register_dicos_uids


class Destination:
    """A pynetdicom storage SCP on loopback that keeps the TDRs it receives."""

    def __init__(self, port: int):
        register_dicos_uids()
        self.port, self.received = port, queue.Queue()
        self.ae = AE(ae_title="DEST")
        self.ae.add_supported_context(files.TDR_SOP_CLASS, files.EXPLICIT_LE)
        self.server = None

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        self.received.put(out.getvalue())
        return 0x0000

    def start(self) -> Destination:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        self.server.shutdown()


def store(assoc, buf: bytes) -> int:
    return int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(buf))).Status)


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
