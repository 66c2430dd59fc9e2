"""Stage 1 of :func:`priorreg.register`: validate the inputs and resolve the options.

What can be refused from the inputs and options alone is refused here, before any work,
with one clear :class:`PriorRegError` message. Later stages refuse what only their work
shows (no overlap after the linear stage, a mask too small for a pyramid level).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from . import pyramid
from .mind import ssc_pairs
from .errors import PriorRegError
from .image import Image, as_image, as_mask, on_one_grid, plane_offset, spacing_text, torch_ready, with_margin
from .options import AUTO, PRESETS, RegistrationOptions, auto_local_regions, is_auto, preset_alpha, resolve_options
from .prior import Prior, check_regions
from .runtime import check_device

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Inputs:
    """A validated registration problem."""

    fixed: Image
    moving: Image
    mask: np.ndarray | None  # fixed-space sample mask, 0/1, with its margin (with_margin)
    prior: Prior | None
    options: RegistrationOptions
    preset: str | None
    device: torch.device
    dtype: torch.dtype
    local_regions: tuple | None  # blocks per axis of the regional MI (None: off)
    initial_field: np.ndarray | None
    notes: list = field(default_factory=list)  # what validate chose for the caller (fewer levels on a small image)
    preset_note: str | None = None  # why ``preset`` was chosen where none was asked for (preset_for)
    bending_grid: tuple | None = None  # (spacing, shape) the bending rule reads: the fixed grid's (working_grid)
    mask_is_fov: bool = False  # the mask is the moving image's field of view alone (prealign.inside_moving), no user's region


def _check_pair(fixed, moving, spacing, func: str) -> tuple[Image, Image]:
    images = [x for x in (fixed, moving) if isinstance(x, Image)]
    if images and spacing is not None:
        raise PriorRegError(f"{func}: spacing= is for plain arrays; a priorreg.Image carries its own spacing "
                            "(Image(array, spacing, origin, direction))")
    fixed, moving = on_one_grid(fixed, moving, func)  # a plain array beside an Image: on that Image's grid, or refused
    fix = as_image(fixed, "fixed", func, spacing)
    mov = as_image(moving, "moving", func, spacing)
    if fix.ndim != mov.ndim:
        raise PriorRegError(f"{func}: fixed is {fix.ndim}D but moving is {mov.ndim}D; both must be 2D or both 3D")
    plane_offset(fix, mov, func)  # single slices in different planes are refused
    for name, im in (("fixed", fix), ("moving", mov)):
        if _elongation(im) > MAX_SPACING_RATIO:  # a header's, not a scanner's: blurs of 1e12 voxels
            raise PriorRegError(f"{func}: {name}'s voxels are {_elongation(im):.3g} times longer along one axis than "
                                f"another (spacing {spacing_text(im.spacing)} mm): a wrong header? fix its spacing (pixdim)")
    if not isinstance(moving, Image) and not isinstance(fixed, Image) and fix.shape != mov.shape:
        raise PriorRegError(
            f"{func}: fixed has shape {fix.shape} but moving has {mov.shape}; arrays must share one grid "
            "(pass priorreg.Image objects with geometry to register different grids)"
        )
    return fix, mov


MAX_ANISOTROPY = 50  # a voxel's longest side over its shortest, beyond which the spacing is warned about
MAX_SPACING_RATIO = 1e4  # ... and refused (1e-9 mm beside 3 mm: a hang; 1e-30: scipy's "Maximum allowed size")


def _elongation(im: Image) -> float:
    """A voxel's longest side over its shortest."""
    return float(max(im.spacing) / min(im.spacing))


def _spacing_notes(fix: Image, mov: Image, func: str) -> list:
    """A warning where an image's voxels are more than MAX_ANISOTROPY times longer along one axis than another
    (thick slices reach 20-30): a header with one wrong spacing makes the anatomy a sliver, and the
    registration then follows that header without a word."""
    return [f"{func}: {name}'s voxels are {_elongation(im):.0f} times longer along one axis than another (spacing "
            f"{spacing_text(im.spacing)} mm, so the image spans {spacing_text(np.asarray(im.shape) * im.spacing)} mm): "
            "if that is not the anatomy's size, its header's spacing is wrong, and the registration follows it"
            for name, im in (("fixed", fix), ("moving", mov)) if _elongation(im) > MAX_ANISOTROPY]


