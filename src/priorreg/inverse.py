"""The inverse of a registration's mapping: from the moving image's grid back into the fixed image's space.

A field u on the fixed grid maps the fixed world point X to phi(X) = X + D u(X) in the moving image (pull-back,
docs/method.md §2.1). Its inverse on the moving grid is the field v with phi(Y + D_m v(Y)) = Y at every moving
voxel Y, so that ``warp(image_of_the_fixed_space, v, reference=moving)`` brings an image drawn on the fixed
image (an atlas's labels, a segmentation) onto the moving one.

phi is split into its least-squares affine part and the rest, phi(X) = A X + t + w(X), and Newton's method
solves phi(X) = Y from X = A^-1 (Y - t): X <- X - (A + grad w(X))^-1 (phi(X) - Y), grad w by central differences on
the fixed grid, read by linear interpolation like w. A step that leaves a point further from its target is
halved. Where the field folds (det(A + grad w) <= 0) the step uses A alone (as beyond the fixed grid) and the
inverse is not unique: the share of points that land there and the residual left, |phi(X) - Y|, are returned and
warned about. The affine part is inverted exactly, however large. Beyond the fixed grid w keeps its edge values (spatial.sample): points that
land there are counted.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from . import spatial
from .errors import PriorRegError, PriorRegWarning
from .image import Image, every_kth, torch_ready
from .resample import inside

MAX_ITERATIONS = 50
TOLERANCE_VOXELS = 0.01  # a point has settled when |phi(X) - Y| is under this share of the finest fixed voxel
WARN_VOXELS = 0.1  # a residual above this share is warned about
FIT_SAMPLES = 2**18  # fixed voxels the affine part is fitted on at most (every k-th along each axis)
SLAB_VOXELS = 2**19  # moving voxels solved at once


class Inverse(NamedTuple):
    """``field``: (d, *moving.shape) mm along the moving grid's array axes (pull-back, into the fixed space);
    ``residual_mm``: the largest |phi(Y + D_m v(Y)) - Y| left where Y + D_m v(Y) lies in the fixed grid;
    ``iterations``: the most any slab needed;
    ``outside``: the share of moving voxels whose inverse lies outside the fixed grid (extrapolated); ``folded``: the
    share whose inverse lands where the field folds (det(A + grad w) <= 0: not unique)."""
    field: np.ndarray
    residual_mm: float
    iterations: int
    outside: float
    folded: float


def invert_field(field, fixed: Image, moving: Image, *, device: str = "cpu") -> Inverse:
    """The inverse of ``field`` (d, *fixed.shape, mm along the fixed array axes, as ``RegistrationResult.field``)
    on the grid of ``moving`` (an Image: only its geometry is used); warns (PriorRegWarning) where it is
    approximate. See the module's docstring."""
    func = "invert_field()"
    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise PriorRegError(f"{func}: fixed and moving must be priorreg.Image (their grids place the field)")
    if moving.ndim != fixed.ndim:
        raise PriorRegError(f"{func}: the fixed image is {fixed.ndim}D but the moving one {moving.ndim}D")
    u = torch_ready(np.asarray(field, dtype=np.float64))
    if u.shape != (fixed.ndim, *fixed.shape):
        raise PriorRegError(f"{func}: field must have shape {(fixed.ndim, *fixed.shape)} (components first, on the "
                            f"fixed grid), got {u.shape}")
    if not np.all(np.isfinite(u)):
        raise PriorRegError(f"{func}: field must hold finite numbers (mm)")
    M_f, b_f = fixed.index_to_world()
    A, t = _affine_part(u, fixed)
    w = _apply(np.eye(fixed.ndim) - A, -t, _world_points(fixed, None)) + _apply(fixed.direction, 0.0, u)  # phi - A X - t
    maps = _Maps(torch.as_tensor(w, device=device), _gradient(w, M_f, device), np.linalg.inv(M_f), b_f, A, t, device)
    tol = TOLERANCE_VOXELS * min(fixed.spacing)
    out = np.empty((moving.ndim, *moving.shape))
    worst, most, outside, folds = 0.0, 0, 0, 0
    for lo, hi in spatial.row_slabs(moving.shape, SLAB_VOXELS):
        Y = torch.as_tensor(_world_points(moving, None, (lo, hi)).reshape(moving.ndim, -1), device=device)
        X, its = _newton(Y, maps, tol)
        value, jac, idx = maps.phi(X, jacobian=True)
        ins = inside(idx, fixed.shape)  # the residual where the field is known (beyond: extrapolated)
        res = (value - Y).square().sum(0).sqrt()[ins]
        worst, most = max(worst, float(res.max()) if res.numel() else 0.0), max(most, its)
        folds += int(((torch.linalg.det(jac) / torch.linalg.det(maps.A) <= 0) & ins).sum())
        outside += int((~ins).sum())
        step = np.linalg.solve(moving.direction, (X - Y).cpu().numpy())  # world -> mm along moving's array axes
        out[:, lo:hi] = step.reshape(moving.ndim, hi - lo, *moving.shape[1:])
    n = float(np.prod(moving.shape))
    if worst > WARN_VOXELS * min(fixed.spacing) or folds:
        where = f"the field folds where {100 * folds / n:.2g}% of them land (the inverse is not unique there)" if folds \
            else "the field stretches too much there to be inverted"
        warnings.warn(f"{func}: the inverse is approximate: points are up to {worst:.2g} mm from where they should be, "
                      f"and {where}; check the output", PriorRegWarning, stacklevel=2)
    return Inverse(out, worst, most, outside / n, folds / n)


