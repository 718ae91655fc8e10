"""DICOS (NEMA IIC 1) files: a dual-energy pair of DX images in, a Threat Detection Report (TDR) out.

Every tag read and written is listed in docs/dicos.md. pydicom (MIT) parses and writes the files;
compressed pixel data is decoded by imagecodecs (BSD-3: libjpeg-turbo for JPEG Lossless process 14,
CharLS for JPEG-LS, its PackBits decoder for RLE Lossless segments); no GPL decoder is used. Decoding
is bounded (xscreen.scans.bounded): a deflated dataset inflates in capped steps, and an encapsulated
frame's own header must match Rows x Columns before any decoder runs.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xscreen.scans.bounded import (
    check_deadline,
    check_jpeg_frame,
    decode_rle_frame,
    deflate_cap,
    encapsulated_frame,
    inflate_capped,
)
from xscreen.scans.formats import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    ScanError,
    ScanSizeMismatchError,
    UnsupportedScanFormatError,
    check_size,
)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.501.2.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.501.2.2"
DX_SOP_CLASSES = (DX_FOR_PROCESSING, DX_FOR_PRESENTATION)
TDR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.3"
DICOS_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.1"
DICOS_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1.3"
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
DICOS_VERSION = "V03"  # file meta (0002,0004), as the Stratovan toolkit expects (docs/dicos.md)
MODALITY_DX = "XRAY"
DICOM_PREAMBLE_OFFSET = 128
DICOM_MAGIC = b"DICM"

# Transfer syntax UID -> how its pixel data is decoded. Everything else is refused with a 415.
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"  # process 14, any predictor
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # process 14, selection value 1
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
TRANSFER_SYNTAXES = {
    EXPLICIT_LE: "native",
    IMPLICIT_LE: "native",
    DEFLATED_LE: "native",
    JPEG_LOSSLESS: "jpeg",
    JPEG_LOSSLESS_SV1: "jpeg",
    JPEG_LS_LOSSLESS: "jpegls",
    RLE_LOSSLESS: "rle",
}
ENERGIES = ("HIGH", "LOW")
_SOP_CLASS_NAMES = {
    DX_FOR_PRESENTATION: "DICOS DX (for presentation)",
    DX_FOR_PROCESSING: "DICOS DX (for processing)",
    TDR_SOP_CLASS: "DICOS TDR (a threat report, not a scan)",
    DICOS_CT_SOP_CLASS: "DICOS CT (a volume, not a 2-D dual-energy view)",
}
# DICOS tags that pydicom's dictionary lacks or types differently (docs/dicos.md, "Facts").
TAG_IMAGE_SCALE_REPRESENTATION = 0x40101075  # FD, though pydicom's dictionary says DS
TAG_PTO_PROCESSING_START = 0x40101080  # DT
TAG_PTO_PROCESSING_END = 0x40101081  # DT
TAG_PTO_PROCESSING_TIME = 0x40101082  # FL, milliseconds


def _label(name: str | None) -> str:
    return f"{name}: " if name else ""


def is_dicom(buf: bytes) -> bool:
    """True when ``buf`` starts with a DICOM Part 10 preamble (``DICM`` at offset 128)."""
    return buf[DICOM_PREAMBLE_OFFSET : DICOM_PREAMBLE_OFFSET + 4] == DICOM_MAGIC


@dataclass(frozen=True)
class DxImage:
    """One energy of a DICOS DX scan: its pixels and the identity a TDR refers to."""

    pixels: np.ndarray  # uint16 [H, W]
    energy: str | None  # "HIGH", "LOW", or None when Image Type does not say
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class DxPair:
    high: DxImage
    low: DxImage

    @property
    def study_uid(self) -> str:
        return self.high.study_uid

    def references(self) -> list[tuple[str, str]]:
        """(SOP class, SOP instance) of both images, high first: what a TDR references."""
        return [(im.sop_class_uid, im.sop_instance_uid) for im in (self.high, self.low)]


def _energy_of(image_type: Sequence[str]) -> str | None:
    """HIGH / LOW from Image Type (0008,0008): DICOS puts 'HIGH ENERGY' / 'LOW ENERGY' in value 3
    (index 2); any position is accepted. Both terms at once is a contradiction."""
    found = {e for e in ENERGIES for v in image_type if str(v).strip().upper() == f"{e} ENERGY"}
    if len(found) > 1:
        raise ScanError(f"Image Type {list(image_type)} says both HIGH ENERGY and LOW ENERGY")
    return found.pop() if found else None


def _inflate_dataset(raw: bytes, name: str | None, max_pixels: int | None, deadline: float | None) -> bytes:
    """A Deflated Explicit VR Little Endian dataset's bytes, inflated to at most ``deflate_cap``."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    what = "deflated DICOM dataset"
    return inflate_capped(
        raw, deflate_cap(limit), wbits=-zlib.MAX_WBITS, deadline=deadline, name=name, what=what
    )