def _slice_gap_notes(fix: Image, mov: Image, func: str) -> list:
    """A warning where two single slices lie in parallel planes more than a slice thickness apart: the
    registration aligns them in-plane as if they showed one section of the anatomy."""
    gap = plane_offset(fix, mov, func)
    if gap == 0.0:
        return []
    thickness = max(float(im.volume.spacing[im.volume.axis]) for im in (fix, mov))
    if abs(gap) <= thickness:
        return []
    return [f"{func}: the moving slice lies {abs(gap):.1f} mm from the fixed slice's plane (slices {thickness:g} mm "
            "thick): they may show different sections of the anatomy, which no in-plane warp can align; the field "
            "keeps the distance as its through-plane component"]


def frame_notes(fixed, moving, fix: Image, mov: Image, func: str) -> list:
    """A warning where one image was given without a frame (Image(array, spacing): ITK's default direction,
    origin 0) and the other with one whose direction differs: a new user's Image(t1.array, t1.spacing) beside
    the T2 from read_image registered to the wrong side of the anatomy (cord overlap 0) without a word. The
    linear stage turns the anatomy by at most about 20 degrees."""
    if not (isinstance(fixed, Image) and isinstance(moving, Image)) or fixed.framed == moving.framed:
        return []
    if np.allclose(fix.direction, mov.direction, atol=1e-3):
        return []
    bare, other = ("fixed", "moving") if not fixed.framed else ("moving", "fixed")
    return [f"{func}: the {bare} Image was made without a direction or origin (ITK's default frame) and the {other} "
            "one has its own, with another direction: the two frames disagree, which the registration cannot undo; "
            f"if the {bare} image came from a file, read it with priorreg.read_image or give Image(array, spacing, "
            "origin, direction) from its header"]


# DICOM Modality values of functional images: the default preset's local terms and affine stage hurt them
# (README, Presets); with no preset given they get "functional".
FUNCTIONAL_MODALITIES = {"PT": "a PET image", "NM": "a nuclear medicine (SPECT) image"}


def preset_for(preset, options, fixed, moving, prefix: str = "", override: str = "preset='default'") -> tuple:
    """``(preset, notes)``: the preset asked for; with none (and no ``options=``), "functional" where the
    fixed or the moving image's file says it is PET or SPECT (:attr:`Image.modality`), with a note saying so.
    The one rule for the library, the command line and cohorts."""
    if preset is not None or options is not None:
        return preset, []
    for name, im in (("moving", moving), ("fixed", fixed)):
        modality = getattr(im, "modality", None) if isinstance(im, Image) else None
        modality = modality.strip().upper() if isinstance(modality, str) else modality  # "pt" as a user types it
        if modality in FUNCTIONAL_MODALITIES:
            return "functional", [f"{prefix}the {name} image is {FUNCTIONAL_MODALITIES[modality]} (Modality {modality} "
                                  "in its file): using preset functional (global MI and the prior, rigid linear stage); "
                                  f"give {override} for the MR settings"]
    return preset, []


def other_dimension_notes(options, ndim: int, func: str) -> list:
    """A note where ``options=`` is a preset's variant for the other dimension (``PRESETS["default"][3]`` on
    a 2D pair: 32 bins, the 3D bending rule), also with a few settings changed
    (``preset_options("default", 3).replace(levels=2)``): it ran without a word."""
    if options is None:
        return []
    other = 5 - ndim
    for name, per_dim in PRESETS.items():
        if {ndim, other} <= per_dim.keys() and options != per_dim[ndim] and (
                options == per_dim[other] or _mostly_other(options, per_dim[ndim], per_dim[other])):
            what = "is" if options == per_dim[other] else "holds most settings of"
            return [f"{func}: options= {what} the {other}D variant of preset {name!r}, but the images are {ndim}D; "
                    f"give preset={name!r} (each preset picks its variant from the images) or "
                    f"preset_options({name!r}, {ndim})"]
    return []


def _mostly_other(options, this, other) -> bool:
    """Whether ``options`` holds none of ``this`` variant's own values (where the two variants of one preset
    differ) and most of the ``other`` variant's (two at least), counted where that also differs from the bare
    engine's (``RegistrationOptions()``, which is no preset's variant)."""
    bare = RegistrationOptions()
    differ = [f.name for f in fields(this) if getattr(this, f.name) != getattr(other, f.name)]
    own = [f for f in differ if getattr(other, f) != getattr(bare, f)]
    as_this = sum(getattr(options, f) == getattr(this, f) for f in differ)
    as_other = sum(getattr(options, f) == getattr(other, f) for f in own)
    return as_this == 0 and as_other >= 2 and as_other > len(own) / 2  # one shared value is a coincidence