class _Maps:
    """phi(X) = A X + t + w(X) and its Jacobian at world points (d, n): w and grad w read on the fixed grid."""

    def __init__(self, w, grad, to_index, origin, A, t, device):
        self.w, self.grad, self.shape = w, grad, tuple(w.shape[1:])
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # noqa: E731
        self.to_index, self.origin, self.A, self.t = as_t(to_index), as_t(origin), as_t(A), as_t(t)

    def index(self, X):
        return self.to_index @ (X - self.origin[:, None])

    def phi(self, X, jacobian: bool = False):
        """(phi(X), with ``jacobian`` A + grad w(X) as (n, d, d) else None, X's fixed voxel coordinates (d, n))."""
        d = X.shape[0]
        idx = self.index(X)
        at = idx.reshape(d, -1, *([1] * (d - 1)))
        value = self.A @ X + self.t[:, None] + spatial.sample(self.w, at).reshape(d, -1)
        if not jacobian:
            return value, None, idx
        g = spatial.sample(self.grad, at).reshape(d, d, -1).permute(2, 0, 1).to(X.dtype)
        return value, self.A + g, idx


def _newton(Y, maps: _Maps, tol: float):
    """Solve phi(X) = Y for world points Y (d, n) (see the module's docstring): (X, iterations)."""
    X = torch.linalg.solve(maps.A, Y - maps.t[:, None])
    step, before = torch.zeros_like(X), torch.full(Y.shape[1:], float("inf"), dtype=Y.dtype, device=Y.device)
    active = torch.arange(Y.shape[1], device=Y.device)
    it = 0
    while active.numel() and it < MAX_ITERATIONS:
        it += 1
        Xa = X[:, active]
        value, jac, idx = maps.phi(Xa, jacobian=True)
        r = value - Y[:, active]
        size = r.square().sum(0).sqrt()
        worse = size > before[active]  # the last step overshot: take half of it instead
        newton, det = _solve_small(jac, r)
        # A's step where the field folds, and beyond the fixed grid, where w keeps its edge values (no gradient)
        use_a = ~((det / torch.linalg.det(maps.A) > 1e-3) & inside(idx, maps.shape))
        if use_a.any():
            newton[:, use_a] = torch.linalg.solve(maps.A, r[:, use_a])
        half = step[:, active] / 2
        X[:, active] = torch.where(worse, Xa + half, Xa - newton)
        step[:, active] = torch.where(worse, half, newton)
        before[active] = torch.where(worse, before[active], size)
        active = active[~((size < tol) & ~worse)]  # settled (their last Newton step, taken, only refines them)
    return X, it


