"""Resampling an image of one grid onto another through a displacement field (pull-back).

The field convention (docs/method.md §2.1): ``field[k]`` is the physical displacement (mm)
along the reference image's array axis k, and the reference voxel x samples the moving
image at world(x) + direction @ field(x).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from . import spatial
from .errors import PriorRegError, PriorRegWarning
from .image import Image, on_grid_of, torch_ready
from .runtime import check_device


def world_coords(moving: Image, reference: Image, u: torch.Tensor | None, *, rows: tuple | None = None,
                 device=None) -> torch.Tensor:
    """Voxel coordinates in ``moving`` of world points ref(i) + D_ref u(i), shape (d, *ref), in u's dtype
    (float64 without u: none, the world alignment). ``rows`` (lo, hi): only the reference voxels whose first
    index is in [lo, hi), ``u`` then being the field there. One such array is built, component by component:
    the affine part as a sum of one-axis ramps, then u's part in place (the whole-grid temporaries of a
    matrix product took 4 GB on a 0.6 mm CT-sized grid)."""
    d = reference.ndim
    lo, hi = rows if rows is not None else (0, reference.shape[0])
    shape = (hi - lo, *reference.shape[1:])
    dev = u.device if u is not None else torch.device(device or "cpu")
    dt = u.dtype if u is not None else torch.float64
    A_r, b_r = reference.index_to_world()
    A_m, b_m = moving.index_to_world()
    inv_m = np.linalg.inv(A_m)
    T, c = inv_m @ A_r, inv_m @ (np.asarray(b_r, float) - np.asarray(b_m, float))  # index -> moving index
    G = inv_m @ np.asarray(reference.direction, float)  # mm along the reference's axes -> moving index
    out = torch.empty((d, *shape), dtype=dt, device=dev)
    for k in range(d):
        acc = torch.full((1,) * d, float(c[k]), dtype=torch.float64, device=dev)
        for j in range(d):  # broadcasting: each ramp varies along one axis only
            ramp = torch.arange(lo if j == 0 else 0, (hi if j == 0 else shape[j]), dtype=torch.float64, device=dev) * float(T[k, j])
            acc = acc + ramp.reshape([-1 if a == j else 1 for a in range(d)])
        out[k] = acc  # (exact in float64, then rounded once)
        if u is not None:
            for j in range(d):
                if G[k, j] != 0.0:
                    out[k].add_(u[j], alpha=float(G[k, j]))
    return out


def inside(coords: torch.Tensor, shape) -> torch.Tensor:
    """True where voxel coordinates fall inside the image, as ITK counts it (within half a voxel of the edge)."""
    ok = torch.ones(coords.shape[1:], dtype=torch.bool, device=coords.device)
    for k, n in enumerate(shape):
        ok &= (coords[k] >= -0.5) & (coords[k] <= n - 0.5)
    return ok


def _as_moving(moving, spacing, func: str) -> Image:
    if isinstance(moving, Image):
        mov = moving
    else:
        arr = np.asarray(moving)
        if arr.ndim not in (2, 3):
            raise PriorRegError(f"{func}: moving must be a 2D or 3D image, got shape {arr.shape}")
        mov = Image(arr, spacing)
    a = mov.array
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):  # as register() refuses it
        raise PriorRegError(f"{func}: moving must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(mov.array)):
        raise PriorRegError(f"{func}: moving contains NaN/Inf")
    return mov


def _checked_field(field, ref: Image, mov: Image, func: str) -> np.ndarray:
    fld = torch_ready(np.asarray(field))
    if fld.shape != (ref.ndim, *ref.shape):
        raise PriorRegError(
            f"{func}: field must have shape {(ref.ndim, *ref.shape)} (components first, on the reference grid), got {fld.shape}"
        )
    if mov.ndim != ref.ndim:
        raise PriorRegError(f"{func}: moving is {mov.ndim}D but the reference grid is {ref.ndim}D")
    if not np.issubdtype(fld.dtype, np.number) or np.iscomplexobj(fld) or not np.all(np.isfinite(fld)):
        raise PriorRegError(f"{func}: field must hold finite real numbers (mm)")
    return fld if fld.dtype.isnative else fld.astype(fld.dtype.newbyteorder("="))  # torch takes native byte order only


def _check_label_fill(fill, dtype, func: str) -> None:
    """Nearest-neighbour output keeps the labels' dtype: refuse a fill it cannot hold (-1 in uint8 became 255)."""
    if np.issubdtype(dtype, np.floating):
        return
    lo, hi = (0, 1) if dtype == bool else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    if float(fill) != int(fill) or not lo <= fill <= hi:
        raise PriorRegError(f"{func}: fill={fill!r} cannot be stored in the labels' dtype {np.dtype(dtype).name} (whole "
                            f"numbers {lo} to {hi}); give such a fill, or convert the labels to a wider type first")


