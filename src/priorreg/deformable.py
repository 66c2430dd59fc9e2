"""Stage 4 of :func:`priorreg.register`: the deformable pyramid.

Per level, coarse to fine: choose the level's alpha, optionally fit the intensity maps
onto the prior, assemble the energy from the options (:func:`build_energy`), and run
the gradient flow (:mod:`priorreg.solver`) from the upsampled field of the level below.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from . import histogram, pyramid, spatial
from .image import level_factors
from .calibration import fit_intensity_maps
from .checks import Inputs
from .energy import PRIOR_TERMS, JointHistogramEnergy, NegMutualInformation, RegionalNegMutualInformation
from .intensity import foreground
from .mind import MindEnergy
from .normalise import Pyramids
from .options import RegistrationOptions, is_auto
from . import prior_weight
from .regularizer import Tikhonov
from .runtime import registration_threads
from .solver import gradient_flow


@dataclass
class Level:
    """What one pyramid level's energy is built from."""

    index: int  # 0 = full resolution
    fixed: torch.Tensor
    moving: torch.Tensor  # after the intensity fit, if any
    mask: torch.Tensor | None
    spacing: tuple
    alpha: float
    points: torch.Tensor | None  # histogram samples (None = every voxel)


def level_alpha(opts: RegistrationOptions, level: int, prior=None) -> float | None:
    """alpha at ``level``: "mi-finest" uses MI alone at the finest level (0), as does a level coarser than
    the ``prior``'s coarsest table (a prior learned with fewer levels); None = chosen at the level from the
    evidence (alpha="auto", :func:`auto_level`, which gives a level without a table no weight)."""
    if opts.alpha_schedule == "mi-finest" and level == 0:
        return 1.0
    if prior is not None and level >= prior.levels and not is_auto(opts.alpha):
        return 1.0
    return None if is_auto(opts.alpha) else opts.alpha


def uses_prior(inp: Inputs) -> bool:
    return inp.prior is not None and any(
        a is None or a < 1 for a in (level_alpha(inp.options, lv, inp.prior) for lv in range(inp.options.levels))
    )


def prior_table(inp: Inputs, level: int) -> torch.Tensor:
    """The prior's global table at ``level``, floored."""
    Q = torch.as_tensor(inp.prior.global_table(level), dtype=torch.float64, device=inp.device)
    return histogram.floor_prior(Q, inp.options.prior_floor)


def fit_intensities(inp: Inputs, pyr: Pyramids, level: int, alpha: float, u: torch.Tensor, sp: tuple):
    """(fixed, moving, record): the level's images, mapped onto the prior's intensities when the fit is on."""
    f_lv, m_lv = pyr.fixed[level], pyr.moving[level]
    if inp.prior is None or alpha >= 1 or inp.options.prior_intensity_fit != "affine":
        return f_lv, m_lv, None
    warped = spatial.sample(m_lv, spatial.displaced_coords(u, sp))
    (af, bf), (am, bm), kl0, kl1 = fit_intensity_maps(f_lv, warped, prior_table(inp, level), pyr.spec, pyr.mask[level], seed=level)
    record = dict(level=level, fixed=(af, bf), moving=(am, bm), kl_before=kl0, kl_after=kl1)
    return af * f_lv + bf, am * m_lv + bm, record


def auto_level(inp: Inputs, pyr: Pyramids, level: int, u: torch.Tensor, sp: tuple):
    """alpha="auto" at one level: (alpha, fixed, moving, intensity-fit record, evidence record).

    The intensity fit is tried first (as for any alpha < 1), the evidence is read on the pair as the
    prior would see it (:func:`priorreg.prior_weight.pair_statistics`) and the rule
    (:func:`priorreg.prior_weight.choose_alpha`) sets alpha; at alpha = 1 the level runs exactly as
    with alpha=1 (no fitted maps).
    """
    if inp.prior is None or level >= inp.prior.levels:
        return 1.0, pyr.fixed[level], pyr.moving[level], None, prior_weight.no_prior_record(level, inp.prior)
    f_lv, m_lv, fit = fit_intensities(inp, pyr, level, prior_weight.PROBE_ALPHA, u, sp)
    warped = spatial.sample(m_lv, spatial.displaced_coords(u, sp))
    ev = prior_weight.pair_statistics(f_lv, warped, prior_table(inp, level), pyr.spec, pyr.mask[level], seed=level)
    alpha, record = prior_weight.choose_alpha(inp.prior, level, ev, fit)
    if alpha >= 1:
        return 1.0, pyr.fixed[level], pyr.moving[level], None, record
    return alpha, f_lv, m_lv, fit, record


