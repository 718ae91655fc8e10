"""A conformance check of DICOS TDR and DX files against a table of their IODs' modules and attributes.

The table is written from what the public record gives of NEMA IIC 1 v03 (the TDR and DX IODs): the
attributes that the DICOS toolkit (Stratovan SDICOS) requires when it loads a TDR, the attribute list
of a TDR that toolkit writes (both in issue #27), and the DICOM PS3.3 modules that DICOS reuses
(SOP Common, General Equipment, Frame of Reference, Image Pixel). docs/dicos.md, "Conformance", lists
it with its sources and what is not covered. Each row: tag, keyword, module, type (1, 1C, 2, 2C, 3),
VR, the condition of a 1C/2C row, the values accepted (if enumerated), and the rows of a sequence's items.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from xscreen.scans.dicos.files import DX_SOP_CLASSES, TDR_SOP_CLASS


@dataclass(frozen=True)
class Attr:
    """One row of an IOD's table."""

    tag: int
    keyword: str
    module: str
    type: str  # "1", "1C", "2", "2C", "3"
    vr: str
    condition: Callable | None = None  # for 1C / 2C: required when condition(dataset) holds
    values: tuple[str, ...] = ()  # enumerated values (any value accepted when empty)
    items: tuple[Attr, ...] = field(default=())  # rows of each item of a sequence


@dataclass(frozen=True)
class Problem:
    """One attribute missing or malformed: where (tag path), what, its type, and why."""

    tag: str
    keyword: str
    type: str
    why: str

    def __str__(self) -> str:
        return f"{self.tag} {self.keyword} (Type {self.type}): {self.why}"


def _a(tag, keyword, module, type_, vr, values=(), items=(), condition=None) -> Attr:
    return Attr(tag, keyword, module, type_, vr, condition, tuple(values), tuple(items))


def _is_tdr(ds) -> bool:
    return str(ds.get("Modality", "")) == "TDR"


def _has_threats(ds) -> bool:
    return int(ds.get("NumberOfTotalObjects", 0) or 0) > 0


_REFERENCE = (
    _a(0x00081150, "ReferencedSOPClassUID", "SOP Reference", "1", "UI"),
    _a(0x00081155, "ReferencedSOPInstanceUID", "SOP Reference", "1", "UI"),
)