def _parse(
    buf: bytes,
    name: str | None,
    force: bool,
    max_pixels: int | None = None,
    deadline: float | None = None,
):
    """A Part-10 file (or, with ``force``, a bare dataset) -> pydicom dataset. The file meta group is read
    first; a deflated dataset is inflated here through ``inflate_capped``, never by pydicom."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    try:
        fp = io.BytesIO(buf)
        read_preamble(fp, force)
        meta = _read_file_meta_info(fp)
        if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_LE:
            return pydicom.dcmread(io.BytesIO(buf), force=force)
        body = _inflate_dataset(buf[fp.tell() :], name, max_pixels, deadline)
        ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
        ds.file_meta = meta
        return ds
    except ScanError:
        raise
    except InvalidDicomError as exc:
        raise UnsupportedScanFormatError(f"{_label(name)}not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ScanError(f"{_label(name)}truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from None


def read_dx(
    buf: bytes,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    force: bool = False,
    deadline: float | None = None,
) -> DxImage:
    """One DICOS DX image from a file's bytes -> pixels and identity.

    Checks, in order: a DX SOP class, one 16-bit unsigned monochrome frame, the pixel count against
    ``max_pixels`` from the header (before any pixel is decoded), an accepted transfer syntax, then
    decodes. ``force`` reads a dataset without the 128-byte preamble (a part sent as application/dicom).
    A deflated dataset inflates to at most ``deflate_cap(max_pixels)`` bytes; a compressed frame whose own
    header differs from Rows x Columns is refused before decoding. ``deadline`` (``time.monotonic()``) is
    checked between decoding steps. Raises ``ScanError`` (``UnsupportedScanFormatError`` for a transfer
    syntax we do not decode, ``ScanTooLargeError`` over the pixel limit, ``ScanHeaderMismatchError`` for a
    frame that disagrees with the header, ``ScanDeadlineError``) with one line for every unusable input.
    """
    check_deadline(deadline, name)
    ds = _parse(buf, name, force, max_pixels, deadline)
    try:
        return _read_dx_dataset(ds, name, max_pixels, deadline)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"{_label(name)}truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from None


def dx_from_dataset(
    ds, *, name: str | None = None, max_pixels: int | None = None, deadline: float | None = None
) -> DxImage:
    """As ``read_dx`` for a dataset already parsed (a C-STORE's)."""
    try:
        return _read_dx_dataset(ds, name, max_pixels, deadline)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"{_label(name)}corrupt DICOM dataset ({type(exc).__name__}: {exc})") from None


