"""The public entry points: :func:`register` and :func:`warp`."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import histogram, pyramid, spatial
from .calibration import fit_intensity_maps, modality_order_check, swapped_prior_message
from .energy import (
    PRIOR_TERMS,
    HistogramSpec,
    JointHistogramEnergy,
    NegMutualInformation,
    RegionalNegMutualInformation,
    Tikhonov,
)
from .errors import PriorRegError, PriorRegWarning
from .image import Image, as_image, as_mask
from .intensity import intensity_range, normalize
from .mind import MindEnergy
from .options import RegistrationOptions, auto_local_regions
from .prior import Prior

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _device(name: str, func: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise PriorRegError(f"{func}: device must be 'cpu' or 'cuda', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PriorRegError(f"{func}: device={name!r} was asked but no CUDA device is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise PriorRegError(f"{func}: device must be 'cpu' or 'cuda', got {name!r}")
    return dev


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes
    ----------
    field : ndarray of shape (d, *fixed.shape)
        Physical displacement in mm; component k moves along the fixed image's
        array axis k. Pull-back: fixed voxel x samples the moving image at
        x + field(x). ``field_world()`` gives it in world (ITK LPS) coordinates.
    warped : Image
        The moving image resampled on the fixed grid through the field.
    fixed : Image
        The fixed image (its geometry defines the field's grid).
    history : list of LevelHistory
        Energy per accepted iteration, per term, per level (coarsest first).
    jacobian : ndarray
        det(I + grad u) on the fixed grid.
    jacobian_stats : dict
        min, max, percent_nonpositive of ``jacobian``.
    options : RegistrationOptions
        The options used.
    warnings : list of str
        What looked wrong with the inputs (each also issued as a :class:`PriorRegWarning`),
        e.g. a prior that fits the pair far better with the modalities swapped.
    """

    field: np.ndarray
    warped: Image
    fixed: Image
    history: list
    jacobian: np.ndarray
    jacobian_stats: dict
    options: RegistrationOptions
    prior: dict | None
    ranges: tuple
    normalization: str
    seconds: float
    device: str
    moving: Image = field(repr=False, default=None)
    moving_on_fixed: Image = field(repr=False, default=None)  # before registration, for comparisons
    warnings: list = field(default_factory=list)  # PriorRegWarning messages of this run

    def field_world(self) -> np.ndarray:
        """The field as (*shape, d) world vectors (ITK LPS, x/y/z order), in mm."""
        D = self.fixed.direction
        return np.einsum("ij,j...->...i", D, self.field)

    def apply(self, image, interpolation: str = "linear") -> Image:
        """Warp another image of the moving space (e.g. a label map) through the field."""
        return warp(image, self.field, reference=self.fixed, interpolation=interpolation)

    @property
    def final_energy(self) -> float:
        return self.history[-1].energy[-1]

    def as_dict(self) -> dict:
        return {
            "options": self.options.as_dict(),
            "prior": self.prior,
            "ranges": [list(r) for r in self.ranges],
            "normalization": self.normalization,
            "seconds": self.seconds,
            "device": self.device,
            "final_energy": self.final_energy,
            "jacobian": self.jacobian_stats,
            "levels": [h.as_dict() for h in self.history],
            "warnings": list(self.warnings),
        }


def _world_coords(moving: Image, reference: Image, u: torch.Tensor) -> torch.Tensor:
    """Voxel coordinates in ``moving`` of world points ref(i) + D_ref u(i), shape (d, *ref)."""
    d = reference.ndim
    dev, dt = u.device, u.dtype
    idx = spatial.identity_grid(reference.shape, torch.float64, dev)
    A_r, b_r = reference.index_to_world()
    A_m, b_m = moving.index_to_world()
    A_r = torch.as_tensor(A_r, dtype=torch.float64, device=dev)
    D_r = torch.as_tensor(reference.direction, dtype=torch.float64, device=dev)
    inv_m = torch.as_tensor(np.linalg.inv(A_m), dtype=torch.float64, device=dev)
    shift = torch.as_tensor(b_r - b_m, dtype=torch.float64, device=dev)
    world = torch.einsum("ij,j...->i...", A_r, idx) + torch.einsum("ij,j...->i...", D_r, u.double())
    world = world + shift.reshape(d, *([1] * d))
    return torch.einsum("ij,j...->i...", inv_m, world).to(dt)


