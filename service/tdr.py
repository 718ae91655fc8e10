"""Content negotiation for a TDR answer: ``Accept: application/dicom`` on ``POST /detect`` gets the
detections as a DICOS Threat Detection Report (``xscreen.inference.pipeline.tdr_from_response``)."""

from __future__ import annotations

DICOM_MEDIA_TYPE = "application/dicom"


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