def _sample_points(inp: Inputs, pyr: Pyramids, level: int):
    """Random histogram samples of the level, or None (every voxel) when a subset misses a tiny mask."""
    opts = inp.options
    shape = pyr.fixed[level].shape
    pts = spatial.sample_points(shape, opts.max_samples, seed=level, device=inp.device, min_fraction=opts.min_sample_fraction)
    return None if _misses_mask(pyr.mask[level], pts) else pts


def _misses_mask(mask, pts) -> bool:
    return pts is not None and mask is not None and float(mask.reshape(-1)[pts].sum()) <= 0


def _histogram_terms(lv: Level, inp: Inputs, pyr: Pyramids) -> list:
    """Global MI, the prior term and regional MI, on one joint histogram (two if their block layouts differ).

    A level where the prior has no weight (alpha = 1) runs as without it: the pair's own histogram ranges,
    no prior term (with the prior's ranges, a prior given no weight still changed the result); the prior's
    binning and normalisation recipe stay (the options take them from it)."""
    opts, gamma = inp.options, inp.options.local_weight
    prior = inp.prior if lv.alpha < 1 else None
    spec = pyr.spec if prior is not None else pyr.own_spec
    terms = [(lv.alpha * (1.0 - gamma), NegMutualInformation())]
    if prior is not None:
        Q = torch.as_tensor(prior.floored(lv.index, opts.prior_floor), dtype=torch.float64, device=inp.device)
        terms.append((1.0 - lv.alpha, PRIOR_TERMS[opts.prior_term](Q)))
    regions = prior.regions if prior is not None and prior.n_regions > 1 else None

    def joint(ts, blocks):
        return JointHistogramEnergy(lv.fixed, lv.moving, lv.spacing, spec, ts, lv.mask, opts.force, blocks, lv.points)

    if not (gamma > 0 and lv.alpha > 0):
        return [joint(terms, regions)]
    local = (lv.alpha * gamma, RegionalNegMutualInformation())
    if regions is None or tuple(regions) == inp.local_regions:
        return [joint(terms[:1] + [local] + terms[1:], inp.local_regions)]
    return [joint(terms, regions), joint([local], inp.local_regions)]  # a regional prior on another block layout


def _mind_term(lv: Level, inp: Inputs) -> list:
    """MIND-SSC, weighted by alpha like the other similarity terms."""
    opts = inp.options
    if not (opts.mind_weight > 0 and lv.alpha > 0):
        return []
    pts = spatial.thin_points(lv.points, lv.fixed.shape, opts.mind_sample_fraction, seed=100 + lv.index)
    if pts is not lv.points:
        pts = pts.to(inp.device)
        if _misses_mask(lv.mask, pts):
            pts = lv.points
    return [MindEnergy(lv.fixed, lv.moving, lv.spacing, lv.alpha * opts.mind_weight, lv.mask, pts, opts.mind_radius,
                       opts.mind_dilation, opts.mind_channels, opts.force)]


FIELD_OF_VIEW_MM = 100.0  # bending_scale="field_of_view": the full weight from this extent up


