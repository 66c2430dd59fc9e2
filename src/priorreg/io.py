"""Image and field files: the only module of priorreg that reads or writes image files.

Everything goes through SimpleITK, which keeps the physical geometry:

* ``read_image`` reads NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr),
  a DICOM series directory, and 2D PNG / TIFF into a :class:`priorreg.Image`
  (array in NumPy (z, y, x) order, spacing per array axis, ``direction[:, k]`` the
  world LPS vector of array axis k). A 3D file with a single slice (a 2D image
  stored as e.g. 181x217x1 NIfTI) becomes a 2D image that remembers its 3D grid
  (``Image.volume``): images and fields written on that grid are single-slice 3D
  again, with the file's geometry. RGB(A) images become grey. NaN/Inf voxels and
  damaged (e.g. truncated) files are refused; NIfTI data blocks are checked as
  stored, because ITK's NIfTI reader turns NaN/Inf into 0 and zero-fills a cut file.
* ``write_image`` / ``write_field`` write atomically: a temporary file in the
  target directory, renamed into place with ``os.replace``, with the mode an
  ordinary write would give (0666 less the umask, or the replaced file's mode).
* The displacement field file is an ITK vector image (``sitkVectorFloat32``) on
  the fixed grid whose vectors are world LPS (x, y, z) millimetres, pull-back: the
  fixed point x maps to x + field(x) in the moving image. That is what
  ``sitk.DisplacementFieldTransform`` and ANTs' ``apply_transforms`` expect.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import math
import os
import shutil
import stat
import struct
import sys
import tempfile
import threading
import zlib
from typing import NamedTuple

import numpy as np

from .errors import PriorRegError, itk_reason, name_problem
from .image import Image, SliceGeometry, perpendicular

READ_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".dcm")
# Single-file formats only (a .mhd/.hdr pair cannot be renamed into place atomically).
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff")
_2D_ONLY = (".png", ".tif", ".tiff")  # ITK's TIFF writer drops a 3D image's origin and slice spacing


def _sitk():
    import SimpleITK as sitk

    # ITK's own warnings go straight to stderr (e.g. "GDCMSeriesFileNames: No Series were found" before
    # priorreg's one-line error on a folder without DICOM): priorreg says what went wrong itself.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


def extension(path) -> str:
    """The (possibly double) extension of ``path``, lower case ('.nii.gz', '.png', ...)."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


# --------------------------------------------------------------------------- geometry


def _one_slice(shape) -> bool:
    """Whether a 3D grid of ``shape`` is a single slice (one axis of length 1), read as a 2D image."""
    return len(shape) == 3 and 1 in shape and sum(n > 1 for n in shape) == 2


def sitk_to_image(img, *, squeeze: bool = True, notes: list | None = None, name: str = "image",
                  outputs_on_grid: bool = False) -> Image:
    """Convert a scalar SimpleITK image into an :class:`Image` (NumPy axis order); ``outputs_on_grid``: the
    note on a single slice says that outputs on its grid are written back as single-slice 3D."""
    sitk = _sitk()
    arr = sitk.GetArrayFromImage(img)
    d = img.GetDimension()
    if d not in (2, 3):
        raise PriorRegError(f"{name}: {d}D images are not supported (only 2D and 3D)")
    spacing = np.asarray(img.GetSpacing(), float)[::-1]
    origin = np.asarray(img.GetOrigin(), float)
    D_itk = np.asarray(img.GetDirection(), float).reshape(d, d)
    direction = D_itk[:, ::-1]  # array axis k is ITK index axis d-1-k
    lengths = np.linalg.norm(direction, axis=0)
    if np.any(np.abs(lengths - 1.0) > 1e-9):  # a header's rounded matrix ("0.87 0.5": 1.0034), taken as ITK
        direction, spacing = direction / lengths, spacing * lengths  # takes it: the same world steps, unit axes
    if squeeze and _one_slice(arr.shape):
        k = arr.shape.index(1)
        keep = [j for j in range(3) if j != k]
        cols = direction[:, keep]
        normal = np.cross(cols[:, 0], cols[:, 1])
        drop = int(np.argmax(np.abs(normal)))
        rows = [r for r in range(3) if r != drop]
        sub = cols[rows, :]
        if not np.allclose(sub.T @ sub, np.eye(2), atol=1e-4):
            raise PriorRegError(
                f"{name}: a single-slice image in an oblique plane is not supported; resample it to an axial, "
                "coronal or sagittal plane first"
            )
        volume = SliceGeometry(
            axis=k,
            spacing=tuple(float(v) for v in spacing),
            origin=tuple(float(v) for v in origin),
            direction=np.ascontiguousarray(direction),
            drop=drop,
        )
        arr = np.take(arr, 0, axis=k)
        spacing = spacing[keep]
        origin = origin[rows]
        direction = sub
        if notes is not None:
            back = " (outputs on its grid are written back as single-slice 3D)" if outputs_on_grid else ""
            notes.append(f"{name}: a single-slice 3D image; treated as 2D {arr.shape[1]}x{arr.shape[0]}{back}")
        return Image(arr, tuple(spacing), tuple(origin), np.ascontiguousarray(direction), volume=volume)
    return Image(arr, tuple(spacing), tuple(origin), np.ascontiguousarray(direction))


def _set_geometry(sitk_img, ref):
    """Give ``sitk_img`` the grid of ``ref`` (an :class:`Image` or a :class:`SliceGeometry`)."""
    direction = np.asarray(ref.direction, float)
    d = direction.shape[0]
    sitk_img.SetSpacing([float(s) for s in np.asarray(ref.spacing)[::-1]])
    sitk_img.SetOrigin([float(o) for o in ref.origin])
    D_itk = direction[:, ::-1]
    sitk_img.SetDirection([float(v) for v in D_itk.reshape(d * d)])
    return sitk_img


def _slice_volume(image: Image):
    """The single-slice 3D grid a 2D image is to be written back to, or None: the file's, with the image's own
    in-plane spacing, origin and direction where they were changed (an image resampled or moved keeps its
    ``volume``; the file's grid had written it at the old size or place)."""
    vol = getattr(image, "volume", None)
    if vol is None or image.ndim != 2:
        return None
    keep = [j for j in range(3) if j != vol.axis]
    rows = [r for r in range(3) if r != vol.drop]
    spacing, origin = np.array(vol.spacing, float), np.array(vol.origin, float)
    direction = np.array(vol.direction, float)
    if (np.allclose(image.spacing, spacing[keep]) and np.allclose(image.origin, origin[rows])
            and np.allclose(image.direction, direction[np.ix_(rows, keep)], atol=1e-6)):
        return vol
    spacing[keep], origin[rows] = image.spacing, image.origin
    direction[np.ix_(rows, keep)], direction[vol.drop, keep] = image.direction, 0.0
    return SliceGeometry(vol.axis, tuple(spacing.tolist()), tuple(origin.tolist()), direction, vol.drop)


