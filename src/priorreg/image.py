"""The image type: an array with its physical geometry, and input validation.

Conventions
-----------
* ``array`` axes are the image's index axes in NumPy order (for files read with
  SimpleITK that is (z, y, x)).
* ``spacing[k]`` is the voxel size in mm along array axis ``k``.
* ``direction[:, k]`` is the unit world vector of array axis ``k``; world
  coordinates are ITK's LPS (x, y, z) millimetres. ``origin`` is the world
  position of voxel index 0.  So ``world(i) = origin + direction @ (spacing * i)``.
* Without a direction, an Image has SimpleITK's ``GetImageFromArray`` one: array axis k along
  world axis d-1-k (ITK's identity), so ``Image(read_image(f).array, spacing)`` lies where the file
  does up to its origin, and a written array opens in viewers as SimpleITK's would.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import PriorRegError


PLANES = ("across world x (sagittal)", "across world y (coronal)", "across world z (axial)")  # by SliceGeometry.drop


# How far a direction's column may be from unit length. A file's rounded matrix stays within it (an .mha
# header's "0.87 0.5": 1.0034); a NIfTI affine's matrix given as direction does not, unless its spacing is
# within 1 % of 1 mm, where the mistake costs under 1 % of the geometry.
UNIT_TOLERANCE = 0.01


def perpendicular(direction) -> bool:
    """Whether the axes (columns) are perpendicular, whatever their lengths (NIfTI keeps no other grid: a
    difference above 1e-3 would read back on another grid, ``Image.grid_difference``)."""
    D = np.asarray(direction, float)
    unit = D / np.linalg.norm(D, axis=0)
    return float(np.abs(unit.T @ unit - np.eye(len(D))).max()) <= 1e-3


def spacing_text(spacing) -> str:
    """A voxel size (or an extent) given per array axis, as the notes and the report's tables give it: along
    i, j, k as ITK and 3D Slicer count (the array axes reversed: '0.5 x 0.5 x 3' for thick axial slices)."""
    return " x ".join(f"{float(s):.3g}" for s in reversed(tuple(spacing)))


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """The 3D grid of a single-slice 3D file (e.g. a 181x217x1 NIfTI) read as a 2D image.

    ``axis`` is the 3D array axis (NumPy order) of length 1; ``spacing``, ``origin`` and
    ``direction`` are the file's full 3D geometry (same conventions as :class:`Image`);
    ``drop`` is the world axis (LPS x/y/z) the 2D image's world frame leaves out: the 2D
    image's world coordinates are the 3D ones without it, and its plane is
    ``world[drop] = origin[drop]``.
    """

    axis: int
    spacing: tuple
    origin: tuple
    direction: np.ndarray
    drop: int


def torch_ready(a: np.ndarray) -> np.ndarray:
    """``a``, copied if it is a view with a negative stride (``x[::-1]``, a flipped orientation), which
    torch cannot take; other layouts are kept as they are (no copy)."""
    return np.ascontiguousarray(a) if any(s < 0 for s in a.strides) else a


def fields_equal(a, b) -> bool:
    """Dataclasses ``a`` and ``b`` of one type with equal fields, arrays compared by value (NaN equal to NaN):
    the == of :class:`Image` and :class:`priorreg.Prior` (the generated one raised on their arrays)."""
    if type(a) is not type(b):
        return False
    for f in fields(a):
        if not f.compare:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if x is None or y is None or np.shape(x) != np.shape(y) or not np.array_equal(x, y, equal_nan=True):
                return False
        elif x != y:
            return False
    return True


@dataclass(eq=False)
class Image:
    """An n-D image (n = 2 or 3) with spacing, origin and direction.

    ``spacing`` is per array axis (NumPy order: (z, y, x) for a file read with SimpleITK), but ``origin`` is
    a world point, (x, y[, z]) in mm (ITK's LPS): ``world(i) = origin + direction @ (spacing * i)``. Without
    a direction, array axis k runs along world axis d-1-k, so ``Image(a, (2.0, 1.0), origin=(5.0, 0.0))``
    starts 5 mm along world x, which is array axis 1 (a new user passed the origin in spacing's order).

    ``volume`` (2D images only) is set when the image was read from a single-slice 3D
    file; :func:`priorreg.io.write_image` and ``write_field`` then write images on this
    grid back as that single-slice 3D grid, so outputs keep the input's dimensionality.
    """

    array: np.ndarray
    spacing: tuple = None
    origin: tuple = None
    direction: np.ndarray = None
    volume: SliceGeometry | None = field(default=None, repr=False, compare=False)
    # Whether an origin or direction was given (a file's header, or the caller's); False for Image(array, spacing),
    # whose frame is ITK's default and may not be where the anatomy is (checks.frame_notes)
    framed: bool | None = field(default=None, repr=False, compare=False)
    # What the file says the image is (DICOM Modality 0008|0060, e.g. "MR", "CT", "PT"; also from a dcm2niix/BIDS
    # JSON sidecar); None when it does not say. Chooses the preset where none is given (checks.preset_for).
    modality: str | None = field(default=None, repr=False, compare=False)

    def __eq__(self, other) -> bool:
        """The same voxels on the same grid (and, for a single slice, in the same 3D grid)."""
        if not fields_equal(self, other):
            return False
        a, b = self.volume, other.volume
        return (a is None) == (b is None) and (a is None or fields_equal(a, b))

    __hash__ = None  # mutable: arrays and geometry can change

    def __repr__(self) -> str:
        """One line (the dataclass's printed every voxel): shape, voxel size, origin and type."""
        mm = lambda v: "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"  # noqa: E731
        return (f"Image({self.ndim}D {'x'.join(str(n) for n in self.shape)}, spacing {mm(self.spacing)} mm, "
                f"origin {mm(self.origin)} mm, {self.array.dtype})")

    def __post_init__(self):
        if self.framed is None:
            self.framed = self.origin is not None or self.direction is not None
        a = torch_ready(np.asarray(self.array))
        if a.ndim not in (2, 3):
            raise PriorRegError(f"Image(): array must be 2D or 3D, got shape {a.shape}")
        self.array = a
        d = a.ndim
        self.spacing = _as_vector(self.spacing, d, 1.0, "spacing")
        if np.any(np.asarray(self.spacing) <= 0) or not np.all(np.isfinite(self.spacing)):
            raise PriorRegError(f"Image(): spacing must be positive and finite, got {self.spacing}")
        self.origin = _as_vector(self.origin, d, 0.0, "origin")
        if not np.all(np.isfinite(self.origin)):
            raise PriorRegError(f"Image(): origin must be finite, got {self.origin}")
        if self.direction is None:  # SimpleITK's GetImageFromArray: array axis k along world axis d-1-k
            self.direction = np.eye(d)[::-1]
        # A contiguous copy: torch refuses negative-stride views (e.g. a reversed SimpleITK matrix).
        try:
            self.direction = np.ascontiguousarray(np.array(self.direction, dtype=float).reshape(d, d))
        except (TypeError, ValueError):
            raise PriorRegError(f"Image(): direction must be a {d} x {d} matrix of numbers, got {self.direction!r}") from None
        if not np.all(np.isfinite(self.direction)) or abs(np.linalg.det(self.direction)) < 1e-6:
            raise PriorRegError(f"Image(): direction must be an invertible {d} x {d} matrix (axis directions), "
                                f"got {self.direction.tolist()}")
        lengths = np.linalg.norm(self.direction, axis=0)
        if np.any(np.abs(lengths - 1.0) > UNIT_TOLERANCE):
            raise PriorRegError(f"Image(): direction's columns must be unit vectors (the axes' directions), got lengths "
                                f"{np.round(lengths, 4).tolist()}; the voxel size goes in spacing (a NIfTI affine's "
                                "matrix is direction times spacing: divide each column by its length)")
        if self.volume is not None and d != 2:
            raise PriorRegError(f"Image(): volume (single-slice 3D geometry) is for 2D images, got a {d}D array")

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple:
        return self.array.shape

    def same_grid(self, other: "Image", tol: float = 1e-4) -> bool:
        """True if both images sample the same points of their (2D or 3D) world frame."""
        return self.grid_difference(other, tol, planes=False) is None

    def grid_difference(self, other: "Image", tol: float = 1e-3, planes: bool = True) -> str | None:
        """What differs between the two grids ('origin [0, 0] vs [5, 0]'), or None on one grid; with
        ``planes``, single slices in different planes of the 3D world differ too. Said as ITK, 3D Slicer and
        the file headers say it (size and spacing along i, j, k: the array axes reversed; the direction row
        by row), since users compare it with what their viewer shows."""
        if self.shape != other.shape:
            return (f"size {'x'.join(map(str, self.shape[::-1]))} vs {'x'.join(map(str, other.shape[::-1]))} "
                    f"(numpy shapes {tuple(self.shape)} vs {tuple(other.shape)})")
        r = lambda v: [round(float(x), 3) for x in np.ravel(v)]
        as_itk = {"spacing": lambda g: g.spacing[::-1], "origin": lambda g: g.origin,
                  "direction": lambda g: np.asarray(g.direction)[:, ::-1]}
        for name, get in as_itk.items():
            if not np.allclose(get(self), get(other), atol=tol):
                return f"{name} {r(get(self))} vs {r(get(other))}"
        return self.plane_difference(other, tol) if planes else None

    def plane_difference(self, other: "Image", tol: float = 1e-3) -> str | None:
        """How two single-slice images' planes in the 3D world differ ('slice plane axial at 0 mm vs ...'),
        or None (the same plane, or either is not a single-slice 3D image)."""
        va, vb = self.volume, other.volume
        if va is not None and vb is not None and (va.drop != vb.drop or abs(va.origin[va.drop] - vb.origin[vb.drop]) > tol):
            return f"slice plane {PLANES[va.drop]} at {va.origin[va.drop]:g} mm vs {PLANES[vb.drop]} at {vb.origin[vb.drop]:g} mm"
        return None

    def with_array(self, array: np.ndarray) -> "Image":
        """A new image on the same grid holding ``array`` (keeping ``volume`` when the shape is the same)."""
        keep = self.volume if np.shape(array) == self.shape else None
        return Image(array, self.spacing, self.origin, self.direction, volume=keep, framed=self.framed,
                     modality=self.modality)

    def index_to_world(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with world = A @ index + b."""
        return self.direction @ np.diag(self.spacing), np.asarray(self.origin, float)


def _as_vector(v, d, default, name):
    if v is None:
        return tuple([float(default)] * d)
    if isinstance(v, (str, bytes)):
        raise PriorRegError(f"Image(): {name} must be numbers, got the text {v!r}")
    try:
        arr = np.atleast_1d(np.asarray(v, dtype=float))
    except (TypeError, ValueError):
        raise PriorRegError(f"Image(): {name} must be numbers, got {v!r}") from None
    if np.ndim(v) == 0:  # one number: the same along every axis (a sequence must give one per axis)
        arr = np.repeat(arr, d)
    if arr.size != d:
        raise PriorRegError(f"Image(): {name} needs {d} values for a {d}D image, got {arr.size}")
    return tuple(float(x) for x in arr)


FLOAT32_MAX = float(np.finfo(np.float32).max)


MIN_AXIS_VOXELS = 4  # what registering and learning a prior need along every axis


def _foreign_input(x) -> str:
    """What an input that is neither an array nor a priorreg.Image is and what to give instead ('' for anything
    else): a SimpleITK image was refused as 'an array of shape (39277,)', a path or None as 'dtype object'."""
    library = type(x).__module__.split(".")[0]
    if x is None:
        return "is None; give an array or a priorreg.Image (priorreg.read_image(path) reads a file)"
    if isinstance(x, os.PathLike):
        return f"is a path ({os.fspath(x)}); read the file with priorreg.read_image(path)"
    if np.ma.isMaskedArray(x) and np.ma.getmaskarray(x).any():  # np.asarray drops the mask without a word
        return ("is a numpy masked array, whose mask priorreg does not read; give arr.filled(value), and the region "
                "to align as mask= (on the fixed grid)")
    if library in ("SimpleITK", "nibabel", "itk"):
        return (f"is a {library} image; read its file with priorreg.read_image(path), or give its voxels with their "
                "geometry as priorreg.Image(array, spacing, origin, direction) (arrays in (z, y, x) order: README, "
                "'Axis order')")
    return ""


def as_image(x, name: str, func: str, spacing=None) -> Image:
    """Validate and convert a user input (array or Image) into an :class:`Image`.

    Refuses NaN/Inf, non-numeric data, wrong dimension and constant images.
    """
    if isinstance(x, Image):
        img = x
        if spacing is not None:
            img = Image(img.array, spacing, img.origin, img.direction)
    else:
        foreign = _foreign_input(x)
        if foreign:
            raise PriorRegError(f"{func}: {name} {foreign}")
        try:
            arr = np.asarray(x)
        except Exception as e:  # pragma: no cover - exotic inputs
            raise PriorRegError(f"{func}: {name} must be an array or priorreg.Image ({e})") from None
        if arr.dtype.kind in "US":
            raise PriorRegError(f"{func}: {name} is text ({str(arr)[:80]}); read a file with priorreg.read_image(path)")
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise PriorRegError(f"{func}: {name} must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim not in (2, 3):
            raise PriorRegError(
                f"{func}: {name} must be a 2D or 3D image, got an array of shape {arr.shape}"
            )
        img = Image(arr, spacing)
    a = img.array
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise PriorRegError(f"{func}: {name} must hold real numbers, got dtype {a.dtype}")
    if a.dtype == bool:  # a binary image: its intensities 0 and 1 (numpy cannot subtract booleans)
        img, a = img.with_array(a.astype(np.float32)), a.astype(np.float32)
    if min(a.shape) < MIN_AXIS_VOXELS:
        one_slice = a.ndim == 3 and a.shape.count(1) == 1 and sorted(a.shape)[1] >= MIN_AXIS_VOXELS
        flat = " (a single slice as 3D: give the 2D array, e.g. np.squeeze(array))" if one_slice else ""
        raise PriorRegError(f"{func}: {name} has shape {a.shape}; every axis needs at least {MIN_AXIS_VOXELS} voxels{flat}")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise PriorRegError(f"{func}: {name} contains {bad} NaN/Inf voxel(s); clean the image first")
    big = max(float(a.max()), -float(a.min()))
    if big > FLOAT32_MAX:  # the warped image and the engine are single precision: these would become Inf
        raise PriorRegError(f"{func}: {name} has values up to {big:.3g} in magnitude, beyond single precision "
                            f"({FLOAT32_MAX:.3g}), which registration and its outputs use; clip or rescale the image")
    if np.ptp(a) == 0:
        raise PriorRegError(f"{func}: {name} is constant (every voxel = {a.flat[0]}); nothing to register")
    return img


MASK_MIN_CHECKED = 64  # masks of this many voxels or more must see some structure of the fixed image


def as_mask(mask, fixed: Image, name: str, func: str) -> np.ndarray | None:
    """Validate a fixed-space mask: the fixed image's shape (and grid, for a mask given as an Image), not empty."""
    if mask is None:
        return None
    m = mask.array if isinstance(mask, Image) else np.asarray(mask)
    if m.dtype.kind in "US":
        raise PriorRegError(f"{func}: {name} is text ({str(m)[:80]}); read a file with priorreg.read_image(path)")
    if not (np.issubdtype(m.dtype, np.number) or m.dtype == bool) or np.iscomplexobj(m):
        raise PriorRegError(f"{func}: {name} must be an array of real numbers (> 0 inside), got dtype {m.dtype}")
    if m.shape != tuple(fixed.shape):
        raise PriorRegError(f"{func}: {name} has shape {m.shape} but the fixed image has shape {tuple(fixed.shape)}")
    differs = mask.grid_difference(fixed) if isinstance(mask, Image) else None
    if differs:  # its voxels would be taken as the fixed image's voxels of the same index
        raise PriorRegError(f"{func}: {name} lies on another grid than the fixed image ({differs}); resample it "
                            "onto the fixed image's grid")
    if not np.all(np.isfinite(m)):
        raise PriorRegError(f"{func}: {name} contains NaN/Inf")
    m = (m > 0).astype(np.float64)
    if m.sum() == 0:
        raise PriorRegError(f"{func}: {name} is empty (no voxel > 0); give a mask that covers the region to align")
    inside = np.asarray(fixed.array)[m > 0]
    # a background corner: a traceback from the linear stage or Otsu's bins before (a mask of a few voxels is
    # left to the stages, which say it is too small)
    if inside.size >= MASK_MIN_CHECKED and inside.min() == inside.max():
        raise PriorRegError(f"{func}: {name} covers only voxels where the fixed image is constant ({inside[0]:g}: "
                            "background?); it holds no structure to align; give a mask over the anatomy")
    return m


def plane_offset(fixed: Image, moving: Image, func: str, roles=("fixed", "moving")) -> float:
    """How far (mm, along the planes' normal) the moving image's plane lies from the fixed one's, for
    single-slice 3D images (0 for other images). Images in different planes are refused: their 2D world
    coordinates are different world axes (a sagittal slice's y, z against an axial one's x, y)."""
    fv, mv = getattr(fixed, "volume", None), getattr(moving, "volume", None)
    if fv is None or mv is None:
        return 0.0
    if fv.drop != mv.drop:
        raise PriorRegError(f"{func}: {roles[0]} is a single slice {PLANES[fv.drop]}, {roles[1]} one {PLANES[mv.drop]}; "
                            "both single-slice images must lie in parallel planes")
    return float(mv.origin[mv.drop]) - float(fv.origin[fv.drop])


def check_training_pair(fixed: Image, moving: Image, j: int, first: Image, func: str, files: str = "") -> None:
    """Refuse training pair ``j`` unless its two images share one grid (voxel i of one is paired with voxel i
    of the other) and it has the dimension of pair 0 (``first``); ``files`` names them in the message."""
    differs = fixed.grid_difference(moving)
    if differs:
        raise PriorRegError(
            f"{func}: pair {j} is not on one grid ({files + ': ' if files else ''}fixed and moving differ in {differs}); "
            "training pairs must be pre-registered and resampled to one grid")
    if fixed.ndim != first.ndim:
        raise PriorRegError(f"{func}: pair {j} is {fixed.ndim}D but pair 0 is {first.ndim}D")


def spacing_or_isotropic(shape, spacing) -> tuple:
    """``spacing``, or isotropic 1 mm voxels for a grid of ``shape`` where none is given."""
    return (1.0,) * len(shape) if spacing is None else tuple(spacing)


def level_factors(spacing, level: int) -> tuple:
    """Subsampling factor per axis of pyramid level ``level`` (0 = full resolution) for a grid of
    ``spacing``: 2^level along the finest axes; an axis k times coarser (k >= 2) is halved floor(log2 k)
    levels later, so that the levels tend to isotropic voxels (a stack of 4 mm slices at 1 mm in plane keeps
    its slices until the in-plane voxels reach 4 mm, where halving every axis alike left a 2 x 2 x 4 mm
    grid 10 slices of 16 mm at the coarsest level). Isotropic grids: 2^level on every axis."""
    finest = min(float(h) for h in spacing)
    skips = [int(math.floor(math.log2(float(h) / finest) + 1e-6)) for h in spacing]
    return tuple(2 ** max(0, level - k) for k in skips)


def every_kth(shape, max_voxels: int) -> int:
    """The stride k along every axis that leaves at most ``max_voxels`` of a grid of ``shape`` (1 for one
    that has no more): a statistic of a CT-sized grid (a centroid, a mean) needs no more voxels."""
    n = math.prod(shape)
    return 1 if n <= max_voxels else int(math.ceil((n / max_voxels) ** (1.0 / len(shape))))


MASK_MARGIN_MM = 2.0  # a mask's samples reach this far beyond it (benchmarks/README.md, "A mask on part of the grid")
MASK_MARGIN_VOXELS = 4  # and at most this many voxels (the dilation's cost grows with its ball: fine grids)


def with_margin(mask: np.ndarray | None, spacing) -> np.ndarray | None:
    """The mask grown by MASK_MARGIN_MM (an ellipsoid of whole voxels, at most MASK_MARGIN_VOXELS; none
    along an axis whose voxels are 4 mm or more). A mask drawn on an outline (a skull-stripped brain's)
    kept the outline's edge, the strongest one, out of the samples: BraTS, a known rigid map, 1 mm:
    0.54 mm with the mask as drawn, 0.49 with the margin, 0.63 without a mask."""
    if mask is None:
        return None
    radii = [min(MASK_MARGIN_VOXELS, int(round(MASK_MARGIN_MM / float(h)))) for h in spacing]
    if not any(radii):
        return mask
    from scipy import ndimage

    axes = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    ball = sum((a / max(r, 0.5)) ** 2 for a, r in zip(axes, radii)) <= 1.0
    return ndimage.binary_dilation(mask > 0, structure=ball).astype(np.float64)


def on_one_grid(fixed, moving, func: str, names=("fixed", "moving")) -> tuple:
    """``(fixed, moving)``: a plain array beside an Image on that Image's grid (:func:`on_grid_of`); two
    Images or two arrays as given."""
    images = [x for x in (fixed, moving) if isinstance(x, Image)]
    if len(images) != 1:
        return fixed, moving
    return tuple(on_grid_of(x, images[0], name, func) for x, name in zip((fixed, moving), names))


def on_grid_of(x, image: Image, name: str, func: str):
    """``x`` as is if it is an Image; a plain array of ``image``'s shape as an Image on ``image``'s grid
    (a plain array has no geometry: beside an Image it can only mean that grid); another shape refused."""
    if isinstance(x, Image) or image is None:
        return x
    try:
        x = np.asarray(x)  # a tensor or a nested list is a plain array too
    except Exception:  # noqa: BLE001  (as_image explains what it cannot read)
        return x
    if x.ndim not in (2, 3) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        return x  # something as_image explains (text, another dimension)
    shape = x.shape
    if tuple(shape) != tuple(image.shape):
        raise PriorRegError(
            f"{func}: {name} is a plain array of shape {tuple(shape)} beside a priorreg.Image of shape {image.shape}; a "
            f"plain array is taken on the Image's grid, so it needs that shape; give {name} as an Image with its geometry")
    return image.with_array(x)
