"""Inputs mixed up, seen in a registered pair: a moving image whose array axes are mirrored or swapped
(:func:`mirror_notes`), and two images that share no information (:func:`unrelated_notes`). Neither stage
can undo either; the result says so (docs/method.md §8.6)."""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, map_coordinates

from .histogram import bin_coordinates, first_axis, sample_mi, smoothing_matrix
from .image import Image, every_kth
from .intensity import foreground, intensity_range, normalize, normalizer


MIRROR_RATIO = 1.25  # a mirrored or axis-swapped moving image whose MI beats the image as given by this factor
MIRROR_SAMPLES = 2**14  # fixed-region voxels the check reads at most (it reads the moving image 96 times in 3D)
MIRROR_MIN_SAMPLES = 1000  # and at least: MI of a 32 x 32 histogram of fewer is mostly its Parzen window (a
# one-voxel mask scored a mirror 0.90 against -0.00 on an aligned pair)
MIRROR_BLUR_MM = 2.0  # the images are compared blurred this much (at most 1/50 of the fixed image's smallest extent:
# on a 24 x 30 x 20 mm synthetic volume a 2 mm blur let a mirror score 1.4 x the right image): a few mm of
# misplacement or warp costs less MI


def mirror_notes(result, region) -> list:
    """A warning when the moving image matches the fixed one far better mirrored or with its array axes
    swapped than as given: its axes were likely given in another order (a nibabel array not transposed) or a
    header is wrong, which neither stage can undo.

    Each variant is the moving image's own array mirrored and/or with its axes permuted (any shape: a
    transposed 216 x 256 slice is 256 x 216), with its header's spacing and direction, placed two ways, the
    better kept: its grid's centre where the header puts the image's (an array mirrored under its header),
    and its anatomy's centroid (Otsu foreground) on the fixed region's (an array transposed under its header
    moves the anatomy): the orientation is judged, not the position, which the linear stage finds. The image
    as given is placed the same two ways and through the linear stage's transform, and, before a variant is
    named, moved over a grid of shifts (a mirror that is only a move is not named). All are compared before registration (the registered pair was the
    reference until 2026-12-06: a BraTS pair's right orientation under a 4 mm warp scored a quarter of what
    registration gave its swapped axes), blurred by MIRROR_BLUR_MM or less, by the mutual information of the one
    Parzen joint histogram (32 bins) at most MIRROR_SAMPLES voxels of ``region``. Measured on right and wrong
    real pairs: benchmarks/README.md, "The mirror and axis-swap check"."""
    scores = None if result.moving is None else mirror_scores(result.fixed, result.moving, region, result.linear)
    if scores is None:
        return []
    given, score, how = scores
    if score < MIRROR_RATIO * given or score - given < 0.05:
        return []
    return [f"register(): the moving image matches the fixed one far better {how} (mutual information {score:.2f} "
            f"against {given:.2f} as given, both before registration): its axes are likely in another order or "
            "mirrored (a nibabel array must be transposed), or a header is wrong; the result is not to be trusted"]


def mirror_scores(fixed: Image, moving: Image, region, linear=None):
    """(MI of the moving image as given, MI of its best variant, which variant) for :func:`mirror_notes`, or
    None where ``region`` holds fewer than MIRROR_MIN_SAMPLES voxels. The image as given is also read through
    the ``linear`` stage's transform: a header that turned the image 180 degrees, which the linear stage
    found and undid, is no reason to distrust the result."""
    at = _region_samples(region)
    if at is None:
        return None
    A, o = fixed.index_to_world()
    world = A @ np.stack(at).astype(float) + o[:, None]  # the samples' world points
    blur = min(MIRROR_BLUR_MM, min(n * h for n, h in zip(fixed.shape, fixed.spacing)) / 50.0)
    mov, blocks = _blurred(moving, blur)
    mi = _mi_against(_read_at(_blurred(fixed, blur)[0], world), np.asarray(mov.array))
    variant = _Variants(mov, blocks, world)
    d = mov.ndim
    identity = (tuple(range(d)), np.zeros(d, bool))
    given = [variant.best(mi, *identity)]
    if linear is not None:
        given.append(variant.through(mi, linear.matrix @ world + np.asarray(linear.translation)[:, None]))
    if all(g is None for g in given):  # the image as given covers under half the region: nothing to compare with
        return None
    scored = [(variant.best(mi, perm, flips), how) for how, perm, flips in _mirrors(d)]
    score, how = max(scored, key=lambda t: t[0] or 0.0)
    if score is None:
        return None
    given = max(g for g in given if g is not None)
    if score >= MIRROR_RATIO * given:  # about to warn: could a move of the image as given do as well? Where a
        # mirror is only a move (a disc: the circle phantom's moving image), it does, and nothing is said
        given = max(given, variant.best_shift(mi))
    return given, score, how


