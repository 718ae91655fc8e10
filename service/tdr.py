"""A detection response as a DICOS Threat Detection Report (HTTP ``Accept: application/dicom``, the DICOS
listener and ``xscreen detect --tdr``): one threat object per detection, referencing the scan's DX."""

from __future__ import annotations

import datetime as dt

from xscreen.scans.dicos.files import DX_FOR_PROCESSING, new_uid
from xscreen.scans.dicos.tdr import AtrIdentity, ThreatObject, write_tdr
from xscreen.service.scan_input import PreparedScan
from xscreen.service.schemas import DetectResponse

DICOM_MEDIA_TYPE = "application/dicom"


def tdr_from_response(prepared: PreparedScan, response: DetectResponse) -> bytes:
    """The TDR of ``response``; a scan that did not come as DX references freshly generated UIDs."""
    if prepared.dicos is not None:
        references, study = prepared.dicos.references(), prepared.dicos.study_uid
    else:
        references, study = [(DX_FOR_PROCESSING, new_uid()), (DX_FOR_PROCESSING, new_uid())], new_uid()
    finished = dt.datetime.now(dt.UTC)
    started = finished - dt.timedelta(seconds=float(response.timings.get("total", 0.0)))
    objects = [
        ThreatObject((d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.class_name, d.group, d.score)
        for d in response.detections
    ]
    model = response.model
    return write_tdr(
        objects,
        atr=AtrIdentity(model.name, model.version, model.sha256),
        references=references,
        study_uid=study,
        scan_id=response.scan_id,
        started=started,
        finished=finished,
    )


def wants_dicom(accept: str | None) -> bool:
    """True when the Accept header prefers application/dicom to JSON (JSON wins ties and is the default)."""
    if not accept:
        return False
    best: dict[str, float] = {}
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        best[media] = max(best.get(media, 0.0), q)
    dicom = best.get(DICOM_MEDIA_TYPE, 0.0)
    json_q = max(best.get("application/json", 0.0), best.get("application/*", 0.0), best.get("*/*", 0.0))
    return dicom > 0 and dicom > json_q