def _check_mind_size(opts: RegistrationOptions, shape, func: str) -> None:
    """Refuse MIND patches or neighbours larger than the image (mind_radius=5000 padded a 181 x 217 slice to
    10 181 voxels a side, and ran for minutes)."""
    side = min(shape)
    if opts.mind_weight > 0 and (2 * opts.mind_radius + 1 > side or opts.mind_dilation >= side):
        raise PriorRegError(f"{func}: mind_radius={opts.mind_radius} and mind_dilation={opts.mind_dilation} make MIND-SSC "
                            f"patches of {2 * opts.mind_radius + 1} voxels across {opts.mind_dilation} voxel(s) apart, but "
                            f"the image is {side} voxels across its shortest side; give smaller ones (1 and 1 by default)")


def _check_prior(prior, opts: RegistrationOptions, ndim: int, func: str) -> None:
    if not is_auto(opts.alpha) and opts.alpha < 1 and prior is None:
        raise PriorRegError(
            f"{func}: alpha={opts.alpha} < 1 needs a learned prior (prior=fit_prior(...)); alpha=1 is mutual information alone"
        )
    if prior is not None:
        if not isinstance(prior, Prior):
            raise PriorRegError(f"{func}: prior must be a priorreg.Prior (fit_prior or Prior.load), got {type(prior).__name__}")
        prior.check_compatible(ndim, opts, func)


def local_regions(opts: RegistrationOptions, fix: Image, func: str):
    if opts.local_weight <= 0:
        return None
    lr = auto_local_regions(fix.shape, opts.levels, opts.bins, fix.spacing) if opts.local_regions == "auto" else opts.local_regions
    return check_regions(lr, fix.ndim, [fix.shape], opts.levels, func, "local_regions", [fix.spacing])


def _initial_field(initial_field, fix: Image, func: str, opts: RegistrationOptions):
    if initial_field is None:
        return None
    if opts.initial_transform:
        raise PriorRegError(f"{func}: give initial_field or initial_transform, not both (a field already holds the transform)")
    try:
        init = torch_ready(np.asarray(initial_field, dtype=np.float64))
    except (TypeError, ValueError):
        raise PriorRegError(f"{func}: initial_field must be an array of numbers (mm)") from None
    if init.shape != (fix.ndim, *fix.shape):
        raise PriorRegError(f"{func}: initial_field must have shape {(fix.ndim, *fix.shape)}, got {init.shape}")
    if not np.all(np.isfinite(init)):
        raise PriorRegError(f"{func}: initial_field holds {int(init.size - np.isfinite(init).sum())} NaN/Inf value(s)")
    return init


def prior_settings(opts: RegistrationOptions, prior, given: dict) -> dict:
    """The options a prior sets where the caller did not: its bins and Parzen sigma; and always its
    normalisation (the images are normalised as its tables were, whatever was asked). Not its levels: a
    level coarser than its coarsest table runs without it (:func:`priorreg.deformable.level_alpha`); a prior
    learned on a 10-slice slab (2 levels) made a 3D run use 2 levels, a third worse, with the prior given
    no weight."""
    if not isinstance(prior, Prior):
        return {}
    changes = {k: getattr(prior, k) for k in ("bins", "parzen_sigma") if k not in given and getattr(prior, k) != getattr(opts, k)}
    if prior.normalization != opts.normalization:
        changes["normalization"] = prior.normalization
    return changes


def _coarse_levels_notes(prior, opts: RegistrationOptions, func: str) -> list:
    """A note where a fixed alpha < 1 meets a pyramid coarser than the prior's tables (alpha auto's record
    says it per level)."""
    if not isinstance(prior, Prior) or opts.levels <= prior.levels or is_auto(opts.alpha) or opts.alpha >= 1:
        return []
    n = opts.levels - prior.levels
    which = f"the coarsest of the {opts.levels} levels runs" if n == 1 else f"the {n} coarsest of the {opts.levels} levels run"
    return [f"{func}: the prior has tables for {prior.levels} pyramid level(s); {which} without it (mutual information alone)"]


def size_settings(opts: RegistrationOptions, shape, given: dict, spacing=None) -> dict:
    """Fewer pyramid levels where the image is too small for the preset's and none were asked for (a
    thick-slice stack of 9 slices allows 2 of the default 3): the rule of image size, as the defaults'."""
    most = pyramid.max_levels(shape, spacing)
    return {"levels": most} if "levels" not in given and opts.levels > most else {}


def default_alpha(preset: str | None, ndim: int, prior):
    """alpha where the caller set none: without a prior 1 (nothing to weigh); with one the preset's own
    (a preset for priors that decide) or "auto": priorreg decides how much to trust it (docs/method.md)."""
    if prior is None:
        return 1.0
    named = preset_alpha(preset or "default", ndim)
    return AUTO if named is None else named


