"""The public entry points: :func:`register` and :func:`warp`.

A registration is a short pipeline of named stages, each in its own module:

1. :func:`priorreg.checks.validate` - refuse bad input, resolve the options;
2. :func:`priorreg.prealign.prealign` - the linear stage (rigid, then affine), on the arrays as stored; then
   :func:`priorreg.layout.on_one_layout` - both images' arrays on one voxel layout (exact reordering);
   :func:`priorreg.working_grid.on_working_grid` - the fixed grid, no finer than the moving image's voxels;
3. :func:`priorreg.normalise.normalise` - intensities and histogram ranges, pyramids;
4. :func:`priorreg.deformable.deformable` - per level, the energy from
   :func:`priorreg.deformable.build_energy`, minimised by :mod:`priorreg.solver`;
5. :func:`priorreg.result.make_result` - the warped image and the Jacobian of the one field
   (the linear map and the deformable field composed by :func:`priorreg.prealign.one_field`),
   on the fixed image's own layout.

Along the way each stage's notes become ``result.warnings`` (a header that looks wrong, a squeezed
histogram range, :mod:`priorreg.prior_warnings` about a learned prior, a field that folds, and
:mod:`priorreg.mixups`: a moving image mirrored or with its axes swapped, images that share no information).
"""
from __future__ import annotations

import inspect
import math
import time
import warnings

import numpy as np

from .checks import validate
from .deformable import deformable
from .errors import PriorRegError, PriorRegWarning
from .normalise import normalise, range_notes
from .prealign import after_prealign, check_overlap, header_notes, one_field, origin_notes, plane_shift_notes, prealign
from .prior_warnings import (check_prior_order, dropped_prior_warnings, frame_prior_warnings, misaligned_prior_warnings,
                             trusted_prior_warnings, unused_prior_warnings)
from .resample import warp
from .intensity import foreground
from .layout import on_one_layout
from .working_grid import moving_voxel_size, on_working_grid
from .result import RegistrationResult, make_result, outcome_notes, small_field_notes
from .runtime import heap_temporaries, one_blas_thread, registration_threads

__all__ = ["register", "warp", "RegistrationResult"]


