"""Stage 3 of :func:`priorreg.register`: bring both images onto the fixed grid, in the
intensity units and histogram ranges of the prior (or of the pair), as pyramids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import pyramid
from .checks import Inputs
from .energy import HistogramSpec
from .intensity import CORE_PERCENTILES, intensity_range, normalize
from .resample import warp


@dataclass
class Pyramids:
    """The normalised pair on the fixed grid, level 0 (full resolution) first."""

    fixed: list  # tensors
    moving: list  # tensors: the moving image resampled onto the fixed grid at world alignment
    mask: list  # tensors or None per level
    spec: HistogramSpec  # the prior's ranges when a prior is given (its table's bins), else the pair's
    ranges: tuple  # ((lo_fixed, hi_fixed), (lo_moving, hi_moving)), normalised units: those of ``spec``
    recipe: str  # the intensity normalisation used
    own_spec: HistogramSpec  # the pair's own ranges: levels where the prior has no weight (alpha = 1) use them


# Below this share of the histogram's range, an image's core (1st-99th percentile) is squeezed into a few
# bins by a few extreme voxels: a PET hot spot at 5 x the body's uptake took 84 % of the range and the
# linear stage missed the body (body Dice 0.91 against 0.99 without it). Real images of the benchmark: 34 %
# and more (benchmarks/results/outliers/). Far more extreme ones are clipped (intensity.far_outlier_bounds, applied by intensity.normalizer).
MIN_CORE_SHARE = 0.2


def range_notes(pyr: Pyramids) -> list:
    """A warning for each image whose core takes less than MIN_CORE_SHARE of its histogram range."""
    notes = []
    own = pyr.own_spec.ranges  # the image's own range (a prior's may be wider for other reasons)
    for name, img, (lo, hi) in (("fixed", pyr.fixed[0], own[0]), ("moving", pyr.moving[0], own[1])):
        a = img.detach().cpu().numpy().reshape(-1)
        p1, p99 = np.percentile(a[::max(1, a.size // 2**20)], CORE_PERCENTILES)  # a million voxels tell
        share = (p99 - p1) / (hi - lo)
        if share < MIN_CORE_SHARE:
            notes.append(f"register(): 98% of the {name} image's voxels (its 1st-99th percentiles) span only "
                         f"{100 * share:.0f}% of its histogram range: a few far brighter or darker voxels take the "
                         "rest, and the anatomy falls into a few bins; if they are an artefact or a hot spot the "
                         "other image does not show, clip them (e.g. at the 99.9th percentile) and register again")
    return notes


def normalise(inp: Inputs) -> Pyramids:
    """Normalise intensities as the prior was learned (or per ``options.normalization``)."""
    opts, fix, mov = inp.options, inp.fixed, inp.moving
    recipe = inp.prior.normalization if inp.prior is not None else opts.normalization
    f_n = normalize(fix.array, recipe)
    m_n = normalize(mov.array, recipe)
    if not fix.same_grid(mov):  # the edge voxels repeat outside the moving field of view
        m_n = warp(mov.with_array(m_n), None, reference=fix, fill=None, allow_empty=True).array
    own = (intensity_range([f_n]), intensity_range([m_n]))
    ranges = inp.prior.ranges if inp.prior is not None else own
    spec = HistogramSpec(opts.bins, opts.parzen_sigma, ranges, opts.eps)

    def tensor(a):
        return None if a is None else torch.as_tensor(a, dtype=inp.dtype, device=inp.device)

    return Pyramids(
        fixed=pyramid.image_pyramid(tensor(f_n), opts.levels, fix.spacing),
        moving=pyramid.image_pyramid(tensor(m_n), opts.levels, fix.spacing),  # on the fixed grid (above)
        mask=pyramid.mask_pyramid(tensor(inp.mask), opts.levels, fix.spacing),
        spec=spec,
        ranges=ranges,
        recipe=recipe,
        own_spec=spec if inp.prior is None else HistogramSpec(opts.bins, opts.parzen_sigma, own, opts.eps),
    )
