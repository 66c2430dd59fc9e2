"""Semi-implicit gradient flow for one pyramid level (docs/method.md §5.2-5.6).

    (I + tau*A) u_new = u - tau*F(u),   A = lambda*L (+ bending*L^2)

solved by DCT (unconditionally stable in lambda), with step normalisation,
backtracking on the total energy J and the stopping rules of §5.6. The data
terms are opaque: anything with ``evaluate(u, with_force)`` works.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from . import regularizer
from .pyramid import level_label
from .errors import PriorRegError


@dataclass
class LevelHistory:
    level: int
    shape: tuple
    spacing: tuple
    energy: list = field(default_factory=list)  # J after each accepted iteration (index 0 = start)
    terms: list = field(default_factory=list)  # dict of term values per accepted iteration
    iterations: int = 0
    rejected: int = 0
    stop_reason: str = ""
    seconds: float = 0.0  # the iterations' (gradient_flow's)
    setup_seconds: float = 0.0  # set by the pyramid: the level's set-up before them (descriptors, intensity fit, alpha)
    coarse_displacement: dict | None = None  # set by the pyramid: how far the coarser levels moved the pair
    prior_weight: dict | None = None  # set by the pyramid with alpha auto: the level's alpha and its evidence
    regulariser: dict | None = None  # set by the pyramid: the level's membrane and bending weights, as used

    def bending_mm2(self) -> float:
        """The bending weight the level used (nan where no regulariser was recorded)."""
        return float("nan") if self.regulariser is None else self.regulariser["bending_mm2"]

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing),
            "iterations": self.iterations,
            "rejected_steps": self.rejected,
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "energy": self.energy,
            "terms": self.terms,
            **({"coarse_displacement": self.coarse_displacement} if self.coarse_displacement is not None else {}),
            **({"regulariser": self.regulariser} if self.regulariser is not None else {}),
        }


_NOISE = 1e-12
MAX_TRIES = 200  # step sizes tried for one step before it counts as below min_step_voxels


def _max_voxel_norm(F: torch.Tensor, spacing) -> float:
    d = F.shape[0]
    h = torch.as_tensor(spacing, dtype=F.dtype, device=F.device).reshape(d, *([1] * d))
    return float((F / h).square_().sum(0).max().sqrt())  # the root of the max (the same value): one root, not one per voxel


def _total(data_terms, reg, u, with_force, reg_values=None):
    """(term values, J, force, scale): scale = sum of |each data term's J| + the regulariser,
    the size of J that the stopping rule measures a decrease against (J itself can sit near 0
    when terms of opposite sign, e.g. -MI and a descriptor SSD, cancel)."""
    values, total, force, scale = {}, 0.0, None, 0.0
    for term in data_terms:
        v, t, f = term.evaluate(u, with_force)
        values.update(v)
        total += t
        scale += abs(t)
        if f is not None:
            force = f if force is None else force + f
    r = reg.values(u) if reg_values is None else reg_values
    values.update(r)
    total += reg.total(r)
    scale += abs(reg.total(r))
    return values, total, force, scale


def _force(data_terms, u):
    """Sum of the data terms' forces at u (``force(u)`` reuses a term's last evaluation at u)."""
    force = None
    for term in data_terms:
        f = term.force(u)
        if f is not None:
            force = f if force is None else force + f
    return force


class _Update:
    """One semi-implicit step: u - tau*F smoothed by the regulariser's DCT solve, with how far (voxels,
    the largest over the grid) it moves u.

    The solve is linear, so the DCTs of u and F are taken once per (u, F) and each step size tried costs
    one inverse DCT; an accepted step's coefficients are the next u's, so an iteration costs one forward
    DCT (of the new force) where it cost one per step size tried (the values agree to rounding)."""

    def __init__(self, reg, u: torch.Tensor, spacing):
        shape = tuple(u.shape[1:])
        self.spectrum = reg.spectrum(shape, u.dtype, u.device)
        self.basis = regularizer.DCTBasis(shape, u.dtype, u.device)
        self.spacing = spacing
        self._u = self._F = None  # the fields whose coefficients are held: (tensor, coefficients)
        self._last = None  # (u_new, its coefficients) of the last step tried

    def _coefficients(self, held, x):
        if held is not None and held[0] is x:
            return held
        if self._last is not None and self._last[0] is x:
            return self._last
        return x, self.basis.forward(x)

    def __call__(self, u, F, tau):
        self._u, self._F = self._coefficients(self._u, u), self._coefficients(self._F, F)
        u_new, U = self.basis.solve_coefficients(self._u[1] - tau * self._F[1], tau, self.spectrum)
        self._last = (u_new, U)
        return u_new, _max_voxel_norm(u_new - u, self.spacing), U

    def accept(self):
        """The step last tried is taken: its coefficients are the new u's; the old u's and the force's are
        let go before the next force is computed (at 1 mm each is a 44 MB field)."""
        self._u, self._F, self._last = self._last, None, None


MAX_JUMP = 1e3  # the first step size grows by at most this factor per try ...
MAX_GROWTH = 2.0**30  # ... and by at most this factor in all (what 30 doublings reached before)
MIN_POWER = 0.2  # a move growing more slowly with tau than tau^MIN_POWER has stopped growing: the search ends


def _first_tau(update: _Update, u, F, fmax: float, opts) -> float:
    """The first step size: one whose update moves at least half of ``step_voxels`` (and less than about
    ``step_voxels`` while the move grows with tau). Steps are measured on the update itself, not on tau*F:
    a stiff regulariser (bending) shrinks tau*F a lot, and a cap on tau*F alone would crawl. Each try
    scales tau by how far the last one fell short, through the power of tau the move grew with over the
    last two tries: at 1 mm that took 2-3 tries where doubling took 7, each a full-resolution DCT solve.
    Where the move has stopped growing (a force the regulariser smooths away: zero mean under stiff
    bending, the move bounded by the regulariser's inverse whatever tau), the search ends instead of extrapolating (a review found 27 x ``step_voxels`` of amplified rounding noise)."""
    tau0 = tau = opts.step_voxels / fmax
    last = None
    for _ in range(30):
        delta = update(u, F, tau)[1]
        if delta >= 0.5 * opts.step_voxels:
            break
        power = 1.0  # the move ~ tau^power, from the last two tries (1 until there are two)
        if last is not None:
            power = math.log(max(delta, 1e-300) / max(last[1], 1e-300)) / math.log(tau / last[0])
            if power < MIN_POWER:
                break
        last = (tau, delta)
        grow = min(MAX_JUMP, max(2.0, (0.75 * opts.step_voxels / max(delta, 1e-30)) ** (1.0 / min(power, 1.0))))
        if tau * grow > MAX_GROWTH * tau0:
            break
        tau *= grow
    return tau


def _not_finite(what: str, level: int, opts, iteration: int, detail: str = "") -> PriorRegError:
    return PriorRegError(f"register(): the {what} at {level_label(level, opts.levels)}, iteration {iteration}{detail}")


def _line_search(update: _Update, data_terms, reg, u, F, J: float, tau: float, opts, hist, where):
    """Backtrack from ``tau`` to the first step that lowers J by more than rounding noise.

    Returns (step, tau): step = (u_new, J_new, term values, scale) or None when the steps fell below
    ``min_step_voxels``. Trial steps need the energy only; the force is computed once a step is accepted.
    """
    level, iteration = where
    for _ in range(MAX_TRIES):  # each try shrinks tau by a quarter at least
        u_new, delta, U_new = update(u, F, tau)
        if not math.isfinite(delta):
            raise _not_finite("force became non-finite", level, opts, iteration,
                              "; check that the images overlap and hold finite values")
        if delta > opts.max_step_voxels:
            tau *= 0.5 * opts.max_step_voxels / delta + 0.25
            continue
        if delta < opts.min_step_voxels:
            return None, tau
        values, J_new, _, scale = _total(data_terms, reg, u_new, False, reg.values_from_dct(U_new, update.basis))
        if not math.isfinite(J_new):
            raise _not_finite("energy became non-finite", level, opts, iteration, f" (J={J_new})")
        # A change of J at the level of summation-order noise would be accepted on one device and
        # rejected on another, and the two runs would part ways.
        if J_new <= J - _NOISE * max(abs(J), 1.0):
            return (u_new, J_new, values, scale), tau
        hist.rejected += 1
        tau *= 0.5
    return None, tau


def _settled(hist: LevelHistory, scales: list, opts) -> bool:
    """J fell by no more than ``tolerance`` (relative to the terms' size) over the last ``tolerance_window`` steps."""
    m = opts.tolerance_window
    return len(hist.energy) > m and hist.energy[-1 - m] - hist.energy[-1] <= opts.tolerance * scales[-1 - m]


def gradient_flow(data_terms, reg, u: torch.Tensor, opts, level: int, spacing, callback=None):
    """Minimise J = sum(data terms) + reg on one level, starting from ``u``.

    Returns (u, LevelHistory). ``callback(level, iteration, J)`` is called once at the start
    (iteration 0, the starting energy) and after every accepted step (progress bars).
    """
    t0 = time.perf_counter()
    hist = LevelHistory(level, tuple(u.shape[1:]), tuple(spacing))
    update = _Update(reg, u, spacing)
    values, J, F, scale = _total(data_terms, reg, u, True)
    if not math.isfinite(J):
        raise _not_finite("energy is not finite", level, opts, 0, f" (J={J})")
    hist.energy.append(J)
    hist.terms.append(values)
    if callback is not None:
        callback(level, 0, J)
    fmax = _max_voxel_norm(F, spacing)
    if fmax == 0:
        return u, _closed(hist, 0, "zero force", t0)
    scales, it, reason = [scale], 0, "max_iterations"
    tau = _first_tau(update, u, F, fmax, opts)
    while it < opts.max_iterations:
        if F is None:
            F = _force(data_terms, u)
        if _max_voxel_norm(F, spacing) == 0:
            reason = "zero force"
            break
        step, tau = _line_search(update, data_terms, reg, u, F, J, tau, opts, hist, (level, it + 1))
        if step is None:
            reason = "step below min_step_voxels"
            break
        it += 1
        (u, J, values, scale), F = step, None
        update.accept()
        scales.append(scale)
        hist.energy.append(J)
        hist.terms.append(values)
        tau *= 1.25
        if callback is not None:
            callback(level, it, J)
        if _settled(hist, scales, opts):
            reason = "energy change below tolerance"
            break
    return u, _closed(hist, it, reason, t0)


def _closed(hist: LevelHistory, iterations: int, reason: str, t0: float) -> LevelHistory:
    hist.iterations, hist.stop_reason, hist.seconds = iterations, reason, time.perf_counter() - t0
    return hist
