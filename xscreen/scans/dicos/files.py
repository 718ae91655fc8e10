"""DICOS (NEMA IIC 1) Part 10 files: SOP classes, transfer syntaxes, parsing, and the dataset every
written file starts from. The DX images are read and written in ``dx``, the threat reports in ``tdr``.

Every tag read and written is listed in docs/dicos.md. pydicom (MIT) parses and writes the files. A
deflated dataset is inflated here in capped steps (xscreen.scans.bounded), never by pydicom.
"""

from __future__ import annotations

import datetime as dt
import io
import zlib

from xscreen.scans.bounded import deflate_cap, inflate_capped
from xscreen.scans.formats import DEFAULT_MAX_PIXELS, ScanError, UnsupportedScanFormatError

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.501.2.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.501.2.2"
DX_SOP_CLASSES = (DX_FOR_PROCESSING, DX_FOR_PRESENTATION)
TDR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.3"
DICOS_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.1"
DICOS_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1.3"
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
DICOS_VERSION = "V03"  # file meta (0002,0004), as the Stratovan toolkit expects (docs/dicos.md)
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


def label(name: str | None) -> str:
    """``"name: "``, the prefix of an error about the part ``name`` (nothing without a name)."""
    return f"{name}: " if name else ""


def is_dicom(buf: bytes) -> bool:
    """True when ``buf`` starts with a DICOM Part 10 preamble (``DICM`` at offset 128)."""
    return buf[DICOM_PREAMBLE_OFFSET : DICOM_PREAMBLE_OFFSET + 4] == DICOM_MAGIC


def inflate_dataset(raw: bytes, name: str | None, max_pixels: int | None, deadline: float | None) -> bytes:
    """A Deflated Explicit VR Little Endian dataset's bytes, inflated to at most ``deflate_cap``."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    what = "deflated DICOM dataset"
    return inflate_capped(
        raw, deflate_cap(limit), wbits=-zlib.MAX_WBITS, deadline=deadline, name=name, what=what
    )


def parse_dicom(
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
        body = inflate_dataset(buf[fp.tell() :], name, max_pixels, deadline)
        ds = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
        ds.file_meta = meta
        return ds
    except ScanError:
        raise
    except InvalidDicomError as exc:
        raise UnsupportedScanFormatError(f"{label(name)}not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ScanError(f"{label(name)}truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from None


def new_uid() -> str:
    """A new UID (pydicom's root)."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


def utc_now() -> dt.datetime:
    """Now, in UTC: the creation time written into files."""
    return dt.datetime.now(dt.UTC)


def base_dataset(sop_class: str, sop_instance: str, syntax: str):
    """A dataset with the file meta, SOP identity and creation dates that every written file carries."""
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
    now = utc_now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.StudyDate, ds.StudyTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.DICOSVersion = DICOS_VERSION  # (4010,103A): the toolkit reads the dataset's, not the file meta's
    return ds


def add_equipment(ds, software: str) -> None:
    """General equipment, object-of-inspection, general scan and frame-of-reference fields that the
    DICOS TDR and DX IODs require (docs/dicos.md, "Conformance"). ``ds`` holds PatientID already."""
    ds.Manufacturer = "xscreen"
    ds.InstitutionName = "xscreen"
    ds.InstitutionAddress = "not applicable"
    ds.InstitutionalDepartmentName = ""
    ds.StationName = "xscreen"  # the DICOS "Machine ID" (SH, <= 16 characters)
    ds.ManufacturerModelName = "xscreen"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = software[:64]
    ds.DateOfLastCalibration, ds.TimeOfLastCalibration = ds.ContentDate, ds.ContentTime
    ds.IssuerOfPatientID = "xscreen"  # issuer of the object of inspection's id
    ds.TypeOfPatientID = "TEXT"  # OOI ID Type
    ds.PatientSex = "U"  # OOI gender: not applicable to baggage
    ds.OtherPatientIDsSequence = []
    ds.OOIType = "BAGGAGE"
    ds.StudyID = str(ds.PatientID)[-16:]  # the Scan ID (SH, <= 16 characters)
    ds.ScanType = "OPERATIONAL"
    ds.AcquisitionStatus = "SUCCESSFUL"  # Series Acquisition Status
    ds.FrameOfReferenceUID = new_uid()
    ds.PositionReferenceIndicator = ""


def to_bytes(ds) -> bytes:
    """``ds`` as a Part 10 file (preamble, file meta, dataset)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