def image_to_sitk(image: Image, *, keep_volume: bool = True):
    """Convert an :class:`Image` into a scalar SimpleITK image with its geometry.

    A 2D image read from a single-slice 3D file (``image.volume``) becomes that
    X x Y x 1 image again, with the file's full 3D geometry (unless ``keep_volume`` is False).
    """
    sitk = _sitk()
    arr = np.asarray(image.array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    vol = _slice_volume(image) if keep_volume else None
    if vol is not None:
        arr = np.expand_dims(arr, vol.axis)
        return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False), vol)
    return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False), image)


def geometry(image: Image) -> dict:
    """A JSON-friendly description of an image's grid: in priorreg's array order (shape, spacing and
    the direction's columns along the array axes, as numpy holds the voxels) and, under "itk", as ITK,
    3D Slicer and the file headers give it (size, spacing and direction columns along i, j, k, the
    array axes reversed; the direction row by row, as SimpleITK's GetDirection())."""
    D = np.asarray(image.direction, float)
    out = {
        "shape": [int(n) for n in image.shape],
        "spacing_mm": [float(s) for s in image.spacing],
        "origin_mm": [float(o) for o in image.origin],
        "direction": D.round(8).tolist(),
        "dtype": str(image.array.dtype),
        "itk": {"size": [int(n) for n in image.shape[::-1]], "spacing_mm": [float(s) for s in image.spacing[::-1]],
                "direction": D[:, ::-1].round(8).ravel().tolist()},
    }
    if image.volume is not None:  # read from a single-slice 3D file; outputs are written like it
        vol = image.volume
        shape3 = list(image.shape)
        shape3.insert(vol.axis, 1)
        out["file_grid"] = {
            "shape": shape3,
            "spacing_mm": [float(s) for s in vol.spacing],
            "origin_mm": [float(o) for o in vol.origin],
            "direction": np.asarray(vol.direction, float).round(8).tolist(),
        }
    return out


# --------------------------------------------------------------------------- reading


def _series_label(first_file: str, sid: str) -> str:
    """'"T1 post" (series 7, UID ...)': the series description and number (DICOM 0008|103e, 0020|0011) where present."""
    desc, number = (v or "" for v in _file_tags(first_file, "0008|103e", "0020|0011"))
    named = " ".join(x for x in (f'"{desc}"' if desc else "", f"series {number}" if number else "") if x)
    return f"{named} (UID {sid})" if named else f"UID {sid}"


