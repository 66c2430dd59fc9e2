"""Coarse-to-fine pyramid. It knows how to resample images and fields between
levels (Gaussian blur and subsampling down, n-linear interpolation of the field up),
not which energy is minimised: the per-level solver is a callable."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import spatial
from .errors import PriorRegError
from .image import level_factors
from .image import spacing_or_isotropic as _spacing

MIN_COARSE_VOXELS = 4


# ----------------------------------------------------------------------------- resampling
def gaussian_blur(image: torch.Tensor, sigmas, stride=1) -> torch.Tensor:
    """Separable Gaussian blur (std in voxels per axis, 0 = none), edge-replicating; with ``stride``
    (one for every axis, or one per axis) > 1 only every stride-th voxel from index 0 along each blurred
    axis is computed and kept (the same values as blurring everything and subsampling, at a fraction of
    the work)."""
    d = image.dim()
    strides = [stride] * d if isinstance(stride, int) else list(stride)
    x = image[None, None]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    for ax, s in enumerate(sigmas):
        if s <= 0:
            continue
        r = max(1, int(math.ceil(3.0 * s)))
        t = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
        g = torch.exp(-0.5 * (t / s) ** 2)
        g = g / g.sum()
        kshape, step = [1] * d, [1] * d
        kshape[ax], step[ax] = 2 * r + 1, strides[ax]
        pad = [0, 0] * d
        pad[2 * (d - 1 - ax)] = r
        pad[2 * (d - 1 - ax) + 1] = r
        x = conv(F.pad(x, pad, mode="replicate"), g.reshape(1, 1, *kshape), stride=step)
    return x[0, 0]


def downsample(image: torch.Tensor, factor) -> torch.Tensor:
    """Blur with std 0.5*factor voxels, then keep every factor-th voxel from index 0 (``factor``: one for
    every axis, or one per axis; an axis with factor 1 is left as it is)."""
    factors = [factor] * image.dim() if isinstance(factor, int) else list(factor)
    if all(f == 1 for f in factors):
        return image
    return gaussian_blur(image, [0.5 * f if f > 1 else 0.0 for f in factors], stride=factors).contiguous()


def upsample_field(u: torch.Tensor, shape, ratio, start: int = 0) -> torch.Tensor:
    """Resample a physical field from a coarse grid to a finer one.

    Fine voxel i sits at coarse coordinate i/ratio (both grids start at index 0; ``ratio``: one for every
    axis, or one per axis). The field is in mm, so its values need no rescaling. ``start``: ``shape`` is the
    fine grid's rows from this first index on (a slab of it).
    """
    coords = spatial.identity_grid(shape, u.dtype, u.device)
    if start:
        coords[0] += start
    if isinstance(ratio, (int, float)):
        coords = coords / ratio
    else:
        coords = coords / torch.tensor([float(r) for r in ratio], dtype=u.dtype, device=u.device).reshape(-1, *[1] * len(shape))
    return spatial.sample(u, coords)


def level_label(level: int, levels: int) -> str:
    """How users see a level: 'level 1/3' is the coarsest of three, 'level 3/3' the finest. The API's
    index (``LevelHistory.level``, 0 = finest) is the pyramid's; text shown to a user counts coarse
    first, as the progress lines do, so one run's lines, errors and report agree."""
    return f"level {level_number(level, levels)}"


def level_number(level: int, levels: int) -> str:
    """'k/N' of :func:`level_label` (a table's column already says 'level')."""
    return f"{levels - level}/{levels}"


def _coarse_shape(shape, level: int, spacing=None) -> tuple:
    return tuple((n + f - 1) // f for n, f in zip(shape, level_factors(_spacing(shape, spacing), level)))


def _first_too_small(shape, spacing=None) -> int:
    """The first pyramid level (0 = full resolution) with fewer than MIN_COARSE_VOXELS along an axis."""
    level = 0
    while min(_coarse_shape(shape, level, spacing)) >= MIN_COARSE_VOXELS:
        level += 1
    return level


def max_levels(shape, spacing=None) -> int:
    """The most pyramid levels an image of ``shape`` (and ``spacing``) allows (MIN_COARSE_VOXELS along every
    axis at the coarsest), at least 1."""
    return max(1, _first_too_small(shape, spacing))


def check_levels(shape, levels: int, func: str = "register()", spacing=None):
    lv = _first_too_small(shape, spacing)
    if lv < levels:
        raise PriorRegError(
            f"{func}: levels={levels} shrinks an image of shape {tuple(shape)} to {_coarse_shape(shape, lv, spacing)} at "
            f"{level_label(lv, levels)}; use levels <= {max_levels(shape, spacing)}"
        )


def image_pyramid(image: torch.Tensor, levels: int, spacing=None) -> list:
    """[level 0 (full), level 1, ...]: blur with std 0.5*f voxels, keep every f-th voxel (f per axis:
    :func:`priorreg.image.level_factors`)."""
    sp = _spacing(image.shape, spacing)
    return [downsample(image, level_factors(sp, lv)) for lv in range(levels)]


def mask_level(mask, level: int, spacing=None):
    """The mask (a tensor or an array) at pyramid ``level``: every f-th voxel per axis, as the images' levels."""
    return mask[tuple(slice(0, None, f) for f in level_factors(_spacing(mask.shape, spacing), level))]


def mask_pyramid(mask: torch.Tensor | None, levels: int, spacing=None) -> list:
    """Masks subsampled like the images (nearest), at every level."""
    if mask is None:
        return [None] * levels
    out = []
    for lv in range(levels):
        m = mask_level(mask, lv, spacing).contiguous()
        if m.sum() == 0:
            raise PriorRegError(f"register(): the mask is empty at pyramid {level_label(lv, levels)}; use fewer levels or a larger mask")
        out.append(m)
    return out


def level_spacing(spacing, level: int) -> tuple:
    return tuple(float(s) * f for s, f in zip(spacing, level_factors(spacing, level)))


def coarse_to_fine(shapes: list, solve_level, u0: torch.Tensor | None = None, dtype=torch.float32, device=None,
                   spacing=None):
    """Run ``solve_level(level, u_init) -> u`` from the coarsest level to level 0.

    ``shapes[l]`` is the grid shape at level l (of a grid of ``spacing``: the factor between levels per
    axis). The physical field (mm) is upsampled between levels by n-linear interpolation; being in mm it
    needs no rescaling. ``u0`` is an optional initial field on the coarsest grid.
    """
    levels = len(shapes)
    sp = _spacing(shapes[0], spacing)
    u = None
    for lv in range(levels - 1, -1, -1):
        shape = shapes[lv]
        if u is None:
            u = u0 if u0 is not None else torch.zeros((len(shape), *shape), dtype=dtype, device=device)
        else:
            ratio = [a / b for a, b in zip(level_factors(sp, lv + 1), level_factors(sp, lv))]
            u = upsample_field(u, shape, ratio=ratio[0] if len(set(ratio)) == 1 else ratio)
        u = solve_level(lv, u)
    return u
