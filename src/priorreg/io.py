"""Image and field files: the only module of priorreg that reads or writes image files.

Everything goes through SimpleITK, which keeps the physical geometry:

* ``read_image`` reads NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr),
  a DICOM series directory, and 2D PNG / TIFF into a :class:`priorreg.Image`
  (array in NumPy (z, y, x) order, spacing per array axis, ``direction[:, k]`` the
  world LPS vector of array axis k). A 3D file with a single slice (a 2D image
  stored as e.g. 181x217x1 NIfTI) becomes a 2D image. RGB(A) images become grey.
* ``write_image`` / ``write_field`` write atomically: a temporary file in the
  target directory, renamed into place with ``os.replace``.
* The displacement field file is an ITK vector image (``sitkVectorFloat64``) on
  the fixed grid whose vectors are world LPS (x, y, z) millimetres, pull-back: the
  fixed point x maps to x + field(x) in the moving image. That is what
  ``sitk.DisplacementFieldTransform`` and ANTs' ``apply_transforms`` expect.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from .errors import PriorRegError
from .image import Image

READ_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".dcm")
# Single-file formats only (a .mhd/.hdr pair cannot be renamed into place atomically).
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff")
_2D_ONLY = (".png",)


def _sitk():
    import SimpleITK as sitk

    return sitk


def extension(path) -> str:
    """The (possibly double) extension of ``path``, lower case ('.nii.gz', '.png', ...)."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


# --------------------------------------------------------------------------- geometry


def sitk_to_image(img, *, squeeze: bool = True, notes: list | None = None, name: str = "image") -> Image:
    """Convert a scalar SimpleITK image into an :class:`Image` (NumPy axis order)."""
    sitk = _sitk()
    arr = sitk.GetArrayFromImage(img)
    d = img.GetDimension()
    if d not in (2, 3):
        raise PriorRegError(f"{name}: {d}D images are not supported (only 2D and 3D)")
    spacing = np.asarray(img.GetSpacing(), float)[::-1]
    origin = np.asarray(img.GetOrigin(), float)
    D_itk = np.asarray(img.GetDirection(), float).reshape(d, d)
    direction = D_itk[:, ::-1]  # array axis k is ITK index axis d-1-k
    if d == 3 and squeeze and 1 in arr.shape and sum(n > 1 for n in arr.shape) == 2:
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
        arr = np.take(arr, 0, axis=k)
        spacing = spacing[keep]
        origin = origin[rows]
        direction = sub
        if notes is not None:
            notes.append(f"{name}: a single-slice 3D image; treated as 2D {arr.shape[0]}x{arr.shape[1]}")
    return Image(arr, tuple(spacing), tuple(origin), np.ascontiguousarray(direction))


def _set_geometry(sitk_img, ref: Image):
    d = ref.ndim
    sitk_img.SetSpacing([float(s) for s in np.asarray(ref.spacing)[::-1]])
    sitk_img.SetOrigin([float(o) for o in ref.origin])
    D_itk = np.asarray(ref.direction, float)[:, ::-1]
    sitk_img.SetDirection([float(v) for v in D_itk.reshape(d * d)])
    return sitk_img


def image_to_sitk(image: Image):
    """Convert an :class:`Image` into a scalar SimpleITK image with its geometry."""
    sitk = _sitk()
    arr = np.asarray(image.array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False), image)


def geometry(image: Image) -> dict:
    """A JSON-friendly description of an image's grid."""
    return {
        "shape": [int(n) for n in image.shape],
        "spacing_mm": [float(s) for s in image.spacing],
        "origin_mm": [float(o) for o in image.origin],
        "direction": np.asarray(image.direction, float).round(8).tolist(),
        "dtype": str(image.array.dtype),
    }


# --------------------------------------------------------------------------- reading


def _read_dicom_dir(path: str, name: str, notes):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    try:
        ids = reader.GetGDCMSeriesIDs(path)
    except RuntimeError:
        ids = ()
    if not ids:
        raise PriorRegError(f"{name}: {path} is a directory without a DICOM series (give an image file or a DICOM series folder)")
    files = {sid: reader.GetGDCMSeriesFileNames(path, sid) for sid in ids}
    sid = max(ids, key=lambda s: len(files[s]))
    if len(ids) > 1 and notes is not None:
        notes.append(f"{name}: {path} holds {len(ids)} DICOM series; using {sid} ({len(files[sid])} files)")
    reader.SetFileNames(files[sid])
    return reader.Execute()


def _to_scalar(img, path: str, name: str, notes):
    sitk = _sitk()
    n = img.GetNumberOfComponentsPerPixel()
    if n == 1:
        return img
    if n not in (3, 4):
        raise PriorRegError(f"{name}: {path} has {n} components per pixel; give a scalar (grey-value) image")
    r, g, b = (sitk.Cast(sitk.VectorIndexSelectionCast(img, c), sitk.sitkFloat32) for c in range(3))
    grey = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R BT.601 luma
    if notes is not None:
        notes.append(f"{name}: {path} is a colour ({'RGBA' if n == 4 else 'RGB'}) image; converted to grey")
    return grey