# Modules both IODs share: SOP Common, Object of Inspection (DICOS' patient module), General Scan
# (DICOS' study), General Series, Frame of Reference, General Equipment.
COMMON: tuple[Attr, ...] = (
    _a(0x00080016, "SOPClassUID", "SOP Common", "1", "UI"),
    _a(0x00080018, "SOPInstanceUID", "SOP Common", "1", "UI"),
    _a(0x00080012, "InstanceCreationDate", "SOP Common", "1", "DA"),
    _a(0x00080013, "InstanceCreationTime", "SOP Common", "1", "TM"),
    _a(0x4010103A, "DICOSVersion", "SOP Common", "1", "CS", ("V03",)),
    _a(0x00100010, "PatientName", "Object of Inspection", "2", "PN"),
    _a(0x00100020, "PatientID", "Object of Inspection (OOI ID)", "1", "LO"),
    _a(0x00100021, "IssuerOfPatientID", "Object of Inspection (OOI ID issuer)", "1", "LO"),
    _a(
        0x00100022,
        "TypeOfPatientID",
        "Object of Inspection (OOI ID Type)",
        "1",
        "CS",
        ("TEXT", "RFID", "BARCODE"),
    ),
    _a(0x00100040, "PatientSex", "Object of Inspection (OOI gender)", "2", "CS", ("M", "F", "O", "U")),
    _a(0x00101002, "OtherPatientIDsSequence", "Object of Inspection (alternate OOI IDs)", "2", "SQ"),
    _a(0x40101042, "OOIType", "Object of Inspection", "1", "CS"),
    _a(0x0020000D, "StudyInstanceUID", "General Scan", "1", "UI"),
    _a(0x00080020, "StudyDate", "General Scan", "1", "DA"),
    _a(0x00080030, "StudyTime", "General Scan", "1", "TM"),
    _a(0x00200010, "StudyID", "General Scan (Scan ID)", "1", "SH"),
    _a(0x40101048, "ScanType", "General Scan", "1", "CS"),
    _a(0x00080060, "Modality", "General Series", "1", "CS"),
    _a(0x0020000E, "SeriesInstanceUID", "General Series", "1", "UI"),
    _a(0x00200011, "SeriesNumber", "General Series", "2", "IS"),
    _a(0x00080021, "SeriesDate", "General Series", "1", "DA"),
    _a(0x00080031, "SeriesTime", "General Series", "1", "TM"),
    _a(0x40101044, "AcquisitionStatus", "General Series (Series Acquisition Status)", "1", "CS"),
    _a(0x00200052, "FrameOfReferenceUID", "Frame of Reference", "1", "UI"),
    _a(0x00201040, "PositionReferenceIndicator", "Frame of Reference", "2", "LO"),
    _a(0x00080070, "Manufacturer", "General Equipment", "1", "LO"),
    _a(0x00080080, "InstitutionName", "General Equipment", "2", "LO"),
    _a(0x00080081, "InstitutionAddress", "General Equipment", "2", "ST"),
    _a(0x00081010, "StationName", "General Equipment (Machine ID)", "1", "SH"),
    _a(0x00081040, "InstitutionalDepartmentName", "General Equipment", "2", "LO"),
    _a(0x00081090, "ManufacturerModelName", "General Equipment", "1", "LO"),
    _a(0x00181000, "DeviceSerialNumber", "General Equipment", "1", "LO"),
    _a(0x00181020, "SoftwareVersions", "General Equipment", "1", "LO"),
    _a(0x00181200, "DateOfLastCalibration", "General Equipment", "2", "DA"),
    _a(0x00181201, "TimeOfLastCalibration", "General Equipment", "2", "TM"),
    _a(0x00200013, "InstanceNumber", "General Image / TDR Series", "1", "IS"),
    _a(0x00080023, "ContentDate", "General Image / TDR", "1", "DA"),
    _a(0x00080033, "ContentTime", "General Image / TDR", "1", "TM"),
)

_VOXEL = (
    _a(0x40101004, "ThreatROIBase", "TDR (threat ROI)", "1", "FL"),
    _a(0x40101005, "ThreatROIExtents", "TDR (threat ROI)", "1", "FL"),
    _a(0x40101006, "ThreatROIBitmap", "TDR (threat ROI)", "2", "OB"),
)
_PTO_REPRESENTATION = (
    _a(0x0008114A, "ReferencedInstanceSequence", "TDR (PTO representation)", "1", "SQ", items=_REFERENCE),
    _a(0x40101001, "ThreatROIVoxelSequence", "TDR (PTO representation)", "1", "SQ", items=_VOXEL),
    _a(
        0x40101079,
        "AnomalyLocatorIndicatorSequence",
        "TDR (PTO representation)",
        "1",
        "SQ",
        items=(_a(0x4010107A, "AnomalyLocatorIndicator", "TDR (anomaly locator)", "1", "FL"),),
    ),
)
_ASSESSMENT = (
    _a(0x40101012, "ThreatCategory", "TDR (assessment)", "1", "CS"),
    _a(0x40101013, "ThreatCategoryDescription", "TDR (assessment)", "2", "LT"),
    _a(0x40101014, "ATDAbilityAssessment", "TDR (assessment)", "1", "CS"),
    _a(0x40101015, "ATDAssessmentFlag", "TDR (assessment)", "1", "CS", ("THREAT", "NO_THREAT", "UNKNOWN")),
    _a(0x40101016, "ATDAssessmentProbability", "TDR (assessment)", "2", "FL"),
)
_THREAT = (
    _a(0x40101010, "PotentialThreatObjectID", "TDR (threat object)", "1", "US"),
    _a(0x40101042, "OOIType", "TDR (threat object)", "1", "CS"),
    _a(0x40101037, "PTORepresentationSequence", "TDR (threat object)", "1", "SQ", items=_PTO_REPRESENTATION),
    _a(0x40101038, "ATDAssessmentSequence", "TDR (threat object)", "1", "SQ", items=_ASSESSMENT),
    _a(0x40101080, "(PTO processing start)", "TDR (threat object)", "2", "DT"),
    _a(0x40101081, "(PTO processing end)", "TDR (threat object)", "2", "DT"),
    _a(0x40101082, "(PTO processing time)", "TDR (threat object)", "2", "FL"),
)

