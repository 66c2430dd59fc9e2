"""What :func:`priorreg.register` warns about a learned prior once it has seen the pair: a prior learned
with the modalities the other way round, a fixed weight for a prior the registered pair is far from, and a
prior that alpha="auto" gave no weight at any level, or whose levels' work the finest level started over
from (:mod:`priorreg.prior_weight` decides the weights)."""
from __future__ import annotations

import dataclasses

import torch

from .calibration import modality_order_check, swapped_after_fit, swapped_prior_message
from .checks import Inputs
from .deformable import NEARLY_ALIGNED_VOXELS, auto_level, level_alpha, prior_table, uses_prior
from .normalise import Pyramids
from .options import is_auto
from .prior import extent_mm, extent_text, other_frame


def check_prior_order(inp: Inputs, pyr: Pyramids) -> tuple:
    """``(problem, warnings)``: a warning when the prior fits the pair far better with its modality axes swapped
    (checked at full resolution); with alpha="auto" such a prior then gets no weight (the problem comes back
    with alpha 1) and the warning says so. A one-pair BraTS prior trained the wrong way round had kept weight
    0.3 (what one-pair priors got before they got none) and moved an aligned 2 mm pair 0.51 mm on average, against
    0.43 mm without it and 0.43 with the right one."""
    if not uses_prior(inp):
        return inp, []
    images = pyr.fixed[0], pyr.moving[0], prior_table(inp, 0), pyr.spec, pyr.mask[0]
    msg = swapped_prior_message("register()", *modality_order_check(*images))
    if msg is None or not swapped_after_fit(*images):
        return inp, []
    if not is_auto(inp.options.alpha):
        return inp, [msg]
    return (dataclasses.replace(inp, options=inp.options.replace(alpha=1.0)),
            [msg + "; alpha auto gives it no weight: the result is mutual information alone"])


def misaligned_prior_warnings(inp: Inputs) -> list:
    """A warning when the prior used was learned from training pairs its own check found not aligned (fit_prior
    warned once, at training; a new user then registered with the prior and read nothing)."""
    bad = inp.prior.notes.get("misaligned_pairs") if uses_prior(inp) else None
    if not bad:
        return []
    which = ", ".join(str(j) for j in bad)
    return [f"register(): the prior was learned from {len(bad)} of {inp.prior.n_pairs} training pair(s) that did not "
            f"look aligned (pair(s) {which}, counted from 0, as fit_prior and 'priorreg train' warned): its joint "
            "density is blurred; learn it again from aligned pairs"]


def frame_prior_warnings(inp: Inputs) -> list:
    """A warning when a regional prior is used on a fixed image whose field of view is not the training images'
    (its regions are blocks of the grid: on another extent each covers other anatomy)."""
    frame = inp.prior.notes.get("extent_mm") if uses_prior(inp) and inp.prior.n_regions > 1 else None
    here = extent_mm(inp.fixed)
    if frame is None or not other_frame(here, frame):
        return []
    return [f"register(): the prior is regional, learned on a field of view of {extent_text(frame)}, and the fixed "
            f"image's is {extent_text(here)}: its regions cover other anatomy here; regional priors "
            "are for images in one frame"]


def _far_cause(inp: Inputs) -> str:
    """Why a pair may be far from its prior: a prior learned within masks used without one, else another pair."""
    if inp.prior.notes.get("masked") and (inp.mask is None or inp.mask_is_fov):  # (the moving image's cover: no region)
        return "it was learned within masks and this pair has none: give the pair a mask of the region it was learned on"
    return "it may have been learned on another modality pair or other anatomy"


FAR_FROM_PRIOR = 1.0  # KL(pair || prior) / MI(prior) of a registered pair above which a fixed alpha is questioned