def _region_samples(region):
    """The array indices of at most MIRROR_SAMPLES voxels of ``region`` (a fixed draw), or None where it holds
    fewer than MIRROR_MIN_SAMPLES: MI of a 32 x 32 histogram of fewer is mostly its Parzen window."""
    region = np.asarray(region) > 0
    idx = np.flatnonzero(region)
    if idx.size < MIRROR_MIN_SAMPLES:
        return None
    if idx.size > MIRROR_SAMPLES:
        idx = idx[np.random.default_rng(0).choice(idx.size, MIRROR_SAMPLES, replace=False)]
    return np.unravel_index(idx, region.shape)


UNRELATED_RATIO = 3.0  # registered MI below this many times the MI of the moving values shuffled: no shared information


def unrelated_notes(result, region) -> list:
    """A warning when the registered pair shares hardly more information than the fixed image and the warped
    moving values shuffled over the same voxels (the MI a 32-bin Parzen histogram of unrelated samples shows):
    a noise image, an empty one, another patient's or a wrong file. On 16384 voxels the shuffled MI is about
    0.0015 nats; registered real pairs were 12-210 x that (the spinal-cord slab 12 x, the real PET/CT slice 21 x),
    a uniform-noise image against the BrainWeb T1 1.0-1.4 x (benchmarks/README.md, "The mirror and axis-swap check")."""
    at = None if result.warped is None else _region_samples(region)
    if at is None:
        return []
    w = np.asarray(result.warped.array)[at].astype(np.float64)
    mi_of = _mi_against(np.asarray(result.fixed.array)[at], w)
    every = np.ones(w.shape, bool)
    mi = mi_of(w, every)
    shuffled = mi_of(w[np.random.default_rng(0).permutation(w.size)], every)
    if mi > UNRELATED_RATIO * shuffled:  # strictly: a warped image constant over the region has both 0
        return []
    return [f"register(): the two images share almost no information (mutual information {mi:.4f} nats after "
            f"registration, {shuffled:.4f} with the moving values shuffled): they may be unrelated (a noise or "
            "empty image, another patient, a wrong file); the result is not to be trusted"]


def _mi_against(fixed_values: np.ndarray, moving: np.ndarray):
    """MI (32 bins, Parzen sigma 1) of the fixed samples against values of the ``moving`` array at the same
    points: the fixed side normalised on its samples and binned once, the moving values by one normalisation
    fitted on the whole moving array, so that every variant is binned alike."""
    f = torch.as_tensor(normalize(fixed_values))
    S = smoothing_matrix(32, 1.0)
    norm = normalizer(moving)
    ranges = (intensity_range([f.numpy()]), intensity_range([norm(moving)]))
    fx = first_axis(bin_coordinates(f, *ranges[0], 32)[0], 32)
    return lambda values, inside: sample_mi(first_axis(fx, 32, torch.as_tensor(inside, dtype=torch.float64)),
                                            torch.as_tensor(norm(values)), ranges, S)


def _blurred(img: Image, mm: float):
    """(``img`` averaged over blocks of at most ``mm`` and blurred by a Gaussian of sigma ``mm``, the block size
    in voxels per axis): cheap on a 1 mm volume (block means first), and a few mm of misplacement cost little."""
    a, sp = np.asarray(img.array, dtype=np.float64), np.asarray(img.spacing, dtype=float)
    k = np.maximum(1, np.floor(mm / sp)).astype(int)
    n = np.asarray(a.shape) // k
    if np.any(n < 2):
        k, n = np.ones_like(k), np.asarray(a.shape)
    a = a[tuple(slice(0, m * kk) for m, kk in zip(n, k))]
    a = a.reshape([x for m, kk in zip(n, k) for x in (m, kk)]).mean(tuple(range(1, 2 * a.ndim, 2)))
    a = gaussian_filter(a, mm / (sp * k), mode="nearest")
    A, o = img.index_to_world()
    return Image(a, tuple(sp * k), tuple(o + A @ ((k - 1) / 2.0)), img.direction), k


def _read_at(img: Image, world: np.ndarray) -> np.ndarray:
    """``img`` linearly interpolated at world points (d, n), 0 outside its grid."""
    A, o = img.index_to_world()
    return map_coordinates(np.asarray(img.array), np.linalg.solve(A, world - o[:, None]), order=1, mode="constant",
                           cval=0.0).astype(np.float64)


