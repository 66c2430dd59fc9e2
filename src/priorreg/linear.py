"""Linear pre-alignment: centres, then rigid, then affine, by Parzen mutual information.

The stage before the deformable one. It maximises the mutual information of
the engine's Parzen joint histogram (``histogram.joint_counts``, docs/method.md §2.2-2.4)
of the fixed image against the moving image resampled through a linear transform; with a
learned prior and alpha < 1 it minimises alpha*(-MI) + (1-alpha)*KL(p || prior), the
deformable stage's energy with the linear transform in place of the field.

Conventions
-----------
A :class:`priorreg.transform.LinearResult` holds ``matrix`` A (d x d) and ``translation`` t in world (ITK LPS)
millimetres: the fixed world point x maps to the moving world point A x + t. That is the
pull-back of the displacement field (x -> x + u(x)) and the direction of an ITK transform
(fixed to moving), so :mod:`priorreg.transform` turns it into a field or an ITK file with no
inversion.

The optimiser works on world parameters about the fixed foreground centre c:
A = R(angles) diag(exp(log_scales)) (I + H(shears)), x -> A (x - c) + c + t_c. Angles,
log-scales and shears are scaled by the samples' RMS radius, so a unit step of any
parameter moves the samples by about 1 mm: the problem stays well conditioned with
anisotropic voxels and oblique direction matrices.
"""
from __future__ import annotations

import itertools
import time
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import center_of_mass, gaussian_filter, map_coordinates
from scipy.optimize import minimize

from . import histogram as hist
from . import spatial
from .energy import PRIOR_TERMS, NegMutualInformation, Tables
from .errors import PriorRegError
from .image import Image, as_image, as_mask, every_kth
from .intensity import intensity_range, normalize, otsu_threshold
from .mind import mind_ssc
from .pyramid import level_label
from .runtime import check_device
from .transform import LinearResult, decompose, rotation_angle

KINDS = ("rigid", "affine")
_DT = torch.float32  # float64 gave the same transforms (0.39 vs 0.39 mm mean error, 3D test pair) at 2.6x the time


# --------------------------------------------------------------------------- parameters


def _layout(d: int):
    """Slices of the parameter vector: rotation, translation, log-scales, shears."""
    nr = 1 if d == 2 else 3
    return slice(0, nr), slice(nr, nr + d), slice(nr + d, nr + 2 * d), slice(nr + 2 * d, 2 * nr + 2 * d)


def _plane_rotation(angle: torch.Tensor, d: int, i: int, j: int) -> torch.Tensor:
    E = torch.zeros(d, d, dtype=_DT, device=angle.device)
    Eii, Eji = E.clone(), E.clone()
    Eii[i, i] = Eii[j, j] = 1.0
    Eji[j, i], Eji[i, j] = 1.0, -1.0
    return torch.eye(d, dtype=_DT, device=angle.device) + (torch.cos(angle) - 1) * Eii + torch.sin(angle) * Eji


def _rotation(angles: torch.Tensor, d: int) -> torch.Tensor:
    """2D: rotation by angles[0]; 3D: Rz Ry Rx with angles about x, y, z."""
    if d == 2:
        return _plane_rotation(angles[0], 2, 0, 1)
    Rx = _plane_rotation(angles[0], 3, 1, 2)
    Ry = _plane_rotation(angles[1], 3, 2, 0)
    Rz = _plane_rotation(angles[2], 3, 0, 1)
    return Rz @ Ry @ Rx


def _matrix(q: torch.Tensor, d: int):
    """(A, t_c) from physical parameters q (angles rad, translation mm, log-scales, shears)."""
    rot, tr, ls, sh = _layout(d)
    iu = torch.triu_indices(d, d, 1, device=q.device)
    H = torch.zeros(d, d, dtype=_DT, device=q.device).index_put((iu[0], iu[1]), q[sh])
    U = torch.diag(torch.exp(q[ls])) @ (torch.eye(d, dtype=_DT, device=q.device) + H)
    return _rotation(q[rot], d) @ U, q[tr]


