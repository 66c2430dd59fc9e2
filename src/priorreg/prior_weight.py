"""How much weight the learned prior gets, level by level (``alpha="auto"``).

The evidence is what a registration can see without the test pair's ground truth:
how far the pair's joint histogram lies from the prior (KL after the intensity fit),
measured against how far the prior's own training pairs lie from one another
(their leave-one-out KL, stored in the prior at train time). :func:`choose_alpha` turns
it into one alpha per level; the pair's mutual information is recorded beside it. The rule and the measurements behind it: benchmarks/README.md
("Automatic prior weight").
"""
from __future__ import annotations


import numpy as np
import torch

from . import histogram as hist
from . import spatial

EVIDENCE_SAMPLES = 60000  # voxels read by the KL evidence (a fixed random subset on larger grids)


# --------------------------------------------------------------------------- train time


def leave_one_out_kl(tables, eta: float) -> np.ndarray:
    """KL(P_j || mean of the other pairs' tables) in nats, per training pair j.

    ``tables``: (n, B, B) joint tables of the training pairs at one level (each sums to 1);
    the mean of the others is floored with ``eta`` like a prior. NaN for every pair when
    n < 2 (no other pair to compare with).
    """
    P = torch.as_tensor(np.asarray(tables), dtype=torch.float64)
    n = P.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    total = P.sum(0)
    out = np.empty(n)
    for j in range(n):
        Q = hist.floor_prior((total - P[j]) / (n - 1), eta)
        out[j] = float(hist.kl_divergence(P[j], torch.log(Q), 1e-10))
    return out


# --------------------------------------------------------------------------- registration time


def pair_statistics(fixed, warped, Q, spec, weights=None, seed: int = 0) -> dict:
    """KL(P || Q) and MI(P) of the pair's smoothed joint table P, MI(Q), and the KL of P's fixed marginal
    against Q's (nats).

    ``fixed``, ``warped``: the level's normalised images (warped = moving at x + u), one grid;
    ``Q``: the prior's floored global table; ``weights``: optional 0/1 mask.
    """
    f, m = spatial.paired_samples(fixed, warped, weights, EVIDENCE_SAMPLES, seed, "pair_statistics")
    S = hist.smoothing_matrix(spec.bins, spec.parzen_sigma, device=f.device)
    P = hist.parzen_joint_histogram(f, m, spec.ranges, S)
    logQ = torch.log(Q.double())
    Qd = Q.double()
    return dict(kl=float(hist.kl_divergence(P, logQ, spec.eps)), mi=float(hist.mutual_information(P, spec.eps)),
                prior_mi=float(hist.mutual_information(Qd)), kl_fixed=_marginal_kl(P.sum(1), Qd.sum(1), spec.eps))


def _marginal_kl(p, q, eps: float) -> float:
    """KL(p~ || q~) of two marginals (nats), each floored by ``eps`` as a (1, B) table."""
    p, q = hist.floor_prior(p[None], eps), hist.floor_prior(q[None], eps)
    return float(hist.kl_divergence(p, torch.log(q)))




# --------------------------------------------------------------------------- the rule

PROBE_ALPHA = 0.5  # any alpha < 1: the intensity fit is tried as for a blend and kept only if alpha < 1
ALPHA_MIN = 0.4  # the most weight the prior gets (the paper's alpha)
SPREAD_RANGE = (0.05, 0.2)  # spread / MI(prior): full trust below, none above (linear between)
FIT_RANGE = (0.15, 0.4)  # KL(pair || prior) / MI(prior): the same
CALIBRATION_RANGE = (1.0, 2.0)  # the same KL before the intensity fit / MI(prior): the same