def register(fixed, moving, *, prior=None, preset=None, options=None, mask=None, spacing=None, initial_field=None,
             callback=None, warn: bool = True, **overrides) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``: minimise
    J(u) = alpha*(-MI) + (1-alpha)*KL(p_u || p_L) + regularization * 1/2 mean|grad u|^2
    (plus the bending term and the terms the options switch on; docs/method.md).

    Parameters
    ----------
    fixed, moving : array of shape (*spatial) or Image (2D or 3D)
        Arrays share one grid (``spacing`` in mm per array axis, default 1).
        Images may have different grids; they start from their world alignment.
    prior : Prior, optional
        Learned joint density (:func:`fit_prior`); needed for alpha < 1.
    preset : str, optional
        Named options (:data:`priorreg.options.PRESETS`): "default", "mr", "functional",
        "atlas", "paper". Default: "default"; "functional" where an Image's file says PET or SPECT
        (``Image.modality`` "PT" or "NM"; ``result.preset_note`` says so).
    options : RegistrationOptions, optional
        All options at once, instead of a preset.
    **overrides
        Single options on top of the preset or ``options`` (e.g. ``alpha=0.4, levels=2,
        device="cuda"``); an option not given keeps the preset's or ``options``' value.
    mask : array of the fixed shape, optional
        Fixed-space mask: where the linear stage and the similarity terms sample, grown by a 2 mm
        margin (``image.with_margin``) so that the region's outline counts.
    initial_field : array of shape (d, *fixed.shape), optional
        Starting displacement (mm, same convention as the result); it replaces the linear stage.
    callback : callable(level, iteration, energy), optional
        Called at the start of each pyramid level (iteration 0) and after each accepted step
        (progress display); ``level`` counts down to 0, the finest. Optional hooks on it:
        ``callback.before_levels(linear, warnings)`` once the linear stage has run (its LinearResult
        or None, and the warnings known so far: the console prints them then, not after a long run),
        ``callback.setup(level)`` as a level's set-up begins.
    warn : bool
        Issue each of ``result.warnings`` as a :class:`PriorRegWarning` too (True), or only
        record them (False: the CLI and cohort print or store them themselves; thread-safe).

    Returns
    -------
    RegistrationResult

    Examples
    --------
    >>> import numpy as np, priorreg
    >>> f = np.zeros((32, 32)); f[8:24, 8:24] = 1
    >>> r = priorreg.register(f, 1 - f, levels=1)
    >>> r.field.shape
    (2, 32, 32)
    """
    t0 = time.perf_counter()
    if warn not in (True, False):  # a bool (numpy's too), not "no"
        raise PriorRegError(f"register(): warn must be True or False, got {warn!r}")
    if callback is not None and not _takes_three(callback):
        raise PriorRegError(f"register(): callback must be a function of (level, iteration, energy), got {callback!r}")
    inp = validate(fixed, moving, prior=prior, mask=mask, spacing=spacing, preset=preset, options=options,
                   initial_field=initial_field, overrides=overrides)
    n = math.prod(inp.fixed.shape)
    field_bytes = inp.fixed.ndim * n * (8 if inp.options.dtype == "float64" else 4)
    with registration_threads(n) as threads, heap_temporaries(field_bytes), one_blas_thread():
        result = _run(inp, callback, warn, t0)
    result.threads = threads
    return result


def _takes_three(callback) -> bool:
    """Whether ``callback`` can be called with three positional arguments (a builtin whose signature
    Python cannot tell is given the benefit of the doubt)."""
    if not callable(callback):
        return False
    try:
        inspect.signature(callback).bind(0, 0, 0.0)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _run(inp, callback, warn: bool, t0: float) -> RegistrationResult:
    """Stages 2-5 on validated inputs."""
    region = inp.mask if inp.mask is not None else foreground(inp.fixed.array)  # where the anatomy is
    lin = prealign(inp)  # in world space, on the arrays as stored (a wrong header's turn is guessed from them)
    check_overlap(inp, lin, region)
    header = header_notes(inp, lin) or origin_notes(inp, lin, region)  # a turned header also places it apart
    header += plane_shift_notes(inp)
    given, (inp, lay) = inp, on_one_layout(inp)  # the deformable stage sees one voxel layout per grid
    work, grid = on_working_grid(inp, inp.moving)  # no finer than the moving image's voxels
    work, resampled = after_prealign(work, lin)  # (the moving image resampled onto the working grid only)
    pyr = normalise(work)
    work, swapped = check_prior_order(work, pyr)
    notes = (inp.notes + header + range_notes(pyr) + swapped + misaligned_prior_warnings(work)
             + frame_prior_warnings(work))
    if warn:
        for msg in notes:
            warnings.warn(msg, PriorRegWarning, stacklevel=3)
    if hasattr(callback, "before_levels"):  # a progress display's hook: what is known before the first level
        callback.before_levels(lin, notes)
    u, history, intensity_maps = deformable(work, pyr, callback)
    late = unused_prior_warnings(inp, history) + dropped_prior_warnings(work, history) + (
        [] if swapped else trusted_prior_warnings(work, pyr, u))
    u = u.double().cpu().numpy() if grid is None else grid.field_back(u)  # on the fixed grid
    field = one_field(lin, u, inp, resampled)
    if lay is not None:  # back on the fixed image's own layout, and the levels' grids as report.json gives them
        field = lay.field_back(field)
        for h in history:
            h.shape, h.spacing = lay.vector_back(h.shape), lay.vector_back(h.spacing)
    # judged in the finest level's voxels, or the moving image's where coarser: the error floor is in the coarser
    # image's voxels (an aligned BraTS pair with a 4 mm moving image on a 2 mm grid ended 1.46 mm off, unsaid)
    scale = np.maximum(history[-1].spacing, moving_voxel_size(given.fixed, given.moving))
    late = late + small_field_notes(field, tuple(scale), region)
    result = make_result(given, pyr, field, history, intensity_maps, notes + late, time.perf_counter() - t0, lin)
    outcome = outcome_notes(result, region)
    result.warnings.extend(outcome)
    if warn:
        for msg in late + outcome:
            warnings.warn(msg, PriorRegWarning, stacklevel=3)
    return result