def _file_tags(path: str, *tags: str) -> list:
    """The DICOM ``tags`` of one file's header (None where absent, or for a header that cannot be read)."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return [None] * len(tags)
    return [_tag(reader, t) for t in tags]


def _tag(img, tag: str) -> str | None:
    return (img.GetMetaData(tag).strip() or None) if img.HasMetaDataKey(tag) else None


def _sidecar_modality(path: str) -> str | None:
    """"Modality" of the JSON sidecar dcm2niix (and BIDS) writes beside a NIfTI file: a.nii.gz -> a.json."""
    import json

    stem = path[: -len(extension(path))] if extension(path) else path
    try:
        with open(stem + ".json", encoding="utf-8") as fh:
            value = json.load(fh).get("Modality")
    except (OSError, ValueError, AttributeError):
        return None
    return value.strip().upper() or None if isinstance(value, str) else None


def _read_dicom_dir(path: str, name: str, notes):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    try:
        ids = reader.GetGDCMSeriesIDs(path)
    except RuntimeError:
        ids = ()
    if not ids:
        raise PriorRegError(f"{name}: {path} is a directory without a DICOM series (give an image file or a DICOM series "
                            f"folder{_series_below(path)})")
    files = {sid: reader.GetGDCMSeriesFileNames(path, sid) for sid in ids}
    sid = max(ids, key=lambda s: len(files[s]))
    tied = [s for s in ids if len(files[s]) == len(files[sid])]
    if len(tied) > 1:  # which one was meant is not in the files
        raise PriorRegError(f"{name}: {path} holds {len(tied)} DICOM series of {len(files[sid])} files each "
                            f"({'; '.join(_series_label(files[s][0], s) for s in tied)}); give a folder with the one series to use")
    if len(ids) > 1 and notes is not None:
        others = "; ".join(f"{_series_label(files[s][0], s)}, {len(files[s])} files" for s in ids if s != sid)
        notes.append(f"{name}: {path} holds {len(ids)} DICOM series; using the longest, {_series_label(files[sid][0], sid)} "
                     f"({len(files[sid])} files); not used: {others}")
    reader.SetFileNames(files[sid])
    try:
        img = reader.Execute()
    except RuntimeError:
        raise PriorRegError(f"{name}: cannot read the DICOM series in {path}: its {len(files[sid])} files do not form one "
                            "volume (slices of different sizes, or several series under one id); give a folder with "
                            "one series") from None
    _check_slice_spacing(files[sid], img, path, name)
    return img, _file_tags(files[sid][0], "0008|0060")[0]  # Modality: "MR", "CT", "PT", "NM", ...


def _series_below(path: str, most: int = 3, looked: int = 40) -> str:
    """'; below it, X holds a DICOM series' for the folders below ``path`` (four levels down, as exports nest
    patient/study/series, the first ``looked`` in name order, at most ``most`` named) that hold one; '' where
    none does."""
    reader, found, top = _sitk().ImageSeriesReader(), [], path.rstrip(os.sep).count(os.sep)
    for k, (root, dirs, _) in enumerate(os.walk(path)):
        dirs.sort()
        if root.count(os.sep) - top >= 4:
            dirs[:] = []
        if root != path and _has_series(reader, root):
            found.append(os.path.relpath(root, path))
        if len(found) == most or k == looked:
            break
    if not found:
        return ""
    return f"; below it, {', '.join(found)} " + ("holds a DICOM series" if len(found) == 1 else "hold DICOM series")


def _has_series(reader, folder: str) -> bool:
    try:
        return bool(reader.GetGDCMSeriesIDs(folder))
    except RuntimeError:
        return False


def _series_files(img, path: str) -> int:
    """How many files of the DICOM series of the file ``path`` (its image ``img``) lie in its folder."""
    uid = img.GetMetaData("0020|000e").strip() if img.HasMetaDataKey("0020|000e") else ""
    try:
        files = _sitk().ImageSeriesReader.GetGDCMSeriesFileNames(os.path.dirname(os.path.abspath(path)), uid) if uid else ()
    except RuntimeError:
        files = ()
    return len(files)


def _check_slice_spacing(file_names, img, path: str, name: str) -> None:
    """Refuse a series whose slices are not evenly spaced (missing slices): ITK would spread them over
    one mean spacing, and every slice would sit in the wrong place."""
    if len(file_names) < 3 or img.GetDimension() != 3:
        return
    sitk = _sitk()
    normal = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    head = sitk.ImageFileReader()
    corners = []
    for f in file_names:
        head.SetFileName(f)
        head.ReadImageInformation()
        corners.append(head.GetOrigin())
    corners = np.asarray(corners, dtype=float)
    positions = corners @ normal
    gaps = np.abs(np.diff(np.sort(positions)))
    if gaps.min() <= 0 or gaps.max() > 1.01 * gaps.min():
        raise PriorRegError(f"{name}: the DICOM series in {path} has missing or unevenly spaced slices (gaps from "
                            f"{gaps.min():.3g} to {gaps.max():.3g} mm); priorreg needs evenly spaced slices")
    _check_straight_stack(corners, positions, normal, path, name)


MAX_SLICE_DRIFT_MM = 0.1  # in-plane shift of the last slice from the first's line, beyond which a stack is tilted


def _check_straight_stack(corners: np.ndarray, positions: np.ndarray, normal: np.ndarray, path: str, name: str) -> None:
    """Refuse a series whose slices shift within their planes from one to the next (a CT gantry tilt): ITK
    reads it as a straight stack along the slices' normal, so every slice but one sits in the wrong place
    (a new user's 15 degree tilt: the last slice 35 mm off, read without a word)."""
    order = np.argsort(positions)
    step = corners[order[-1]] - corners[order[0]]
    drift = float(np.linalg.norm(step - np.dot(step, normal) * normal))
    if drift > MAX_SLICE_DRIFT_MM:
        tilt = np.degrees(np.arctan2(drift, abs(float(np.dot(step, normal)))))
        raise PriorRegError(f"{name}: the slices of the DICOM series in {path} shift within their planes from one to "
                            f"the next ({drift:.3g} mm over the series, a {tilt:.1f} degree tilt, as a tilted CT "
                            "gantry makes); resample it onto a straight grid first (dcm2niix corrects gantry tilt)")


def _to_scalar(img, path: str, name: str, notes, labels: bool = False):
    sitk = _sitk()
    n = img.GetNumberOfComponentsPerPixel()
    if n == 1:
        return img
    colour = img.GetPixelID() in (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16)  # RGB(A) files: PNG, DICOM, NIfTI RGB24
    if n not in (3, 4) or not colour:
        field = "; a displacement field?" if n == img.GetDimension() and not colour else ""
        raise PriorRegError(f"{name}: {path} has {n} components per voxel ({img.GetPixelIDTypeAsString()}{field}); "
                            "give a scalar (grey-value) image")
    r, g, b = (sitk.Cast(sitk.VectorIndexSelectionCast(img, c), sitk.sitkFloat32) for c in range(3))
    same = all(bool(sitk.GetArrayFromImage(sitk.Equal(r, c)).all()) for c in (g, b))  # (a view would outlive its image)
    kind = "RGBA" if n == 4 else "RGB"
    if labels and not same:  # a palette PNG's indices are colours by now, and grey would mix them
        raise PriorRegError(f"{name}: {path} is a colour ({kind} or palette) image, and converted to grey its labels "
                            "would be other numbers; save the label values as a one-channel image (for a palette "
                            "PNG, its indices: PIL.Image.fromarray(numpy.array(PIL.Image.open(path))))")
    if notes is not None:
        notes.append(f"{name}: {path} stores grey values as {kind} (three equal channels); read as grey" if same else
                     f"{name}: {path} is a colour ({kind}) image; converted to grey")
    return r if same else 0.299 * r + 0.587 * g + 0.114 * b  # grey as stored; colour: ITU-R BT.601 luma


# NIfTI datatype code -> the float type its values are made of (complex: pairs of them).
_NIFTI_FLOATS = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}
_CHUNK = 1 << 24  # bytes per read while scanning a data block


class _NiftiScan:
    """What :func:`_scan_nifti` found in a NIfTI file's data block."""

    def __init__(self):
        self.n_nan = 0
        self.n_inf = 0
        self.positions = []  # flat voxel indices of non-finite values (when asked for)
        self.values = []
        self.slope = 0.0
        self.inter = 0.0


