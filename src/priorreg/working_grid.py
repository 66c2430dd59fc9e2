"""The grid the deformable stage works on: the fixed grid, or where the moving image's voxels are coarser,
the fixed grid subsampled to them (by powers of two per axis, as the pyramid's levels are made), the field
interpolated back onto the fixed grid at the end.

A PET of 4 mm voxels onto a CT of 1 mm, an ADC map of 2 mm onto a T2w of 0.5 mm in plane: the moving image
holds nothing finer than its voxels, so the levels finer than them add cost (16-64 x the voxels) and no
information. The energy is the same: the regulariser's weights are physical (mm) and the bending rule reads
the fixed grid's own spacing and extent (``Inputs.bending_grid``)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import pyramid, spatial
from .checks import local_regions
from .errors import PriorRegError
from .image import Image


def moving_resolution(fix: Image, mov: Image) -> np.ndarray:
    """The moving image's voxel size (mm) along each of the fixed image's array axes (exact where the axes
    are parallel; for oblique ones, the extent of a moving voxel along the fixed axis)."""
    cos = np.abs(np.asarray(fix.direction, float).T @ np.asarray(mov.direction, float))  # fixed axis k . moving axis j
    return cos @ np.asarray(mov.spacing, float)


def moving_voxel_size(fix: Image, mov: Image) -> np.ndarray:
    """The moving image's voxel size (mm) along each of the fixed image's array axes, as the root of the
    squared extents (a rotation does not change it for isotropic voxels; :func:`moving_resolution`'s sum of
    extents grew 37 % on a grid turned 30 degrees)."""
    cos = np.asarray(fix.direction, float).T @ np.asarray(mov.direction, float)
    return np.sqrt((cos**2) @ np.asarray(mov.spacing, float) ** 2)


# Moving voxels this many times the fixed ones (or more) along an axis: work on the moving's. Measured on BraTS
# FLAIR 1 mm against T1c sampled at 2, 3 and 4 mm (benchmarks/README.md, "A coarser moving image"): at 2 x the
# fixed grid's detail still helped (0.1 mm), at 3 and 4 x working on the fixed grid was worse and 3-10 x slower.
MIN_RATIO = 2.5


def working_factors(fix: Image, mov: Image, levels: int) -> tuple:
    """Subsampling factor per fixed axis: where the moving image's voxels are MIN_RATIO or more times the
    fixed one's, the largest power of two that keeps the working voxels no coarser than the moving image's
    (else 1), leaving the pyramid's ``levels`` room (pyramid.max_levels)."""
    ratio = moving_resolution(fix, mov) / np.asarray(fix.spacing, float)
    f = [2 ** int(math.floor(math.log2(r) + 1e-3)) if r >= MIN_RATIO - 1e-3 else 1 for r in ratio]
    while any(k > 1 for k in f) and pyramid.max_levels(_shape(fix.shape, f), _spacing(fix.spacing, f)) < levels:
        f = [k // 2 if k == max(f) else k for k in f]  # the coarsest axes alike
    return tuple(f)


def _shape(shape, f) -> tuple:
    return tuple((n + k - 1) // k for n, k in zip(shape, f))


def _spacing(spacing, f) -> tuple:
    return tuple(float(s) * k for s, k in zip(spacing, f))


SLAB_VOXELS = 2**22  # fixed voxels field_back interpolates at once


@dataclasses.dataclass(frozen=True)
class WorkingGrid:
    """The fixed grid's ``shape`` and the factors ``f`` of the working grid (working voxel i = fixed voxel f*i)."""

    shape: tuple
    f: tuple

    def field_back(self, u: torch.Tensor) -> np.ndarray:
        """A working-grid field (mm) interpolated onto the fixed grid (n-linear, as between pyramid levels), as
        float64, a slab of rows at a time (the whole grid's sample points took GBs on a CT-sized fixed grid).
        The fixed voxels beyond the last working one (up to f - 1 rows at each far edge) read the field
        extrapolated linearly by one working voxel, not clamped: an affine field comes back exactly."""
        for k in range(1, u.dim()):
            if u.shape[k] > 1:
                last, before = u.narrow(k, u.shape[k] - 1, 1), u.narrow(k, u.shape[k] - 2, 1)
                u = torch.cat([u, 2 * last - before], dim=k)
        out = np.empty((len(self.shape), *self.shape))
        for lo, hi in spatial.row_slabs(self.shape, SLAB_VOXELS):
            out[:, lo:hi] = pyramid.upsample_field(u, (hi - lo, *self.shape[1:]), ratio=list(self.f), start=lo).double().cpu().numpy()
        return out


def _subsampled(img: Image, f) -> Image:
    """``img`` blurred and subsampled as a pyramid level of factors ``f`` (origin and direction kept)."""
    arr = pyramid.downsample(torch.as_tensor(np.asarray(img.array, dtype=np.float32)), list(f)).numpy()
    return Image(arr, _spacing(img.spacing, f), img.origin, img.direction, framed=img.framed)


def _mask_on(mask: np.ndarray, f) -> np.ndarray:
    """A working voxel is in the mask where any fixed voxel of its block is (a small region stays)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[t.dim() - 2]
    return pool(t, kernel_size=list(f), stride=list(f), ceil_mode=True)[0, 0].numpy()


def _fits(work, levels: int) -> bool:
    """Whether the working grid keeps the mask at every pyramid level and the asked-for regional blocks."""
    if work.mask is not None and not all(pyramid.mask_level(work.mask, lv, work.fixed.spacing).any() for lv in range(levels)):
        return False
    if work.options.local_weight > 0:
        try:
            local_regions(work.options, work.fixed, "register()")
        except PriorRegError:  # blocks given for the fixed grid, too many for the working one: keep that
            return False
    return True


def on_working_grid(inp, moving: Image):
    """(``inp`` on the working grid, its WorkingGrid or None where it is the fixed grid). ``moving``: the
    moving image as given (``inp.moving`` may be it resampled onto the fixed grid, which hides its voxel size).
    Single slices and a registration with a prior keep the fixed grid: the prior's tables were learned level by
    level on its training pairs' fixed grids (priorreg.prior.fit_prior), so its levels are the fixed grid's.
    So does a mask or a regional block count the working grid could not hold."""
    fix = inp.fixed
    if fix.volume is not None or inp.prior is not None:
        return inp, None
    f = working_factors(fix, moving, inp.options.levels)
    if all(k == 1 for k in f):
        return inp, None
    every = tuple(slice(0, None, k) for k in f)
    work = dataclasses.replace(
        inp, fixed=_subsampled(fix, f), mask=None if inp.mask is None else _mask_on(inp.mask, f),
        initial_field=None if inp.initial_field is None else np.ascontiguousarray(np.asarray(inp.initial_field)[(slice(None),) + every]),
        bending_grid=inp.bending_grid or (fix.spacing, fix.shape))
    if not _fits(work, inp.options.levels):
        return inp, None
    if inp.options.local_weight > 0:  # the blocks for the working grid's size ("auto"), or those given
        work = dataclasses.replace(work, local_regions=local_regions(inp.options, work.fixed, "register()"))
    return work, WorkingGrid(fix.shape, f)