def dx_from_encoded(
    raw: bytes,
    transfer_syntax: str,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    deadline: float | None = None,
) -> DxImage:
    """As ``read_dx`` for a dataset as a C-STORE carries it: encoded in ``transfer_syntax``, no file meta.

    Deflated bytes inflate to at most ``deflate_cap(max_pixels)``, in ``deadline``-checked steps."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    try:
        check_deadline(deadline, name)
        if transfer_syntax == DEFLATED_LE:
            raw = _inflate_dataset(raw, name, max_pixels, deadline)
        ds = read_dataset(
            io.BytesIO(raw), is_implicit_VR=transfer_syntax == IMPLICIT_LE, is_little_endian=True
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
        return _read_dx_dataset(ds, name, max_pixels, deadline)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"{_label(name)}corrupt DICOM dataset ({type(exc).__name__}: {exc})") from None


def _read_dx_dataset(ds, name: str | None, max_pixels: int | None, deadline: float | None = None) -> DxImage:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class not in DX_SOP_CLASSES:
        kind = _SOP_CLASS_NAMES.get(sop_class) or f"SOP class {sop_class or 'missing'}"
        raise ScanError(
            f"{_label(name)}{kind} (modality {ds.get('Modality', '?')}); "
            "a scan must be a DICOS DX image (SOP class 1.2.840.10008.5.1.4.1.1.501.2.1 or .2.2)"
        )
    if "PixelData" not in ds:
        raise ScanError(f"{_label(name)}DX has no pixel data (7FE0,0010)")
    bits, signed = ds.get("BitsAllocated"), ds.get("PixelRepresentation")
    if bits != 16 or signed != 0:
        kind = f"{bits}-bit {'signed' if signed else 'unsigned'}"
        raise ScanError(f"{_label(name)}DX pixels are {kind}; a scan must be 16-bit unsigned")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ScanError(f"{_label(name)}DX has {ds.SamplesPerPixel} samples per pixel; a scan is greyscale")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ScanError(f"{_label(name)}DX holds {ds.NumberOfFrames} frames; one energy image is one frame")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(rows, cols, max_pixels, name)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if not syntax:  # a bare dataset (no file meta): the encoding pydicom found while parsing it
        from pydicom.dataset import FileMetaDataset

        implicit = bool((getattr(ds, "original_encoding", None) or (False, True))[0])
        syntax = IMPLICIT_LE if implicit else EXPLICIT_LE
        if not hasattr(ds, "file_meta"):
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    decoder = TRANSFER_SYNTAXES.get(syntax)
    if decoder is None:
        from pydicom.uid import UID

        raise UnsupportedScanFormatError(
            f"{_label(name)}transfer syntax {syntax} ({UID(syntax).name}) is not supported; "
            "accepted: uncompressed little endian, JPEG Lossless (process 14), RLE Lossless, JPEG-LS lossless"
        )
    pixels = _decode(ds, decoder, rows, cols, name, deadline)
    if pixels.shape != (rows, cols):
        raise ScanError(f"{_label(name)}corrupt DX (decoded {pixels.shape}, header says {(rows, cols)})")
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    try:
        energy = _energy_of(image_type)
    except ScanError as exc:
        raise ScanError(f"{_label(name)}{exc}") from None
    study = str(ds.get("StudyInstanceUID", "") or "")
    if not study:
        raise ScanError(f"{_label(name)}DX has no Study Instance UID (0020,000D)")
    return DxImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.uint16),
        energy=energy,
        study_uid=study,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        sop_class_uid=sop_class,
        transfer_syntax=syntax,
    )


def _decode(ds, decoder: str, rows: int, cols: int, name: str | None, deadline: float | None) -> np.ndarray:
    """Pixels of a checked DX dataset; a compressed frame's header is checked before its decoder runs."""
    check_deadline(deadline, name)
    if decoder == "native":
        need = rows * cols * 2
        if len(ds.PixelData) < need:
            got = len(ds.PixelData)
            raise ScanError(f"{_label(name)}truncated DX ({got} bytes of pixels, {need} needed)")
        return ds.pixel_array  # pydicom (uncompressed and deflated little endian)
    frame = encapsulated_frame(ds.PixelData, name)
    if decoder == "rle":
        return decode_rle_frame(frame, rows=rows, cols=cols, deadline=deadline, name=name)
    import imagecodecs

    bits = int(ds.get("BitsStored", 16) or 16)
    check_jpeg_frame(frame, jpegls=decoder == "jpegls", rows=rows, cols=cols, bits=bits, name=name)
    check_deadline(deadline, name)
    try:
        if decoder == "jpegls":
            return imagecodecs.jpegls_decode(frame)  # CharLS
        return imagecodecs.jpeg8_decode(frame)  # libjpeg-turbo: lossless process 14, 2..16 bits
    except Exception as exc:
        kind = "JPEG-LS" if decoder == "jpegls" else "JPEG Lossless"
        raise ScanError(f"{_label(name)}truncated or corrupt {kind} pixel data ({exc})") from None


def dx_pair(first: DxImage, second: DxImage) -> DxPair:
    """Order two DX images by energy and check they make one scan (same study, one HIGH, one LOW, same
    size). Without an energy in Image Type, ``first`` is taken as high and ``second`` as low."""
    if first.study_uid != second.study_uid:
        raise ScanError(
            f"the two DX images belong to different studies ({first.study_uid} and {second.study_uid})"
        )
    if first.energy is not None and first.energy == second.energy:
        raise ScanError(f"both DX images are {first.energy} ENERGY; a scan needs one HIGH and one LOW")
    if first.energy == "LOW" or second.energy == "HIGH":
        first, second = second, first
    if first.pixels.shape != second.pixels.shape:
        (h1, w1), (h2, w2) = first.pixels.shape, second.pixels.shape
        raise ScanSizeMismatchError(f"high DX is {w1}x{h1} pixels but low DX is {w2}x{h2}")
    return DxPair(first, second)