def trusted_prior_warnings(inp: Inputs, pyr: Pyramids, u: torch.Tensor) -> list:
    """A fixed alpha < 1 with a prior that the registered pair (field ``u``) is still far from: KL to it above
    FAR_FROM_PRIOR x the prior's MI (judged at full resolution, as alpha="auto" judges a level; auto gives no
    weight from 0.4 x on). An MR prior on a PET/CT pair: 1.95; the PET/CT pair's own prior: below 0.4; a
    synthetic prior of other anatomy that helps (tests): 0.65. (At the start a pair is far from any prior
    until it is aligned: the PET/CT pair's own prior was 1.11 there, hence the check at the end.)"""
    alpha = inp.options.alpha
    if inp.prior is None or is_auto(alpha) or alpha >= 1 or inp.options.alpha_schedule != "constant":
        return []
    _, _, _, _, rec = auto_level(inp, pyr, 0, u, inp.fixed.spacing)
    if rec.get("fit_ratio", 0.0) < FAR_FROM_PRIOR:
        return []
    return [f"register(): alpha={alpha:g} gave the prior weight {1 - alpha:g}, but the registered pair's joint "
            f"histogram is far from it (KL {rec['kl']:.2f} nats, {rec['fit_ratio']:.2f} x the prior's MI): alpha='auto' "
            f"would give it none; {_far_cause(inp)}"]


def unused_prior_warnings(inp: Inputs, history: list) -> list:
    """alpha="auto" gave the prior no weight at any level: say so, it is likely the wrong prior."""
    recs = [h.prior_weight for h in history if h.prior_weight is not None]
    if inp.prior is None or not is_auto(inp.options.alpha) or not recs or any(r["alpha"] < 1 for r in recs):
        return []
    last = recs[-1]
    if last.get("spread") is None and "does not describe" not in last.get("reason", ""):  # one pair, or an old file
        return [f"register(): the prior was given no weight at any level: {last['reason']}"]
    if "prior's intensity scale" in last.get("reason", ""):  # close after the intensity fit: its reason says why
        return [f"register(): the prior was given no weight at any level: {last['reason']}; a prior from the same kind "
                "of pair, scanner and protocol, or from other subjects, may describe it"]
    if "training pairs disagree" in last.get("reason", ""):  # the prior's own spread, not this pair, decided
        return [f"register(): the prior was given no weight at any level: {last['reason'].split(':')[0]} at full "
                "resolution, so it says little about any pair; train it on more, or more alike, pairs. The result is "
                "mutual information alone"]
    kl = last.get("kl")
    far = "" if kl is None else f" (KL to it {kl:.2f} nats at full resolution)"
    return ["register(): the prior was given no weight at any level: this pair's joint histogram is far from it"
            f"{far}; {_far_cause(inp)}. The result is mutual information alone"]


def dropped_prior_warnings(inp: Inputs, history: list) -> list:
    """The prior had weight only at coarser levels, and the finest level, at alpha 1, started again from the start
    field (the coarser levels moved the pair by under NEARLY_ALIGNED_VOXELS, :func:`priorreg.deformable.nearly_aligned_start`):
    the prior then did not shape the result, which a user of ``alpha_schedule="mi-finest"`` had not been told."""
    finest = history[-1] if history else None
    restarted = finest is not None and (finest.coarse_displacement or {}).get("bending_factor", 1.0) != 1.0
    if inp.prior is None or not restarted:
        return []
    alphas = [h.prior_weight["alpha"] if h.prior_weight is not None else level_alpha(inp.options, h.level, inp.prior) for h in history]
    if alphas[-1] < 1 or all(a >= 1 for a in alphas[:-1]):
        return []
    return [f"register(): the prior had weight only at the coarser levels, which moved the pair by under "
            f"{NEARLY_ALIGNED_VOXELS:g} voxel, so the finest level (mutual information alone) started again from the "
            "start field: the prior did not shape the result" + (
                "; with alpha_schedule='constant' (--alpha-schedule constant) the prior acts at the finest level too"
                if inp.options.alpha_schedule == "mi-finest" else "")]
