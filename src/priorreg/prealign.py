"""Stage 2 of :func:`priorreg.register`: the linear pre-alignment (rigid, then affine).

The transform is estimated by :func:`priorreg.linear.estimate_linear` (or read from a
file and refined). How the deformable stage then starts from it depends on its size:

* a transform whose linear part is close to the identity (|A - I| <= ``NEAR_IDENTITY``: any
  translation, rotations of a few degrees; a pair that was already aligned), on a pair that
  shares one grid, is the deformable
  stage's initial field, so the original moving image is interpolated once, as without the
  stage (resampling it first cost 0.01-0.03 voxel on every 3D benchmark draw:
  benchmarks/README.md, "Defaults and the linear stage"). The regulariser sees only its
  gradient A - I, which is then small (and the bending term ignores an affine field);
* a larger rotation, scaling or shear resamples the moving image through the transform first,
  so that the regulariser, which acts on the deformable field only, does not pull it back;
  the two are composed into one displacement field at the end.

An affine whose scales or shears leave plausible bounds (a global MI optimum that shrinks
a blurred image, or a small slab) is replaced by the rigid estimate.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .checks import Inputs
from .options import is_auto
from .linear import HEADER_TURN_DEGREES, MAX_SAMPLES, estimate_linear, header_turn, usable_levels
from .transform import LinearResult, compose_field, linear_to_field, read_itk_transform, rotation_angle, through_plane_shift
from .errors import PriorRegError
from .image import Image, plane_offset
from .intensity import foreground
from .pyramid import mask_level
from .resample import field_of_view, warp_with_fov
from .runtime import registration_threads

NEAR_IDENTITY = 0.1  # largest singular value of A - I still passed as an initial field (about 6 degrees)
SCALE_BOUNDS = (0.8, 1.25)  # an affine outside these per-axis scales ...
MAX_SHEAR = 0.15  # ... or with a larger shear falls back to rigid


def initial_transform(inp: Inputs) -> LinearResult | None:
    """The transform file of ``options.initial_transform``, if any."""
    path = inp.options.initial_transform
    return None if not path else read_itk_transform(path, inp.fixed.ndim, getattr(inp.fixed, "volume", None))


def _estimate(inp: Inputs, kind: str, start: LinearResult | None) -> LinearResult:
    opts = inp.options
    alpha = 1.0 if is_auto(opts.alpha) else float(opts.alpha)  # an automatic prior weight starts at MI alone
    # The stage works on MAX_SAMPLES points: kernels too short to share between threads (the MNI 2 mm
    # case's stage took 3.2 s on 2 threads, 1.3 s on one, with the same result; benchmarks/README.md).
    try:
        with registration_threads(MAX_SAMPLES):
            return estimate_linear(inp.fixed, inp.moving, kind=kind, fixed_mask=inp.mask, prior=inp.prior, alpha=alpha,
                                   bins=opts.bins, parzen_sigma=opts.parzen_sigma,
                                   levels=usable_levels(inp.fixed, inp.mask, min(3, opts.levels)),
                                   device=str(inp.device), initial=start, prior_term=opts.prior_term,
                                   prior_floor=opts.prior_floor, normalization=opts.normalization)
    except PriorRegError as e:  # said by the function the user called
        raise PriorRegError(str(e).replace("estimate_linear():", "register():", 1)) from None


def implausible(lin: LinearResult) -> bool:
    """Scales or shears an anatomical pair would not have."""
    lo, hi = SCALE_BOUNDS
    return any(not lo <= s <= hi for s in lin.scales) or any(abs(h) > MAX_SHEAR for h in lin.shears)


def prealign(inp: Inputs) -> LinearResult | None:
    """The linear transform of the pair (None: ``options.linear == "none"`` and no initial transform)."""
    start = initial_transform(inp)
    if inp.options.linear == "none" or inp.initial_field is not None:
        return start
    lin = _estimate(inp, inp.options.linear, start)
    rigid = lin.rigid  # an affine estimate's rigid stage (None for a rigid estimate)
    if rigid is not None and implausible(lin):
        rigid.notes.append(f"the affine estimate had scales {np.round(lin.scales, 3).tolist()} and shears "
                           f"{np.round(lin.shears, 3).tolist()}: the rigid one is used")
        lin = rigid
    elif rigid is not None and lin.rejected and not rigid.rejected and not rigid.notes:  # fewer parameters may still
        # find a transform (a rigid stage with a note kept the start as well: the same transform, said once)
        rigid.notes.append("the affine optimum failed its check (MIND descriptors or overlap); the rigid one, which "
                           "passed, is used")
        lin = rigid
    return lin


PLANE_SHIFT_MM = 0.1  # an initial transform's shift through a single slice's plane said when it exceeds this


def plane_shift_notes(inp: Inputs) -> list:
    """A warning where the initial transform of a single-slice pair moves the fixed slice's plane through
    itself, other than onto the moving slice's plane: a slice has no other plane, so that shift is left out
    (:func:`priorreg.transform.in_plane`) and the transform is not the one the file holds. (A transform
    within the plane, of slices some distance apart, has the slice-gap warning.)"""
    volume, path = getattr(inp.fixed, "volume", None), inp.options.initial_transform
    if volume is None or not path:
        return []
    try:
        lin3 = read_itk_transform(path, 3)
    except PriorRegError:  # a 2D transform: nothing through the plane
        return []
    shift = through_plane_shift(lin3, volume.drop, float(volume.origin[volume.drop]))
    gap = plane_offset(inp.fixed, inp.moving, "register()")
    if abs(shift) <= PLANE_SHIFT_MM or abs(shift - gap) <= PLANE_SHIFT_MM:  # none, or onto the moving slice's plane
        return []
    return [f"register(): the initial transform {path} moves the fixed slice's plane {shift:.3g} mm along world "
            f"{'xyz'[volume.drop]}, but the moving slice lies {gap:.3g} mm from it; a single slice has no other plane, "
            "so only the transform's part within the plane is used"]


def header_notes(inp: Inputs, lin: LinearResult | None) -> list:
    """A warning when the linear stage turned the moving image as far as its header disagrees with the
    fixed image's (:func:`priorreg.linear.header_turn`): the anatomy says the moving header is wrong."""
    turn = header_turn(inp.fixed, inp.moving)
    if lin is None or turn is None or rotation_angle(lin.matrix) <= HEADER_TURN_DEGREES:
        return []
    found = "the linear stage found" if inp.options.linear != "none" else "the initial transform has"
    return [f"register(): the images' direction matrices differ by {rotation_angle(turn):.0f} degrees, and {found} "
            f"the moving anatomy turned by {rotation_angle(lin.matrix):.0f} degrees in world space: the "
            "moving image's header (its direction) is likely wrong; the result follows the anatomy"]


