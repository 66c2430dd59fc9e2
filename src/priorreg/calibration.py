"""Fit the test pair's intensities to a learned prior: one affine map per modality.

A joint-intensity prior is learned on normalised intensities, and the normalisation
(robust foreground percentiles mapped to 0 and 1) depends on what the field of view
holds: a sagittal slice has other tissue proportions than the coronal slices a prior
was trained on, so the same tissue lands a few percent higher or lower on the
normalised axis. The prior then puts its mass beside the test pair's true joint
histogram, and KL(p_u || p_L) can even prefer a misaligned pair (docs/method.md reports a
prior that breaks when the test image's intensity scale differs from training).

:func:`fit_intensity_maps` finds f -> a_f f + b_f and m -> a_m m + b_m, within bounds
(a in [1/max_scale, max_scale], |b| <= max_shift in normalised units), that minimise
KL(P || Q) of the Parzen joint histogram P of the current (fixed, warped moving) pair
against the prior table Q. Four numbers cannot encode where anything is, so fitting them
on a roughly aligned pair does not anchor the misalignment; MI and MIND do not change
under these maps (up to binning), so they matter only to the prior term (the maps are
applied to the images every term reads).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

from . import histogram as hist
from . import spatial

FIT_SAMPLES = 60000  # voxels used by the fit (a fixed random subset on larger grids)
MIN_GAIN = 0.1  # nats: a fit that lowers KL by less keeps the identity maps (see fit_intensity_maps)


def _kl_to_prior(x, y, logQ, spec, S) -> float:
    """KL(P || Q) in nats of the smoothed joint histogram P of samples x (binned on the prior's first
    axis) and y (its second) against the floored prior table with logarithm ``logQ``."""
    return float(hist.kl_divergence(hist.parzen_joint_histogram(x, y, spec.ranges, S), logQ, spec.eps))


def fit_intensity_maps(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    Q: torch.Tensor,
    spec,
    weights: torch.Tensor | None = None,
    max_scale: float = 2.0,
    max_shift: float = 0.3,
    seed: int = 0,
    min_gain: float = MIN_GAIN,
):
    """Return ((a_f, b_f), (a_m, b_m), kl_before, kl_after) for the pair on one grid.

    The maps are kept only when they lower KL by at least ``min_gain`` nats; else the
    identity is returned (and kl_after = kl_before). On a prior that fits the pair (KL of a
    few hundredths, e.g. a functional prior from the same scanner) a free fit chases the
    noise of a still misaligned pair and weakens the prior's pull: on the benchmark's
    tuning cases such fits lowered KL by < 0.07 nats and made one SPECT-like case worse
    (1.20 -> 1.44 voxels), while the miscalibrated MR priors gained 0.18-1.96 nats.

    ``fixed``, ``warped``: normalised intensities (same shape); ``Q``: the prior's global
    joint table (B x B, sums to 1, floored); ``spec``: the :class:`HistogramSpec` of the
    energy; ``weights``: optional 0/1 mask on the same grid.
    """
    f, m = spatial.paired_samples(fixed, warped, weights, FIT_SAMPLES, seed, "fit_intensity_maps")
    S = hist.smoothing_matrix(spec.bins, spec.parzen_sigma, device=f.device)
    logQ = torch.log(Q.double())
    log_scale = math.log(max_scale)

    def unpack(x):
        x = np.clip(np.asarray(x, dtype=float), -1.0, 1.0)
        return (math.exp(x[0] * log_scale), float(x[1] * max_shift), math.exp(x[2] * log_scale),
                float(x[3] * max_shift))

    def kl(x):
        af, bf, am, bm = unpack(x)
        return _kl_to_prior(af * f + bf, am * m + bm, logQ, spec, S)

    x0 = np.zeros(4)
    before = kl(x0)
    best = minimize(kl, x0, method="Nelder-Mead", options=dict(xatol=1e-3, fatol=1e-5, maxfev=400, initial_simplex=np.vstack([x0, x0 + 0.2 * np.eye(4)])))
    if before - best.fun < min_gain:
        return (1.0, 0.0), (1.0, 0.0), before, before
    af, bf, am, bm = unpack(best.x)
    return (af, bf), (am, bm), before, float(best.fun)


# A prior is a table over (fixed modality, moving modality). Trained the other way round it still
# "works" and pulls towards the wrong intensity pairs. Measured on 73 pairs (the benchmark's 2D/3D MR and
# PET/SPECT-with-CT cases and more draws of the generators nearest the boundary, benchmarks/results/
# modality-order/): a right-order prior never had a swapped KL below 0.676 x the given one (BraTS FLAIR/T1c,
# 3D, 32 bins); the swapped prior gave 0.004-0.66 x on the 57 pairs whose two modalities a histogram tells
# apart. The first thresholds (0.5 and 1 nat, set on 2D pairs at 64 bins) missed a swapped 3D BraTS prior
# a new user trained (KL 1.56 given, 0.83 swapped); these catch 44 of the 57 and no right-order prior.
ORDER_RATIO = 0.6  # warn when KL with the axes swapped < ORDER_RATIO x KL as given ...
ORDER_MARGIN = 0.5  # ... and lower by more than ORDER_MARGIN nats
ORDER_SAMPLES = 200000


def modality_order_check(fixed, moving, Q, spec, weights=None, seed: int = 0):
    """(KL as given, KL with the modalities swapped) of the pair's joint histogram against the prior.

    ``fixed``, ``moving``: normalised intensities on one grid (tensors); ``Q``: the prior's global
    table (floored); the swapped KL bins the moving image on the prior's first axis and the fixed
    image on its second, i.e. what a prior trained with the modalities the other way round sees.
    """
    f, m = spatial.paired_samples(fixed, moving, weights, ORDER_SAMPLES, seed, "modality_order_check")
    S = hist.smoothing_matrix(spec.bins, spec.parzen_sigma, device=f.device)
    logQ = torch.log(Q.double())
    return _kl_to_prior(f, m, logQ, spec, S), _kl_to_prior(m, f, logQ, spec, S)


def swapped_after_fit(fixed, moving, Q, spec, weights=None) -> bool:
    """Whether the prior still fits the pair better with the modalities swapped once each orientation has its
    own intensity maps (:func:`fit_intensity_maps`, any gain kept): the confirmation :func:`modality_order_check`
    needs before a warning. Its raw KLs compare the pair on the prior's intensity scale, and a pair whose scale
    differs (other slices of the same patient, other bias fields) can fit the transposed table better by chance:
    3 right-order priors of 10 draws of BraTS FLAIR/T1c slices were flagged (raw ratios 0.36-0.56). After the
    fits, every right-order prior of the 72 pairs in benchmarks/results/modality-order/ fitted better as given
    (swapped / given 1.14 or more), and the 45 swapped priors the raw KLs caught fitted better swapped
    (0.75 or less); two of the three flagged BraTS draws are spared (benchmarks/README.md, "The modality-order
    warning")."""
    given = fit_intensity_maps(fixed, moving, Q, spec, weights, min_gain=0.0)[3]
    swapped = fit_intensity_maps(moving, fixed, Q, spec, weights, min_gain=0.0)[3]
    return swapped < given


def swapped_prior_message(func: str, kl_given: float, kl_swapped: float):
    """The warning text when the prior fits the pair far better with the modalities swapped, else None."""
    if kl_swapped < ORDER_RATIO * kl_given and kl_given - kl_swapped > ORDER_MARGIN:
        return (
            f"{func}: the prior fits this pair far better with fixed and moving swapped (KL {kl_given:.2f} nats as "
            f"given, {kl_swapped:.2f} swapped): was it trained with the moving modality first? (fit_prior and "
            "'priorreg train' take the fixed modality's images first)"
        )
    return None