def read_image(path, name: str = "image", notes: list | None = None) -> Image:
    """Read an image file (or a DICOM series directory) into an :class:`Image`.

    Raises :class:`PriorRegError` for a missing, unreadable or unsupported file
    and for images that are not 2D or 3D scalar images. Informational notes
    (colour converted to grey, single-slice 3D treated as 2D) are appended to
    ``notes`` if given.
    """
    sitk = _sitk()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PriorRegError(f"{name}: no such file or directory: {path}")
    if os.path.isdir(path):
        img = _read_dicom_dir(path, name, notes)
    else:
        ext = extension(path)
        if ext not in READ_EXTENSIONS:
            raise PriorRegError(
                f"{name}: unsupported file format {ext or '(no extension)'!r} for {path}; "
                f"use one of {', '.join(READ_EXTENSIONS)} or a DICOM series directory"
            )
        if not os.access(path, os.R_OK):
            raise PriorRegError(f"{name}: cannot read {path} (permission denied)")
        try:
            img = sitk.ReadImage(path)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
            raise PriorRegError(f"{name}: cannot read {path} as an image ({first.strip()[:200]})") from None
    img = _to_scalar(img, path, name, notes)
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() not in (2, 3):
        raise PriorRegError(f"{name}: {path} is a {img.GetDimension()}D image; only 2D and 3D images are supported")
    return sitk_to_image(img, notes=notes, name=name)


def read_field(path, name: str = "field") -> tuple[np.ndarray, Image]:
    """Read a displacement field file written by :func:`write_field` (or by ITK/ANTs).

    Returns ``(field, grid)``: ``field`` of shape (d, *grid.shape) in mm along the
    grid's array axes (the convention of :func:`priorreg.warp`) and the grid.
    """
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
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise PriorRegError(f"{name}: cannot read {path} ({first.strip()[:200]})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    d = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != d or d not in (2, 3):
        raise PriorRegError(
            f"{name}: {path} is not a displacement field (need a {d}D image with {d} vector components, "
            f"got {img.GetNumberOfComponentsPerPixel()})"
        )
    vec = sitk.GetArrayFromImage(img).astype(np.float64)  # (*shape, d) world vectors
    comp0 = sitk.VectorIndexSelectionCast(img, 0)
    grid = sitk_to_image(comp0, squeeze=False, name=name)
    D = np.asarray(grid.direction, float)
    field = np.moveaxis(np.einsum("ij,...j->...i", np.linalg.inv(D), vec), -1, 0)
    if not np.all(np.isfinite(field)):
        raise PriorRegError(f"{name}: {path} contains NaN/Inf displacements")
    return np.ascontiguousarray(field), grid.with_array(np.zeros(grid.shape, np.float32))


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path`` (same extension); on success rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    ext = extension(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".priorreg-", suffix=".tmp" + ext)
    os.close(fd)
    try:
        yield tmp
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


def _check_write_ext(path, ndim: int, name: str) -> str:
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise PriorRegError(
            f"{name}: cannot write {os.fspath(path)}: unsupported output format {ext or '(no extension)'!r}; "
            f"use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if ext in _2D_ONLY and ndim != 2:
        raise PriorRegError(f"{name}: cannot write a {ndim}D image as {ext}; use .nii.gz")
    return ext


def _write(sitk_img, path, name):
    sitk = _sitk()
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise PriorRegError(f"{name}: output directory does not exist: {directory}")
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(sitk_img, tmp, True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise PriorRegError(f"{name}: cannot write {os.fspath(path)} ({first.strip()[:200]})") from None


def write_image(image: Image, path, name: str = "output") -> None:
    """Write an :class:`Image` with its geometry, atomically.

    PNG keeps 8/16-bit integer data only: other data are rounded and clipped to uint8 or uint16.
    """
    ext = _check_write_ext(path, image.ndim, name)
    arr = np.asarray(image.array)
    if ext == ".png" and arr.dtype not in (np.uint8, np.uint16):
        top = 255 if np.nanmax(arr) <= 255 else 65535
        arr = np.clip(np.rint(arr), 0, top).astype(np.uint8 if top == 255 else np.uint16)
        image = image.with_array(arr)
    _write(image_to_sitk(image), path, name)


def field_to_sitk(field_world: np.ndarray, grid: Image):
    """A ``sitkVectorFloat64`` image of world (LPS x, y, z) displacement vectors on ``grid``."""
    sitk = _sitk()
    v = np.asarray(field_world, dtype=np.float64)
    if v.shape != (*grid.shape, grid.ndim):
        raise PriorRegError(f"write_field(): field must have shape {(*grid.shape, grid.ndim)}, got {v.shape}")
    return _set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(v), isVector=True), grid)


def write_field(field_world: np.ndarray, grid: Image, path, name: str = "field") -> None:
    """Write world-vector displacements (``RegistrationResult.field_world()``) as an ITK vector image."""
    ext = _check_write_ext(path, grid.ndim, name)
    if ext in (".png", ".tif", ".tiff"):
        raise PriorRegError(f"{name}: a displacement field needs .nii.gz, .nii, .mha or .nrrd, not {ext}")
    _write(field_to_sitk(field_world, grid), path, name)
