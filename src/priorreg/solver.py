"""Semi-implicit gradient flow for one pyramid level (docs/method.md §5.2-5.6).

    (I + tau*A) u_new = u - tau*F(u),   A = lambda*L (+ bending*L^2)

solved by DCT (unconditionally stable in lambda), with step normalisation,
backtracking on the total energy J and the stopping rules of §5.6. The data
terms are opaque: anything with ``evaluate(u, with_force)`` works.
"""
from __future__ import annotations

import math
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
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing),
            "iterations": self.iterations,
            "rejected_steps": self.rejected,
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "energy": self.energy,
            "terms": self.terms,
            **({"coarse_displacement": self.coarse_displacement} if hasattr(self, "coarse_displacement") else {}),
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
    """Sum of the data terms' forces at u (a term may offer ``force(u)`` to reuse its last value)."""
    force = None
    for term in data_terms:
        f = term.force(u) if hasattr(term, "force") else term.evaluate(u, True)[2]
        if f is not None:
            force = f if force is None else force + f
    return force


def gradient_flow(data_terms, reg, u: torch.Tensor, opts, level: int, spacing, callback=None):
    """Minimise J = sum(data terms) + reg on one level, starting from ``u``.

    Returns (u, LevelHistory). ``callback(level, iteration, J)`` is called after
    every accepted step (progress bars).
    """
    import time

    t0 = time.perf_counter()
    shape = tuple(u.shape[1:])
    hist = LevelHistory(level, shape, tuple(spacing))
    spectrum = reg.spectrum(shape, u.dtype, u.device)
    basis = regularizer.DCTBasis(shape, u.dtype, u.device)
    values, J, F, scale = _total(data_terms, reg, u, True)
    scales = [scale]
    if not math.isfinite(J):
        raise PriorRegError(f"register(): the energy is not finite at {level_label(level, opts.levels)}, iteration 0 (J={J})")
    hist.energy.append(J)
    hist.terms.append(values)
    fmax = _max_voxel_norm(F, spacing)
    if fmax == 0:
        hist.iterations, hist.stop_reason = 0, "zero force"
        hist.seconds = time.perf_counter() - t0
        return u, hist

    def update(tau):
        u_new, U = basis.solve(u - tau * F, tau, spectrum)
        return u_new, _max_voxel_norm(u_new - u, spacing), U

    # Steps are measured on the update itself, not on tau*F: a stiff regulariser (bending)
    # shrinks tau*F a lot, and a cap on tau*F alone would crawl. Start where the first
    # update moves about step_voxels.
    tau = opts.step_voxels / fmax
    for _ in range(30):
        if update(tau)[1] >= 0.5 * opts.step_voxels:
            break
        tau *= 2.0
    it = 0
    reason = "max_iterations"
    while it < opts.max_iterations:
        if F is None:
            F = _force(data_terms, u)
        if _max_voxel_norm(F, spacing) == 0:
            reason = "zero force"
            break
        accepted = False
        for _ in range(MAX_TRIES):  # each try shrinks tau by a quarter at least
            u_new, delta, U_new = update(tau)
            if not math.isfinite(delta):
                raise PriorRegError(f"register(): the force became non-finite at {level_label(level, opts.levels)}, iteration {it + 1}; "
                                    "check that the images overlap and hold finite values")
            if delta > opts.max_step_voxels:
                tau *= 0.5 * opts.max_step_voxels / delta + 0.25
                continue
            if delta < opts.min_step_voxels:
                break
            # Trial steps need the energy only; the force is computed once a step is accepted.
            v_new, J_new, _, scale_new = _total(data_terms, reg, u_new, False, reg.values_from_dct(U_new, basis))
            if not math.isfinite(J_new):
                raise PriorRegError(
                    f"register(): the energy became non-finite at {level_label(level, opts.levels)}, iteration {it + 1} (J={J_new})"
                )
            # Accept only a decrease larger than rounding noise: a step whose change of J is
            # at the level of summation-order noise would otherwise be accepted on one
            # device and rejected on another, and the two runs would part ways.
            if J_new <= J - _NOISE * max(abs(J), 1.0):
                accepted = True
                break
            hist.rejected += 1
            tau *= 0.5
        if not accepted:
            reason = "step below min_step_voxels"
            break
        it += 1
        u, J, F, values = u_new, J_new, None, v_new
        scales.append(scale_new)
        hist.energy.append(J)
        hist.terms.append(values)
        tau *= 1.25
        if callback is not None:
            callback(level, it, J)
        m = opts.tolerance_window
        if len(hist.energy) > m:
            J_old = hist.energy[-1 - m]
            if J_old - J <= opts.tolerance * scales[-1 - m]:
                reason = "energy change below tolerance"
                break
    hist.iterations = it
    hist.stop_reason = reason
    hist.seconds = time.perf_counter() - t0
    return u, hist