# The TDR IOD: the common modules, the Referenced Scans Sequence, and the TDR module.
TDR: tuple[Attr, ...] = COMMON + (
    _a(0x00081110, "ReferencedStudySequence", "General Scan (Referenced Scans)", "1C", "SQ",
       items=_REFERENCE, condition=_is_tdr),
    _a(0x40101027, "TDRType", "TDR", "1", "CS", ("MACHINE", "OPERATOR", "GROUND TRUTH")),
    _a(0x40101029, "ThreatDetectionAlgorithmAndVersion", "TDR", "1C", "LO",
       condition=lambda ds: str(ds.get("TDRType", "")) == "MACHINE"),
    _a(0x40101031, "AlarmDecision", "TDR", "1", "CS", ("ALARM", "CLEAR", "UNKNOWN")),
    _a(0x4010102B, "AlarmDecisionTime", "TDR", "1", "DT"),
    _a(0x40101024, "AbortFlag", "TDR", "1", "CS", ("SUCCESS", "ABORT")),
    _a(0x4010106D, "AdditionalScreeningPerformed", "TDR", "1", "CS", ("YES", "NO")),
    _a(0x40101033, "NumberOfTotalObjects", "TDR", "1", "US"),
    _a(0x40101034, "NumberOfAlarmObjects", "TDR", "1", "US"),
    _a(0x40101075, "(Image Scale Representation)", "TDR", "1", "FD"),
    _a(0x40101069, "TotalProcessingTime", "TDR", "2", "FL"),
    _a(0x40101064, "AlgorithmRoutingCodeSequence", "TDR", "2", "SQ"),
    _a(0x40101011, "ThreatSequence", "TDR", "1C", "SQ", items=_THREAT, condition=_has_threats),
)  # fmt: skip

# The DX IOD: the common modules and the DX image and pixel modules.
DX: tuple[Attr, ...] = COMMON + (
    _a(0x00080008, "ImageType", "DX Image", "1", "CS"),
    _a(0x00080068, "PresentationIntentType", "DX Series", "1", "CS", ("FOR PROCESSING", "FOR PRESENTATION")),
    _a(0x00280002, "SamplesPerPixel", "Image Pixel", "1", "US"),
    _a(0x00280004, "PhotometricInterpretation", "Image Pixel", "1", "CS", ("MONOCHROME1", "MONOCHROME2")),
    _a(0x00280010, "Rows", "Image Pixel", "1", "US"),
    _a(0x00280011, "Columns", "Image Pixel", "1", "US"),
    _a(0x00280100, "BitsAllocated", "Image Pixel", "1", "US"),
    _a(0x00280101, "BitsStored", "Image Pixel", "1", "US"),
    _a(0x00280102, "HighBit", "Image Pixel", "1", "US"),
    _a(0x00280103, "PixelRepresentation", "Image Pixel", "1", "US"),
    _a(0x00281040, "PixelIntensityRelationship", "DX Image", "1", "CS"),
    _a(0x7FE00010, "PixelData", "Image Pixel", "1", "OB or OW"),
)

# Maximum value length per VR (PS3.5 table 6.2-1), in characters of one value.
MAX_LENGTH = {"AE": 16, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
              "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64}  # fmt: skip
_TEXT = ("LT", "ST", "UT")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NUMBER_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}


