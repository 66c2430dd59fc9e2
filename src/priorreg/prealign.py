"""Stage 3 of :func:`priorreg.register`: the linear pre-alignment (rigid, then affine).

The transform is estimated by :func:`priorreg.linear.estimate_linear` (or read from a
file and refined); the deformable stage then registers the moving image resampled
through it, and the two are composed into one displacement field at the end.
"""
from __future__ import annotations

import dataclasses

from .checks import Inputs
from .linear import LinearResult, compose_field, estimate_linear, linear_to_field, read_itk_transform
from .resample import warp


def initial_transform(inp: Inputs) -> LinearResult | None:
    """The transform file of ``options.initial_transform``, if any."""
    path = inp.options.initial_transform
    return None if not path else read_itk_transform(path, inp.fixed.ndim)


def prealign(inp: Inputs) -> LinearResult | None:
    """The linear transform of the pair (None: ``options.linear == "none"`` and no initial transform)."""
    opts, start = inp.options, initial_transform(inp)
    if opts.linear == "none":
        return start
    alpha = opts.alpha if isinstance(opts.alpha, float) else 1.0  # an automatic prior weight starts at MI alone
    return estimate_linear(inp.fixed, inp.moving, kind=opts.linear, fixed_mask=inp.mask, prior=inp.prior, alpha=alpha,
                           bins=opts.bins, parzen_sigma=opts.parzen_sigma, device=str(inp.device), initial=start,
                           prior_term=opts.prior_term, prior_floor=opts.prior_floor, normalization=opts.normalization)


def after_prealign(inp: Inputs, lin: LinearResult | None) -> Inputs:
    """The problem the deformable stage solves: the moving image resampled through ``lin``."""
    if lin is None:
        return inp
    moved = warp(inp.moving, linear_to_field(lin, inp.fixed), reference=inp.fixed, fill=None)
    return dataclasses.replace(inp, moving=moved)


def one_field(lin: LinearResult | None, field, inp: Inputs):
    """The deformable field composed with the linear transform (fixed array axes, mm)."""
    return field if lin is None else compose_field(lin, field, inp.fixed)