def bending_weight(opts: RegistrationOptions, spacing, shape) -> float:
    """The bending weight (mm^2) of a fixed grid of ``shape`` voxels of ``spacing`` mm: ``bending`` as given,
    x (mean voxel size / 1 mm)^2 (``bending_scale="spacing"``), or x min(1, L / FIELD_OF_VIEW_MM)^2 with L
    the median of the grid's extents along its axes (``"field_of_view"``: a field of view smaller than an
    organ holds a small structure, whose deformation is shorter; the median, so that a thin slab of a large
    organ counts as large; docs/options.md, ``bending_scale``)."""
    if opts.bending_scale == "spacing":
        h = sum(float(s) for s in spacing) / len(spacing)
        return opts.bending * h * h
    if opts.bending_scale == "field_of_view":
        extent = statistics.median(n * float(s) for n, s in zip(shape, spacing))
        return opts.bending * min(1.0, extent / FIELD_OF_VIEW_MM) ** 2
    return opts.bending


def _regulariser(lv: Level, inp: Inputs) -> Tikhonov:
    opts = inp.options
    k = lv.alpha if (opts.regularization_scaling == "alpha" and 0 < lv.alpha < 1) else 1.0
    k /= mask_share(lv.mask)
    spacing, shape = inp.bending_grid or (inp.fixed.spacing, inp.fixed.shape)  # the fixed grid's, not the working one's
    return Tikhonov(k * opts.regularization, lv.spacing, k * bending_weight(opts, spacing, shape))


def mask_share(mask) -> float:
    """Share of the level's grid inside the mask (1 without one). The data terms are means over the
    mask's samples and the regulariser a mean over the grid, so a mask on a fifth of the grid pulled five
    times harder per voxel against the regulariser than the same voxels do without a mask (as if the
    regularisation were five times weaker): the regulariser is divided by this share, so that a mask
    chooses where the data terms look, not how stiff the field is (docs/method.md §2.1)."""
    return 1.0 if mask is None else max(float(mask.mean()), 1e-6)


def build_energy(lv: Level, inp: Inputs, pyr: Pyramids) -> tuple[list, Tikhonov]:
    """(data terms, regulariser) of one level, assembled from the options."""
    return _histogram_terms(lv, inp, pyr) + _mind_term(lv, inp), _regulariser(lv, inp)


def _initial_coarse_field(inp: Inputs):
    if inp.initial_field is None:
        return None
    f_c = level_factors(inp.fixed.spacing, inp.options.levels - 1)
    sub = inp.initial_field[(slice(None),) + tuple(slice(0, None, f) for f in f_c)]
    return torch.as_tensor(sub, dtype=inp.dtype, device=inp.device).contiguous()


NEARLY_ALIGNED_VOXELS = 0.75  # below this mean displacement from the coarser levels (finest voxels), a pair is nearly aligned


def coarse_displacement(inp: Inputs, pyr: Pyramids, u: torch.Tensor) -> float:
    """Mean length, in voxels of the finest grid, of what the coarser levels added to the start field
    (the linear stage's, when it is passed as ``initial_field``), inside the mask, or where the fixed
    image is above its Otsu threshold (the field in an empty background is not what was aligned; within the
    moving image's field of view where the mask is only that, ``Inputs.mask_is_fov``).

    Below NEARLY_ALIGNED_VOXELS the pair was nearly aligned and the finest level starts again from the
    start field with ``nearly_aligned_stiffness`` x the bending weight: there the default's error is its
    own floor of 0.1-0.4 voxel (the data terms reward moving an aligned pair), which a stiffer field
    lowers, while larger warps need the softer field and the coarser levels' start (benchmarks/README.md,
    "Small warps: the default's error floor").
    """
    d = u.shape[0]
    added = u if inp.initial_field is None else u - torch.as_tensor(inp.initial_field, dtype=u.dtype, device=u.device)
    h = torch.as_tensor(inp.fixed.spacing, dtype=u.dtype, device=u.device).reshape(d, *([1] * d))
    size = torch.sqrt(((added / h) ** 2).sum(0))
    if pyr.mask[0] is not None and not inp.mask_is_fov:
        inside = pyr.mask[0] > 0
    else:  # (where the mask is only the moving image's field of view, the anatomy in it)
        inside = torch.as_tensor(foreground(pyr.fixed[0].detach().double().cpu().numpy()), device=u.device)
        inside = inside if pyr.mask[0] is None else inside & (pyr.mask[0] > 0)
    return float(size[inside].mean()) if bool(inside.any()) else float(size.mean())