def table_for(ds) -> tuple[str, tuple[Attr, ...]] | None:
    """("TDR" or "DX", its table) for the dataset's SOP class; None for any other."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == TDR_SOP_CLASS:
        return "TDR", TDR
    if sop_class in DX_SOP_CLASSES:
        return "DX", DX
    return None


def check(ds) -> list[Problem]:
    """Every attribute of the dataset's IOD table that is missing or malformed (empty list: conformant)."""
    found = table_for(ds)
    if found is None:
        return [
            Problem(
                "(0008,0016)",
                "SOPClassUID",
                "1",
                f"not a DICOS TDR or DX SOP class ({ds.get('SOPClassUID', 'missing')})",
            )
        ]
    log = logging.getLogger("pydicom")
    level = log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warnings (and log lines): reported here as problems
        log.setLevel(logging.ERROR)
        try:
            problems = _check_rows(ds, found[1], "")
        finally:
            log.setLevel(level)
        meta = getattr(ds, "file_meta", None)
        media = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
        if media and media != str(ds.get("SOPClassUID", "")):
            problems.append(
                Problem("(0002,0002)", "MediaStorageSOPClassUID", "1", "differs from SOP Class UID")
            )
    return problems


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_rows(ds, rows: tuple[Attr, ...], path: str) -> list[Problem]:
    problems: list[Problem] = []
    for row in rows:
        where = f"{path}{_tag(row.tag)}"
        for why in _row_problems(ds, row):
            problems.append(Problem(where, row.keyword, row.type, why))
        elem = ds.get(row.tag)
        if elem is not None and elem.VR == "SQ" and row.items:
            for i, item in enumerate(elem.value or []):
                problems += _check_rows(item, row.items, f"{where}[{i}]")
    return problems


def _row_problems(ds, row: Attr) -> list[str]:
    """Why one row's attribute in ``ds`` (not its items) is missing or malformed."""
    conditional = row.type in ("1C", "2C")
    required = row.type in ("1", "2") or (conditional and row.condition is not None and row.condition(ds))
    if row.tag not in ds:
        return ["missing" + (" (its condition holds)" if conditional else "")] if required else []
    stored = _stored_values(ds.get_item(row.tag))  # before ds[tag] converts (and strips) the raw bytes
    elem = ds[row.tag]
    if elem.VR not in row.vr.split(" or "):
        return [f"VR is {elem.VR}, the standard's is {row.vr}"]
    value = elem.value
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        needs_value = row.type == "1" or (row.type == "1C" and required)
        return [f"empty (a Type {row.type} attribute needs a value)"] if needs_value else []
    return _value_problems(elem, row, stored)


def _stored_values(raw) -> list[str] | None:
    """The values of a raw (unconverted) string element as stored, padding included: a last value of 64
    characters padded to an even length is 65 long, as pydicom's read-time check and DICOS readers see it."""
    data = getattr(raw, "value", None)
    if not isinstance(data, bytes) or getattr(raw, "VR", None) not in MAX_LENGTH:
        return None
    return data.decode("latin-1").rstrip("\x00").split("\\")


def _value_problems(elem, row: Attr, stored: list[str] | None) -> list[str]:
    """Why the element's values break its VR's rules or the row's enumerated values."""
    vr = elem.VR
    if vr == "SQ" or vr.startswith("O") or vr in _NUMBER_SIZE:
        return []
    values = [elem.value] if isinstance(elem.value, str | int | float) or vr in _TEXT else list(elem.value)
    texts = [str(v) for v in values]
    why: list[str] = []
    limit = MAX_LENGTH.get(vr)
    for text in stored if stored is not None else texts:
        if limit is not None and len(text) > limit:
            why.append(f"value length {len(text)} exceeds {limit} for VR {vr}: {text[:24]!r}...")
    for text in texts:
        if vr == "CS" and not _CS.match(text):
            why.append(f"{text!r} is not a CS value (upper-case letters, digits, space, underscore)")
        if vr == "UI" and not _UID.match(text):
            why.append(f"{text!r} is not a valid UID (digits and dots, no leading zeros)")
        if row.values and text not in row.values:
            why.append(f"{text!r} is not one of {', '.join(row.values)}")
    return why