def read_dx_pair(
    high: bytes,
    low: bytes,
    *,
    max_pixels: int | None = None,
    force: tuple[bool, bool] = (False, False),
    deadline: float | None = None,
) -> DxPair:
    """Both parts of a DX scan -> a checked ``DxPair`` (ordered by Image Type's energy)."""
    a = read_dx(high, name="high", max_pixels=max_pixels, force=force[0], deadline=deadline)
    b = read_dx(low, name="low", max_pixels=max_pixels, force=force[1], deadline=deadline)
    return dx_pair(a, b)


# ---------------------------------------------------------------------------------------------
# Writing: DX images (synthetic scanner, tests) and TDRs.


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _base_dataset(sop_class: str, sop_instance: str, syntax: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.add_new(0x00020004, "CS", DICOS_VERSION)  # DICOS version in the file meta
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    now = _now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.StudyDate, ds.StudyTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    return ds


def _equipment(ds, software: str) -> None:
    """General equipment and object-of-inspection fields that DICOS readers require to be filled."""
    ds.Manufacturer = "xscreen"
    ds.InstitutionName = "xscreen"
    ds.InstitutionAddress = "not applicable"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = software[:64]
    ds.DateOfLastCalibration, ds.TimeOfLastCalibration = ds.ContentDate, ds.ContentTime
    ds.IssuerOfPatientID = "xscreen"  # issuer of the object of inspection's id


def _to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_dx(
    pixels: np.ndarray,
    *,
    energy: str,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str | None = None,
    transfer_syntax: str = EXPLICIT_LE,
    scan_id: str = "",
    for_processing: bool = True,
) -> bytes:
    """One energy image as a DICOS DX file (bytes), pixel data in ``transfer_syntax``."""
    if pixels.dtype != np.uint16 or pixels.ndim != 2 or min(pixels.shape) < MIN_SIDE:
        raise ScanError(f"a DX image must be uint16 [H, W], got {pixels.dtype} {pixels.shape}")
    if energy not in ENERGIES:
        raise ScanError(f"energy must be HIGH or LOW, got {energy!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise UnsupportedScanFormatError(f"cannot write DX in transfer syntax {transfer_syntax}")
    sop_class = DX_FOR_PROCESSING if for_processing else DX_FOR_PRESENTATION
    syntax = EXPLICIT_LE if TRANSFER_SYNTAXES[transfer_syntax] != "native" else transfer_syntax
    ds = _base_dataset(sop_class, sop_instance_uid or new_uid(), syntax)
    ds.Modality = MODALITY_DX
    ds.ImageType = ["ORIGINAL", "PRIMARY", f"{energy} ENERGY"]
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID = scan_id or study_uid[-16:]
    ds.PatientName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1 if energy == "HIGH" else 2
    _equipment(ds, "xscreen synthetic scanner")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    decoder = TRANSFER_SYNTAXES[transfer_syntax]
    if decoder == "rle":
        ds.compress(RLE_LOSSLESS)  # pydicom's own RLE encoder
    elif decoder in ("jpeg", "jpegls"):
        import imagecodecs
        from pydicom.encaps import encapsulate

        if decoder == "jpegls":
            frame = imagecodecs.jpegls_encode(pixels, level=0)  # CharLS, lossless
        else:
            predictor = 1 if transfer_syntax == JPEG_LOSSLESS_SV1 else 6
            frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=predictor, bitspersample=16)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return _to_bytes(ds)


def write_dx_pair(
    high: np.ndarray,
    low: np.ndarray,
    *,
    transfer_syntax: str = EXPLICIT_LE,
    study_uid: str | None = None,
    scan_id: str = "",
) -> tuple[bytes, bytes]:
    """A scan as two DX files of one study and series (high, low)."""
    study, series = study_uid or new_uid(), new_uid()
    return tuple(  # type: ignore[return-value]
        write_dx(
            im,
            energy=energy,
            study_uid=study,
            series_uid=series,
            transfer_syntax=transfer_syntax,
            scan_id=scan_id,
        )
        for im, energy in ((high, "HIGH"), (low, "LOW"))
    )


@dataclass(frozen=True)
class ThreatObject:
    """One potential threat object (PTO): a box in the scan's pixels, its class and score."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    class_name: str
    group: str
    score: float


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
    references: list[tuple[str, str]]  # (SOP class, SOP instance) of the scan's images
    study_uid: str
    scan_id: str


def write_tdr(
    objects: Sequence[ThreatObject],
    *,
    atr: AtrIdentity,
    references: Sequence[tuple[str, str]],
    study_uid: str,
    scan_id: str = "",
    tdr_type: str = "MACHINE",
    started: dt.datetime | None = None,
    finished: dt.datetime | None = None,
) -> bytes:
    """A DICOS TDR (bytes) with one threat object per entry of ``objects``.

    The alarm decision is ALARM when any object is reported (the caller passes only those at or above
    its threshold), CLEAR otherwise. ``references`` are the DX instances the boxes are drawn on.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    finished = finished or _now()
    started = started or finished
    ms = max(0.0, (finished - started).total_seconds() * 1000.0)
    t0, t1 = started.strftime("%Y%m%d%H%M%S.%f"), finished.strftime("%Y%m%d%H%M%S.%f")

    def referenced() -> DicomSequence:
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            items.append(item)
        return DicomSequence(items)

    ds = _base_dataset(TDR_SOP_CLASS, new_uid(), EXPLICIT_LE)
    ds.Modality = "TDR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, new_uid()
    ds.PatientID = scan_id or study_uid[-16:]
    ds.PatientName = ""
    ds.SeriesNumber, ds.InstanceNumber = 2, 1
    software = f"{atr.name} {atr.version}"
    _equipment(ds, software)
    ds.TDRType = tdr_type
    ds.ThreatDetectionAlgorithmAndVersion = [atr.name[:64], atr.version[:64], atr.sha256[:64]]
    ds.AlarmDecision = "ALARM" if objects else "CLEAR"
    ds.NumberOfTotalObjects = len(objects)
    ds.NumberOfAlarmObjects = len(objects)
    ds.add_new(TAG_IMAGE_SCALE_REPRESENTATION, "FD", 1.0)
    ds.ReferencedInstanceSequence = referenced()
    ds.TotalProcessingTime = ms
    threats = []
    for i, obj in enumerate(objects):
        x1, y1, x2, y2 = (float(v) for v in obj.box)
        voxel = Dataset()
        voxel.ThreatROIBase = [x1, y1, 0.0]
        voxel.ThreatROIExtents = [x2 - x1, y2 - y1, 1.0]
        rep = Dataset()
        rep.ReferencedInstanceSequence = referenced()
        rep.ThreatROIVoxelSequence = DicomSequence([voxel])
        assessment = Dataset()
        assessment.ThreatCategory = "PI"  # prohibited item
        assessment.ThreatCategoryDescription = f"{obj.class_name} ({obj.group})"
        assessment.ATDAbilityAssessment = "NO_INTERFERENCE"
        assessment.ATDAssessmentFlag = "THREAT"
        assessment.ATDAssessmentProbability = float(obj.score)
        pto = Dataset()
        pto.PotentialThreatObjectID = i
        pto.PTORepresentationSequence = DicomSequence([rep])
        pto.ATDAssessmentSequence = DicomSequence([assessment])
        pto.add_new(TAG_PTO_PROCESSING_START, "DT", t0)
        pto.add_new(TAG_PTO_PROCESSING_END, "DT", t1)
        pto.add_new(TAG_PTO_PROCESSING_TIME, "FL", ms)
        threats.append(pto)
    ds.ThreatSequence = DicomSequence(threats)
    return _to_bytes(ds)


_DESCRIPTION = re.compile(r"^(?P<name>.*?)(?: \((?P<group>[^()]*)\))?$")


def read_tdr(buf: bytes) -> TdrReport:
    """The threat objects, alarm decision and references of a TDR written by ``write_tdr``."""
    ds = _parse(buf, "TDR", False)
    if str(ds.get("SOPClassUID", "")) != TDR_SOP_CLASS:
        raise ScanError(f"not a DICOS TDR (SOP class {ds.get('SOPClassUID', 'missing')})")
    objects = []
    for pto in ds.get("ThreatSequence", []):
        voxel = pto.PTORepresentationSequence[0].ThreatROIVoxelSequence[0]
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
            )
        )
    algorithm = ds.get("ThreatDetectionAlgorithmAndVersion") or []
    return TdrReport(
        objects=objects,
        alarm=str(ds.get("AlarmDecision", "")),
        tdr_type=str(ds.get("TDRType", "")),
        algorithm=[algorithm] if isinstance(algorithm, str) else [str(a) for a in algorithm],
        references=[
            (str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
            for r in ds.get("ReferencedInstanceSequence", [])
        ],
        study_uid=str(ds.get("StudyInstanceUID", "")),
        scan_id=str(ds.get("PatientID", "")),
    )