MIN_OVERLAP = 0.10  # of the fixed foreground inside the moving image at the start, as the linear stage asks
OVERLAP_VOXELS = 2**18  # the share is measured on at most about this many voxels


def check_overlap(inp: Inputs, lin: LinearResult | None, region: np.ndarray) -> None:
    """Refuse a start at which less than MIN_OVERLAP of the fixed ``region`` (the mask, or the fixed image's
    foreground) lies inside the moving image: there is nothing to register, and the warped image would be blank."""
    if inp.initial_field is not None:
        field, start = np.asarray(inp.initial_field, dtype=float), "the initial field"
    elif lin is not None:
        field, start = linear_to_field(lin, inp.fixed), "the linear transform"
    else:
        field, start = None, "their world alignment (no linear stage)"
    share = _overlap(inp, field, region)
    if share < MIN_OVERLAP:
        raise PriorRegError(
            f"register(): only {100 * share:.0f}% of the fixed image's {'mask' if inp.mask is not None else 'foreground'} "
            f"falls inside the moving image under {start} (needs {100 * MIN_OVERLAP:.0f}%): the images do not overlap; "
            "check their origins and directions, or give an initial transform")


def _overlap(inp: Inputs, field: np.ndarray | None, region: np.ndarray) -> float:
    """The share of the fixed ``region`` that ``field`` (None: none) maps inside the moving image."""
    region = np.asarray(region) > 0
    fix, k = inp.fixed, max(1, math.ceil((region.size / OVERLAP_VOXELS) ** (1 / inp.fixed.ndim)))
    every = (slice(None, None, k),) * fix.ndim  # every k-th voxel along each axis: a share needs no more
    grid = Image(fix.array[every], np.asarray(fix.spacing) * k, fix.origin, fix.direction)
    inside = field_of_view(inp.moving, grid, None if field is None else field[(slice(None),) + every])[region[every]]
    return float(inside.mean()) if inside.size else 0.0