def _nifti_header(fh):
    """(byte order, header length, dims, datatype, bitpix, vox_offset, scl_slope, scl_inter, header bytes) of
    a single-file NIfTI-1/2, "short" for a cut header, or None for anything else."""
    raw = fh.read(348)
    if len(raw) < 348:
        return "short"
    for e in "<>":
        size = struct.unpack(e + "i", raw[:4])[0]
        if size == 348 and raw[344:347] == b"n+1":
            dims = struct.unpack(e + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(e + "hh", raw[70:74])
            (vox_offset,) = struct.unpack(e + "f", raw[108:112])
            slope, inter = struct.unpack(e + "ff", raw[112:120])
            return e, 348, dims, datatype, bitpix, int(vox_offset), slope, inter, raw
        if size == 540 and raw[4:7] == b"n+2":
            raw += fh.read(540 - 348)
            if len(raw) < 540:
                return "short"
            datatype, bitpix = struct.unpack(e + "hh", raw[12:16])
            dims = struct.unpack(e + "8q", raw[16:80])
            (vox_offset,) = struct.unpack(e + "q", raw[168:176])
            slope, inter = struct.unpack(e + "dd", raw[176:192])
            return e, 540, dims, datatype, bitpix, int(vox_offset), slope, inter, raw
    return None  # a header pair (.hdr/.img), an ANALYZE file, or not NIfTI: left to SimpleITK


@contextlib.contextmanager
def _open_maybe_gzip(path: str):
    """The file's bytes, gunzipped if it is a gzip stream (a .nii.gz, or a .nii that is one)."""
    with open(path, "rb") as raw_fh:
        gz = raw_fh.read(2) == b"\x1f\x8b"
        raw_fh.seek(0)
        yield gzip.GzipFile(fileobj=raw_fh, mode="rb") if gz else raw_fh


def _header_notes(path: str, img, name: str) -> list:
    """What a NIfTI-1 file's header says that the geometry ITK read hides: an sform that places the voxels
    elsewhere (:func:`_sform_note`), and a voxel size given in meters or microns (:func:`_units_note`)."""
    try:
        with _open_maybe_gzip(path) as fh:
            hdr = _nifti_header(fh)
    except (OSError, EOFError, zlib.error):
        return []
    if hdr in (None, "short") or hdr[1] != 348:
        return []  # NIfTI-2 or ANALYZE
    e, raw = hdr[0], hdr[-1]
    return _units_note(e, raw, path, img, name) + _sform_note(e, raw, path, img, name)


_NIFTI_UNITS = {1: "meters", 3: "microns"}  # xyzt_units & 7 (2: mm, what priorreg works in; 0: unknown, read as mm)
_MM_PER_UNIT = {1: 1000.0, 3: 0.001}


def _units_note(e: str, raw: bytes, path: str, img, name: str) -> list:
    """A note when the header gives the voxel size in meters or microns: ITK converts it to mm, so a file whose
    numbers were mm all along (a converter's wrong unit code) becomes 1000 times larger or smaller, and the
    registration reported only that the images do not overlap."""
    unit = _NIFTI_UNITS.get(raw[123] & 7)
    if unit is None:
        return []
    size = " x ".join(f"{v:.4g}" for v in img.GetSpacing())
    return [f"{name}: {path}'s header gives its voxel size in {unit}, which ITK converts to mm ({size} mm voxels); "
            "if that is not the anatomy's size, the header's unit code (xyzt_units) is wrong"]


def _sform_note(e: str, raw: bytes, path: str, img, name: str) -> list:
    """A note when a NIfTI-1 file's sform places the voxels elsewhere than the geometry ITK read (its qform:
    ITK prefers the qform unless the sform's code is 1): nibabel and FSL would place the image by the sform."""
    if img.GetDimension() != 3:
        return []
    if struct.unpack(e + "h", raw[254:256])[0] <= 0:
        return []  # no sform
    srow = np.array(struct.unpack(e + "12f", raw[280:328]), float).reshape(3, 4)
    srow *= _MM_PER_UNIT.get(raw[123] & 7, 1.0)  # in the header's units, as ITK scales the qform
    lps = np.diag([-1.0, -1.0, 1.0])  # NIfTI world is RAS, ITK's LPS
    itk = np.asarray(img.GetDirection(), float).reshape(3, 3) @ np.diag(img.GetSpacing())
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in img.GetSize()], indexing="ij")).reshape(3, -1)
    gap = (itk - lps @ srow[:, :3]) @ corners + (np.asarray(img.GetOrigin()) - lps @ srow[:, 3])[:, None]
    far = float(np.sqrt((gap**2).sum(0)).max())
    if far <= 0.1 * min(img.GetSpacing()):
        return []
    return [f"{name}: {path}'s sform and qform disagree (by up to {far:.3g} mm at its corners); priorreg reads the "
            "qform, as ITK, ANTs and 3D Slicer do (nibabel and FSL read the sform), and its outputs carry the qform's geometry"]


