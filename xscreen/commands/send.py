"""Send a DICOS bag (one view: a high and a low energy DX; or several views of one study) to a DICOS
listener as a scanner does, and optionally wait for the Threat Detection Report it sends back
(docs/integration.md, docs/dicos.md "Bags").

A C-STORE SCU on pynetdicom under the DICOS application context: every DX of the bag in one association,
view by view. With ``--tdr-port`` the command also runs a storage SCP for the TDR SOP class on that port;
the listener delivers TDRs to its configured destination (XSCREEN_DICOS_DEST_*), which must name this host,
port and ``--tdr-ae``.
"""

from __future__ import annotations

import argparse
import queue
from dataclasses import dataclass
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
        "Send a DICOS bag to a DICOS listener such as `xscreen serve --dicos-port`, and optionally wait for "
        "its one TDR. A bag is one study: one view (a HIGH and a LOW energy DX) or several, each view its "
        "own Series Instance UID. DICOS DX only: PNG/TIFF/.npy scans go over HTTP (POST /detect, "
        "xscreen.client)."
    )
    a = parser.add_argument
    a(
        "files",
        nargs="*",
        metavar="DX",
        help="the bag's DX files, any order: grouped into views by Series Instance UID and ordered by "
        "Image Type (HIGH/LOW), as the listener groups them; views are sent in the order their series "
        "first appear",
    )
    a("--high", action="append", help="a view's high-energy DX (repeat --high/--low per view, in order)")
    a("--low", action="append", help="a view's low-energy DX (the i-th --low goes with the i-th --high)")
    a("--host", default="127.0.0.1", help="listener host (default 127.0.0.1)")
    a("--port", type=int, default=11112, help="listener port (default 11112)")
    a("--called-ae", default="XSCREEN", help="the listener's AE title (default XSCREEN)")
    a("--calling-ae", default="SCANNER", help="this sender's AE title (default SCANNER)")
    a("--dicom-context", action="store_true", help="propose the DICOM application context, not DICOS")
    a("--tdr-port", type=int, help="wait for the TDR on this port (a storage SCP for the TDR SOP class)")
    a("--tdr-ae", default="SENDER", help="the TDR SCP's AE title (default SENDER)")
    a("--timeout", type=float, default=60.0, help="seconds to wait for the TDR (default 60)")
    a("--out", metavar="TDR.dcm", help="write the received TDR here (with --tdr-port)")


@dataclass(frozen=True)
class Bag:
    """The DX files of one bag, checked and grouped into views as the listener groups them."""

    study_uid: str
    views: list  # [DxPair], in sending order
    files: list[tuple[Path, bytes, str]]  # (path, bytes, what: e.g. "view 1 HIGH"), in sending order

    def series(self, sop_instance_uid: str) -> str | None:
        """The Series Instance UID of the view holding this DX instance (None: not in the bag)."""
        for pair in self.views:
            if sop_instance_uid in (pair.high.sop_instance_uid, pair.low.sop_instance_uid):
                return pair.high.series_uid
        return None