def warp(moving, field, *, reference=None, interpolation: str = "linear", spacing=None, device: str = "cpu") -> Image:
    """Apply a displacement field to an image (intensities or labels).

    Parameters
    ----------
    moving : array or Image
        Image in the moving space. A plain array is taken to share the
        reference grid (with ``spacing`` if given).
    field : array of shape (d, *reference.shape)
        Physical displacement (mm) along the reference's array axes, pull-back.
    reference : Image, optional
        The fixed grid. Default: the moving image's grid.
    interpolation : {"linear", "nearest"}
        "nearest" keeps label values (and dtype) intact.
    """
    func = "warp()"
    if interpolation not in ("linear", "nearest"):
        raise PriorRegError(f"{func}: interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    if isinstance(moving, Image):
        mov = moving
    else:
        arr = np.asarray(moving)
        if arr.ndim not in (2, 3):
            raise PriorRegError(f"{func}: moving must be a 2D or 3D image, got shape {arr.shape}")
        mov = Image(arr, spacing)
    if not np.all(np.isfinite(mov.array)):
        raise PriorRegError(f"{func}: moving contains NaN/Inf")
    ref = mov if reference is None else reference
    fld = np.asarray(field)
    if fld.shape != (ref.ndim, *ref.shape):
        raise PriorRegError(
            f"{func}: field must have shape {(ref.ndim, *ref.shape)} (components first, on the reference grid), got {fld.shape}"
        )
    if mov.ndim != ref.ndim:
        raise PriorRegError(f"{func}: moving is {mov.ndim}D but the reference grid is {ref.ndim}D")
    dev = _device(device, func)
    u = torch.as_tensor(fld, dtype=torch.float64, device=dev)
    coords = _world_coords(mov, ref, u)
    src = torch.as_tensor(np.asarray(mov.array, dtype=np.float64), device=dev)
    out = spatial.sample(src, coords, mode="bilinear" if interpolation == "linear" else "nearest").cpu().numpy()
    if interpolation == "nearest":
        out = out.astype(mov.array.dtype)
    return ref.with_array(out)


def register(
    fixed,
    moving,
    *,
    prior: Prior | None = None,
    alpha: float = RegistrationOptions.alpha,
    mask=None,
    spacing=None,
    initial_field=None,
    options: RegistrationOptions | None = None,
    callback=None,
    warn: bool = True,
    **overrides,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``: minimise
    J(u) = alpha*(-MI) + (1-alpha)*KL(p_u || p_L) + regularization * 1/2 mean|grad u|^2
    (KL or another prior term, ``prior_term``; plus the bending term; with
    ``regularization_scaling="alpha"`` both regulariser weights are multiplied by alpha at levels
    with 0 < alpha < 1, see :class:`RegistrationOptions`).

    Parameters
    ----------
    fixed, moving : array of shape (*spatial) or Image (2D or 3D)
        Arrays share one grid (``spacing`` in mm per array axis, default 1).
        Images may have different grids; they start from their world alignment.
    prior : Prior, optional
        Learned joint density (:func:`fit_prior`); needed for alpha < 1.
    alpha : float in [0, 1]
        1 = mutual information only, 0 = prior only.
    mask : array of the fixed shape, optional
        Fixed-space sample mask for the histogram.
    options : RegistrationOptions, optional
        Defaults for everything else; ``**overrides`` replace single fields
        (e.g. ``levels=2, device="cuda"``).
    initial_field : array of shape (d, *fixed.shape), optional
        Starting displacement (mm, same convention as the result), e.g. an affine
        pre-alignment converted to a field.
    callback : callable(level, iteration, energy), optional
        Called after each accepted step (progress display).
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
    func = "register()"
    t0 = time.perf_counter()
    opts = (options or RegistrationOptions()).replace(alpha=alpha, **overrides)
    fix = as_image(fixed, "fixed", func, spacing)
    mov = as_image(moving, "moving", func, spacing)
    if fix.ndim != mov.ndim:
        raise PriorRegError(f"{func}: fixed is {fix.ndim}D but moving is {mov.ndim}D; both must be 2D or both 3D")
    if not isinstance(moving, Image) and not isinstance(fixed, Image) and fix.shape != mov.shape:
        raise PriorRegError(
            f"{func}: fixed has shape {fix.shape} but moving has {mov.shape}; arrays must share one grid "
            "(pass priorreg.Image objects with geometry to register different grids)"
        )
    if opts.alpha < 1 and prior is None:
        raise PriorRegError(
            f"{func}: alpha={opts.alpha} < 1 needs a learned prior (prior=fit_prior(...)); alpha=1 is mutual information alone"
        )
    if prior is not None:
        if not isinstance(prior, Prior):
            raise PriorRegError(f"{func}: prior must be a priorreg.Prior (fit_prior or Prior.load), got {type(prior).__name__}")
        prior.check_compatible(fix.ndim, opts, func)
    pyramid.check_levels(fix.shape, opts.levels, func)
    local_regions = None
    if opts.local_weight > 0:
        from .prior import _check_regions

        lr = auto_local_regions(fix.shape, opts.levels, opts.bins) if opts.local_regions == "auto" else opts.local_regions
        local_regions = _check_regions(lr, fix.ndim, [fix.shape], opts.levels, func, "local_regions")
    m = as_mask(mask, fix.shape, "mask", func)
    dev = _device(opts.device, func)
    dt = _DTYPES[opts.dtype]

    recipe = prior.normalization if prior is not None else opts.normalization
    f_n = normalize(fix.array, recipe)
    m_n = normalize(mov.array, recipe)
    mov_n = mov.with_array(m_n)
    if not fix.same_grid(mov):
        zero = torch.zeros((fix.ndim, *fix.shape), dtype=torch.float64)
        m_n = warp(mov_n, zero.numpy(), reference=fix).array
    if prior is not None:
        ranges = prior.ranges
    else:
        ranges = (intensity_range([f_n]), intensity_range([m_n]))
    spec = HistogramSpec(opts.bins, opts.parzen_sigma, ranges, opts.eps)

    ft = torch.as_tensor(f_n, dtype=dt, device=dev)
    mt = torch.as_tensor(m_n, dtype=dt, device=dev)
    kt = None if m is None else torch.as_tensor(m, dtype=dt, device=dev)
    fl = pyramid.image_pyramid(ft, opts.levels)
    ml = pyramid.image_pyramid(mt, opts.levels)
    kl = pyramid.mask_pyramid(kt, opts.levels)
    history = []
    run_warnings = []

    def level_alpha(lv):  # "mi-finest": MI alone at the finest level (0)
        return 1.0 if (opts.alpha_schedule == "mi-finest" and lv == 0) else opts.alpha

    if prior is not None and any(level_alpha(lv) < 1 for lv in range(opts.levels)):  # checked once, at full resolution
        Qg0 = histogram.floor_prior(torch.as_tensor(prior.global_table(0), dtype=torch.float64, device=dev), opts.prior_floor)
        msg = swapped_prior_message(func, *modality_order_check(fl[0], ml[0], Qg0, spec, kl[0]))
        if msg is not None:
            run_warnings.append(msg)
            if warn:
                warnings.warn(msg, PriorRegWarning, stacklevel=2)

    intensity_maps = []

    def misses_mask(lv, pts):  # a random subset with no voxel inside a tiny mask
        return pts is not None and kl[lv] is not None and float(kl[lv].reshape(-1)[pts].sum()) <= 0

    def solve_level(lv, u):
        sp = pyramid.level_spacing(fix.spacing, lv)
        alpha = level_alpha(lv)
        f_lv, m_lv = fl[lv], ml[lv]
        if prior is not None and alpha < 1 and opts.prior_intensity_fit == "affine":
            warped = spatial.sample(m_lv, spatial.displaced_coords(u, sp))
            Qg = torch.as_tensor(prior.global_table(lv), dtype=torch.float64, device=dev)
            Qg = histogram.floor_prior(Qg, opts.prior_floor)
            (af, bf), (am, bm), kl0, kl1 = fit_intensity_maps(f_lv, warped, Qg, spec, kl[lv], seed=lv)
            f_lv, m_lv = af * f_lv + bf, am * m_lv + bm
            intensity_maps.append(dict(level=lv, fixed=(af, bf), moving=(am, bm), kl_before=kl0, kl_after=kl1))
        gamma = opts.local_weight
        terms = [(alpha * (1.0 - gamma), NegMutualInformation())]
        prior_terms = []
        if prior is not None:
            Q = torch.as_tensor(prior.floored(lv, opts.prior_floor), dtype=torch.float64, device=dev)
            prior_terms.append((1.0 - alpha, PRIOR_TERMS[opts.prior_term](Q)))
        regions = prior.regions if prior is not None and prior.n_regions > 1 else None
        points = spatial.sample_points(fl[lv].shape, opts.max_samples, seed=lv, device=dev, min_fraction=opts.min_sample_fraction)
        if misses_mask(lv, points):
            points = None  # the subset misses a tiny mask: use every voxel
        data = []
        if gamma > 0 and alpha > 0:
            local = (alpha * gamma, RegionalNegMutualInformation())
            if regions is None or tuple(regions) == local_regions:
                terms.append(local)
                regions = local_regions
            else:  # a regional prior on another block layout: a second joint histogram
                data.append(
                    JointHistogramEnergy(f_lv, m_lv, sp, spec, [local], kl[lv], opts.force, local_regions, points)
                )
        data.insert(0, JointHistogramEnergy(f_lv, m_lv, sp, spec, terms + prior_terms, kl[lv], opts.force, regions, points))
        if opts.mind_weight > 0 and alpha > 0:  # a similarity term: weighted by alpha like MI
            mind_points = spatial.thin_points(points, fl[lv].shape, opts.mind_sample_fraction, seed=100 + lv)
            if mind_points is not points:
                mind_points = mind_points.to(dev)
                if misses_mask(lv, mind_points):
                    mind_points = points
            data.append(
                MindEnergy(
                    f_lv, m_lv, sp, alpha * opts.mind_weight, kl[lv], mind_points, opts.mind_radius, opts.mind_dilation,
                    opts.mind_channels, opts.force,
                )
            )
        k = alpha if (opts.regularization_scaling == "alpha" and 0 < alpha < 1) else 1.0
        reg = Tikhonov(k * opts.regularization, sp, k * opts.bending)
        from .solver import gradient_flow

        u, h = gradient_flow(data, reg, u, opts, lv, sp, callback)
        history.append(h)
        return u

    u0 = None
    if initial_field is not None:
        init = np.asarray(initial_field, dtype=np.float64)
        if init.shape != (fix.ndim, *fix.shape) or not np.all(np.isfinite(init)):
            raise PriorRegError(
                f"{func}: initial_field must be a finite array of shape {(fix.ndim, *fix.shape)}, got {init.shape}"
            )
        f_c = pyramid.level_factor(opts.levels - 1)
        u0 = torch.as_tensor(init[(slice(None),) + tuple(slice(0, None, f_c) for _ in range(fix.ndim))], dtype=dt, device=dev)
    u = pyramid.coarse_to_fine([f.shape for f in fl], solve_level, u0=u0.contiguous() if u0 is not None else None, dtype=dt, device=dev)
    jac = spatial.jacobian_determinant(u.double(), fix.spacing)
    field_np = u.double().cpu().numpy()
    warped = warp(mov, field_np, reference=fix, device=str(dev))
    before = mov if fix.same_grid(mov) else warp(mov, np.zeros_like(field_np), reference=fix)
    jac_np = jac.cpu().numpy()
    stats = {
        "min": float(jac_np.min()),
        "max": float(jac_np.max()),
        "percent_nonpositive": float(100.0 * np.mean(jac_np <= 0)),
    }
    prior_info = None if prior is None else prior.metadata()
    if intensity_maps:
        prior_info["intensity_maps"] = intensity_maps
    return RegistrationResult(
        field=field_np,
        warped=warped,
        fixed=fix,
        history=history,
        jacobian=jac_np,
        jacobian_stats=stats,
        options=opts,
        prior=prior_info,
        ranges=ranges,
        normalization=recipe,
        seconds=time.perf_counter() - t0,
        device=str(dev),
        moving=mov,
        moving_on_fixed=before,
        warnings=run_warnings,
    )