def _params_of(A: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Physical parameters q of x -> A x + t about centre c (inverse of :func:`_matrix`)."""
    angles, scales, shears = decompose(A)
    if np.any(scales <= 0):
        raise PriorRegError("estimate_linear(): the initial transform is a reflection (det < 0); it cannot be refined")
    return np.concatenate([angles, A @ c + t - c, np.log(scales), shears])


def _unit(d: int, radius: float, device) -> torch.Tensor:
    """Scale from optimiser units (about 1 mm of sample motion each) to physical parameters."""
    rot, tr, ls, sh = _layout(d)
    u = torch.full((sh.stop,), 1.0 / radius, dtype=_DT, device=device)
    u[tr] = 1.0
    return u


# --------------------------------------------------------------------------- levels


@dataclass
class _Level:
    """One pyramid level: fixed samples (world minus centre) and the moving image."""

    xc: torch.Tensor  # (n, d)
    fv: torch.Tensor  # (n,) normalised fixed values
    moving: torch.Tensor  # (1, 1, *shape)
    to_index: torch.Tensor  # (d, d): world -> moving voxel index
    origin: torch.Tensor  # (d,): moving origin
    shape: tuple
    prior: object | None  # the prior term on this level's floored table, or None
    fixed_bins: object = None  # histogram.FirstAxis of fv on the problem's ranges (set by estimate_linear)


def _strides(img: Image, h: float) -> tuple:
    """(ratio, stride) per axis of ``img``'s grid for a target spacing of h mm: every stride-th voxel is kept."""
    ratio = h / np.asarray(img.spacing, dtype=float)
    return ratio, np.maximum(1, np.floor(ratio + 1e-6)).astype(int)


def _smoothed_grid(img: Image, arr: np.ndarray, h: float):
    """``arr`` (on ``img``'s grid) blurred for a target spacing of h mm and subsampled."""
    ratio, stride = _strides(img, h)
    sigma = np.where(ratio > 1.5, 0.5 * ratio, 0.0)
    out = gaussian_filter(arr, sigma, mode="nearest") if np.any(sigma > 0) else arr
    out = np.ascontiguousarray(out[tuple(slice(0, None, s) for s in stride)])
    return out, stride, Image(out, tuple(np.asarray(img.spacing) * stride), img.origin, img.direction)


def _fixed_samples(fix: Image, f_n, mask, h, max_samples, seed):
    """(world points, normalised values) of the fixed samples at target spacing h.

    Each sample is its voxel centre jittered by up to half a voxel (fixed seed), the fixed
    value read there by linear interpolation: samples on a regular grid make MI favour
    transforms that put them on the moving grid too (interpolation artefacts).
    """
    arr, stride, grid = _smoothed_grid(fix, f_n, h)
    keep = np.ones(arr.size, bool) if mask is None else (mask[tuple(slice(0, None, s) for s in stride)].ravel() > 0)
    flat = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    if flat.size > max_samples:
        flat = np.sort(rng.choice(flat, max_samples, replace=False))
    idx = np.stack(np.unravel_index(flat, arr.shape)).astype(float)
    idx = np.clip(idx + rng.uniform(-0.5, 0.5, idx.shape), 0, np.array(arr.shape)[:, None] - 1)
    M, o = grid.index_to_world()
    return idx.T @ M.T + o, map_coordinates(arr, idx, order=1)


# --------------------------------------------------------------------------- energy


@dataclass
class _Problem:
    """What every level shares: binning, terms, centre and parameter units."""

    S: torch.Tensor
    ranges: tuple
    alpha: float
    center: torch.Tensor
    unit: torch.Tensor
    eps: float = 1e-10
    per_sample: bool = False  # the rigid stage's MI weighed by the share of samples inside the moving image (PER_SAMPLE)


def _sample(vol: torch.Tensor, idx: torch.Tensor, shape: tuple) -> torch.Tensor:
    """n-linear samples of vol (1, 1, *shape) at voxel coordinates idx (n, d), border-clamped.

    The coordinates are clamped to one voxel beyond the edges first: the same values and gradients (the
    border is clamped anyway), and far points stay far from overflow: an affine trial step of an L-BFGS
    line search put them 1e4 image widths away, and PyTorch's CPU grid_sample backward crashed the
    process (a segmentation fault) there."""
    d = len(shape)
    size = torch.tensor([max(n - 1, 1) for n in shape], dtype=_DT, device=idx.device)
    idx = torch.minimum(idx.clamp(min=-1.0), size + 1.0)
    g = (2.0 * idx / size - 1.0).flip(-1)
    grid = g.reshape(1, -1, *([1] * (d - 1)), d)
    return spatial.grid_sample(vol, grid).reshape(-1)


def _validity(idx: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Soft inside-the-moving-image weight: 1 inside, ramping to 0 half a voxel beyond the edge."""
    n = torch.tensor(shape, dtype=_DT, device=idx.device)
    margin = torch.minimum(idx + 0.5, n - 0.5 - idx)
    return (2.0 * margin).clamp(0, 1).prod(dim=1)


NO_OVERLAP_ENERGY = 1e3  # the energy of a transform with no overlap, or a non-finite one: worse than any alignment
# PER_SAMPLE: MI is measured on the fixed samples inside the moving image, and on fewer of them it can be higher by
# chance: a 35 mm spinal-cord slab shifted 10 mm along the cord slid off the moving image (its optimum kept 0 % of
# the samples and was rejected for it, and the world alignment, 10.4 and 11.5 mm off, was kept). Where the rigid
# optimum slides off so, the stage is run again with the rigid stage's MI (and its starts' scores) weighed by the share
# of the fixed samples inside the moving image (soft at its edge, as the histogram's weights): a sample outside counts
# as telling nothing, not as the mean of the others. Only then: the weight also pulls towards the world alignment
# wherever the two images' boxes are alike (a 20 mm slab with the fixed image's in-plane extent, turned 6 degrees
# and moved 8 mm, was held 9 mm off). The rigid stage only: an affine map that enlarges a slab's footprint would cover
# more samples (benchmarks/README.md, "A slab that slid off the moving image").


def _evaluate(lv: _Level, pb: _Problem, p: torch.Tensor, stats: bool = True, per_sample: bool = False):
    """(energy, MI, overlap fraction) of the transform with optimiser parameters p (``stats`` False:
    (energy, None, None), as the optimiser needs at every step); ``per_sample``: MI weighed by the share of
    the fixed samples inside the moving image (PER_SAMPLE)."""
    A, tc = _matrix(p * pb.unit, lv.xc.shape[1])
    M = lv.to_index @ A  # d x d: one column at a time below (no BLAS call, no (n, d, d) temporary, on the n samples)
    idx = lv.to_index @ (pb.center + tc - lv.origin) + lv.xc[:, :1] * M[:, 0]
    for k in range(1, M.shape[1]):
        idx = idx + lv.xc[:, k:k + 1] * M[:, k]
    w = _validity(idx, lv.shape)
    if float(w.detach().sum()) < 1.0:  # no overlap at all: worse than any real alignment
        return (p * 0).sum() + NO_OVERLAP_ENERGY, 0.0, 0.0
    P = hist.parzen_joint_histogram(lv.fixed_bins, _sample(lv.moving, idx, lv.shape), pb.ranges, pb.S, w)
    Pt, P1, P2 = hist.entropy_terms(P, pb.eps)
    T = Tables(Pt, P1, P2, Pt[None], torch.ones(1, dtype=_DT, device=P.device))
    neg_mi = NegMutualInformation().value(T)
    similarity = neg_mi * w.mean() if per_sample else neg_mi
    energy = similarity if lv.prior is None else pb.alpha * similarity + (1 - pb.alpha) * lv.prior.value(T)
    if not stats:
        return energy, None, None
    return energy, -float(neg_mi.detach()), float((w.detach() > 0.5).double().mean())


def _optimise(lv: _Level, pb: _Problem, p: torch.Tensor, free: torch.Tensor, iters: int) -> torch.Tensor:
    """L-BFGS-B (scipy) on the free entries of p; returns the new p.

    (scipy rather than torch.optim: constructing a torch optimizer imports torch._dynamo,
    about 2 s of start-up for a problem of at most 12 parameters.)
    """
    idx = free.nonzero().reshape(-1)

    def energy_and_gradient(xn):
        if not np.all(np.isfinite(xn)):  # a trial step beyond float range: worse than any alignment
            return NO_OVERLAP_ENERGY, np.zeros_like(xn)
        x = torch.as_tensor(xn, dtype=p.dtype, device=p.device).requires_grad_(True)
        e = _evaluate(lv, pb, p.index_put((idx,), x), stats=False, per_sample=pb.per_sample and _rigid(free))[0]
        if not torch.isfinite(e):
            return NO_OVERLAP_ENERGY, np.zeros_like(xn)
        e.backward()
        return float(e.detach()), x.grad.detach().cpu().numpy().astype(np.float64)

    x0 = p[idx].detach().cpu().numpy().astype(np.float64)
    res = minimize(energy_and_gradient, x0, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=iters, maxfun=int(1.25 * iters) + 1, maxcor=10, gtol=1e-7, ftol=1e-5))
    out = p.index_put((idx,), torch.as_tensor(res.x, dtype=p.dtype, device=p.device))
    return out if torch.all(torch.isfinite(out)) else p


# --------------------------------------------------------------------------- set-up


def _check(fixed, moving, kind, fixed_mask, prior, alpha, levels, device, func):
    """Validated (fixed Image, moving Image, mask array or None, torch device)."""
    if kind not in KINDS:
        raise PriorRegError(f"{func}: kind must be one of {KINDS}, got {kind!r}")
    fix, mov = as_image(fixed, "fixed", func), as_image(moving, "moving", func)
    if fix.ndim != mov.ndim:
        raise PriorRegError(f"{func}: fixed is {fix.ndim}D but moving is {mov.ndim}D; both must be 2D or both 3D")
    if not 0.0 <= float(alpha) <= 1.0:
        raise PriorRegError(f"{func}: alpha must be in [0, 1], got {alpha}")
    if alpha < 1 and prior is None:
        raise PriorRegError(f"{func}: alpha={alpha} < 1 needs a learned prior (prior=fit_prior(...))")
    if prior is not None:
        prior.check_dim(fix.ndim, func, without="estimate without it")
    if not isinstance(levels, int) or levels < 1:
        raise PriorRegError(f"{func}: levels must be an integer >= 1, got {levels!r}")
    return fix, mov, as_mask(fixed_mask, fix, "fixed_mask", func), check_device(device, func)


CENTROID_VOXELS = 2**22  # a grid of more is read every k-th voxel along each axis (image.every_kth)


def _centroids(img: Image, arr: np.ndarray, mask=None) -> list:
    """World centroids of the Otsu foreground and of the intensity (minus its minimum), inside ``mask``;
    from every k-th voxel on a grid of more than CENTROID_VOXELS (5 s of a CT-sized grid's 36)."""
    k = every_kth(arr.shape, CENTROID_VOXELS)
    if k > 1:
        every = (slice(None, None, k),) * arr.ndim
        grid = Image(arr[every], tuple(np.asarray(img.spacing) * k), img.origin, img.direction)
        return _centroids(grid, arr[every], None if mask is None else np.asarray(mask)[every])
    inside = np.ones(arr.shape, bool) if mask is None else mask > 0
    fg = (arr > otsu_threshold(arr[inside])) & inside
    w = (arr - arr[inside].min()) * inside
    M, o = img.index_to_world()
    out = []
    for weights in (fg.astype(float), w):
        if weights.sum() > 0:
            out.append(M @ np.asarray(center_of_mass(weights)) + o)
    return out


def _prior_term(prior, level, floor, name, dev):
    """The prior term on the level's floored global table (a regional prior's tables, mixed); None (mutual
    information alone) without a prior or on a level coarser than its tables, as in the deformable stage."""
    if prior is None or level >= prior.levels:
        return None
    Q = hist.floor_prior(prior.global_table(level), floor)
    return PRIOR_TERMS[name](torch.as_tensor(Q, dtype=_DT, device=dev))


MIN_LEVEL_SAMPLES = 64  # fixed samples a level of the stage needs at least


def usable_levels(fix: Image, mask, levels: int) -> int:
    """The most pyramid levels, up to ``levels``, whose coarsest keeps MIN_LEVEL_SAMPLES fixed voxels (inside
    ``mask``) on its grid (:func:`_smoothed_grid`'s strides): a small image or mask allows fewer."""
    region = np.ones(fix.shape, bool) if mask is None else np.asarray(mask) > 0
    for n in range(levels, 1, -1):
        _, stride = _strides(fix, 2.0 ** (n - 1) * min(fix.spacing))
        if np.count_nonzero(region[tuple(slice(0, None, k) for k in stride)]) >= MIN_LEVEL_SAMPLES:
            return n
    return 1


def _build_levels(fix, mov, f_n, m_n, mask, opts, dev, func):
    """[_Level] finest first: target spacing 2^l times the fixed image's finest spacing."""
    out = []
    for lv in range(opts["levels"]):
        h = 2.0**lv * min(fix.spacing)
        pts, fv = _fixed_samples(fix, f_n, mask, h, opts["max_samples"], opts["seed"] + lv)
        if len(fv) < MIN_LEVEL_SAMPLES:
            fix_it = "use fewer levels" if lv > 0 else "the image or mask is too small for it: give a larger mask, or skip the stage (linear='none', --linear none)"
            raise PriorRegError(f"{func}: the linear stage has {len(fv)} fixed samples (needs {MIN_LEVEL_SAMPLES}) at its {level_label(lv, opts['levels'])} "
                                f"(inside the mask if one is given); {fix_it}")
        marr, _, mgrid = _smoothed_grid(mov, m_n, h)
        M, o = mgrid.index_to_world()
        out.append(_Level(
            xc=torch.as_tensor(pts, dtype=_DT, device=dev), fv=torch.as_tensor(fv, dtype=_DT, device=dev),
            moving=torch.as_tensor(marr, dtype=_DT, device=dev)[None, None],
            to_index=torch.as_tensor(np.linalg.inv(M), dtype=_DT, device=dev),
            origin=torch.as_tensor(o, dtype=_DT, device=dev), shape=marr.shape,
            prior=_prior_term(opts["prior"], lv, opts["prior_floor"], opts["prior_term"], dev)))
    return out


HEADER_TURN_DEGREES = 45.0  # directions that disagree by more: also try the voxel axes as aligned


def header_turn(fix: Image, mov: Image):
    """The rotation that lines the moving image's voxel axes up with the fixed image's, A = D_m D_f^-1,
    when the two direction matrices disagree by more than HEADER_TURN_DEGREES (else None; also None for
    a reflection, which no rigid or affine map here represents). A header that says the moving
    image is turned (a flipped direction, an axis order lost in conversion) while its voxels are stored
    like the fixed image's puts the anatomy that far round in world space, beyond the search's 20 degrees."""
    A = np.asarray(mov.direction, float) @ np.linalg.inv(np.asarray(fix.direction, float))
    U, _, Vt = np.linalg.svd(A)
    R = U @ Vt
    if np.linalg.det(R) < 0 or rotation_angle(R) <= HEADER_TURN_DEGREES:
        return None
    return R


def _starts(fix, f_n, mov, m_n, mask, center, initial) -> list:
    """Physical parameter vectors to start from: world alignment, centroid and moment
    alignments, each with a few rotations (rotations up to 20 degrees); and, where the images'
    directions disagree (:func:`header_turn`), each alignment turned so the voxel axes agree."""
    d = fix.ndim
    if initial is not None:
        return [_params_of(initial.matrix, initial.translation, center)]
    fc, mc = _centroids(fix, f_n, mask), _centroids(mov, m_n)
    shifts = [np.zeros(d)] + [m - f for f, m in zip(fc, mc)]
    rot = _layout(d)[0]
    angles = [np.zeros(rot.stop)]
    for k in range(rot.stop):
        for deg in ((-20, -10, 10, 20) if d == 2 else (-15, 15)):
            a = np.zeros(rot.stop)
            a[k] = np.radians(deg)
            angles.append(a)
    turn = header_turn(fix, mov)
    if turn is not None:
        angles.append(decompose(turn)[0])
    out = []
    for s in shifts:
        for a in angles:
            q = np.zeros(_layout(d)[3].stop)
            q[rot], q[_layout(d)[1]] = a, s
            out.append(q)
    return out


# --------------------------------------------------------------------------- search


def _search(lv: _Level, pb: _Problem, starts, free, iters, keep, min_overlap, func) -> torch.Tensor:
    """Score every start on the coarsest level, refine the ``keep`` best, return the best."""
    scored = []
    with torch.no_grad():
        for q in starts:
            p = torch.as_tensor(q, dtype=_DT, device=pb.unit.device) / pb.unit
            e, _, ov = _evaluate(lv, pb, p, per_sample=pb.per_sample and _rigid(free))
            scored.append((float(e), ov, p))
    best_overlap = max(s[1] for s in scored)
    if best_overlap < min_overlap:
        raise PriorRegError(
            f"{func}: overlap too small to register: at best {100 * best_overlap:.1f}% of the fixed samples "
            f"fall inside the moving image (needs {100 * min_overlap:.0f}%); check the images' geometry or give a mask of the region to align (fixed_mask; register's mask, --mask)"
        )
    ok = sorted((s for s in scored if s[1] >= min_overlap), key=lambda s: s[0])[:keep]
    refined = []
    for _, _, p in ok:
        p = _optimise(lv, pb, p, free, iters)
        with torch.no_grad():
            e, _, ov = _evaluate(lv, pb, p, per_sample=pb.per_sample and _rigid(free))
        if ov >= min_overlap:
            refined.append((float(e), p))
    return min(refined, key=lambda s: s[0])[1] if refined else ok[0][2]


def _rigid(free: torch.Tensor) -> bool:
    """Whether the free parameters are a rigid stage's (no scale or shear free): its MI is weighed (PER_SAMPLE)."""
    return not bool(free[_layout(2 if len(free) == 6 else 3)[2].start:].any())


def _free(d: int, kind: str, device) -> torch.Tensor:
    rot, tr, ls, sh = _layout(d)
    free = torch.ones(sh.stop, dtype=torch.bool, device=device)
    if kind == "rigid":
        free[ls.start:] = False
    return free


def _to_world(p, pb: _Problem) -> tuple:
    """(A, t) in world coordinates from optimiser parameters."""
    with torch.no_grad():
        A, tc = _matrix(p * pb.unit, pb.center.numel())
    A, tc, c = A.cpu().numpy(), tc.cpu().numpy(), pb.center.cpu().numpy()
    return A, c + tc - A @ c


SLID_OFF = "mutual information on a small overlap"  # (the note of an optimum that slid off the moving image)


def _as_result(lv: _Level, pb: _Problem, p, p_init, kind, min_overlap, func, as_given: bool = False) -> LinearResult:
    """The result at the finest level: the optimum, or world alignment (or the initial
    transform) where that scores better, so an aligned pair is never made worse (``as_given``:
    ``p`` itself, scored, whatever world alignment scores: a fallback the MIND check keeps).

    A candidate that keeps less than half the overlap of world alignment (and at least
    ``min_overlap``) is not taken: MI measured on a sliver of overlap can beat MI on the
    whole image by chance (seen on a small spinal-cord slab, where the optimum drifted off
    the moving image)."""
    named = [("optimum", p), ("world alignment", torch.zeros_like(p))] + ([] if p_init is None else [("initial", p_init)])
    with torch.no_grad():
        scores = [(float(e), mi, ov, name, q) for name, q in named for e, mi, ov in [_evaluate(lv, pb, q, per_sample=pb.per_sample and kind == "rigid")]]
    floor = max(min_overlap, 0.5 * scores[1][2])
    valid = [s for s in scores if s[2] >= floor] or [s for s in scores if s[2] >= min_overlap]
    if not valid:
        best = max(s[2] for s in scores)
        raise PriorRegError(
            f"{func}: overlap too small to register: the best alignment found keeps only {100 * best:.1f}% "
            f"of the fixed samples inside the moving image (needs {100 * min_overlap:.0f}%)"
        )
    e1, mi1, ov, name, p = scores[0] if as_given else min(valid, key=lambda s: s[0])
    notes = [] if name == "optimum" else [f"the linear stage did not improve on the {name}; it is kept"]
    rejected = not as_given and scores[0] not in valid
    if rejected:
        notes = [f"its optimum kept only {100 * scores[0][2]:.0f}% of the fixed samples inside the "
                 f"moving image ({SLID_OFF}); the {name} is kept"]
    A, t = _to_world(p, pb)
    return LinearResult(A, t, kind=kind, center=pb.center.cpu().numpy(), metric_before=scores[1][0],
                        metric_after=e1, mi_before=scores[1][1], mi_after=mi1, overlap=ov, notes=notes,
                        rejected=rejected)


MAX_SAMPLES = 20_000  # fixed samples per level (estimate_linear's max_samples)
MIND_CHECK_VOXELS = 2**18  # the MIND cross-check runs on the finest grid 2^l x the finest spacing with at most this many voxels
# The optimum may leave the MIND distance at most this much (relative) above the fallback's: wrong optima
# seen on a spinal-cord slab raised it by 10-36 %, a helpful 5 degree rigid correction by 0.5 %.
MIND_TOLERANCE = 0.02


def _mind_distance(fix: Image, f_n, mov: Image, m_n, pairs) -> list:
    """For each pair of transforms ((A, t), (A', t')) in ``pairs``: the mean squared MIND-SSC descriptor
    difference between the fixed image and the moving image through each of the two, over the fixed voxels
    inside the moving image under both, on a grid of at most MIND_CHECK_VOXELS voxels."""
    h = min(fix.spacing)
    while np.prod(np.asarray(fix.shape) * np.asarray(fix.spacing) / h) > MIND_CHECK_VOXELS:
        h *= 2.0
    f_s, _, fgrid = _smoothed_grid(fix, f_n, h)
    m_s, _, mgrid = _smoothed_grid(mov, m_n, h)
    (Mf, of), (Mm, om) = fgrid.index_to_world(), mgrid.index_to_world()
    world = Mf @ np.indices(f_s.shape, dtype=float).reshape(fix.ndim, -1) + of[:, None]
    desc = mind_ssc(torch.as_tensor(f_s, dtype=_DT))
    seen = {}  # each distinct transform is warped and described once

    def through(A, t):
        key = (np.asarray(A).tobytes(), np.asarray(t).tobytes())
        if key not in seen:
            j = np.linalg.solve(Mm, A @ world + (t - om)[:, None])
            inside = np.all((j >= 0) & (j <= np.array(m_s.shape)[:, None] - 1), axis=0).reshape(f_s.shape)
            warped = map_coordinates(m_s, j, order=1, mode="nearest").reshape(f_s.shape)
            seen[key] = (((mind_ssc(torch.as_tensor(warped, dtype=_DT)) - desc) ** 2).mean(0), torch.as_tensor(inside))
        return seen[key]

    out = []
    for a, b in pairs:
        (da, ia), (db, ib) = through(*a), through(*b)
        keep = ia & ib
        out.append((float(da[keep].mean()), float(db[keep].mean())))
    return out


NEGLIGIBLE_MOVE = 0.1  # voxels: an optimum that moves no corner of the fixed grid further from the fallback


def _largest_move(fix: Image, a, b) -> float:
    """How far (mm) transform ``a`` places a corner of the fixed grid from where ``b`` places it, at most."""
    A, o = fix.index_to_world()
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in fix.shape])), float)
    x = corners @ A.T + o
    moved = x @ (a.matrix - b.matrix).T + (np.asarray(a.translation) - np.asarray(b.translation))
    return float(np.sqrt((moved**2).sum(1)).max())