def _count_nonfinite(fh, nbytes: int, dt, per_voxel: int, scan: _NiftiScan, keep_positions: bool) -> int:
    """Read up to ``nbytes`` of a data block in chunks, counting NaN and Inf values of float type ``dt`` (None:
    not a float type, only read) into ``scan`` (with their voxels and values if ``keep_positions``; a complex
    voxel holds ``per_voxel`` values); returns the bytes read."""
    got, carry, elem = 0, b"", 0
    while got < nbytes:
        buf = fh.read(min(_CHUNK, nbytes - got))
        if not buf:
            break
        got += len(buf)
        if dt is None:
            continue
        buf = carry + buf
        n = len(buf) // dt.itemsize
        carry = buf[n * dt.itemsize :]
        vals = np.frombuffer(buf, dtype=dt, count=n)
        bad = ~np.isfinite(vals)
        if bad.any():
            nan = np.isnan(vals)
            scan.n_nan += int(np.count_nonzero(nan))
            scan.n_inf += int(np.count_nonzero(bad)) - int(np.count_nonzero(nan))
            if keep_positions:
                idx = np.flatnonzero(bad)
                scan.positions.append((idx + elem) // per_voxel)
                scan.values.append(vals[idx].astype(np.float64))
        elem += n
    return got


def _scan_nifti(path: str, name: str, keep_positions: bool = False) -> _NiftiScan | None:
    """Read a single-file NIfTI's data block as stored and check it.

    ITK's NIfTI reader (niftilib's ``nifti_read_buffer``) silently replaces NaN/Inf by 0 and
    zero-fills a data block cut short, so a damaged or non-finite file would pass unnoticed.
    This reads the block itself (gunzipping a .nii.gz, checking its CRC): a data block shorter
    than the header announces, or a corrupt/truncated gzip stream, raises :class:`PriorRegError`;
    float data are counted for NaN and Inf. Returns None for files this check does not cover.
    """
    damaged = f"{name}: cannot read {path}: the file is damaged or truncated"
    try:
        with _open_maybe_gzip(path) as fh:
            hdr = _nifti_header(fh)
            if hdr is None:
                return None
            if hdr == "short":
                raise PriorRegError(f"{damaged} (incomplete header)")
            endian, hlen, dims, datatype, bitpix, vox_offset, slope, inter, _ = hdr
            nd = dims[0]
            if not 1 <= nd <= 7 or bitpix <= 0 or bitpix % 8 or vox_offset < hlen:
                return None  # a header SimpleITK accepted but this check does not understand
            nvox = int(np.prod([max(int(n), 1) for n in dims[1 : nd + 1]], dtype=np.int64))
            nbytes = nvox * (bitpix // 8)
            skip = vox_offset - hlen
            if skip and len(fh.read(skip)) < skip:
                raise PriorRegError(f"{damaged} (no data after its header)")
            scan = _NiftiScan()
            if np.isfinite(slope) and slope != 0:
                scan.slope, scan.inter = float(slope), float(inter)
            ftype = _NIFTI_FLOATS.get(datatype)
            dt = None if ftype is None else np.dtype(endian + ftype)
            got = _count_nonfinite(fh, nbytes, dt, 2 if datatype in (32, 1792) else 1, scan, keep_positions)
            if got < nbytes:
                raise PriorRegError(
                    f"{damaged} (its data block holds {got} of the {nbytes} bytes its header announces)"
                )
            if isinstance(fh, gzip.GzipFile):
                while fh.read(_CHUNK):  # to the end of the stream: checks the gzip CRC and length
                    pass
    except PriorRegError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise PriorRegError(f"{damaged} (compressed data: {str(e).strip() or type(e).__name__})") from None
    except OSError as e:
        raise PriorRegError(f"{name}: cannot read {path} ({e.strerror or e})") from None
    return scan


_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _check_metaimage(path: str, name: str) -> None:
    """A MetaImage (.mha, or .mhd beside its data file) whose data file is missing or shorter than its header
    announces: MetaIO printed its own lines and ITK gave a wrong reason ("No such file or directory")."""
    head, offset = {}, 0
    try:
        with open(path, "rb") as fh:
            for raw in iter(fh.readline, b""):
                key, _, value = raw.decode("latin-1").partition("=")
                head[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile":
                    offset = fh.tell()
                    break
                if len(head) > 100:
                    return  # not a header this check understands: left to SimpleITK
    except OSError:
        return
    data, kind = head.get("elementdatafile", ""), _MET_BYTES.get(head.get("elementtype", "").upper())
    if not data or data.upper() == "LIST" or "%" in data or " " in data:
        return  # a list or a pattern of files: left to SimpleITK
    local = data.upper() == "LOCAL"
    data_path = path if local else os.path.join(os.path.dirname(path), data)
    if not os.path.isfile(data_path):
        raise PriorRegError(f"{name}: cannot read {path}: its data file {data_path} does not exist")
    binary = head.get("binarydata", "true").lower() == "true"  # text data: its size says nothing
    if kind is None or not binary or head.get("compresseddata", "false").lower() == "true" or \
            head.get("headersize", "0") not in ("0", ""):
        return
    try:
        dims = [int(v) for v in head.get("dimsize", "").split()]
        n = math.prod(dims) * int(head.get("elementnumberofchannels", "1") or 1) * kind
    except ValueError:
        return
    have = os.path.getsize(data_path) - (offset if local else 0)
    if have < n:
        raise PriorRegError(f"{name}: cannot read {path}: the file is damaged or truncated (its data holds {have} of "
                            f"the {n} bytes its header announces)")


def _refuse_nonfinite(arr: np.ndarray, path: str, name: str, n_nan: int | None = None, n_inf: int | None = None):
    if n_nan is None:
        if not np.issubdtype(arr.dtype, np.inexact):
            return
        fin = np.isfinite(arr)
        if fin.all():
            return
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(arr.size - np.count_nonzero(fin)) - n_nan
    if not (n_nan or n_inf):
        return
    what = " and ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if p)
    total = int(np.size(arr))
    scope = "every voxel is NaN/Inf" if n_nan + n_inf >= total else f"{what} of {total} voxels"
    raise PriorRegError(
        f"{name}: {path} contains {what} voxel(s) ({scope}); replace NaN/Inf with a value (e.g. 0) first"
    )


def image_dimension(path: str) -> int | None:
    """2 or 3, the dimension :func:`read_image` gives the file (a single-slice 3D file or a 4D one of one
    volume counted as read), from its header alone; None for a DICOM folder or a header that cannot be read
    (reading it says why)."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = list(reader.GetSize())
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if _one_slice(size):
        size = [n for n in size if n > 1]
    return len(size) if len(size) in (2, 3) else None


def input_problem(path: str, name: str) -> str | None:
    """Why ``path`` cannot be read as an image, from its name and permissions alone (no such file, a
    format priorreg does not read, no permission); None where it may be (a folder: a DICOM series)."""
    if not os.path.exists(path):
        return f"{name}: no such file or directory: {path}"
    unusable = name_problem(path, name)  # as SimpleITK is given it
    if unusable:
        return unusable
    if os.path.isdir(path):
        return None
    if not os.path.isfile(path):  # a named pipe would be read forever
        return f"{name}: {path} is not a regular file (a pipe or a device); give an image file or a DICOM folder"
    ext = extension(path)
    if ext in (".hdr", ".img"):
        return (f"{name}: {path} is half of an Analyze/NIfTI .hdr/.img pair, which priorreg does not read (NaN voxels "
                "in it could not be checked); convert the pair to .nii.gz (e.g. nibabel.load(p).to_filename('x.nii.gz'))")
    if ext not in READ_EXTENSIONS:
        return (f"{name}: unsupported file format {ext or '(no extension)'!r} for {path}; "
                f"use one of {', '.join(READ_EXTENSIONS)} or a DICOM series directory")
    if not os.access(path, os.R_OK):
        return f"{name}: cannot read {path} (permission denied)"
    return None


# ITK picks a reader by the file name's extension in lower case; for another case it is named here.
_IMAGE_IOS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
              ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".png": "PNGImageIO", ".tif": "TIFFImageIO",
              ".tiff": "TIFFImageIO", ".dcm": "GDCMImageIO"}


def _read_file(path: str, ext: str, name: str):
    """One image file through SimpleITK; its refusal as one line that says why."""
    sitk = _sitk()
    given = os.path.basename(path)[-len(ext):]
    if ext in (".nii", ".nii.gz") and given not in (ext, ext.upper()):  # niftilib refuses it, in seven lines
        raise PriorRegError(f"{name}: cannot read {path}: NIfTI takes its extension in one case ({ext} or "
                            f"{ext.upper()}), not {given}; rename the file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    if given != ext:  # "SCAN.MHA"
        reader.SetImageIO(_IMAGE_IOS[ext])
    try:
        return reader.Execute()
    except RuntimeError as e:
        reason = itk_reason(e)
    if ext == ".png" and "PixelType" in reason:  # ITK reads grey, RGB and RGBA PNGs, not grey + alpha
        raise PriorRegError(f"{name}: cannot read {path}: a grey + alpha PNG is not supported; save it as "
                            "grey or RGB (e.g. PIL: Image.open(path).convert('L').save(new_path))") from None
    if ext in (".nii", ".nii.gz") and _nifti_version(path) == 2:
        reason = "a NIfTI-2 file, which ITK does not read; save it as NIfTI-1 (e.g. nibabel.Nifti1Image)"
    elif "Bad direction" in reason:
        reason += "; a 2D file whose plane is not axial? save the slice as a 3D file of one slice"
    raise PriorRegError(f"{name}: cannot read {path} as an image ({reason})") from None


def _nifti_version(path: str) -> int | None:
    """1 or 2 from a NIfTI header's first field (348 or 540, either byte order); None if unreadable."""
    try:
        with _open_maybe_gzip(path) as fh:
            head = fh.read(4)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 4:
        return None
    sizes = {struct.unpack("<i", head)[0], struct.unpack(">i", head)[0]}
    return 2 if 540 in sizes else 1 if 348 in sizes else None


def read_image(path, name: str = "image", notes: list | None = None, *, allow_nonfinite: bool = False,
               outputs_on_grid: bool = False, labels: bool = False) -> Image:
    """Read an image file (or a DICOM series directory) into an :class:`Image`.

    Raises :class:`PriorRegError` (one line) for a missing, unreadable, damaged
    (e.g. truncated) or unsupported file, for images that are not 2D or 3D scalar
    images and, unless ``allow_nonfinite``, for NaN/Inf voxels (NIfTI included:
    its data block is checked as stored, since ITK's reader turns NaN into 0).
    With ``allow_nonfinite`` the NaN/Inf voxels are returned as they are in the file.
    Informational notes (colour converted to grey, single-slice 3D treated as 2D)
    are appended to ``notes`` if given. ``labels``: the values are labels, so a colour image
    (whose grey conversion would mix them) is refused.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise PriorRegError(f"read_image(): {name} must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    problem = input_problem(path, name)
    if problem:
        raise PriorRegError(problem)
    if os.path.isdir(path):
        (raw, modality), scan = _read_dicom_dir(path, name, notes), None
    else:
        raw, modality, scan = _read_one_file(path, name, notes, allow_nonfinite)
    img = _to_scalar(raw, path, name, notes, labels)
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() not in (2, 3):
        raise PriorRegError(f"{name}: {path} is a {img.GetDimension()}D image; only 2D and 3D images are supported")
    try:
        out = sitk_to_image(img, notes=notes, name=name, outputs_on_grid=outputs_on_grid)
    except PriorRegError:  # e.g. an oblique slice
        series = _series_files(raw, path) if not os.path.isdir(path) and extension(path) == ".dcm" else 0
        if series < 2:
            raise
        raise PriorRegError(f"{name}: {path} is one file of a DICOM series of {series} files in its folder, and one "
                            "oblique slice by itself is not supported; give the folder to read the series as a volume") from None
    out.modality = modality
    if scan is not None and (scan.n_nan or scan.n_inf):
        if not allow_nonfinite:
            _refuse_nonfinite(out.array, path, name, scan.n_nan, scan.n_inf)
        return out.with_array(_restore_nonfinite(out.array, scan))
    if not allow_nonfinite:
        _refuse_nonfinite(out.array, path, name)
    return out


def _read_one_file(path: str, name: str, notes, allow_nonfinite: bool) -> tuple:
    """(SimpleITK image, the modality its file or sidecar states, a NIfTI file's data scan or None) of one
    image file; what its header tells beside the image goes to ``notes`` (:func:`_file_notes`)."""
    ext = extension(path)
    if ext in (".mha", ".mhd"):
        _check_metaimage(path, name)
    img = _read_file(path, ext, name)
    scan = _scan_nifti(path, name, keep_positions=allow_nonfinite) if ext in (".nii", ".nii.gz") else None
    if notes is not None:
        notes += _file_notes(img, path, ext, name)
    return img, _tag(img, "0008|0060") if ext == ".dcm" else _sidecar_modality(path), scan


def _file_notes(img, path: str, ext: str, name: str) -> list:
    """A NIfTI header's sform or units (:func:`_header_notes`), a TIFF stack's made-up slice spacing, or a DICOM
    file that is one slice of a series in its folder (the volume was likely meant)."""
    if ext in (".nii", ".nii.gz"):
        return _header_notes(path, img, name)
    if ext in (".tif", ".tiff") and img.GetDimension() == 3 and img.GetSize()[2] > 1:
        return [f"{name}: {path} is a TIFF stack of {img.GetSize()[2]} pages; TIFF stores no slice spacing or "
                f"position, so {img.GetSpacing()[2]:g} mm between slices at the origin is assumed (give NIfTI, "
                "NRRD or DICOM for the real geometry)"]
    series = _series_files(img, path) if ext == ".dcm" else 0
    if series > 1:
        return [f"{name}: {path} is one file of a DICOM series of {series} files in its folder; it is read "
                "as one slice (give the folder to read the series as a volume)"]
    return []


def _restore_nonfinite(arr: np.ndarray, scan: _NiftiScan) -> np.ndarray:
    """Put back the NaN/Inf values that ITK's NIfTI reader replaced by 0 (file order = NumPy C order)."""
    pos = np.concatenate(scan.positions)
    val = np.concatenate(scan.values)
    if scan.slope:
        val = val * scan.slope + scan.inter
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    else:
        arr = arr.copy()
    flat = arr.reshape(-1)
    if pos.size and pos.max() < flat.size:
        flat[pos] = val
    return arr


class FieldFile(NamedTuple):
    """A displacement field read back: ``field`` of shape (d, *grid.shape) in mm along the grid's array
    axes (the convention of :func:`priorreg.warp`), its ``grid``, and for a single-slice field the
    ``through_plane`` shift (mm) to the moving slice's plane (0 otherwise; :func:`write_field`)."""
    field: np.ndarray
    grid: Image
    through_plane: float


def read_field(path, name: str = "field") -> FieldFile:
    """Read a displacement field file written by :func:`write_field` (or by ITK/ANTs)."""
    sitk = _sitk()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PriorRegError(f"{name}: no such file: {path}")
    ext = extension(path)
    if ext not in READ_EXTENSIONS or ext in (".png", ".dcm"):
        raise PriorRegError(f"{name}: unsupported field format {ext!r} for {path}; use .nii.gz, .nii, .mha or .nrrd")
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise PriorRegError(f"{name}: cannot read {path} ({itk_reason(e)})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    d = img.GetDimension()
    if d == 4 and img.GetNumberOfComponentsPerPixel() == 1 and img.GetSize()[3] in (2, 3):
        raise PriorRegError(f"{name}: {path} is a 4D image of {img.GetSize()[3]} scalar volumes, not a displacement "
                            "field: a field is a 3D image with 3 vector components per voxel (NIfTI: intent "
                            "'vector', dimensions x, y, z, 1, 3), as ITK, ANTs and priorreg write it")
    if img.GetNumberOfComponentsPerPixel() != d or d not in (2, 3):
        raise PriorRegError(
            f"{name}: {path} is not a displacement field (need a {d}D image with {d} vector components, "
            f"got {img.GetNumberOfComponentsPerPixel()})"
        )
    vec = sitk.GetArrayFromImage(img).astype(np.float64)  # (*shape, d) world vectors
    scan = _scan_nifti(path, name) if ext in (".nii", ".nii.gz") else None  # ITK reads a NIfTI NaN as 0
    if not np.all(np.isfinite(vec)) or (scan is not None and (scan.n_nan or scan.n_inf)):
        raise PriorRegError(f"{name}: {path} contains NaN/Inf displacements")
    comp0 = sitk.VectorIndexSelectionCast(img, 0)
    grid = sitk_to_image(comp0, name=name)
    vol, offset = grid.volume, 0.0
    if vol is not None:  # a single-slice 3D field (as write_field writes for single-slice inputs): 2D
        vec = np.take(vec, 0, axis=vol.axis)
        through = vec[..., vol.drop]  # one value: the shift to a parallel plane (the moving slice's), left out in 2D
        if np.ptp(through) > 1e-3:
            raise PriorRegError(
                f"{name}: {path} is a single-slice field whose through-plane displacements vary ({through.min():.3g} "
                f"to {through.max():.3g} mm); priorreg applies single-slice fields in 2D only"
            )
        offset = float(np.mean(through))
        vec = np.delete(vec, vol.drop, axis=-1)
    D = np.asarray(grid.direction, float)
    field = np.moveaxis(np.einsum("ij,...j->...i", np.linalg.inv(D), vec), -1, 0)
    return FieldFile(np.ascontiguousarray(field), grid.with_array(np.zeros(grid.shape, np.float32)), offset)


# --------------------------------------------------------------------------- writing


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir`` would give a new file (0666) or folder (0777) under the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask; what is renamed
    into place gets this mode instead, so outputs in a shared folder are as readable as
    any other file the user writes there.
    """
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path`` (same extension); on success rename it into place.

    The file gets the mode an ordinary write would give it: the existing file's mode when
    it replaces one, else 0666 less the umask (not mkstemp's 0600).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    ext = extension(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".priorreg-", suffix=".tmp" + ext)
    os.close(fd)
    try:
        yield tmp
        try:
            st = os.stat(path)
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else default_mode()
        except OSError:
            mode = default_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def check_write_ext(path, ndim: int | None, name: str) -> str:
    """``path``'s extension, refused where priorreg cannot write it (PNG, TIFF: 2D only; not checked for ndim None)."""
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise PriorRegError(
            f"{name}: cannot write {os.fspath(path)}: unsupported output format {ext or '(no extension)'!r}; "
            f"use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if ext in _2D_ONLY and ndim not in (None, 2):
        raise PriorRegError(f"{name}: cannot write a {ndim}D image as {ext}; use .nii.gz")
    return ext


def _write(sitk_img, path, name, compress: bool = True):
    sitk = _sitk()
    D = np.asarray(sitk_img.GetDirection(), float).reshape(sitk_img.GetDimension(), -1)
    if extension(path) in (".nii", ".nii.gz") and not perpendicular(D):
        raise PriorRegError(f"{name}: NIfTI cannot keep a direction whose axes are not perpendicular (a sheared grid): "
                            f"{os.fspath(path)} would read back on another grid; write .mha or .nrrd")
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise PriorRegError(f"{name}: output directory does not exist: {directory}")
    ext = extension(path)
    try:
        with atomic_path(path) as tmp, _itk_error_lines_dropped():
            if ext == ".nii.gz":
                _write_nifti_gzip(sitk_img, tmp, GZIP_LEVEL if compress else 0)
            else:
                sitk.WriteImage(sitk_img, tmp, compress)
                if ext == ".nii":
                    _check_nifti_complete(tmp, sitk_img)
    except RuntimeError as e:
        raise PriorRegError(f"{name}: cannot write {os.fspath(path)} ({itk_reason(e)})") from None
    except OSError as e:
        raise PriorRegError(f"{name}: cannot write {os.fspath(path)} ({e.strerror or e})") from None


ITK_ERROR_PREFIX = b"** ERROR"  # how ITK's NIfTI library begins a line it writes to stderr itself


@contextlib.contextmanager
def _itk_error_lines_dropped():
    """Around an ITK write: what the C libraries write to stderr (fd 2) is held back, then passed on, less
    ITK_ERROR_PREFIX's lines where the write failed (a full disk printed NIfTI's "** ERROR: NWAD: wrote only
    204448 of 3610516 bytes" above priorreg's one line, which says the same). fd 2 is the whole process's:
    one write at a time holds it (the others, e.g. a cohort's other pairs, leave it be), and what other threads
    write meanwhile is passed on late, not lost. Nothing is held where fd 2 is closed."""
    if not _STDERR_HELD.acquire(blocking=False):
        yield
        return
    try:
        held = tempfile.TemporaryFile()
    except OSError:  # no usable temporary folder: the write goes ahead, its C lines unheld
        held = None
    saved = None if held is None else _dup_stderr()  # may be fd 0 where stdin is closed
    if saved is None:
        _STDERR_HELD.release()
        if held is not None:
            held.close()
        yield
        return
    ran_through = False
    try:
        with held:
            try:
                os.dup2(held.fileno(), 2)
                yield
                ran_through = True
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                lines = held.read().splitlines(keepends=True)
                _write_fd2(b"".join(ln for ln in lines if ran_through or not ln.startswith(ITK_ERROR_PREFIX)))
    finally:
        _STDERR_HELD.release()


_STDERR_HELD = threading.Lock()


def _dup_stderr():
    """A duplicate of fd 2 (Python's own stderr flushed first), or None where it is closed."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError):
        return None


def _write_fd2(data: bytes) -> None:
    with contextlib.suppress(OSError):
        if data:
            os.write(2, data)


GZIP_LEVEL = 6  # zlib's default, and about what ITK's NIfTI writer uses


def _write_nifti_gzip(sitk_img, path, level: int) -> None:
    """``path`` (.nii.gz): ITK writes the uncompressed file, checked whole, which Python then gzips (level 0:
    a gzip stream of stored blocks, which every reader reads, written in the time of a copy). ITK's own
    gzip writer says a short write (a full disk) on stderr only and leaves a cut stream behind."""
    raw = path[: -len(".gz")]
    try:
        _sitk().WriteImage(sitk_img, raw, False)
        _check_nifti_complete(raw, sitk_img)
        with open(raw, "rb") as src, gzip.open(path, "wb", compresslevel=level) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    finally:
        if os.path.exists(raw):
            os.unlink(raw)


NIFTI1_HEADER = 348  # bytes: the smallest header before a NIfTI file's voxels


def _check_nifti_complete(path, sitk_img) -> None:
    """OSError (no space left) when the uncompressed NIfTI file ITK wrote is shorter than its voxels: ITK's
    NIfTI writer reports a short write on stderr and returns as if it had written the file."""
    voxels = math.prod(sitk_img.GetSize()) * sitk_img.GetNumberOfComponentsPerPixel() * sitk_img.GetSizeOfPixelComponent()
    if os.path.getsize(path) < NIFTI1_HEADER + voxels:
        raise OSError(errno.ENOSPC, f"the file came out shorter than the image ({os.path.getsize(path)} of at least "
                      f"{NIFTI1_HEADER + voxels} bytes); is the disk full?")


PNG_MIN_LEVELS = 32  # non-integer data spanning fewer grey levels than this would be flattened by rounding


def _png_levels(arr: np.ndarray, path, name: str) -> np.ndarray:
    """``arr`` as uint8 or uint16 for a PNG file, or one clear error where rounding would lose it."""
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    integral = bool(np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr)))
    if not np.all(np.isfinite(arr)) or lo < 0 or hi > 65535 or (not integral and hi - lo < PNG_MIN_LEVELS):
        raise PriorRegError(
            f"{name}: cannot write {os.fspath(path)}: PNG holds integers 0-65535 and this image's values run from "
            f"{lo:.4g} to {hi:.4g}; write .nii.gz, .mha or .nrrd to keep them")
    top = 255 if hi <= 255 else 65535
    return np.rint(arr).astype(np.uint8 if top == 255 else np.uint16)


def write_image(image: Image, path, name: str = "output", compress: bool = True) -> None:
    """Write an :class:`Image` with its geometry, atomically.

    ``compress=False`` writes the voxels as they are (a .nii.gz is then a gzip stream of stored
    blocks, which every reader reads): for float images, which gzip shrinks by 8-20 % only.

    PNG keeps 8/16-bit integer data only: other data are rounded to uint8 or uint16 where that keeps
    them (values in 0-65535, at least PNG_MIN_LEVELS grey levels apart from integers); otherwise it is
    refused rather than written black or in a few grey levels.
    A 2D image read from a single-slice 3D file (``image.volume``) is written back as that
    X x Y x 1 grid with the file's 3D geometry, except as PNG/TIFF (2D formats).
    """
    if not isinstance(image, Image):
        raise PriorRegError(f"{name}: write_image() takes a priorreg.Image (Image(array, spacing, origin, direction) "
                            f"or one from read_image), got {type(image).__name__}")
    ext = check_write_ext(path, image.ndim, name)
    arr = np.asarray(image.array)
    if not arr.dtype.isnative:  # big-endian data (read by another tool, or warped labels keeping it): ITK takes native
        arr = arr.astype(arr.dtype.newbyteorder("="))
        image = image.with_array(arr)
    if ext == ".png" and arr.dtype not in (np.uint8, np.uint16):
        arr = _png_levels(arr, path, name)
        image = image.with_array(arr)
    _write(image_to_sitk(image, keep_volume=ext not in (".png", ".tif", ".tiff")), path, name, compress)


def field_to_sitk(field_world: np.ndarray, grid: Image, through_plane: float = 0.0):
    """A ``sitkVectorFloat32`` image of world (LPS x, y, z) displacement vectors on ``grid``
    (float32 like ITK's and ANTs' own fields: half the bytes to compress and write).

    On a grid read from a single-slice 3D file (``grid.volume``) the 2D world vectors become
    3D ones on that X x Y x 1 grid with its 3D geometry, which is what ITK's
    DisplacementFieldTransform and ANTs need to apply it to the 3D files; their through-plane
    component is ``through_plane``, the distance to the moving slice's plane (``image.plane_offset``).
    """
    sitk = _sitk()
    v = np.asarray(field_world, dtype=np.float32)
    if v.shape != (*grid.shape, grid.ndim):
        raise PriorRegError(f"write_field(): field must have shape {(*grid.shape, grid.ndim)}, got {v.shape}")
    vol = _slice_volume(grid)
    if vol is not None:
        v = np.insert(v, vol.drop, np.float32(through_plane), axis=-1)  # 2D world (x, y, z without drop) -> 3D world
        v = np.expand_dims(v, vol.axis)
        return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(v), isVector=True), vol)
    return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(v), isVector=True), grid)


def write_field(field_world: np.ndarray, grid: Image, path, name: str = "field", compress: bool = True,
                through_plane: float = 0.0) -> None:
    """Write world-vector displacements (``RegistrationResult.field_world()``) as an ITK vector image.

    On a grid read from a single-slice 3D file the field is written as that single-slice 3D
    grid with three components (see :func:`field_to_sitk`); as NIfTI, an X x Y x 1 grid is
    stored as the same grid with its index axes cycled (1 x X x Y), because ITK reads an
    X x Y x 1 NIfTI vector image as 2D.
    """
    ext = check_write_ext(path, grid.ndim, name)
    if ext in (".png", ".tif", ".tiff"):
        raise PriorRegError(f"{name}: a displacement field needs .nii.gz, .nii, .mha or .nrrd, not {ext}")
    img = field_to_sitk(field_world, grid, through_plane)
    vol = _slice_volume(grid)
    if vol is not None and vol.axis == 0 and ext in (".nii", ".nii.gz"):
        # ITK's NIfTI reader drops trailing size-1 axes of a vector image, so an X x Y x 1 field
        # would read back as a 2D field with 3 components, which DisplacementFieldTransform
        # refuses. The same grid with its index axes cycled (1 x X x Y: the same voxels at the
        # same world points) reads back as 3D.
        img = _sitk().PermuteAxes(img, [2, 0, 1])
    _write(img, path, name, compress)
