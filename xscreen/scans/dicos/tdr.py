"""DICOS Threat Detection Reports (TDR): the detections of one DX scan written as a report, and read back."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from xscreen.scans.dicos.files import (
    EXPLICIT_LE,
    TDR_SOP_CLASS,
    add_equipment,
    base_dataset,
    new_uid,
    parse_dicom,
    to_bytes,
    utc_now,
)
from xscreen.scans.formats import ScanError

# DICOS tags that pydicom's dictionary lacks or types differently (docs/dicos.md, "Facts").
TAG_IMAGE_SCALE_REPRESENTATION = 0x40101075  # FD, though pydicom's dictionary says DS
TAG_PTO_PROCESSING_START = 0x40101080  # DT
TAG_PTO_PROCESSING_END = 0x40101081  # DT
TAG_PTO_PROCESSING_TIME = 0x40101082  # FL, milliseconds


@dataclass(frozen=True)
class ThreatObject:
    """One potential threat object (PTO): a box in the scan's pixels, its class and score."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    class_name: str
    group: str
    score: float
    view: int = 0  # the bag's view the box is drawn on (its DX are view_references[view] in write_tdr)


@dataclass(frozen=True)
class AtrIdentity:
    """The algorithm named in a TDR (4010,1029): the model's name, version and weights sha256."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class TdrReport:
    """What ``read_tdr`` gives back of a TDR."""

    objects: list[ThreatObject]
    alarm: str  # ALARM / CLEAR
    tdr_type: str
    algorithm: list[str]
    references: list[tuple[str, str]]  # (SOP class, SOP instance) of the scan's images, every view's
    study_uid: str
    scan_id: str


def tdr_type_term(tdr_type: str) -> str:
    """A TDR type as the standard spells it: ``GROUND_TRUTH`` is written ``GROUND TRUTH``."""
    return tdr_type.strip().upper().replace("_", " ")


def _references(references: Sequence[tuple[str, str]]):
    """A sequence of (SOP class, SOP instance) items: (0008,1150) and (0008,1155)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    return DicomSequence(items)


def _algorithm_values(atr: AtrIdentity) -> list[str]:
    """(4010,1029) LO values: name, version and weights sha256, each cut into pieces of <= 64 characters.

    A value field of odd length gets a pad space after its last value, which makes a 64-character sha256
    65 long for pydicom and DICOS readers; an insignificant trailing space on an earlier value evens it."""
    values = []
    for text in (atr.name, atr.version, atr.sha256):
        values += [text[i : i + 64] for i in range(0, len(text), 64)] or [""]
    if len("\\".join(values)) % 2 and len(values[-1]) == 64:
        short = next((i for i, v in enumerate(values[:-1]) if len(v) < 64), None)
        if short is not None:
            values[short] += " "
    return values