def nearly_aligned_start(inp: Inputs, pyr: Pyramids, u: torch.Tensor, index: int):
    """(start field, record or None) of a level: at the finest level of a pyramid, with
    ``nearly_aligned_stiffness`` on, when the coarser levels moved the pair by less than NEARLY_ALIGNED_VOXELS,
    the pyramid's start field (the linear stage's, or none) instead of theirs: what they added is then of the
    order of their own error floor, which the stiffer finest level (:func:`stiffer`) could not undo
    (benchmarks/README.md, "Small warps"). The record says how far they moved it and the bending factor used."""
    factor = inp.options.nearly_aligned_stiffness
    if index != 0 or inp.options.levels < 2 or factor == 1:
        return u, None
    moved = coarse_displacement(inp, pyr, u)
    if moved >= NEARLY_ALIGNED_VOXELS:
        return u, dict(mean_voxels=moved, bending_factor=1.0)
    start = (torch.zeros_like(u) if inp.initial_field is None else
             torch.as_tensor(inp.initial_field, dtype=u.dtype, device=u.device).contiguous())
    return start, dict(mean_voxels=moved, bending_factor=factor)


def stiffer(reg: Tikhonov, nearly: dict | None) -> Tikhonov:
    """The level's regulariser with the bending factor :func:`nearly_aligned_start` chose."""
    if nearly is None or nearly["bending_factor"] == 1:
        return reg
    return Tikhonov(reg.weight, reg.spacing, reg.bending * nearly["bending_factor"])


def deformable(inp: Inputs, pyr: Pyramids, callback=None):
    """Run the pyramid: (field tensor on the fixed grid, histories, intensity maps)."""
    history, intensity_maps = [], []

    def solve_level(index, u):
        with registration_threads(math.prod(pyr.fixed[index].shape)):  # a coarse level's kernels are short
            return _solve_level(index, u)

    def _solve_level(index, u):
        t0 = time.perf_counter()
        if hasattr(callback, "setup"):  # a progress display's hook: this level's set-up begins
            callback.setup(index)
        sp = pyramid.level_spacing(inp.fixed.spacing, index)
        u, nearly = nearly_aligned_start(inp, pyr, u, index)  # before the intensity fit, which reads u
        alpha = level_alpha(inp.options, index, inp.prior)
        record = None
        if alpha is None:  # alpha="auto"
            alpha, f_lv, m_lv, fit, record = auto_level(inp, pyr, index, u, sp)
        else:
            f_lv, m_lv, fit = fit_intensities(inp, pyr, index, alpha, u, sp)
        if fit is not None:
            intensity_maps.append(fit)
        lv = Level(index, f_lv, m_lv, pyr.mask[index], sp, alpha, _sample_points(inp, pyr, index))
        data, reg = build_energy(lv, inp, pyr)
        reg = stiffer(reg, nearly)
        setup = time.perf_counter() - t0
        u, h = gradient_flow(data, reg, u, inp.options, index, sp, callback)
        h.setup_seconds = setup
        h.regulariser = dict(membrane=float(reg.weight), bending_mm2=float(reg.bending),  # after every factor
                             sampled_share=mask_share(lv.mask))  # (the regulariser was divided by it)
        if nearly is not None:
            h.coarse_displacement = nearly  # how far the coarser levels moved the pair, and the bending factor used
        if record is not None:
            h.prior_weight = record  # the level's alpha and its evidence (RegistrationResult.prior_weights)
        history.append(h)
        return u

    shapes = [f.shape for f in pyr.fixed]
    u = pyramid.coarse_to_fine(shapes, solve_level, u0=_initial_coarse_field(inp), dtype=inp.dtype, device=inp.device,
                               spacing=inp.fixed.spacing)
    return u, history, intensity_maps