def _paths(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """The files to send, and whether they were given as --high/--low pairs (in view order)."""
    highs, lows = args.high or [], args.low or []
    if args.files and (highs or lows):
        raise XscreenError("give the DX files, or --high and --low pairs, not both")
    if args.files:
        if len(args.files) < 2:
            raise XscreenError(
                f"give the DX files of a bag (a HIGH and a LOW per view), not {len(args.files)}"
            )
        return [Path(f) for f in args.files], False
    if not highs and not lows:
        raise XscreenError("give the DX files of a bag, or --high and --low")
    if len(highs) != len(lows):
        raise XscreenError(
            f"{len(highs)} --high and {len(lows)} --low: each view is one --high and one --low"
        )
    return [Path(f) for pair in zip(highs, lows, strict=True) for f in pair], True


def _read_bag(paths: list[Path], paired: bool) -> Bag:
    """The files checked as one bag (one study; each view one HIGH and one LOW of one series, same size),
    grouped as the listener groups them; with ``paired`` the grouping must be the --high/--low pairs."""
    from xscreen.scans import ScanError
    from xscreen.scans.dicos.dx import dx_pair, group_views, read_dx

    raw, images = [], []
    for path in paths:
        try:
            raw.append(path.read_bytes())
        except OSError as exc:
            raise XscreenError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            images.append(read_dx(raw[-1], name=str(path)))
        except ScanError as exc:
            raise XscreenError(str(exc)) from None
    studies = list(dict.fromkeys(image.study_uid for image in images))
    if len(studies) > 1:
        raise XscreenError(f"the files belong to {len(studies)} studies; a bag is one Study Instance UID")
    where = {id(image): i for i, image in enumerate(images)}
    if paired:
        groups = [sorted(where[id(im)] for im in view) for view in group_views(images)]
        given = [[i, i + 1] for i in range(0, len(paths), 2)]
        if groups != given:
            raise XscreenError(
                "the --high/--low pairs are not the views the listener would see: it groups a bag's DX "
                "into views by Series Instance UID, so each view's two files must share a series that "
                "no other view has"
            )
    views = []
    for i, view in enumerate(group_views(images)):
        names = ", ".join(str(paths[where[id(image)]]) for image in view)
        if len(view) != 2:
            raise XscreenError(
                f"{names}: view {i} (series {view[0].series_uid or '?'}) has {len(view)} DX file(s); "
                "each view needs one HIGH and one LOW"
            )
        try:
            views.append(dx_pair(view[0], view[1]))
        except ScanError as exc:
            raise XscreenError(f"{names}: {exc}") from None
    files = [
        (paths[where[id(im)]], raw[where[id(im)]], f"view {v} {energy}")
        for v, pair in enumerate(views)
        for im, energy in ((pair.high, "HIGH"), (pair.low, "LOW"))
    ]
    return Bag(studies[0], views, files)


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


def _requested_contexts(ae, datasets) -> None:
    """One presentation context per SOP class, proposing each file's own transfer syntax and Explicit VR
    Little Endian."""
    from xscreen.scans.dicos.files import EXPLICIT_LE

    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes.setdefault(str(ds.SOPClassUID), []).append(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, found in syntaxes.items():
        ae.add_requested_context(sop_class, list(dict.fromkeys([*found, EXPLICIT_LE])))


def _store(args, bag: Bag) -> None:
    """C-STORE every DX of the bag in one association, view by view; SendError with the reason on any
    failure (the rest of the bag is then not sent)."""
    import io

    import pydicom
    import pynetdicom
    from pynetdicom import AE

    from xscreen.scans.dicos.files import DICOM_APPLICATION_CONTEXT, DICOS_APPLICATION_CONTEXT

    # pynetdicom proposes the module-wide application context name (docs/dicos.md "Network")
    context = DICOM_APPLICATION_CONTEXT if args.dicom_context else DICOS_APPLICATION_CONTEXT
    datasets = [pydicom.dcmread(io.BytesIO(buf)) for _, buf, _ in bag.files]
    ae = AE(ae_title=args.calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    _requested_contexts(ae, datasets)
    where = f"{args.called_ae}@{args.host}:{args.port}"
    _probe(args.host, args.port, where)
    proposed, pynetdicom.acse.APPLICATION_CONTEXT_NAME = pynetdicom.acse.APPLICATION_CONTEXT_NAME, context
    try:
        assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    finally:  # read while associating only: other pynetdicom users in this process keep theirs
        pynetdicom.acse.APPLICATION_CONTEXT_NAME = proposed
    one_view = len(bag.views) == 1
    try:
        if not assoc.is_established:
            if assoc.is_rejected:
                raise SendError(f"{where}: association rejected (check --called-ae and --calling-ae)")
            raise SendError(f"{where}: no association (connection refused or aborted)")
        for i, (ds, (path, _, what)) in enumerate(zip(datasets, bag.files, strict=True)):
            name = ("first", "second")[i] if one_view else f"{what} ({path.name})"
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted context for its transfer syntax
                raise SendError(f"{where}: cannot send the {name} DX: {exc}") from None
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


def _print_threats(objects, indent: str) -> None:
    for t in objects:
        x1, y1, x2, y2 = t.box
        print(f"{indent}{t.class_name:<17} {t.score:.3f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")


def _print_report(buf: bytes, bag: Bag) -> None:
    """The TDR's alarm decision and its threats: one list for one view, one list per view for a bag."""
    from xscreen.scans.dicos.tdr import read_tdr

    report = read_tdr(buf)
    scan = report.scan_id or "-"
    views = len(report.references) // 2
    if views <= 1:
        print(f"{report.alarm}: {len(report.objects)} threat(s) (scan {scan})")
        _print_threats(report.objects, "  ")
        return
    print(f"{report.alarm}: {len(report.objects)} threat(s) in {views} views (scan {scan})")
    for v in range(views):
        found = [t for t in report.objects if t.view == v]
        series = bag.series(report.references[2 * v][1]) or "?"
        print(f"  view {v} (series {series}): " + (f"{len(found)} threat(s)" if found else "no threat"))
        _print_threats(found, "    ")


def run(args: argparse.Namespace) -> int:
    """0: sent (and the TDR printed with --tdr-port); 1: not delivered or no TDR; 2: bad input."""
    bag = _read_bag(*_paths(args))
    try:
        return _send(args, bag)
    except SendError as exc:
        import sys

        print(f"xscreen send: error: {exc}", file=sys.stderr)
        return 1


def _send(args: argparse.Namespace, bag: Bag) -> int:
    _register_uids()
    import logging

    # pynetdicom logs each PDU, and each failure again: this command prints one line instead
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    server = received = None
    if args.tdr_port is not None:
        server, received = _start_tdr_scp(args, bag.study_uid)
    try:
        _store(args, bag)
        what = "DX pair" if len(bag.views) == 1 else f"bag of {len(bag.views)} views ({len(bag.files)} DX)"
        print(f"sent {what} of study {bag.study_uid} to {args.called_ae}@{args.host}:{args.port}")
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
    _print_report(tdr, bag)
    return 0