def _solve_small(jac, r):
    """(jac^-1 r as (d, n), det jac) for n matrices jac (n, d, d), d = 2 or 3, by the adjugate (a batched
    torch.linalg.solve of 3 x 3 systems took most of the inversion's time)."""
    if jac.shape[-1] == 2:
        a, b, c, e = jac[:, 0, 0], jac[:, 0, 1], jac[:, 1, 0], jac[:, 1, 1]
        det = a * e - b * c
        safe = torch.where(det == 0, torch.ones_like(det), det)
        return torch.stack([e * r[0] - b * r[1], a * r[1] - c * r[0]]) / safe, det
    cof = torch.stack([torch.linalg.cross(jac[:, :, 1], jac[:, :, 2]), torch.linalg.cross(jac[:, :, 2], jac[:, :, 0]),
                       torch.linalg.cross(jac[:, :, 0], jac[:, :, 1])], dim=1)  # rows of the inverse times det
    det = (jac[:, :, 0] * cof[:, 0]).sum(1)
    safe = torch.where(det == 0, torch.ones_like(det), det)
    return torch.einsum("nij,jn->in", cof, r) / safe, det


def _gradient(w: np.ndarray, M: np.ndarray, device) -> torch.Tensor:
    """grad w in world coordinates, (d * d, *shape) float32 (row a: d w_a / d X): central differences along the
    array axes (one-sided at the edges), turned by M^-1 (index = M^-1 (X - origin))."""
    d = w.shape[0]
    Minv = np.linalg.inv(M)
    out = torch.empty((d, d, *w.shape[1:]), dtype=torch.float32, device=device)
    for a in range(d):
        wa = torch.as_tensor(w[a], device=device)
        by_index = [torch.gradient(wa, dim=k)[0] if n > 1 else torch.zeros_like(wa) for k, n in enumerate(wa.shape)]
        for b in range(d):
            out[a, b] = sum(by_index[k] * float(Minv[k, b]) for k in range(d))
    return out.reshape(d * d, *w.shape[1:])


def _world_points(image: Image, u, rows=None, every: int = 1) -> np.ndarray:
    """World points (d, *shape) of ``image``'s voxels (rows [lo, hi) of the first axis; every k-th along each axis),
    moved by ``u`` (mm along its array axes, on the whole grid) when given."""
    lo, hi = rows if rows is not None else (0, image.shape[0])
    M, b = image.index_to_world()
    axes = [np.arange(lo, hi, every)] + [np.arange(0, n, every) for n in image.shape[1:]]
    idx = np.stack(np.meshgrid(*axes, indexing="ij")).astype(float)
    pts = _apply(M, np.asarray(b, float), idx)
    if u is not None:
        pts += _apply(image.direction, 0.0, np.asarray(u)[(slice(None),) + tuple(np.ix_(*axes))])
    return pts


def _apply(A, t, pts) -> np.ndarray:
    return np.einsum("ij,j...->i...", A, pts) + np.reshape(t, (-1,) + (1,) * (pts.ndim - 1))


def _affine_part(u, fixed: Image) -> tuple:
    """(A, t): the least-squares affine map of the fixed voxels' world points onto phi of them (a subset), fitted
    as a displacement, so that a direction the points do not span (a flat grid's normal) keeps the identity."""
    k = every_kth(fixed.shape, FIT_SAMPLES)
    X = _world_points(fixed, None, every=k).reshape(fixed.ndim, -1)
    P = _world_points(fixed, u, every=k).reshape(fixed.ndim, -1)
    centre = X.mean(1, keepdims=True)
    design = np.vstack([X - centre, np.ones(X.shape[1])]).T
    coef = np.linalg.lstsq(design, (P - X).T, rcond=None)[0]  # (d + 1, d): minimum norm where X spans no direction
    A = np.eye(fixed.ndim) + coef[:-1].T
    t = coef[-1] - (A - np.eye(fixed.ndim)) @ centre[:, 0]
    if abs(np.linalg.det(A)) < 1e-6:  # a fit that collapses the grid: invert w alone
        A, t = np.eye(fixed.ndim), np.zeros(fixed.ndim)
    return A, t