class _Variants:
    """The moving image's array mirrored and/or with its axes permuted, read at world points without a copy.

    A variant keeps the header's direction and its spacing per position: array axis perm[k] of the (block
    averaged) image, ``blocks[perm[k]]`` voxels to a block, stands at position k, whose voxels the header
    makes ``spacing[k]`` mm, so a variant's block there is spacing[k] * blocks[perm[k]] (a review found an
    anisotropic slice's transpose scaled wrong, and missed, when the blocks' sizes were taken as they stood)."""

    def __init__(self, img: Image, blocks, world: np.ndarray):
        self.img, self.shape, self.blocks = img, np.asarray(img.shape), np.asarray(blocks)
        self.array = torch.as_tensor(np.asarray(img.array, dtype=np.float32))[None, None]
        A, o = img.index_to_world()
        self.direction, self.spacing = np.asarray(img.direction, float), np.asarray(img.spacing, float) / self.blocks
        k = every_kth(img.shape, MIRROR_SAMPLES * 16)
        fg = np.argwhere(foreground(np.asarray(img.array)[(slice(None, None, k),) * img.ndim]))
        self.centroid = fg.mean(0) * k if len(fg) else (self.shape - 1) / 2.0  # the anatomy's, as an index
        # the points from the grid's world centre, and from the fixed region's centroid (the anatomy's target)
        self.from_centre = world - (A @ ((self.shape - 1) / 2.0) + o)[:, None]
        self.from_target = world - world.mean(1)[:, None]

    def best(self, mi, perm, flips):
        """MI of the variant (axes ``perm``, mirrored along ``flips``) placed by its grid centre and by its anatomy,
        the better; on the points inside the moving grid only, and None where fewer than half of them are for
        both (zeros outside had made a mirror of a small synthetic volume score 0.69 against the right one's 0.48)."""
        vshape, _ = self._frame(perm)
        c = np.where(flips, vshape - 1 - self.centroid[list(perm)], self.centroid[list(perm)])
        scores = [self.placed(mi, perm, flips, rel, at) for rel, at in ((self.from_centre, (vshape - 1) / 2.0),
                                                                       (self.from_target, c))]
        return max((x for x in scores if x is not None), default=None)

    def best_shift(self, mi) -> float:
        """The best MI of the image as given moved over a grid of shifts, coarse to fine: 5 per axis a
        1/8 of its extent apart, then three times 3 per axis about the best at half the step (only when a
        variant is about to be named: 206 placements in 3D)."""
        d = self.img.ndim
        identity, centre = (tuple(range(d)), np.zeros(d, bool)), (self.shape - 1) / 2.0
        step = np.abs(self.direction * (self.spacing * self.blocks)[None, :]) @ (self.shape - 1) / 8.0
        best, at = -1.0, np.zeros(d)
        for reach in (2, 1, 1, 1):
            for k in itertools.product(range(-reach, reach + 1), repeat=d):
                s = at + np.asarray(k) * step
                score = self.placed(mi, *identity, self.from_centre - s[:, None], centre)
                if score is not None and score > best:
                    best, best_at = score, s
            at, step = best_at if best >= 0 else at, step / 2.0
        return max(best, 0.0)

    def _frame(self, perm):
        """(shape, voxel matrix) of the variant with its axes in the order ``perm``."""
        perm = list(perm)
        return self.shape[perm], self.direction * (self.spacing * self.blocks[perm])[None, :]

    def placed(self, mi, perm, flips, rel, at):
        """MI of the variant whose index ``at`` lies at the world point the samples' offsets ``rel`` (d, n) are
        taken from; None where fewer than half of the samples fall inside it."""
        vshape, A_v = self._frame(perm)
        jv = np.linalg.solve(A_v, rel) + at[:, None]  # the variant's index of each point
        j = np.empty_like(jv)
        for k, (p, fl) in enumerate(zip(perm, flips)):
            j[p] = vshape[k] - 1 - jv[k] if fl else jv[k]
        values, inside = self._sample(j)
        return mi(values, inside) if inside.mean() >= 0.5 else None

    def through(self, mi, moved: np.ndarray):
        """MI of the image as given read at the world points ``moved`` (d, n), where a transform takes the samples
        (None where fewer than half of them land inside it)."""
        A, o = self.img.index_to_world()
        values, inside = self._sample(np.linalg.solve(A, moved - o[:, None]))
        return mi(values, inside) if inside.mean() >= 0.5 else None

    def _sample(self, j: np.ndarray):
        """(values, inside) of the array at indices ``j`` (d, n): n-linear, by torch's grid_sample (map_coordinates
        took 10x as long, 96 times in 3D)."""
        inside = np.all((j >= 0) & (j <= self.shape[:, None] - 1), axis=0)
        g = torch.as_tensor(2.0 * j / np.maximum(self.shape - 1, 1)[:, None] - 1.0, dtype=torch.float32).flip(0).T
        out = F.grid_sample(self.array, g.reshape(1, -1, *([1] * (self.img.ndim - 1)), self.img.ndim), mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out.reshape(-1).numpy().astype(np.float64), inside


def _mirrors(d: int):
    """(description, axis order, mirrored axes) of every mirror and/or axis permutation of a d-D array but the
    array itself."""
    for perm in itertools.permutations(range(d)):
        for flips in itertools.product((False, True), repeat=d):
            swapped = perm != tuple(range(d))
            if not swapped and not any(flips):
                continue
            axes = [k for k in range(d) if flips[k]]
            how = " and ".join(filter(None, [f"with its array axes in the order {perm}" if swapped else "",
                                             f"mirrored along its array axis {', '.join(map(str, axes))}"
                                             if axes else ""]))
            yield how, perm, np.asarray(flips)
