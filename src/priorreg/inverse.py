"""The inverse of a registration's mapping: from the moving image's grid back into the fixed image's space.

A field u on the fixed grid maps the fixed world point X to phi(X) = X + D u(X) in the moving image (pull-back,
docs/method.md §2.1). Its inverse on the moving grid is the field v with phi(Y + D_m v(Y)) = Y at every moving
voxel Y, so that ``warp(image_of_the_fixed_space, v, reference=moving)`` brings an image drawn on the fixed
image (an atlas's labels, a segmentation) onto the moving one.

phi is split into its least-squares affine part and the rest, phi(X) = A X + t + w(X), and
X = A^-1 (Y - t - w(X)) is iterated from X = A^-1 (Y - t). It converges where A^-1 times w's gradient is a
contraction, as it is for a smooth field that does not fold; the affine part is inverted exactly, however large.
Beyond the fixed grid w keeps its edge values (spatial.sample): points that land there are counted.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import spatial
from .errors import PriorRegError
from .image import Image, every_kth, torch_ready
from .resample import inside

MAX_ITERATIONS = 50
TOLERANCE_VOXELS = 0.01  # stop when no point moved more than this share of the fixed image's finest voxel
FIT_SAMPLES = 2**18  # fixed voxels the affine part is fitted on at most (every k-th along each axis)
SLAB_VOXELS = 2**21  # moving voxels iterated at once


class Inverse(NamedTuple):
    """``field``: (d, *moving.shape) mm along the moving grid's array axes (pull-back, into the fixed space);
    ``residual_mm``: the largest |phi(Y + v(Y)) - Y| left; ``iterations``: the most any slab needed;
    ``outside``: the share of moving voxels whose inverse lies outside the fixed grid (extrapolated)."""
    field: np.ndarray
    residual_mm: float
    iterations: int
    outside: float


def invert_field(field, fixed: Image, moving: Image, *, device: str = "cpu") -> Inverse:
    """The inverse of ``field`` (d, *fixed.shape, mm along the fixed array axes, as ``RegistrationResult.field``)
    on the grid of ``moving`` (an Image: only its geometry is used). See the module's docstring."""
    func = "invert_field()"
    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise PriorRegError(f"{func}: fixed and moving must be priorreg.Image (their grids place the field)")
    u = torch_ready(np.asarray(field, dtype=np.float64))
    if u.shape != (fixed.ndim, *fixed.shape) or moving.ndim != fixed.ndim:
        raise PriorRegError(f"{func}: field must have shape {(fixed.ndim, *fixed.shape)} for a {fixed.ndim}D moving "
                            f"image, got {u.shape} and a {moving.ndim}D one")
    if not np.all(np.isfinite(u)):
        raise PriorRegError(f"{func}: field must hold finite numbers (mm)")
    M_f, b_f = fixed.index_to_world()
    A, t = _affine_part(u, fixed)
    w = torch.as_tensor(_world_points(fixed, u) - _apply(A, t, _world_points(fixed, None)), device=device)
    to_index = torch.as_tensor(np.linalg.inv(M_f), device=device), torch.as_tensor(b_f, device=device)
    A_inv, t_ = torch.as_tensor(np.linalg.inv(A), device=device), torch.as_tensor(t, device=device)
    tol = TOLERANCE_VOXELS * min(fixed.spacing)
    out = np.empty((moving.ndim, *moving.shape))
    worst, most, outside = 0.0, 0, 0
    for lo, hi in spatial.row_slabs(moving.shape, SLAB_VOXELS):
        Y = torch.as_tensor(_world_points(moving, None, (lo, hi)).reshape(moving.ndim, -1), device=device)
        X, res, its, idx = _solve(Y, w, to_index, A_inv, t_, tol)
        worst, most = max(worst, res), max(most, its)
        outside += int((~inside(idx, fixed.shape)).sum())
        step = np.linalg.solve(moving.direction, (X - Y).cpu().numpy())  # world -> mm along moving's array axes
        out[:, lo:hi] = step.reshape(moving.ndim, hi - lo, *moving.shape[1:])
    return Inverse(out, worst, most, outside / float(np.prod(moving.shape)))


def _solve(Y, w, to_index, A_inv, t, tol):
    """Iterate X = A^-1 (Y - t - w(X)) for world points Y (d, n): (X, the last step's largest move in mm, the
    iterations, X's fixed voxel coordinates)."""
    d = Y.shape[0]
    X = A_inv @ (Y - t[:, None])
    for it in range(1, MAX_ITERATIONS + 1):
        idx = to_index[0] @ (X - to_index[1][:, None])
        wX = spatial.sample(w, idx.reshape(d, -1, *([1] * (d - 1)))).reshape(d, -1)
        new = A_inv @ (Y - t[:, None] - wX)
        move = float(((new - X) ** 2).sum(0).max().sqrt()) if X.shape[1] else 0.0  # (norm(dim=0): 7 x slower)
        X = new
        if move < tol:
            break
    return X, move, it, to_index[0] @ (X - to_index[1][:, None])


def _world_points(image: Image, u, rows=None) -> np.ndarray:
    """World points (d, *shape) of ``image``'s voxels (rows [lo, hi) of the first axis), moved by ``u`` (mm along
    its array axes) when given."""
    lo, hi = rows if rows is not None else (0, image.shape[0])
    M, b = image.index_to_world()
    axes = [np.arange(lo, hi)] + [np.arange(n) for n in image.shape[1:]]
    idx = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(image.ndim, -1).astype(float)
    pts = M @ idx + np.asarray(b, float)[:, None]
    if u is not None:
        pts += image.direction @ np.asarray(u)[:, lo:hi].reshape(image.ndim, -1)
    return pts.reshape(image.ndim, hi - lo, *image.shape[1:])


def _apply(A, t, pts) -> np.ndarray:
    return np.einsum("ij,j...->i...", A, pts) + np.reshape(t, (-1,) + (1,) * (pts.ndim - 1))


def _affine_part(u, fixed: Image) -> tuple:
    """(A, t): the least-squares affine map of the fixed voxels' world points onto phi of them (a subset)."""
    k = every_kth(fixed.shape, FIT_SAMPLES)
    sub = (slice(None),) + (slice(None, None, k),) * fixed.ndim
    X = _world_points(fixed, None)[sub].reshape(fixed.ndim, -1)
    P = _world_points(fixed, u)[sub].reshape(fixed.ndim, -1)
    design = np.vstack([X, np.ones(X.shape[1])]).T
    coef = np.linalg.lstsq(design, P.T, rcond=None)[0]  # (d + 1, d)
    A, t = coef[:-1].T, coef[-1]
    if abs(np.linalg.det(A)) < 1e-6:  # a degenerate fit (a field that collapses the grid): invert w alone
        A, t = np.eye(fixed.ndim), np.zeros(fixed.ndim)
    return A, t
