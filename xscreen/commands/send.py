"""Send one DICOS DX scan (a high and a low energy DX) to a DICOS listener as a scanner does, and
optionally wait for the Threat Detection Report it sends back (docs/integration.md, docs/dicos.md).

A C-STORE SCU on pynetdicom under the DICOS application context. With ``--tdr-port`` the command also
runs a storage SCP for the TDR SOP class on that port; the listener delivers TDRs to its configured
destination (XSCREEN_DICOS_DEST_*), which must name this host, port and ``--tdr-ae``.
"""

from __future__ import annotations

import argparse
import queue
from pathlib import Path

from xscreen.errors import XscreenError


class SendError(Exception):
    """The scan or its TDR did not go through (network, peer, timeout): exit status 1."""


DICOS_KEYWORDS = {
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOSDigitalXRayImageStorageForPresentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOSDigitalXRayImageStorageForProcessing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOSThreatDetectionReportStorage",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send one DICOS DX scan (two DX files, one HIGH and one LOW energy) to a DICOS listener such as "
        "`xscreen serve --dicos-port`, and optionally wait for its TDR. DICOS DX only: PNG/TIFF/.npy "
        "scans go over HTTP (POST /detect, xscreen.client)."
    )
    a = parser.add_argument
    a("files", nargs="*", metavar="DX", help="two DX files, ordered by their Image Type (HIGH/LOW)")
    a("--high", help="high-energy DX file (instead of the two positional files)")
    a("--low", help="low-energy DX file")
    a("--host", default="127.0.0.1", help="listener host (default 127.0.0.1)")
    a("--port", type=int, default=11112, help="listener port (default 11112)")
    a("--called-ae", default="XSCREEN", help="the listener's AE title (default XSCREEN)")
    a("--calling-ae", default="SCANNER", help="this sender's AE title (default SCANNER)")
    a("--dicom-context", action="store_true", help="propose the DICOM application context, not DICOS")
    a("--tdr-port", type=int, help="wait for the TDR on this port (a storage SCP for the TDR SOP class)")
    a("--tdr-ae", default="SENDER", help="the TDR SCP's AE title (default SENDER)")
    a("--timeout", type=float, default=60.0, help="seconds to wait for the TDR (default 60)")
    a("--out", metavar="TDR.dcm", help="write the received TDR here (with --tdr-port)")