def training_spread(prior, level: int):
    """Median leave-one-out KL of the prior's training pairs at ``level`` (nats), or None."""
    pk = getattr(prior, "pair_kl", None)
    if pk is None or prior.n_pairs < 2:
        return None
    v = np.asarray(pk[level], dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _ramp(x: float, lo: float, hi: float) -> float:
    """1 at x <= lo, 0 at x >= hi, linear between."""
    return float(min(1.0, max(0.0, (hi - x) / (hi - lo))))


def no_prior_record(level: int, prior=None) -> dict:
    """The record of a level without a prior table: none given, or (``prior``) a level coarser than its coarsest."""
    if prior is None:
        return dict(level=level, alpha=1.0, reason="no prior: mutual information alone")
    return dict(level=level, alpha=1.0, reason=f"the prior has tables for {prior.levels} level(s), not this coarser one: "
                                               "mutual information alone")


def choose_alpha(prior, level: int, ev: dict, fit=None):
    """(alpha, record) at ``level`` from the evidence ``ev`` (:func:`pair_statistics` of the pair as the
    prior sees it, after the intensity fit ``fit``, if any).

    The prior's weight 1 - alpha = (1 - ALPHA_MIN) x trust, trust = ramp(spread / MI(Q)) x ramp(KL / MI(Q)):
    both the training pairs' spread and the pair's own KL to the prior are measured in units of the
    prior's mutual information, the information it holds about the intensity relation. A prior whose
    training pairs disagree (the relation depends on anatomy or field of view) or that does not
    describe this pair (another modality pair, swapped, another anatomy, another scanner) gets
    no weight. Nor does a prior without a measured spread (one pair, or a prior file written before it
    was stored): nothing shows that its relation holds beyond its own pair, and one-pair priors from other
    subjects or slices, given alpha 0.7, were as often worse than no prior as better (benchmarks/README.md,
    "A prior never worse than no prior?"). An explicit alpha still uses such a prior.
    """
    info = max(float(ev["prior_mi"]), 1e-6)
    spread = training_spread(prior, level)
    regional = getattr(prior, "n_regions", 1) > 1 and "kl_fixed" in ev
    # A regional prior says *where* each intensity pair belongs: at the start its pair is far from it
    # wherever a structure has to travel, which is what the prior is there to correct, so the joint KL
    # would reject it exactly when it is needed (the circle phantom: KL 0.6-2 x MI(Q) at every layout,
    # alpha 1). Its fit is judged on what no warp changes: the fixed image against the prior's fixed
    # side (the frame and the reference modality it was learned on).
    fit_ratio = float(ev["kl_fixed" if regional else "kl"]) / info
    trust_fit = _ramp(fit_ratio, *FIT_RANGE)
    # The intensity fit absorbs a calibration difference; where the pair, on the prior's own intensity scale, lies
    # further from it than the information the prior holds, the four fitted numbers did the matching, and a small KL
    # after them no longer shows that the relation transfers (benchmarks/README.md, "The prior's intensity scale").
    # (Not for a regional prior, whose joint KL is far at the start by design, nor without a fit: then it is the KL.)
    before_ratio = None if regional or fit is None else float(fit["kl_before"]) / info
    trust_calibration = 1.0 if before_ratio is None else _ramp(before_ratio, *CALIBRATION_RANGE)
    trust_spread = 0.0 if spread is None else _ramp(spread / info, *SPREAD_RANGE)
    alpha = 1.0 - (1.0 - ALPHA_MIN) * trust_spread * trust_fit * trust_calibration
    alpha = round(alpha, 3)
    rec = dict(level=level, alpha=alpha, n_pairs=int(prior.n_pairs), kl=float(ev["kl"]),
               kl_before_fit=float(ev["kl"]) if fit is None else float(fit["kl_before"]),
               prior_mi=float(ev["prior_mi"]), pair_mi=float(ev["mi"]), spread=spread,
               fit_ratio=fit_ratio, spread_ratio=None if spread is None else spread / info, before_fit_ratio=before_ratio,
               trust=trust_spread * trust_fit * trust_calibration)
    if regional:
        rec["fit"] = "fixed image against the prior's fixed side (regional prior)"
    rec["reason"] = _reason(prior, alpha, info, spread, fit_ratio, before_ratio)
    return alpha, rec


def _reason(prior, alpha: float, info: float, spread, fit_ratio: float, before_ratio) -> str:
    """:func:`choose_alpha`'s reason in words: the first test the prior failed, or the weight it got and why."""
    if spread is not None and spread / info >= SPREAD_RANGE[1]:  # first: then it says little about any pair, even
        # one of its own training pairs (which is close to it and still got no weight: the pair was not the cause)
        return f"the prior's training pairs disagree (spread {spread / info:.2f} x its MI): mutual information alone"
    elif fit_ratio >= FIT_RANGE[1]:
        return f"the prior does not describe this pair (KL {fit_ratio:.2f} x its MI): mutual information alone"
    elif before_ratio is not None and before_ratio >= CALIBRATION_RANGE[1]:
        return (f"the pair is far from the prior on the prior's intensity scale (KL {before_ratio:.2f} x its MI before "
                "the intensity fit): the fit, not a shared relation, brought it close: mutual information alone")
    elif spread is None and prior.n_pairs < 2:
        return ("one training pair, so nothing shows that the prior holds for other pairs: mutual information alone "
                "(train it on two or more pairs, or give alpha, e.g. 0.7, to use it anyway)")
    elif spread is None:
        return ("the prior file holds no spread of its training pairs (written before it was stored): mutual "
                "information alone (train it again to let alpha auto weigh it)")
    else:
        before = "" if before_ratio is None else f", {before_ratio:.2f} before the intensity fit"
        return (f"prior weight {1 - alpha:.2f} (in units of the prior's MI: this pair's KL to it {fit_ratio:.2f}{before}, "
                f"its training pairs' spread {spread / info:.2f})")