def _threat_item(i: int, obj: ThreatObject, references, times: tuple[str, str, float]):
    """One Threat Sequence (4010,1011) item: the box on the referenced DX, its assessment and timings."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    x1, y1, x2, y2 = (float(v) for v in obj.box)
    voxel = Dataset()
    voxel.ThreatROIBase = [x1, y1, 0.0]
    voxel.ThreatROIExtents = [x2 - x1, y2 - y1, 1.0]
    voxel.ThreatROIBitmap = b""
    locator = Dataset()
    locator.AnomalyLocatorIndicator = [(x1 + x2) / 2.0, (y1 + y2) / 2.0, 0.0]  # the box's centre
    rep = Dataset()
    rep.ReferencedInstanceSequence = _references(references)
    rep.ThreatROIVoxelSequence = DicomSequence([voxel])
    rep.AnomalyLocatorIndicatorSequence = DicomSequence([locator])
    assessment = Dataset()
    assessment.ThreatCategory = "PI"  # prohibited item
    assessment.ThreatCategoryDescription = f"{obj.class_name} ({obj.group})"
    assessment.ATDAbilityAssessment = "NO_INTERFERENCE"
    assessment.ATDAssessmentFlag = "THREAT"
    assessment.ATDAssessmentProbability = float(obj.score)
    pto = Dataset()
    pto.PotentialThreatObjectID = i
    pto.OOIType = "BAGGAGE"
    pto.PTORepresentationSequence = DicomSequence([rep])
    pto.ATDAssessmentSequence = DicomSequence([assessment])
    pto.add_new(TAG_PTO_PROCESSING_START, "DT", times[0])
    pto.add_new(TAG_PTO_PROCESSING_END, "DT", times[1])
    pto.add_new(TAG_PTO_PROCESSING_TIME, "FL", times[2])
    return pto


def write_tdr(
    objects: Sequence[ThreatObject],
    *,
    atr: AtrIdentity,
    references: Sequence[tuple[str, str]],
    study_uid: str,
    view_references: Sequence[Sequence[tuple[str, str]]] | None = None,
    scan_id: str = "",
    tdr_type: str = "MACHINE",
    started: dt.datetime | None = None,
    finished: dt.datetime | None = None,
) -> bytes:
    """A DICOS TDR (bytes) with one threat object per entry of ``objects``.

    The alarm decision is ALARM when any object is reported (the caller passes only those at or above
    its threshold), CLEAR otherwise. ``references`` are the DX instances of the whole scan (every view of
    a bag); ``view_references[v]``, when given, those of view ``v``, which a threat object of that view
    references (docs/dicos.md, "Bags"); without it each object references all of ``references``. Every
    attribute of the conformance table (``xscreen.scans.dicos.conformance``) is written.
    """
    from pydicom.sequence import Sequence as DicomSequence

    finished = finished or utc_now()
    started = started or finished
    ms = max(0.0, (finished - started).total_seconds() * 1000.0)
    t0, t1 = started.strftime("%Y%m%d%H%M%S.%f"), finished.strftime("%Y%m%d%H%M%S.%f")

    times = (t0, t1, ms)
    ds = base_dataset(TDR_SOP_CLASS, new_uid(), EXPLICIT_LE)
    ds.Modality = "TDR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, new_uid()
    ds.PatientID = scan_id or study_uid[-16:]
    ds.PatientName = ""
    ds.SeriesNumber, ds.InstanceNumber = 2, 1
    add_equipment(ds, f"{atr.name} {atr.version}")
    ds.ReferencedStudySequence = _references(references)  # DICOS: Referenced Scans Sequence
    ds.TDRType = tdr_type_term(tdr_type)
    ds.ThreatDetectionAlgorithmAndVersion = _algorithm_values(atr)
    ds.AlarmDecision = "ALARM" if objects else "CLEAR"
    ds.AlarmDecisionTime = t1
    ds.AbortFlag = "SUCCESS"
    ds.AdditionalScreeningPerformed = "NO"
    ds.NumberOfTotalObjects = len(objects)
    ds.NumberOfAlarmObjects = len(objects)
    ds.add_new(TAG_IMAGE_SCALE_REPRESENTATION, "FD", 1.0)
    ds.AlgorithmRoutingCodeSequence = []
    ds.ReferencedInstanceSequence = _references(references)
    ds.TotalProcessingTime = ms
    ds.ThreatSequence = DicomSequence(
        [
            _threat_item(i, obj, references if view_references is None else view_references[obj.view], times)
            for i, obj in enumerate(objects)
        ]
    )
    return to_bytes(ds)


_DESCRIPTION = re.compile(r"^(?P<name>.*?)(?: \((?P<group>[^()]*)\))?$")


def _view_of(representation, references: list[tuple[str, str]]) -> int:
    """The view a threat object is drawn on: xscreen lists each view's two DX (high, low) in turn among the
    report's references, so the first image the object references, at position p, is view p // 2."""
    refs = representation.get("ReferencedInstanceSequence") or []
    if not refs or len(refs) == len(references):  # one view, or an object referencing the whole scan
        return 0
    first = (str(refs[0].ReferencedSOPClassUID), str(refs[0].ReferencedSOPInstanceUID))
    return references.index(first) // 2 if first in references else 0


def read_tdr(buf: bytes) -> TdrReport:
    """The threat objects, alarm decision and references of a TDR written by ``write_tdr``."""
    ds = parse_dicom(buf, "TDR", False)
    if str(ds.get("SOPClassUID", "")) != TDR_SOP_CLASS:
        raise ScanError(f"not a DICOS TDR (SOP class {ds.get('SOPClassUID', 'missing')})")
    references = [
        (str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
        for r in ds.get("ReferencedInstanceSequence", [])
    ]
    objects = []
    for pto in ds.get("ThreatSequence", []):
        representation = pto.PTORepresentationSequence[0]
        voxel = representation.ThreatROIVoxelSequence[0]
        x0, y0, _ = (float(v) for v in voxel.ThreatROIBase)
        w, h, _ = (float(v) for v in voxel.ThreatROIExtents)
        assessment = pto.ATDAssessmentSequence[0]
        match = _DESCRIPTION.match(str(assessment.get("ThreatCategoryDescription", "")))
        assert match is not None  # the pattern matches any string
        objects.append(
            ThreatObject(
                box=(x0, y0, x0 + w, y0 + h),
                class_name=match["name"],
                group=match["group"] or "",
                score=float(assessment.ATDAssessmentProbability),
                view=_view_of(representation, references),
            )
        )
    algorithm = ds.get("ThreatDetectionAlgorithmAndVersion") or []
    return TdrReport(
        objects=objects,
        alarm=str(ds.get("AlarmDecision", "")),
        tdr_type=str(ds.get("TDRType", "")),
        algorithm=[algorithm] if isinstance(algorithm, str) else [str(a) for a in algorithm],
        references=references,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        scan_id=str(ds.get("PatientID", "")),
    )