def _cross_check(fix, f_n, mov, m_n, checks) -> list:
    """For each ``(res, fallback, what)`` of ``checks``: ``res`` if the MIND descriptors (a local
    similarity, independent of the histogram) do not find it worse than ``fallback`` (within
    MIND_TOLERANCE), else ``fallback`` with a note. On a small field of view global MI can prefer a
    wrong transform (a spinal-cord slab: MI doubled 7 mm and 8 degrees off)."""
    dists = _mind_distance(fix, f_n, mov, m_n, [((r.matrix, r.translation), (f.matrix, f.translation))
                                                for r, f, _ in checks])
    out = []
    for (res, fallback, what), (d_res, d_fall) in zip(checks, dists):
        # Not finite: no fixed voxel lies inside the moving image under both; the check cannot judge.
        if not np.isfinite(d_fall) or d_res <= (1.0 + MIND_TOLERANCE) * d_fall:
            out.append(res)
            continue
        if _largest_move(fix, res, fallback) < NEGLIGIBLE_MOVE * min(fix.spacing):  # nothing to say (an image
            out.append(fallback)  # registered to itself: its MIND distance 0 at the start, 1e-4 a hair away)
            continue
        fallback.notes.append(f"its optimum raised mutual information but worsened the MIND descriptor "
                              f"distance ({d_res:.4f} vs {d_fall:.4f}); the {what} is kept")
        fallback.rejected = True
        out.append(fallback)
    return out