@dataclass
class Resolution:
    """The options of one registration and what chose them beyond the caller's own settings."""

    options: RegistrationOptions
    from_prior: dict  # what the prior set (prior_settings): its bins, Parzen sigma, normalisation
    fewer_levels: dict  # {"levels": n} where the image is too small for the preset's (size_settings), else {}
    levels_asked: int  # the levels before fewer_levels


def resolve(ndim: int, shape=None, *, preset=None, options=None, given=None, prior=None, spacing=None) -> Resolution:
    """The options register() runs: a preset (or ``options=``), the caller's ``given`` settings, alpha where
    none is given (:func:`default_alpha`), the prior's settings, and fewer levels on an image of ``shape``
    too small for the preset's (not with ``options=``, which is taken as given but for the normalisation a
    prior's tables need; nor without a shape). The one rule for the library, the command line and cohorts."""
    given = dict(given or {})
    chosen = dict(given)
    if options is None and "alpha" not in chosen:
        chosen["alpha"] = default_alpha(preset, ndim, prior)
    opts = resolve_options(ndim, preset, options, **chosen)
    settings = prior_settings(opts, prior, given)
    if options is not None:
        settings = {k: v for k, v in settings.items() if k == "normalization"}
    opts = opts.replace(**settings)
    size = size_settings(opts, shape, given, spacing) if options is None and shape is not None else {}
    asked, opts = opts.levels, opts.replace(**size)
    if is_auto(opts.alpha) and prior is None:
        opts = opts.replace(alpha=1.0)  # no prior: nothing to weigh, mutual information alone
    return Resolution(opts, settings, size, asked)


def validate(fixed, moving, *, prior=None, mask=None, spacing=None, preset=None, options=None, initial_field=None,
             overrides=None, func: str = "register()") -> Inputs:
    """Check a registration problem and resolve its options (:func:`resolve`)."""
    fix, mov = _check_pair(fixed, moving, spacing, func)
    given = dict(overrides or {})
    preset, chosen = preset_for(preset, options, fixed, moving, f"{func}: ")
    res = resolve(fix.ndim, fix.shape, preset=preset, options=options, given=given, prior=prior, spacing=fix.spacing)
    opts, notes = res.options, chosen + _spacing_notes(fix, mov, func) + _slice_gap_notes(fix, mov, func)
    notes += frame_notes(fixed, moving, fix, mov, func)
    notes += other_dimension_notes(options, fix.ndim, func)
    if res.fewer_levels:
        notes.append(f"{func}: {opts.levels} pyramid level(s): an image of shape {fix.shape} is too small for {res.levels_asked}")
    if prior is not None and options is not None and "alpha" not in given and not is_auto(opts.alpha) and opts.alpha >= 1:
        # alpha=1 asked for by name runs without the prior, as asked; options= brings it unasked (RegistrationOptions' default)
        notes.append(f"{func}: a prior was given but options= has alpha 1, so the prior is not used (mutual information "
                     "alone); pass alpha='auto' to weigh it per level, or alpha < 1 to fix its weight")
    if initial_field is not None and given.get("linear", "none") != "none":  # was dropped without a word
        notes.append(f"{func}: linear={given['linear']!r} is not run: initial_field= starts the deformable stage in "
                     "its place (initial_transform= starts the linear stage from a transform)")
    _check_prior(prior, opts, fix.ndim, func)
    notes += _coarse_levels_notes(prior, opts, func)
    pyramid.check_levels(fix.shape, opts.levels, func, spacing=fix.spacing)
    _check_mind_size(opts, fix.shape, func)
    channels = len(ssc_pairs(fix.ndim))  # MIND-SSC's channels: 4 in 2D, 12 in 3D
    if opts.mind_channels > channels:
        raise PriorRegError(f"{func}: mind_channels={opts.mind_channels}, but MIND-SSC has {channels} channels in "
                            f"{fix.ndim}D; give 1 to {channels} principal components, or 0 for all")
    return Inputs(
        fixed=fix,
        moving=mov,
        mask=with_margin(as_mask(mask, fix, "mask", func), fix.spacing),
        prior=prior,
        options=opts,
        preset=(preset or "default") if options is None else None,
        device=check_device(opts.device, func),
        dtype=DTYPES[opts.dtype],
        local_regions=local_regions(opts, fix, func),
        initial_field=_initial_field(initial_field, fix, func, opts),
        notes=notes,
        preset_note=chosen[0] if chosen else None,
    )
