"""All registration defaults, in one place. The Python API and the CLI read them from here."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from .errors import PriorRegError
from .image import level_factors, spacing_or_isotropic
from .intensity import NORMALIZATIONS

PRIOR_TERM_CHOICES = ("kl", "ce", "ckl")  # energy.PRIOR_TERMS


AUTO = "auto"  # alpha="auto": priorreg.prior_weight chooses alpha per level


def is_auto(alpha) -> bool:
    """True for alpha="auto" (any case)."""
    return isinstance(alpha, str) and alpha.strip().lower() == AUTO


# What users tune (shown by --help); the other fields are solver internals (docs/options.md).
USER_OPTIONS = ("alpha", "regularization", "bending", "levels", "linear", "initial_transform", "device", "max_iterations",
                "local_weight", "mind_weight", "bins", "parzen_sigma", "normalization", "alpha_schedule", "prior_term")

LOCAL_BLOCK_VOXELS = 20
LOCAL_MAX_REGIONS = 4
MAX_BINS = 1024  # a 100 000-bin histogram asked torch for 80 GB
MIN_SAMPLES = 1000  # max_samples floor: a 32 x 32 joint histogram from fewer voxels is mostly its Parzen window

# What RegistrationOptions accepts (checked in __post_init__, after the types): lower bounds ...
_AT_LEAST = {"regularization": 0, "bending": 0, "bins": 4, "parzen_sigma": 0, "levels": 1, "tolerance": 0,
             "tolerance_window": 1, "max_iterations": 0, "mind_weight": 0, "mind_radius": 0, "mind_dilation": 1,
             "mind_channels": 0}
# ... and the options that name one of a few choices.
CHOICES = {"force": ("exact", "practical"), "normalization": NORMALIZATIONS, "dtype": ("float32", "float64"),
            "alpha_schedule": ("constant", "mi-finest"), "regularization_scaling": ("none", "alpha"),
            "prior_intensity_fit": ("none", "affine"), "prior_term": PRIOR_TERM_CHOICES,
            "linear": ("none", "rigid", "affine"), "bending_scale": ("none", "spacing", "field_of_view")}


def _either(allowed) -> str:
    """'a' or 'b'; 'a', 'b' or 'c'."""
    names = [repr(a) for a in allowed]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def auto_local_regions(shape, levels: int, bins: int = 0, spacing=None) -> tuple:
    """Blocks per axis for local_regions="auto": about LOCAL_BLOCK_VOXELS voxels per block
    side or more, at most LOCAL_MAX_REGIONS, at least 2 voxels per side at the coarsest
    level, and at least bins^2 / 2 voxels per block (a block's joint histogram needs samples:
    a 140 x 140 slice with 64 bins gets 3 x 3 blocks, not 4 x 4).
    """
    fs = level_factors(spacing_or_isotropic(shape, spacing), levels - 1)
    k = [int(max(1, min(LOCAL_MAX_REGIONS, round(n / LOCAL_BLOCK_VOXELS), max(1, n // f) // 2))) for n, f in zip(shape, fs)]
    n_vox = math.prod(shape)
    while math.prod(k) > 1 and n_vox / math.prod(k) < bins * bins / 2:
        i = max(range(len(k)), key=lambda j: (k[j], -shape[j]))  # the axis with the most blocks (shortest first)
        k[i] -= 1
    return tuple(k)


@dataclass(frozen=True)
class RegistrationOptions:
    """Options of :func:`priorreg.register` (and of ``priorreg register`` on the command line).

    Attributes
    ----------
    alpha : float in [0, 1] or "auto"
        Blend J = alpha*(-MI) + (1-alpha)*KL(p_u || p_L) + regularization*R. 1 = classic MI
        (no prior needed); alpha < 1 needs a learned prior. See ``regularization_scaling`` for
        keeping the similarity-to-smoothness balance of alpha = 1 in a blend. "auto": chosen per
        pyramid level between 0.4 and 1 from how well the prior describes the pair and how much
        its own training pairs agree (priorreg.prior_weight; 1 without a prior, and 1 for a prior of
        one training pair, which has no agreement to measure; recorded in
        ``RegistrationResult.prior_weights``).
    alpha_schedule : {"constant", "mi-finest"}
        "constant": alpha at every pyramid level. "mi-finest": alpha at the coarser levels and
        1 (MI alone) at the finest, i.e. the prior guides the coarse alignment only (the paper's
        "alpha adapted per resolution level").
    regularization : float
        lambda, weight of the Tikhonov term R = 1/2 mean |grad u|^2 (dimensionless).
    bending : float
        Weight of the bending term B = 1/2 mean |Laplacian u|^2 (mm^2). It penalises
        curvature, not slope: smooth fields between the edges that drive the match.
    regularization_scaling : {"none", "alpha"}
        "none": the paper's energy, the regulariser weighs ``regularization`` and ``bending``
        whatever alpha. "alpha": at a level with 0 < alpha < 1 both are multiplied by alpha,
        i.e. J / alpha = similarity + (1 - alpha) / alpha * prior + regulariser: the balance of
        similarity and smoothness tuned at alpha = 1 is kept and the prior is added on top. In
        the paper's form alpha = 0.4 also weakens the similarity against the regulariser 2.5x,
        which on the benchmark's tuning cases cost more than the prior brought (2D MR sum of six
        errors 3.41 -> 3.04, MNI 3D 0.26 -> 0.22). At alpha = 0 (prior only) there is no
        similarity to balance: the weights apply as given.
    bins : int
        Histogram bins per intensity axis (B).
    parzen_sigma : float
        Parzen window std, in bins.
    levels : int
        Pyramid levels (factor 2 each); 1 = full resolution only. With a preset and no levels given,
        fewer where the image is too small for them (4 voxels along every axis at the coarsest).
    max_iterations : int
        Iteration cap per level.
    step_voxels : float
        Largest similarity update per iteration at the first step of a level (voxels).
    max_step_voxels : float
        Cap on the similarity update per iteration (voxels).
    tolerance : float
        Stop a level when J decreased by less than tolerance times its size over ``tolerance_window``
        iterations (size: the sum of the absolute values of the data terms and the regulariser,
        so terms of opposite sign that cancel in J do not tighten the rule).
    tolerance_window : int
        See ``tolerance``.
    min_step_voxels : float
        Stop a level when the backtracked update is smaller than this (voxels).
    force : {"exact", "practical"}
        "practical" (default): the central-difference image gradient, interpolated at
        x + u(x) (docs/method.md §4.4); a descent direction of the same energy (the line
        search backtracks on J). "exact": the derivative of the n-linear interpolant,
        the true gradient of the discrete energy (used by the gradient tests); it is
        one-sided on grid nodes, so at u = 0 it depends on rounding of the sample
        coordinates, and CPU and CUDA runs can part ways from the first step.
    normalization : {"percentile", "none"}
        Intensity normalisation of the images. A prior records the one it was learned with, and
        registering with that prior uses it.
    prior_term : {"kl", "ce", "ckl"}
        How the prior enters: "kl" = KL(p_u || p_L) (the paper), "ce" = cross-entropy
        -sum p_u ln p_L (the likelihood of the joint samples under the prior; no
        entropy term that rewards a broader joint histogram), "ckl" = conditional KL
        sum_m p_u(m) KL(p_u(f | m) || p_L(f | m)): KL without its moving-marginal part, so
        the prior no longer asks the warp to reproduce the training images' proportions of
        moving intensities, which another scanner's response curve, blur or counts, or
        another field of view, change (priorreg.energy.PriorConditionalKL). On the
        benchmark's "another scanner" PET slice "kl" made things worse than MI alone and
        "ckl" did not (a tie with MI alone on held-out draws). The affine intensity fit
        still fits the full KL.
    prior_intensity_fit : {"none", "affine"}
        "affine" (with a prior and alpha < 1): at each level, fit one gain and offset per
        modality that bring the current joint histogram onto the prior (at most 2x / 0.3 in
        normalised units), and use them only when they lower KL by >= 0.1 nats
        (:mod:`priorreg.calibration`). For priors whose intensity scale differs from the
        test pair's (another field of view, other patients, no normalisation): on the
        benchmark's MR cases it turned a prior that hurt into one close to MI alone.
        "none": the paper's energy. The fitted maps are in ``result.prior["intensity_maps"]``.
    local_weight : float in [0, 1]
        gamma: the similarity is (1 - gamma) * (-MI) + gamma * (-regional MI), where regional
        MI is the mutual information block by block of the fixed grid (``local_regions``):
        each block has its own intensity mapping, so a bias field or a contrast that changes
        across the field of view does not blur the joint histogram. 0 = the paper's global MI.
    local_regions : "auto", int or tuple of int
        Blocks per axis of the regional MI (one number for every axis, or one per axis).
        "auto": blocks of about ``LOCAL_BLOCK_VOXELS`` (20) voxels per side or more, at most
        ``LOCAL_MAX_REGIONS`` (4) per axis and at least bins^2 / 2 voxels per block (a block
        needs enough samples for its histogram); see ``auto_local_regions``.
    mind_weight : float
        Weight of a MIND-SSC term (``priorreg.mind``): half the mean squared difference of
        the local self-similarity descriptors of the fixed and the warped moving image. A
        local, modality-independent similarity added to the histogram similarity, and like
        it weighted by alpha: J = alpha * (similarity + mind_weight * E_MIND) + (1 - alpha) * prior
        + regulariser, so alpha = 0 stays prior-only. 0 = off (the paper's energy).
    mind_radius : int
        Patch radius (voxels, at each pyramid level) of the MIND-SSC patch distances.
    mind_dilation : int
        Distance (voxels) of the neighbours whose patches MIND-SSC compares.
    mind_channels : int
        0 = every MIND-SSC channel (4 in 2D, 12 in 3D); k > 0 = the k principal components of
        the two images' descriptors (faster: the cost per iteration grows with the channels).
    mind_sample_fraction : float in (0, 1]
        Fraction of the histogram samples (of every voxel when ``max_samples`` is 0) at which
        the MIND term is evaluated, drawn at random once per level. The descriptor term is
        dense and smooth after the regulariser's solve, so in 3D a third of the samples was as
        accurate as all of them and faster (benchmarks/README.md); in 2D it was less accurate.
    max_samples : int
        Histogram samples per level: 0 = every voxel; else (at least 1000), at levels with more
        voxels, this many voxels drawn at random once per level (elastix and
        ANTs sample too). Cuts the cost per iteration (sampling, binning, force) by the
        sampling ratio; the field stays dense (the regulariser's solve spreads the force).
    min_sample_fraction : float in [0, 1]
        With ``max_samples``: never read fewer than this fraction of a level's voxels, so the
        subset grows with the grid. max_samples=300k with 0.3 reads 300k of the 900k voxels
        of a 2 mm brain and 1.1M of the 3.7M of a 1 mm one.
    prior_floor : float
        eta, floor added to the learned prior before its log (docs/method.md §3).
    eps : float
        Floor against log 0 in the observed histogram.
    dtype : {"float32", "float64"}
        Working precision of per-voxel tensors (histograms are always float64).
    device : str
        "cpu" or "cuda" (or "cuda:N").
    linear : {"none", "rigid", "affine"}
        The linear stage before the deformable one (:mod:`priorreg.linear`): centres, then
        rigid, then affine, coarse to fine, by MI (and the prior's term when alpha < 1). Its
        result is never worse than the world alignment it starts from. "none": start from
        the images' world alignment (or ``initial_transform``) as they are.
    initial_transform : str
        An ITK transform file (.tfm, .txt, .mat as ANTs, elastix and 3D Slicer write them)
        mapping fixed to moving world points: the linear stage starts from it (with
        ``linear="none"`` it is used as it is). "" = none.
    bending_scale : {"none", "spacing", "field_of_view"}
        "none": ``bending`` mm^2 as given. "field_of_view" (the 3D presets): as given where the
        fixed image spans 100 mm or more (the median of its axes' extents), softer by
        (extent / 100 mm)^2 in a smaller field of view, which holds a small structure with a
        shorter deformation. "spacing" (the 2D presets): ``bending`` x (mean voxel size / 1 mm)^2,
        i.e. per voxel (in 3D the best weight followed the anatomy's deformation, not the grid:
        docs/options.md, ``bending_scale``).
    nearly_aligned_stiffness : float
        Factor on the bending weight at the finest level when the coarser levels moved the pair by
        less than 0.75 voxel on average (:func:`priorreg.deformable.coarse_displacement`): a nearly
        aligned pair is refined with a stiffer field, starting again from the linear stage's (the
        coarser levels' field is of the order of their error). 1 = off.
    """

    alpha: float = 1.0
    alpha_schedule: str = "constant"
    regularization: float = 0.3
    bending: float = 100.0
    regularization_scaling: str = "none"
    bins: int = 64
    parzen_sigma: float = 2.0
    levels: int = 3
    max_iterations: int = 300
    step_voxels: float = 0.5
    max_step_voxels: float = 2.0
    tolerance: float = 1e-4
    tolerance_window: int = 10
    min_step_voxels: float = 1e-4
    force: str = "practical"
    normalization: str = "percentile"
    prior_term: str = "kl"
    prior_intensity_fit: str = "none"
    local_weight: float = 0.0
    local_regions: int | tuple | str = "auto"
    mind_weight: float = 0.0
    mind_radius: int = 1
    mind_dilation: int = 1
    mind_channels: int = 0
    mind_sample_fraction: float = 1.0
    max_samples: int = 0
    min_sample_fraction: float = 0.0
    prior_floor: float = 1e-6
    eps: float = 1e-10
    dtype: str = "float32"
    device: str = "cpu"
    linear: str = "none"
    initial_transform: str = ""
    bending_scale: str = "none"
    nearly_aligned_stiffness: float = 1.0

    def _check_types(self, f: str) -> None:
        """Integer options as int (32.0 becomes 32), number options as finite reals; strings, bools and
        other types are refused by name (a string "32" gave TypeErrors deep inside the engine)."""
        for fld in fields(self):
            v = getattr(self, fld.name)
            if fld.type == "int":
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or int(v) != v:
                    raise PriorRegError(f"{f}: {fld.name} must be an integer, got {v!r}")
                object.__setattr__(self, fld.name, int(v))
            elif fld.type == "float" and fld.name != "alpha":
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    raise PriorRegError(f"{f}: {fld.name} must be a finite number, got {v!r}")
                object.__setattr__(self, fld.name, float(v))  # numpy's float32 too: report.json needs Python's

    def __post_init__(self):
        f = "register()"
        self._check_types(f)
        if is_auto(self.alpha):
            object.__setattr__(self, "alpha", AUTO)
        elif not (isinstance(self.alpha, numbers.Real) and not isinstance(self.alpha, bool) and 0.0 <= float(self.alpha) <= 1.0):
            raise PriorRegError(f"{f}: alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}")
        else:
            object.__setattr__(self, "alpha", float(self.alpha))
        types = {fld.name: fld.type for fld in fields(self)}
        for name, low in _AT_LEAST.items():
            if not getattr(self, name) >= low:
                kind = "an integer" if types[name] == "int" else "a number"
                raise PriorRegError(f"{f}: {name} must be {kind} >= {low}, got {getattr(self, name)!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PriorRegError(f"{f}: {name} must be {_either(allowed)}, got {getattr(self, name)!r}")
        self._check_ranges(f)

    def _check_ranges(self, f: str) -> None:
        """The options whose valid values are not a lower bound or a list of names."""
        if self.bins > MAX_BINS:
            raise PriorRegError(f"{f}: bins must be at most {MAX_BINS} (each level holds bins x bins joint tables), "
                                f"got {self.bins}")
        if self.max_step_voxels < self.step_voxels or not self.step_voxels > 0:
            raise PriorRegError(
                f"{f}: need 0 < step_voxels <= max_step_voxels, got {self.step_voxels} and {self.max_step_voxels}"
            )
        if not (0.0 <= float(self.local_weight) <= 1.0):
            raise PriorRegError(f"{f}: local_weight must be in [0, 1], got {self.local_weight}")
        lr = self.local_regions if isinstance(self.local_regions, (tuple, list)) else (self.local_regions,)
        if self.local_regions != "auto" and (
            not lr or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in lr)
        ):
            raise PriorRegError(f"{f}: local_regions must be 'auto', an integer >= 1 or one per axis, got {self.local_regions!r}")
        if not (0.0 < float(self.mind_sample_fraction) <= 1.0):
            raise PriorRegError(f"{f}: mind_sample_fraction must be in (0, 1], got {self.mind_sample_fraction}")
        if self.max_samples < 0 or 0 < self.max_samples < MIN_SAMPLES:
            raise PriorRegError(f"{f}: max_samples must be 0 (every voxel) or at least {MIN_SAMPLES} (fewer cannot "
                                f"estimate a joint histogram), got {self.max_samples}")
        if not (0.0 <= float(self.min_sample_fraction) <= 1.0):
            raise PriorRegError(f"{f}: min_sample_fraction must be in [0, 1], got {self.min_sample_fraction}")
        if not isinstance(self.initial_transform, str):
            raise PriorRegError(f"{f}: initial_transform must be a file path (str) or '', got {self.initial_transform!r}")
        for name in ("nearly_aligned_stiffness", "prior_floor", "eps"):
            if not getattr(self, name) > 0:
                raise PriorRegError(f"{f}: {name} must be a number > 0, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "RegistrationOptions":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise PriorRegError(
                f"register(): unknown option(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}"
            )
        d = asdict(self)
        d.update(changes)
        return RegistrationOptions(**d)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- presets
# A preset is a named RegistrationOptions value per image dimension (2D slices and 3D
# volumes differ in how many voxels a histogram and a descriptor have). Explicit options
# override a preset (resolve_options). docs/options.md says when to use which.

_MR_2D = dict(bins=64, parzen_sigma=2.0, tolerance=1e-3, local_weight=1.0, mind_weight=10.0,
              prior_intensity_fit="affine", regularization_scaling="alpha", bending_scale="spacing",
              nearly_aligned_stiffness=4.0)
_MR_3D = dict(bins=32, parzen_sigma=1.0, tolerance=2e-3, tolerance_window=5, local_weight=1.0,
              max_samples=300000, min_sample_fraction=0.3, mind_weight=10.0, mind_channels=3,
              mind_sample_fraction=1 / 3, prior_intensity_fit="affine", regularization_scaling="alpha",
              bending=400.0, bending_scale="field_of_view", nearly_aligned_stiffness=4.0)
_LINEAR = dict(linear="affine")
_NO_LOCAL_TERMS = dict(local_weight=0.0, mind_weight=0.0)
# the prior decides: a fixed weight for it (auto judges a prior by the pair's start, which is far from it
# exactly where a structure must travel), no linear stage (it would move structures by MI first), the
# regulariser not weakened by alpha (it keeps large moves fold-free), more iterations and the engine's
# tolerance (a structure creeps: at the MR presets' 1e-3 it stopped short) (benchmarks/README.md,
# "The circle phantom on other layouts")
_PRIOR_DECIDES = dict(alpha=0.2, linear="none", regularization_scaling="none", max_iterations=1000, tolerance=1e-4)
_PAPER = dict(bending=0.0, regularization_scaling="none", prior_intensity_fit="none", prior_term="kl",
              local_weight=0.0, mind_weight=0.0)


_MR = {2: _MR_2D, 3: _MR_3D}


def _per_dimension(*changes) -> dict:
    """{2: options, 3: options}: each change is a dict of fields, or {2: dict, 3: dict}."""
    def fields_for(nd, c):
        return c[nd] if set(c) == {2, 3} else c

    return {nd: RegistrationOptions(**{k: v for c in changes for k, v in fields_for(nd, c).items()}) for nd in (2, 3)}

PRESETS = {
    # what priorreg does with no flags: a linear stage, then the MR settings (they beat the
    # peers on the benchmark's MR cases; benchmarks/README.md)
    "default": _per_dimension(_MR, _LINEAR),
    # MR to MR (T1, T2, PD, FLAIR): regional MI and MIND-SSC beside the histogram terms;
    # the same as "default" (named so that a script can say what it relies on)
    "mr": _per_dimension(_MR, _LINEAR),
    # PET or SPECT against CT: the local terms do not survive the functional image's blur and noise
    # (a rigid linear stage: the affine one shrank the blurred PET on 7 of 9 benchmark draws)
    "functional": _per_dimension(_MR, _LINEAR, _NO_LOCAL_TERMS, dict(linear="rigid")),
    # a regional prior learned in the test images' frame (atlas space, one scanner's field of view, a
    # phantom) decides where structures go; the MR terms stay, with the weight alpha = 0.2
    "atlas": _per_dimension(_MR, _PRIOR_DECIDES),
    # the 2005 energy exactly: global MI and KL to the prior, membrane regulariser, no linear stage
    "paper": _per_dimension(_PAPER),
}


def preset_options(name: str, ndim: int = 2) -> RegistrationOptions:
    """The options of preset ``name`` for ``ndim``-D images (2 or 3)."""
    if name not in PRESETS:
        raise PriorRegError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    if ndim not in (2, 3):
        raise PriorRegError(f"presets exist for 2D and 3D images, not {ndim}D")
    return PRESETS[name][ndim]


def preset_alpha(name: str, ndim: int):
    """The prior weight preset ``name`` fixes, or None where it leaves alpha to the library (1 without a
    prior, "auto" with one)."""
    alpha = preset_options(name, ndim).alpha
    return None if alpha == RegistrationOptions.alpha else alpha


def resolve_options(ndim: int, preset: str | None = None, options: RegistrationOptions | None = None,
                    **overrides) -> RegistrationOptions:
    """Options of one registration: a preset (default "default") or ``options``, then ``overrides``.

    Giving both a preset and ``options`` is refused: it is unclear which should win. A ``bending`` given
    over a preset is mm^2 as given (``bending_scale="none"``) unless ``bending_scale`` is given too: the
    preset's rule scales the preset's weight, not one the user chose (docs/options.md, ``bending_scale``).
    """
    if preset is not None and options is not None:
        raise PriorRegError("register(): give either preset= or options=, not both")
    if options is not None and not isinstance(options, RegistrationOptions):
        raise PriorRegError(f"register(): options must be a RegistrationOptions, got {type(options).__name__}; "
                            f"give single options as keywords instead (register(..., levels=2))")
    base = options if options is not None else preset_options(preset or "default", ndim)
    if options is None and "bending" in overrides and "bending_scale" not in overrides:
        overrides = dict(overrides, bending_scale="none")
    return base.replace(**overrides)