def _checked_results(lv: _Level, pb: _Problem, found: list, p_init, min_overlap, func, images) -> list:
    """The (kind, parameters) of each stage as LinearResults (:func:`_as_result`), each optimum that won on MI
    then checked against world alignment (or the initial transform) by the MIND descriptors.
    ``images``: (fixed, its normalised array, moving, its normalised array)."""
    name, q = ("world alignment", torch.zeros_like(found[0][1])) if p_init is None else ("initial", p_init)
    results, checks, checked = [], [], []
    for kind, p in found:
        res = _as_result(lv, pb, p, p_init, kind, min_overlap, func)
        if not res.notes:  # the optimum won on MI: does MIND agree?
            checks.append((res, _as_result(lv, pb, q, None, kind, 0.0, func, as_given=True), name))
            checked.append(len(results))
        results.append(res)
    for i, kept in zip(checked, _cross_check(*images, checks) if checks else []):
        results[i] = kept
    return results


def estimate_linear(
    fixed,
    moving,
    *,
    kind: str = "affine",
    fixed_mask=None,
    prior=None,
    alpha: float = 1.0,
    bins: int = 32,
    parzen_sigma: float = 1.0,
    levels: int = 3,
    device: str = "cpu",
    initial: LinearResult | None = None,
    prior_term: str = "kl",
    prior_floor: float = 1e-6,
    normalization: str = "percentile",
    iterations: int = 40,
    max_samples: int = MAX_SAMPLES,
    min_overlap: float = 0.10,
    seed: int = 0,
) -> LinearResult:
    """Rigid or affine alignment of ``moving`` onto ``fixed`` by Parzen mutual information.

    Centres first (world alignment, Otsu-foreground centroids and intensity moments,
    each with rotations of up to 20 degrees, scored on the coarsest level; the three best
    refined), then rigid, then (``kind="affine"``) affine, each coarse to fine with L-BFGS.

    Parameters
    ----------
    fixed, moving : Image (or arrays on one grid, spacing 1)
        Their world geometry (spacing, origin, direction) is used; grids may differ.
    kind : {"affine", "rigid"}
    fixed_mask : array of the fixed shape, optional
        Only fixed voxels inside it are samples, as given (``register()`` first grows its mask by 2 mm,
        ``image.with_margin``).
    prior : Prior, optional
        With alpha < 1 the energy is alpha*(-MI) + (1-alpha)*E_prior(p || prior) on the
        prior's floored global table of each level (a regional prior's tables mixed);
        the prior's bins, Parzen sigma, ranges and normalisation replace the arguments.
        At alpha = 1 only its normalisation is used (the ranges are the pair's own).
    alpha : float in [0, 1]
    bins, parzen_sigma : int, float
        Joint histogram bins and Parzen window (bins) without a prior.
    levels : int
        Pyramid levels; level l works at 2^l times the fixed image's finest spacing.
    device : str
        "cpu" or "cuda".
    initial : LinearResult, optional
        Start from this transform (e.g. :func:`read_itk_transform`) instead of the search;
        with ``kind="rigid"`` its scales and shears are kept as they are.
    prior_term : {"kl", "ckl", "ce"}
        Which prior term (as ``RegistrationOptions.prior_term``).
    iterations : int
        L-BFGS iterations per level and stage.
    max_samples : int
        Fixed samples per level at most (a fixed random subset beyond). 20 000 gave the same
        end results as 60 000 on the benchmark's offset cases (benchmarks/README.md, "Linear
        stage samples") at a third of the stage's time.
    min_overlap : float
        Refuse (PriorRegError) when fewer than this fraction of the fixed samples can be
        brought inside the moving image.

    Returns
    -------
    LinearResult
        Fixed world x -> moving world A x + t; never worse than world alignment (else the
        identity, with a note).
    """
    func = "estimate_linear()"
    t0 = time.perf_counter()
    fix, mov, mask, dev = _check(fixed, moving, kind, fixed_mask, prior, alpha, levels, device, func)
    if prior_term not in PRIOR_TERMS:
        raise PriorRegError(f"{func}: prior_term must be one of {tuple(PRIOR_TERMS)}, got {prior_term!r}")
    recipe = normalization if prior is None else prior.normalization
    f_n, m_n = normalize(fix.array, recipe), normalize(mov.array, recipe)
    if prior is not None and alpha < 1:  # at alpha = 1 the pair's own ranges, as without a prior
        bins, parzen_sigma, ranges = prior.bins, prior.parzen_sigma, prior.ranges
    else:
        ranges = (intensity_range([f_n if mask is None else f_n[mask > 0]]), intensity_range([m_n]))
    opts = dict(bins=bins, levels=levels, max_samples=max_samples, seed=seed, prior=prior if alpha < 1 else None,
                prior_floor=prior_floor, prior_term=prior_term)
    lvls = _build_levels(fix, mov, f_n, m_n, mask, opts, dev, func)
    fc = _centroids(fix, f_n, mask)[0]
    radius = float(torch.sqrt(((lvls[0].xc - torch.as_tensor(fc, dtype=_DT, device=dev)) ** 2).sum(1).mean()))
    pb = _Problem(hist.smoothing_matrix(bins, parzen_sigma, _DT, dev), ranges, float(alpha),
                  torch.as_tensor(fc, dtype=_DT, device=dev), _unit(fix.ndim, max(radius, 1.0), dev))
    for lv in lvls:
        lv.xc = lv.xc - pb.center
        lv.fixed_bins = hist.first_axis(hist.bin_coordinates(lv.fv, *ranges[0], bins)[0], bins)  # once per level
    starts = _starts(fix, f_n, mov, m_n, mask, fc, initial)
    stages = [_free(fix.ndim, "rigid", dev)] + ([_free(fix.ndim, "affine", dev)] if kind == "affine" else [])
    p_init = None if initial is None else torch.as_tensor(starts[0], dtype=_DT, device=dev) / pb.unit

    def run(pb):
        p = _search(lvls[-1], pb, starts, stages[0], iterations, 3, min_overlap, func)
        found = []  # (kind, parameters) after each stage: rigid, then affine
        for stage, free in zip(("rigid", "affine"), stages):
            for lv in reversed(lvls):
                p = _optimise(lv, pb, p, free, iterations)
            found.append((stage, p))
        return _checked_results(lvls[0], pb, found, p_init, min_overlap, func, (fix, f_n, mov, m_n))

    results = run(pb)
    if results[0].rejected and SLID_OFF in results[0].notes[0]:  # MI on a sliver: again, per fixed sample (PER_SAMPLE)
        again = run(dataclasses.replace(pb, per_sample=True))
        results = again if not again[0].rejected else results
    res = results[-1]
    res.rigid = results[0] if kind == "affine" else None
    for r in results:
        r.seconds = time.perf_counter() - t0
    return res