def _files(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.files and (args.high or args.low):
        raise XscreenError("give two DX files or --high and --low, not both")
    if args.files:
        if len(args.files) != 2:
            raise XscreenError(f"give two DX files (a HIGH and a LOW energy), not {len(args.files)}")
        return Path(args.files[0]), Path(args.files[1])
    if not (args.high and args.low):
        raise XscreenError("give two DX files, or --high and --low")
    return Path(args.high), Path(args.low)


def _read_pair(paths: tuple[Path, Path]):
    """The two files' bytes, checked as one DX scan (same study, one HIGH, one LOW, same size)."""
    from xscreen.scans import ScanError
    from xscreen.scans.dicos.dx import read_dx_pair

    raw = []
    for path in paths:
        try:
            raw.append(path.read_bytes())
        except OSError as exc:
            raise XscreenError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        pair = read_dx_pair(raw[0], raw[1])
    except ScanError as exc:
        raise XscreenError(f"{paths[0]}, {paths[1]}: {exc}") from None
    return pair, raw


def _register_uids() -> None:
    """Make the DICOS storage SOP classes known to pynetdicom (it ships without them)."""
    from pynetdicom import sop_class
    from pynetdicom.service_class import StorageServiceClass

    for uid, keyword in DICOS_KEYWORDS.items():
        if not hasattr(sop_class, keyword):
            sop_class.register_uid(uid, keyword, StorageServiceClass)


def _start_tdr_scp(args, study_uid: str):
    """A storage SCP for TDRs on --tdr-port; TDRs of ``study_uid`` arrive in the returned queue."""
    import io

    from pynetdicom import AE, evt

    from xscreen.scans.dicos.files import EXPLICIT_LE, IMPLICIT_LE, TDR_SOP_CLASS

    received: queue.Queue[bytes] = queue.Queue()

    def on_store(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if str(getattr(ds, "StudyInstanceUID", "")) == study_uid:
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            received.put(out.getvalue())
        return 0x0000

    ae = AE(ae_title=args.tdr_ae)
    ae.add_supported_context(TDR_SOP_CLASS, [EXPLICIT_LE, IMPLICIT_LE])
    try:
        server = ae.start_server(
            ("0.0.0.0", args.tdr_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
    except OSError as exc:
        raise XscreenError(f"--tdr-port {args.tdr_port}: cannot listen ({exc.strerror or exc})") from None
    return server, received


def _probe(host: str, port: int, where: str) -> None:
    """Connect once before associating, so a peer that is not there is named as such."""
    import socket

    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise SendError(f"{where}: cannot connect ({exc.strerror or exc})") from None


def _store(args, pair, raw: list[bytes]) -> None:
    """C-STORE both DX files in one association; raise XscreenError with the reason on any failure."""
    import io

    import pydicom
    import pynetdicom
    from pynetdicom import AE

    from xscreen.scans.dicos.files import DICOM_APPLICATION_CONTEXT, DICOS_APPLICATION_CONTEXT, EXPLICIT_LE

    # pynetdicom proposes the module-wide application context name (docs/dicos.md "Network")
    context = DICOM_APPLICATION_CONTEXT if args.dicom_context else DICOS_APPLICATION_CONTEXT
    datasets = [pydicom.dcmread(io.BytesIO(buf)) for buf in raw]
    ae = AE(ae_title=args.calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    for ds in datasets:
        syntaxes = list(dict.fromkeys([str(ds.file_meta.TransferSyntaxUID), EXPLICIT_LE]))
        ae.add_requested_context(str(ds.SOPClassUID), syntaxes)
    where = f"{args.called_ae}@{args.host}:{args.port}"
    _probe(args.host, args.port, where)
    proposed, pynetdicom.acse.APPLICATION_CONTEXT_NAME = pynetdicom.acse.APPLICATION_CONTEXT_NAME, context
    try:
        assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    finally:  # read while associating only: other pynetdicom users in this process keep theirs
        pynetdicom.acse.APPLICATION_CONTEXT_NAME = proposed
    try:
        if not assoc.is_established:
            if assoc.is_rejected:
                raise SendError(f"{where}: association rejected (check --called-ae and --calling-ae)")
            raise SendError(f"{where}: no association (connection refused or aborted)")
        for ds, name in zip(datasets, ("first", "second"), strict=True):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{where}: no C-STORE response for the {name} DX (association lost)")
            if int(code) != 0x0000:
                raise SendError(f"{where}: C-STORE of the {name} DX failed with status {int(code):#06x}")
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


def _print_report(buf: bytes) -> None:
    from xscreen.scans.dicos.tdr import read_tdr

    report = read_tdr(buf)
    print(f"{report.alarm}: {len(report.objects)} threat(s) (scan {report.scan_id or '-'})")
    for t in report.objects:
        x1, y1, x2, y2 = t.box
        print(f"  {t.class_name:<17} {t.score:.3f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")


def run(args: argparse.Namespace) -> int:
    """0: sent (and the TDR printed with --tdr-port); 1: not delivered or no TDR; 2: bad input."""
    pair, raw = _read_pair(_files(args))
    try:
        return _send(args, pair, raw)
    except SendError as exc:
        import sys

        print(f"xscreen send: error: {exc}", file=sys.stderr)
        return 1


def _send(args: argparse.Namespace, pair, raw: list[bytes]) -> int:
    _register_uids()
    import logging

    # pynetdicom logs each PDU, and each failure again: this command prints one line instead
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    server = received = None
    if args.tdr_port is not None:
        server, received = _start_tdr_scp(args, pair.study_uid)
    try:
        _store(args, pair, raw)
        print(f"sent DX pair of study {pair.study_uid} to {args.called_ae}@{args.host}:{args.port}")
        if received is None:
            return 0
        try:
            tdr = received.get(timeout=args.timeout)
        except queue.Empty:
            raise SendError(f"no TDR received on port {args.tdr_port} within {args.timeout:g} s") from None
    finally:
        if server is not None:
            server.shutdown()
    if args.out:
        try:
            Path(args.out).write_bytes(tdr)
        except OSError as exc:
            raise XscreenError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    _print_report(tdr)
    return 0
