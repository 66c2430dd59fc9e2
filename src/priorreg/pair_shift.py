"""Whether two images on one grid are aligned: the whole-voxel shift along each axis at which their global
mutual information peaks (fit_prior's check of its training pairs, docs/options.md "Learning a prior").

A training pair that is not aligned teaches the registration a blurred joint density. Aligned real pairs
peak at no shift, a one-voxel shift costing 0.012-0.2 nats (BrainWeb, IXI, BraTS patients 5 and 6,
ProstateX ADC/high-b), so two voxels off gain 0.04 and more; two independent noise images gain up to
0.017 at a random shift (16^3 voxels).
"""
from __future__ import annotations

import numpy as np
import torch

from . import histogram as hist
from .intensity import intensity_range
from .spatial import random_subset

MISALIGNED_VOXELS = 2  # a best shift this large or more is warned about ...
MIN_GAIN = 0.02  # ... when its MI is higher than at no shift by this many nats
FINE_SEARCH = 4  # every shift up to this many voxels each way ...
COARSE_SEARCH = 16  # ... then every FINE_SEARCH-th up to this many (an axis searches at most a quarter of its length)
SHIFT_SAMPLES = 2**16  # fixed voxels read (at random, fixed seed), within the mask; under MIN_SAMPLES: not searched
MIN_SAMPLES = 2**12


def _shifts(n: int) -> list:
    """The shifts searched along an axis of ``n`` voxels (none where it is too short to tell 2 voxels)."""
    reach = min(COARSE_SEARCH, n // 4)
    if reach < MISALIGNED_VOXELS:
        return []
    fine = range(-min(FINE_SEARCH, reach), min(FINE_SEARCH, reach) + 1)
    coarse = list(range(2 * FINE_SEARCH, reach + 1, FINE_SEARCH))
    return sorted(set(fine) | set(coarse) | {-s for s in coarse})


def best_shift(f_n: np.ndarray, m_n: np.ndarray, mask=None, bins: int = 32) -> list:
    """Per array axis ``(shift, gain, searched up to)``: of the shifts of the moving image searched along it
    (:func:`_shifts`), the one at which the pair's global MI (Parzen sigma 1 bin) is highest, how much higher
    than at no shift (nats), and the largest shift searched (0: the axis was not searched, too short or too
    few voxels inside ``mask``). The samples are fixed voxels (inside ``mask``) far enough from the edges for
    every shift searched."""
    shifts = [_shifts(n) for n in f_n.shape]
    reach = [max(s, default=0) for s in shifts]
    core = tuple(slice(r, n - r) for r, n in zip(reach, f_n.shape))
    inside = np.ones(f_n.shape, bool) if mask is None else np.asarray(mask) > 0
    idx = np.flatnonzero(inside[core])
    if idx.size < MIN_SAMPLES:
        return [(0, 0.0, 0)] * f_n.ndim
    if idx.size > SHIFT_SAMPLES:
        idx = idx[random_subset(idx.size, SHIFT_SAMPLES, 0).numpy()]
    at = np.stack(np.unravel_index(idx, inside[core].shape)) + np.array(reach)[:, None]  # (d, k) grid indices
    x = torch.as_tensor(f_n[tuple(at)], dtype=torch.float64)
    ranges = (intensity_range([x.numpy()]), intensity_range([m_n[tuple(at)]]))
    smooth = hist.smoothing_matrix(bins, 1.0)

    def mi_at(axis, s):
        moved = at.copy()
        moved[axis] += s
        return hist.sample_mi(x, torch.as_tensor(m_n[tuple(moved)], dtype=torch.float64), ranges, smooth)

    found = []
    for axis, candidates in enumerate(shifts):
        mi = {s: mi_at(axis, s) for s in candidates}
        best = max(mi, key=mi.get) if mi else 0
        if abs(best) >= FINE_SEARCH:  # beyond the fine window the peak is known to FINE_SEARCH: every shift near it
            near = range(max(best - FINE_SEARCH + 1, -reach[axis]), min(best + FINE_SEARCH, reach[axis] + 1))
            mi.update({s: mi_at(axis, s) for s in near if s not in mi})
            best = max(mi, key=mi.get)
        found.append((best, mi[best] - mi[0] if mi else 0.0, reach[axis]))
    return found


def misalignment_note(f_n: np.ndarray, m_n: np.ndarray, spacing, what: str, mask=None) -> str | None:
    """A warning when the normalised pair (one grid) matches clearly better MISALIGNED_VOXELS or more apart."""
    far = [(gain, abs(s), axis) for axis, (s, gain, _) in enumerate(best_shift(f_n, m_n, mask))
           if gain >= MIN_GAIN and abs(s) >= MISALIGNED_VOXELS]
    if not far:
        return None
    _, voxels, axis = max(far)  # the axis whose shift gains most: a pair far off along one axis gains a little along others
    ijk = "ijk"[f_n.ndim - 1 - axis]  # as viewers and file headers name the axes: numpy's reversed
    more = " or more" if voxels == max(_shifts(f_n.shape[axis])) else ""  # the peak at the search's end
    mm = voxels * float(spacing[axis])
    return (f"{what} does not look aligned: its two images match best (mutual information) with the moving one "
            f"shifted by {voxels}{more} voxels ({mm:.3g}{more} mm) along {ijk}; a prior learned from it holds a "
            "blurred joint density and can pull registrations off; register the pair first and train on the "
            "warped moving image")
