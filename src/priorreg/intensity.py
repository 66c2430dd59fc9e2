"""Intensity normalisation and histogram ranges shared by training and registration.

A learned prior is a table over *bin coordinates*, so the test images must map
to bins exactly as the training images did (docs/method.md §3). Per-image min/max is
fragile (field of view, outliers); the default recipe maps robust percentiles of
the image's own **foreground** (Otsu) to 0 and 1. It is invariant to any gain
and offset of the scanner's intensity scale, which a learned prior needs.
"""
from __future__ import annotations

import numpy as np

from .errors import PriorRegError

NORMALIZATIONS = ("percentile", "none")
# Robust foreground percentiles mapped to 0 and 1 by the "percentile" recipe.
FOREGROUND_PERCENTILES = (2.0, 98.0)
# Ranges: pooled percentiles of the normalised data plus a margin, so that real
# data sit strictly inside [lo, hi] and only outliers are clipped (docs/method.md §2.2).
RANGE_PERCENTILES = (0.05, 99.95)
RANGE_MARGIN = 0.05
# A foreground whose robust spread (2nd to 98th percentile) is below this fraction of its contrast to the
# background (98th percentile minus the background's median) is flat: a blurred binary image, whose
# percentiles fall in the blur's tails, at a depth that depends on the image's size. It is mapped by min
# and max. The circle phantoms of benchmarks/phantom_layouts.py (96 px and up): 0 to 0.07; every image of
# the benchmark's cases: 0.42 or more.
FLAT_FOREGROUND = 0.1
# Far outliers: an image with values more than OUTLIER_SPANS core spans (1st to 99th percentile) beyond its
# core is clipped to the core before anything else. A small hot spot (0.15 % of a PET slice at 20 x the
# body's uptake: 21 spans) or a few corrupt voxels (1e30) otherwise took Otsu's split (the "foreground" was
# the hot spot alone) and the histogram's range (the anatomy fell into a few bins); clipped only to one span
# beyond the core, the hot spot still took the top half of the range and the linear stage aligned it, not
# the body. Real images reach 5 spans (ProstateX high-b; BraTS FLAIR 2.2, simulated
# PET 2.1: benchmarks/results/outliers/), and are not touched.
CORE_PERCENTILES = (1.0, 99.0)
OUTLIER_SPANS = 10.0


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of a sample (between-class variance maximiser)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):  # constant up to rounding (a binary image interpolated):
        return lo  # no split, and numpy refuses bins narrower than float spacing
    hist, edges = np.histogram(v, bins=nbins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def foreground(array) -> np.ndarray:
    """Where ``array`` is above its Otsu threshold: the anatomy, as opposed to an empty background."""
    a = np.asarray(array)
    return a > otsu_threshold(a)


def far_outlier_bounds(a: np.ndarray):
    """The bounds (lo, hi) to clip ``a`` to when some value lies more than OUTLIER_SPANS times its core's
    span (CORE_PERCENTILES) beyond the core; None when none does (then nothing is clipped)."""
    lo, hi = np.percentile(a, CORE_PERCENTILES)
    s = OUTLIER_SPANS * (hi - lo)
    if s <= 0 or (a.min() >= lo - s and a.max() <= hi + s):
        return None
    return lo, hi


def normalizer(array: np.ndarray, method: str = "percentile"):
    """The normalisation ``method`` fitted to one image, as a function of arrays (float64): apply it to the
    image (:func:`normalize`) or to other images of the same intensities (the image warped)."""
    a = np.asarray(array, dtype=np.float64)
    if method == "none":
        return lambda x: np.array(x, dtype=np.float64)
    if method != "percentile":
        raise PriorRegError(f"normalize(): method must be one of {NORMALIZATIONS}, got {method!r}")
    bounds = far_outlier_bounds(a)
    clip = (lambda x: np.asarray(x, dtype=np.float64)) if bounds is None else (lambda x: np.clip(np.asarray(x, np.float64), *bounds))
    a = clip(a)
    t = otsu_threshold(a)
    fg, bg = a[a > t], a[a <= t]
    if fg.size < 16:
        fg = a.ravel()
    p0, p1 = np.percentile(fg, FOREGROUND_PERCENTILES)
    lo, hi = float(a.min()), float(a.max())
    contrast = abs(p1 - float(np.median(bg))) if bg.size else hi - lo
    # A flat foreground (a synthetic or binary-like image): p1 - p0 is the blur's tail or rounding
    # noise, and dividing by it would blow the image up (1e3 to 1e8 on the circle phantoms): use min/max.
    if p1 - p0 <= FLAT_FOREGROUND * contrast:
        p0, p1 = lo, hi
    if p1 <= p0:  # a constant image (e.g. a moving image resampled where it has no data): all zeros
        return lambda x: clip(x) - p0
    return lambda x: (clip(x) - p0) / (p1 - p0)


def normalize(array: np.ndarray, method: str = "percentile") -> np.ndarray:
    """Apply a normalisation recipe to one image; returns float64."""
    return normalizer(array, method)(array)


def intensity_range(arrays) -> tuple[float, float]:
    """[lo, hi] from pooled robust percentiles of (already normalised) arrays, with a margin."""
    pooled = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    lo, hi = np.percentile(pooled, RANGE_PERCENTILES)
    if hi <= lo:
        lo, hi = float(pooled.min()), float(pooled.max())
    if hi <= lo:
        hi = lo + 1.0
    m = RANGE_MARGIN * (hi - lo)
    return float(lo - m), float(hi + m)