def warp(moving, field, *, reference=None, interpolation: str = "linear", spacing=None, device: str = "cpu",
         fill: float | None = 0.0, allow_empty: bool = False) -> Image:
    """Apply a displacement field to an image (intensities or labels).

    Parameters
    ----------
    moving : array or Image
        Image in the moving space. A plain array is taken to share the reference grid (without a
        reference: its own grid, with ``spacing`` mm per array axis, default 1).
    field : array of shape (d, *reference.shape), or None
        Physical displacement (mm) along the reference's array axes, pull-back; None: no displacement
        (the moving image resampled at its world position, without a field of zeros in memory).
    reference : Image, optional
        The fixed grid. Default: the moving image's grid.
    interpolation : {"linear", "nearest"}
        "nearest" keeps label values (and dtype) intact.
    fill : float or None
        Value where the field points outside the moving image's field of view (0, as ITK and
        ANTs resample); None repeats the edge voxels instead (what the similarity terms see).
    allow_empty : bool
        Return a result through which no reference point lands inside the moving image (all ``fill``)
        instead of refusing it (the view of a pair before its linear stage found their overlap).
    """
    return _warp(moving, field, reference, interpolation, spacing, device, fill, allow_empty)[0]


def warp_with_fov(moving, field, *, reference=None, interpolation: str = "linear", spacing=None, device: str = "cpu",
                  fill: float | None = 0.0, allow_empty: bool = False) -> tuple:
    """:func:`warp`, and the boolean map on the reference grid of where the field lands inside the moving
    image (what :func:`field_of_view` computes, without computing the points a second time)."""
    return _warp(moving, field, reference, interpolation, spacing, device, fill, allow_empty)


