"""Data terms. The solver sees only *data terms* (value and force of u) and one
quadratic *regulariser* (:mod:`priorreg.regularizer`, solved semi-implicitly); it does
not care which terms.

Histogram terms (``-MI``, ``KL``) share one joint histogram per evaluation: each
returns its value and its comparison function Phi = dE/dP (docs/method.md §4.2); the
weighted Phi's are summed, smoothed once (C = S Phi S) and turned into one
per-voxel force (§4.1, §4.3). Regional MI is one more histogram term here (one table per
region); MIND-SSC (:mod:`priorreg.mind`) is another data term beside them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import histogram as hist
from . import spatial


@dataclass
class Tables:
    """What the histogram terms read: the floored global table and its marginals, and the
    floored per-region tables with the regions' sample fractions (R = 1: ``Prt = Pt[None]``).
    """

    Pt: torch.Tensor  # (B, B)
    P1: torch.Tensor  # (B,)
    P2: torch.Tensor  # (B,)
    Prt: torch.Tensor  # (R, B, B), each region's own normalised table, floored
    pi: torch.Tensor  # (R,), fraction of the samples in each region


class NegMutualInformation:
    """I_MI = -MI(P~) in nats, on the global joint table."""

    name = "-MI"
    regional = False

    def value(self, T: Tables):
        return -hist.mutual_information(T.Pt)

    def phi(self, T: Tables):
        # d(-MI)/dP_kl = -ln P~ + ln P~1 + ln P~2 + 1; terms constant along l drop out (§4.2).
        return -torch.log(T.Pt) + torch.log(T.P2)[None, :]


class RegionalNegMutualInformation:
    """I_rMI = -sum_r pi_r MI(P~_r): mutual information block by block of the fixed grid.

    A local similarity: each block has its own intensity mapping, so a bias field or an
    intensity relation that changes across the field of view (which flattens one global
    joint histogram) still gives sharp per-block histograms. Block layout = the energy's
    ``regions``.
    """

    name = "-rMI"
    regional = True
    n_regions = None  # takes the energy's layout

    def value(self, T: Tables):
        return -(T.pi * hist.mutual_information(T.Prt)).sum()

    def phi(self, T: Tables):
        return -torch.log(T.Prt) + torch.log(T.Prt.sum(1, keepdim=True))


class _PriorTerm:
    """A learned prior: one B x B table (a global prior, the paper's) or (R, B, B) tables,
    one per region of the fixed image's field of view (a regional prior: it knows *where*
    each intensity pair occurs, not only how often), compared region by region:
    sum_r pi_r E(P~_r, Q~_r). A global prior reads the global table, whatever layout the
    energy's other (local) terms use.
    """

    def __init__(self, Q_floored: torch.Tensor):
        Q = Q_floored if Q_floored.dim() == 3 else Q_floored[None]
        self.logQ = torch.log(Q)

    @property
    def n_regions(self) -> int:
        return self.logQ.shape[0]

    @property
    def regional(self) -> bool:
        return self.n_regions > 1

    def _tables(self, T: Tables):
        """(observed tables (R, B, B), their weights (R,)) this prior compares against."""
        if self.regional:
            return T.Prt, T.pi
        return T.Pt[None], torch.ones(1, dtype=T.Pt.dtype, device=T.Pt.device)

    def _phi(self, table_grad: torch.Tensor) -> torch.Tensor:
        return table_grad if self.regional else table_grad[0]


class PriorKL(_PriorTerm):
    """I_KL = sum_r pi_r KL(P~_r || Q~_r) in nats against learned, floored prior tables."""

    name = "KL"

    def value(self, T: Tables):
        P, w = self._tables(T)
        return (w * hist.kl_divergence(P, self.logQ)).sum()

    def phi(self, T: Tables):
        return self._phi(torch.log(self._tables(T)[0]) - self.logQ)


class PriorCrossEntropy(_PriorTerm):
    """I_CE = -sum_r pi_r sum P~_r ln Q~_r: the mean negative log-likelihood of the joint
    samples under the learned prior (nats). KL = CE - H(P~): KL also *rewards* a broader
    joint histogram (its -H term), which works against MI's sharpening whenever the
    training pairs' noise and bias differ from the test pair's; CE has no such term.
    """

    name = "CE"

    def value(self, T: Tables):
        P, w = self._tables(T)
        return (w * hist.cross_entropy(P, self.logQ)).sum()

    def phi(self, T: Tables):
        return self._phi(-self.logQ.expand_as(self._tables(T)[0]))


class PriorConditionalKL(PriorKL):
    """I_cKL = sum_r pi_r sum_m P~_r(m) KL(P~_r(. | m) || Q~_r(. | m)) in nats: the prior's KL
    without its moving-marginal part.

    KL(P || Q) = KL(P_m || Q_m) + sum_m P(m) KL(P(f | m) || Q(f | m)), with P_m the moving
    image's intensity distribution. The first part asks the warp to reproduce the training
    moving images' proportions of intensities, which a warp can only do by growing or
    shrinking regions, and which a test image from another scanner (another response curve,
    blur or count level) or another field of view does not share: the prior then pulls the
    warp off the anatomy. The conditional part asks only that each moving intensity lands on
    the fixed intensities it sat on in training. Two priors with the same conditionals
    q(f | m) and other proportions of moving intensities give the same value and table
    gradient (a test checks this). What it gives up: at alpha = 0 nothing ties the warped
    image's proportions to the training pairs' (the circle phantom's "area" cue).
    """

    name = "cKL"

    def __init__(self, Q_floored: torch.Tensor):
        super().__init__(Q_floored)
        self.logQm = torch.log(torch.exp(self.logQ).sum(1, keepdim=True))  # (R, 1, B): moving marginal

    def _moving_marginal(self, T: Tables):
        return self._tables(T)[0].sum(1, keepdim=True)  # (R, 1, B)

    def value(self, T: Tables):
        Pm, w = self._moving_marginal(T), self._tables(T)[1]
        return super().value(T) - (w * hist.kl_divergence(Pm, self.logQm)).sum()

    def phi(self, T: Tables):
        # d/dP_kl of the marginal part: ln Pm_l - ln Qm_l + 1 (the +1 cancels against KL's)
        return super().phi(T) - self._phi(torch.log(self._moving_marginal(T)) - self.logQm)


PRIOR_TERMS = {"kl": PriorKL, "ce": PriorCrossEntropy, "ckl": PriorConditionalKL}


@dataclass
class HistogramSpec:
    """Binning of both modalities: B bins, Parzen sigma (bins), ranges [lo, hi] per modality."""

    bins: int
    parzen_sigma: float
    ranges: tuple  # ((lo1, hi1), (lo2, hi2))
    eps: float = 1e-10


class JointHistogramEnergy:
    """Data term sum_t w_t E_t(P_u) over histogram terms, with its exact force.

    Parameters
    ----------
    fixed, moving : tensors of shape (*S), normalised intensities on one grid.
    spacing : voxel size in mm per axis.
    terms : list of (weight, term) pairs; zero weights are dropped.
    mask : optional (*S) tensor of 0/1 sample weights on the fixed grid.
    force : "exact" or "practical" (see RegistrationOptions).
    regions : blocks per axis of the fixed grid for regional terms (a regional prior's
        ``regions``); None or all ones = one global table.
    """

    def __init__(
        self, fixed, moving, spacing, spec: HistogramSpec, terms, mask=None, force="practical", regions=None, points=None
    ):
        self.spacing = tuple(float(s) for s in spacing)
        self.spec = spec
        self.terms = [(float(w), t) for w, t in terms if w != 0]
        self.all_terms = [(float(w), t) for w, t in terms]
        self.moving = moving
        self.force_mode = force
        self.shape = tuple(fixed.shape)
        # Every voxel is a sample (points None), or the flat indices in ``points`` are.
        self.samples = spatial.Samples(fixed.shape, self.spacing, points, fixed.dtype, fixed.device)
        B = spec.bins
        (lo1, hi1), (lo2, hi2) = spec.ranges
        self.lo2, self.hi2 = lo2, hi2
        self.S = hist.smoothing_matrix(B, spec.parzen_sigma, torch.float64, fixed.device)
        n_grid = fixed.numel()
        n_points = self.samples.n
        self.weights, n_weight = self.samples.mask_weights(mask, fixed.dtype)
        self.weights64 = None if self.weights is None else self.weights.double()
        # Force convention: N_grid * dJ/du, while the histogram is normalised by its own
        # sample count (mask weights, a subset of the voxels).
        self.n_ratio = n_grid / n_weight
        self.n_regions = 1 if regions is None else math.prod(int(r) for r in regions)
        self.region = None
        if self.n_regions > 1:
            self.region = self.samples.at(hist.region_index(fixed.shape, regions, fixed.device))
        w64 = torch.ones(n_points, dtype=torch.float64, device=fixed.device) if mask is None else self.weights64
        if self.region is None:
            counts = w64.sum().reshape(1)
        else:
            counts = torch.zeros(self.n_regions, dtype=torch.float64, device=fixed.device).index_add_(0, self.region, w64)
        self.n_samples = counts.sum()
        self.pi = counts / self.n_samples
        self.region_norm = counts.clamp(min=1e-300)  # empty regions: zero tables, pi = 0
        a, _, _ = hist.bin_coordinates(self.samples.at(fixed.reshape(-1)).double(), lo1, hi1, B)
        self.a = hist.first_axis(a, B, self.weights64, self.region)  # the fixed samples' binning: once per level
        for _, t in self.all_terms:
            if getattr(t, "regional", False) and t.n_regions is not None and t.n_regions != self.n_regions:
                raise ValueError(f"term {t.name} has {t.n_regions} region table(s) but the energy has {self.n_regions} region(s)")
        self.moving_grad = spatial.gradient(moving, self.spacing)

    def table(self, w: torch.Tensor):
        """Smoothed joint tables of (fixed, w): (P global, Pr per region (R, B, B), bin coords of w...).

        ``w``: the warped moving intensities at the samples (every voxel, or ``points``).
        """
        B = self.spec.bins
        b, inside, beta = hist.bin_coordinates(w.reshape(-1), self.lo2, self.hi2, B)
        H = hist.joint_counts(self.a, b.double(), B, n_regions=self.n_regions)
        Hs = hist.smooth(H, self.S)
        P = Hs.sum(0) / self.n_samples
        Pr = P[None] if self.n_regions == 1 else Hs / self.region_norm[:, None, None]
        return P, Pr, b, inside, beta

    def _tables(self, P, Pr):
        eps = self.spec.eps
        Pt, P1, P2 = hist.entropy_terms(P, eps)
        Prt = Pt[None] if self.n_regions == 1 else Pr + eps
        return Tables(Pt, P1, P2, Prt, self.pi)

    def evaluate(self, u: torch.Tensor, with_force: bool = True):
        """Return (values per term name, weighted total, force (d, *S) or None).

        The force is N_grid * dJ_data/du (per-voxel convention of docs/method.md §4.3),
        with u a physical field in mm.
        """
        if with_force and self.force_mode == "exact":
            return self._evaluate_exact(u)
        values, total = self.value(u)
        return values, total, (self.force(u) if with_force else None)

    def _values(self, T: Tables):
        values = {t.name: float(t.value(T)) for _, t in self.all_terms}
        return values, sum(wt * values[t.name] for wt, t in self.terms)

    def value(self, u: torch.Tensor):
        """(values per term name, weighted total) at u; keeps what ``force(u)`` needs.

        The solver tries steps with ``value`` alone (one interpolation of the image)
        and asks for the force only at accepted steps.
        """
        coords = self.samples.coords(u)
        w = spatial.sample(self.moving, coords)
        P, Pr, b, inside, beta = self.table(w)
        T = self._tables(P, Pr)
        values, total = self._values(T)
        self._state = (u, coords, b, inside, beta, T)
        return values, total

    def _voxel_weights(self, b, inside, beta, T: Tables, dtype):
        """g(x) = dJ/dw(x) * N_grid: the per-voxel derivative of J w.r.t. the warped intensity.

        A global term's table gradient Phi is shared by all samples; a regional term's
        Phi_r is read by the samples of region r only (pi_r / n_r = 1 / n, so both enter
        with the same scale).
        """
        glob = [wt * t.phi(T) for wt, t in self.terms if not t.regional]
        reg = [wt * t.phi(T) for wt, t in self.terms if t.regional]
        if not glob and not reg:  # every weight zero
            return None
        C = 0.0
        if glob:
            C = hist.smooth(sum(glob), self.S)[None]
        if reg:
            C = C + hist.smooth(sum(reg), self.S)
        # no regional term left (a regional prior weighted 0 at this level): one table (1, B, B) for every sample
        s = hist.d2_bilinear(C, self.a, b).to(dtype)
        g = beta * s * inside.to(dtype)
        if self.weights is not None:
            g = g * self.weights
        if self.n_ratio != 1.0:
            g = g * self.n_ratio
        return g

    def force(self, u: torch.Tensor):
        """N_grid * dJ_data/du at u ("practical": the interpolated image gradient)."""
        if self.force_mode == "exact":
            return self._evaluate_exact(u)[2]
        if getattr(self, "_state", None) is None or self._state[0] is not u:
            self.value(u)
        _, coords, b, inside, beta, T = self._state
        g = self._voxel_weights(b, inside, beta, T, u.dtype)
        if g is None:
            return torch.zeros_like(u)
        dw = spatial.sample(self.moving_grad, coords)
        return self.samples.to_grid(dw.mul_(g.reshape(dw.shape[1:])[None])).detach()

    def _evaluate_exact(self, u):
        uu = u.detach().requires_grad_(True)
        coords = self.samples.coords(uu)
        w_graph = spatial.sample(self.moving, coords)
        P, Pr, b, inside, beta = self.table(w_graph.detach())
        T = self._tables(P, Pr)
        values, total = self._values(T)
        g = self._voxel_weights(b, inside, beta, T, u.dtype)
        if g is None:
            return values, total, torch.zeros_like(u)
        force = torch.autograd.grad(w_graph, uu, grad_outputs=g.reshape(w_graph.shape))[0]
        return values, total, force.detach()
