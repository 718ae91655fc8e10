"""DICOS DX images: a dual-energy pair read from files or C-STOREs into checked pixels, and written
(the synthetic scanner, tests).

Compressed pixel data is decoded by imagecodecs (BSD-3: libjpeg-turbo for JPEG Lossless process 14,
CharLS for JPEG-LS, its PackBits decoder for RLE Lossless segments); no GPL decoder is used. Decoding
is bounded (xscreen.scans.bounded): a deflated dataset inflates in capped steps, and an encapsulated
frame's own header must match Rows x Columns before any decoder runs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xscreen.scans.bounded import (
    check_deadline,
    check_jpeg_frame,
    decode_rle_frame,
    encapsulated_frame,
)
from xscreen.scans.dicos.files import (
    DEFLATED_LE,
    DICOS_CT_SOP_CLASS,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    DX_SOP_CLASSES,
    EXPLICIT_LE,
    IMPLICIT_LE,
    JPEG_LOSSLESS_SV1,
    RLE_LOSSLESS,
    TDR_SOP_CLASS,
    TRANSFER_SYNTAXES,
    add_equipment,
    base_dataset,
    inflate_dataset,
    label,
    new_uid,
    parse_dicom,
    to_bytes,
)
from xscreen.scans.formats import (
    MIN_SIDE,
    ScanError,
    ScanSizeMismatchError,
    UnsupportedScanFormatError,
    check_size,
)

MODALITY_DX = "XRAY"
ENERGIES = ("HIGH", "LOW")
_SOP_CLASS_NAMES = {
    DX_FOR_PRESENTATION: "DICOS DX (for presentation)",
    DX_FOR_PROCESSING: "DICOS DX (for processing)",
    TDR_SOP_CLASS: "DICOS TDR (a threat report, not a scan)",
    DICOS_CT_SOP_CLASS: "DICOS CT (a volume, not a 2-D dual-energy view)",
}


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
    ds = parse_dicom(buf, name, force, max_pixels, deadline)
    return _checked_dx(ds, name, max_pixels, deadline, "truncated or corrupt DICOM")


def dx_from_dataset(
    ds, *, name: str | None = None, max_pixels: int | None = None, deadline: float | None = None
) -> DxImage:
    """As ``read_dx`` for a dataset already parsed (a C-STORE's)."""
    return _checked_dx(ds, name, max_pixels, deadline, "corrupt DICOM dataset")


def _checked_dx(ds, name: str | None, max_pixels: int | None, deadline: float | None, what: str) -> DxImage:
    """``_read_dx_dataset``; an error that is not a ``ScanError`` becomes one line naming ``what``."""
    try:
        return _read_dx_dataset(ds, name, max_pixels, deadline)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"{label(name)}{what} ({type(exc).__name__}: {exc})") from None


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
            raw = inflate_dataset(raw, name, max_pixels, deadline)
        ds = read_dataset(
            io.BytesIO(raw), is_implicit_VR=transfer_syntax == IMPLICIT_LE, is_little_endian=True
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
        return _read_dx_dataset(ds, name, max_pixels, deadline)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"{label(name)}corrupt DICOM dataset ({type(exc).__name__}: {exc})") from None


def _read_dx_dataset(ds, name: str | None, max_pixels: int | None, deadline: float | None = None) -> DxImage:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class not in DX_SOP_CLASSES:
        kind = _SOP_CLASS_NAMES.get(sop_class) or f"SOP class {sop_class or 'missing'}"
        raise ScanError(
            f"{label(name)}{kind} (modality {ds.get('Modality', '?')}); "
            "a scan must be a DICOS DX image (SOP class 1.2.840.10008.5.1.4.1.1.501.2.1 or .2.2)"
        )
    if "PixelData" not in ds:
        raise ScanError(f"{label(name)}DX has no pixel data (7FE0,0010)")
    bits, signed = ds.get("BitsAllocated"), ds.get("PixelRepresentation")
    if bits != 16 or signed != 0:
        kind = f"{bits}-bit {'signed' if signed else 'unsigned'}"
        raise ScanError(f"{label(name)}DX pixels are {kind}; a scan must be 16-bit unsigned")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ScanError(f"{label(name)}DX has {ds.SamplesPerPixel} samples per pixel; a scan is greyscale")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ScanError(f"{label(name)}DX holds {ds.NumberOfFrames} frames; one energy image is one frame")
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
            f"{label(name)}transfer syntax {syntax} ({UID(syntax).name}) is not supported; "
            "accepted: uncompressed little endian, JPEG Lossless (process 14), RLE Lossless, JPEG-LS lossless"
        )
    pixels = _decode(ds, decoder, rows, cols, name, deadline)
    if pixels.shape != (rows, cols):
        raise ScanError(f"{label(name)}corrupt DX (decoded {pixels.shape}, header says {(rows, cols)})")
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    try:
        energy = _energy_of(image_type)
    except ScanError as exc:
        raise ScanError(f"{label(name)}{exc}") from None
    study = str(ds.get("StudyInstanceUID", "") or "")
    if not study:
        raise ScanError(f"{label(name)}DX has no Study Instance UID (0020,000D)")
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
            raise ScanError(f"{label(name)}truncated DX ({got} bytes of pixels, {need} needed)")
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
        raise ScanError(f"{label(name)}truncated or corrupt {kind} pixel data ({exc})") from None


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


def group_views(images: Sequence[DxImage]) -> list[list[DxImage]]:
    """The DX images of one bag (one study) grouped into views, the bag rule of docs/dicos.md ("Bags"):
    one view per Series Instance UID, in the order each series first appears in ``images``. A view may
    hold one image (its other energy not there yet) or more (refused by ``bag_pairs``).

    One exception keeps single-view scanners that give each energy its own series working as before: a
    study whose only two images are in two series, with different (or unstated) energies and the same
    size, is one view."""
    views: dict[str, list[DxImage]] = {}
    for image in images:
        views.setdefault(image.series_uid, []).append(image)
    groups = list(views.values())
    if len(groups) == 2 and all(len(g) == 1 for g in groups):
        a, b = groups[0][0], groups[1][0]
        same_energy = a.energy is not None and a.energy == b.energy
        if not same_energy and a.pixels.shape == b.pixels.shape:
            return [[a, b]]
    return groups


def bag_pairs(images: Sequence[DxImage]) -> list[DxPair]:
    """A complete bag's views as checked pairs (``group_views``, then ``dx_pair`` on each view); a view
    without exactly one HIGH and one LOW raises ``ScanError`` naming it."""
    pairs = []
    for i, view in enumerate(group_views(images)):
        if len(view) != 2:
            raise ScanError(
                f"view {i} (series {view[0].series_uid or '?'}) has {len(view)} DX image(s); "
                "a view is one HIGH and one LOW"
            )
        try:
            pairs.append(dx_pair(view[0], view[1]))
        except ScanError as exc:
            exc.args = (f"view {i} (series {view[0].series_uid or '?'}): {exc}", *exc.args[1:])
            raise
    return pairs


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
    ds = base_dataset(sop_class, sop_instance_uid or new_uid(), syntax)
    ds.Modality = MODALITY_DX
    ds.ImageType = ["ORIGINAL", "PRIMARY", f"{energy} ENERGY"]
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID = scan_id or study_uid[-16:]
    ds.PatientName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1 if energy == "HIGH" else 2
    add_equipment(ds, "xscreen synthetic scanner")
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
    return to_bytes(ds)


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