def _warp(moving, field, reference, interpolation, spacing, device, fill, allow_empty) -> tuple:
    """(warped Image, field-of-view map): the one body of warp and warp_with_fov, whose caller its warning names."""
    func = "warp()"
    if interpolation not in ("linear", "nearest"):
        raise PriorRegError(f"{func}: interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    if fill is not None and (isinstance(fill, (bool, str)) or not np.isfinite(fill)):
        raise PriorRegError(f"{func}: fill must be a finite number or None, got {fill!r}")
    if reference is not None and not isinstance(reference, Image):
        raise PriorRegError(f"{func}: reference must be a priorreg.Image (the fixed grid, with its geometry), got "
                            f"{type(reference).__name__}")
    if reference is not None and spacing is not None:
        raise PriorRegError(f"{func}: give spacing only without a reference: with one, a plain moving array is taken "
                            "on the reference's grid and an Image keeps its own (give moving as an Image for another grid)")
    if reference is not None:  # a plain array shares the reference grid, as documented
        moving = on_grid_of(moving, reference, "moving", func)
    mov = _as_moving(moving, spacing, func)
    if interpolation == "nearest" and fill is not None:
        _check_label_fill(fill, mov.array.dtype, func)
    ref = mov if reference is None else reference
    fld = None if field is None else _checked_field(field, ref, mov, func)
    if mov.ndim != ref.ndim:  # (the field's check says it too)
        raise PriorRegError(f"{func}: moving is {mov.ndim}D but the reference grid is {ref.ndim}D")
    dev = check_device(device, func)
    src = torch.as_tensor(np.asarray(mov.array, dtype=np.float64), device=dev)
    out = np.empty(ref.shape, dtype=mov.array.dtype if interpolation == "nearest" else np.float64)
    ins_all, box = np.empty(ref.shape, dtype=bool), []
    for rows in spatial.row_slabs(ref.shape, SLAB_VOXELS):  # a slab's coordinates at a time, not the whole grid's
        u = None if fld is None else torch.as_tensor(fld[:, rows[0]:rows[1]], dtype=torch.float64, device=dev)
        coords = world_coords(mov, ref, u, rows=rows, device=dev)
        ins = inside(coords, mov.shape)
        box.append(_box(coords))
        part = spatial.sample(src, coords, mode="bilinear" if interpolation == "linear" else "nearest")
        if fill is not None:
            part = torch.where(ins, part, torch.as_tensor(float(fill), dtype=part.dtype, device=dev))
        out[rows[0]:rows[1]] = part.cpu().numpy()  # (cast to the labels' dtype for nearest)
        ins_all[rows[0]:rows[1]] = ins.cpu().numpy()
    if not allow_empty and not ins_all.any():
        raise PriorRegError(f"{func}: no point of the reference grid lands inside the moving image through the field, "
                            "so the result would hold no moving voxel; check the images' origins and directions, "
                            "and that the field was made for this moving image and reference")
    share = 1.0 if allow_empty or reference is None else _box_share(box, mov.shape)
    if share < MIN_BOX_SHARE:
        warnings.warn(f"{func}: the moving image lies mostly outside the reference grid through the field (their "
                      f"boxes overlap by {100 * share:.0f}% of the smaller): check its geometry (an Image made from an "
                      "array without a direction has ITK's identity, which is not a NIfTI file's) and that the field "
                      "was made for it", PriorRegWarning, stacklevel=3)
    return ref.with_array(out), ins_all


SLAB_VOXELS = 2**22  # reference voxels whose coordinates warp() holds at once (100 MB of float64 in 3D)


def _box(coords: torch.Tensor) -> tuple:
    """(lowest, highest) moving voxel coordinate per axis of ``coords``."""
    flat = coords.reshape(coords.shape[0], -1)
    return flat.amin(1).cpu().numpy(), flat.amax(1).cpu().numpy()


MIN_BOX_SHARE = 0.25  # overlap of the boxes (of the smaller one) below which warp() warns (_box_share)


def _box_share(boxes: list, shape) -> float:
    """How much the box of the reference's points mapped through the field (``boxes``: (lowest, highest)
    moving voxel coordinates of each slab, :func:`_box`) and the moving image's box overlap, as a share of
    the smaller one: a label patch cropped from the moving image, or a moving image larger than the
    reference, overlaps wholly; an image given the wrong geometry hardly."""
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    n = np.asarray(shape, float) - 1
    hi, n = np.maximum(hi, lo + 1e-9), np.maximum(n, 1e-9)
    common = np.prod(np.clip(np.minimum(hi, n) - np.maximum(lo, 0.0), 0, None))
    return float(common / min(np.prod(hi - lo), np.prod(n)))


def field_of_view(moving: Image, reference: Image, field: np.ndarray | None) -> np.ndarray:
    """Boolean map on the reference grid: where the field (None: none) lands inside the moving image (a slab
    of rows at a time, as :func:`warp`)."""
    out = np.empty(reference.shape, dtype=bool)
    for lo, hi in spatial.row_slabs(reference.shape, SLAB_VOXELS):
        u = None if field is None else torch.as_tensor(torch_ready(np.asarray(field)[:, lo:hi]), dtype=torch.float64)
        out[lo:hi] = inside(world_coords(moving, reference, u, rows=(lo, hi)), moving.shape).numpy()
    return out