def origin_notes(inp: Inputs, lin: LinearResult | None, region: np.ndarray) -> list:
    """A warning when the images' headers place them apart (under MIN_OVERLAP of the fixed ``region`` inside
    the moving image as they lie in the world) and the linear stage brought them together: the anatomy says
    an origin (or a frame) in a header is wrong."""
    if lin is None or inp.initial_field is not None or inp.options.linear == "none" or inp.options.initial_transform:
        return []  # (an initial transform: the user said where the anatomy is)
    share = _overlap(inp, None, region)
    if share >= MIN_OVERLAP:
        return []
    return [f"register(): as their headers place them, only {100 * share:.0f}% of the fixed image's "
            f"{'mask' if inp.mask is not None else 'foreground'} lies inside the moving image; the linear stage "
            f"found the anatomy {float(np.linalg.norm(lin.translation_mm)):.1f} mm away: an origin in a header is "
            "likely wrong (or the images come from different frames); the result follows the anatomy"]


def after_prealign(inp: Inputs, lin: LinearResult | None) -> tuple[Inputs, bool]:
    """(the problem the deformable stage solves, whether the moving image was resampled through ``lin``)."""
    if lin is None:
        return inside_moving(inp, inp.initial_field), False
    field = linear_to_field(lin, inp.fixed)
    near_identity = np.linalg.norm(lin.matrix - np.eye(lin.ndim), 2) <= NEAR_IDENTITY
    # (on two grids the deformable stage sees the moving image resampled onto the fixed box only)
    if inp.initial_field is None and near_identity and inp.fixed.same_grid(inp.moving):
        return inside_moving(dataclasses.replace(inp, initial_field=field), field), False
    moved, fov = warp_with_fov(inp.moving, field, reference=inp.fixed, fill=None, allow_empty=True)
    return inside_moving(dataclasses.replace(inp, moving=moved), None, fov), True


# Beyond the moving image's field of view its edge voxels repeat (it is resampled with fill=None), and the
# deformable stage would match them as anatomy: a 20 mm slab of T1c onto a whole-brain FLAIR, a known rigid
# map, ended at 1.2-2.1 mm in the slab from the linear stage's 0.5-0.9 (benchmarks/README.md, "A moving
# image that covers part of the fixed one"). Where the moving image misses more than this share of the fixed
# anatomy, the deformable stage samples only where it has data.
MISSED_ANATOMY = 0.01


def inside_moving(inp: Inputs, field, fov: np.ndarray | None = None) -> Inputs:
    """``inp`` with its mask cut to where the moving image has data through the start ``field`` (or the
    given ``fov`` map, on ``inp``'s grids), one voxel in from its edge (the samples there read interpolated
    edge voxels; at the edge itself where that leaves a pyramid level empty, as on a slab of a few slices),
    when the moving image misses more than MISSED_ANATOMY of the fixed anatomy (the mask, or the fixed image's
    Otsu foreground); unchanged where it does not, or where even the uneroded cut leaves a level empty."""
    if fov is None:
        if field is None and inp.fixed.same_grid(inp.moving):
            return inp
        fov = field_of_view(inp.moving, inp.fixed, field)
    if fov.all():
        return inp
    from scipy import ndimage

    region = inp.mask > 0 if inp.mask is not None else foreground(inp.fixed.array)
    if np.count_nonzero(region & ~fov) <= MISSED_ANATOMY * np.count_nonzero(region):
        return inp
    for cut in (ndimage.binary_erosion(fov, border_value=1), fov):  # (not eroded from the fixed grid's own edge)
        mask = cut if inp.mask is None else (inp.mask > 0) & cut
        if all(mask_level(mask, lv, inp.fixed.spacing).any() for lv in range(inp.options.levels)):
            return dataclasses.replace(inp, mask=mask.astype(np.float64), mask_is_fov=inp.mask is None)
    return inp


def one_field(lin: LinearResult | None, field, inp: Inputs, resampled: bool):
    """The one displacement field (fixed array axes, mm): the deformable field composed with ``lin``."""
    return compose_field(lin, field, inp.fixed) if resampled else field
