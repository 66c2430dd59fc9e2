"""Parzen-window joint histograms (docs/method.md §2.2-2.4) and their adjoint (§4.1).

Everything works on flat tensors of continuous bin coordinates, so it is the
same code for 2D and 3D, CPU and CUDA. No (voxels x bins) weight table is ever
built: samples are scattered into a B x B table, which is then smoothed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


def smoothing_matrix(bins: int, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The B x B Gaussian smoother S, half-sample symmetric at both ends.

    ``S @ h`` equals ``scipy.ndimage.gaussian_filter1d(h, sigma, mode='reflect',
    truncate=4)``. The folding repeats the edge bin (d c b a | a b c d), which
    makes S symmetric and doubly stochastic, so smoothing preserves mass and is
    its own adjoint (docs/method.md §2.4, §11). ``sigma = 0`` gives the identity.
    """
    if sigma <= 0:
        return torch.eye(bins, dtype=dtype, device=device)
    radius = int(4.0 * sigma + 0.5)
    offs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (offs / sigma) ** 2)
    g = g / g.sum()
    S = torch.zeros(bins, bins, dtype=torch.float64)
    for k in range(bins):
        for j, w in zip(range(k - radius, k + radius + 1), g.tolist()):
            # Half-sample symmetric reflection of index j into [0, B-1].
            period = 2 * bins
            jj = j % period
            if jj >= bins:
                jj = period - 1 - jj
            S[k, jj] += w
    return S.to(dtype=dtype, device=device)


def bin_coordinates(values: torch.Tensor, lo: float, hi: float, bins: int):
    """Continuous bin coordinates ``clip(beta*(v-lo), 0, B-1)`` and the in-range flag.

    Returns ``(t, inside, beta)`` with ``beta = (B-1)/(hi-lo)`` bins per intensity unit.
    Values outside [lo, hi] are clipped and get zero derivative (``inside`` False).
    """
    beta = (bins - 1) / (hi - lo)
    raw = (values - lo) * beta
    inside = (raw >= 0) & (raw <= bins - 1)
    return raw.clamp(0, bins - 1), inside, beta


def _corners(t: torch.Tensor, bins: int):
    # Lower bin index and fractional part; t == B-1 falls in the last cell with frac 1.
    k0 = torch.floor(t).clamp(max=bins - 2).long()
    return k0, t - k0.to(t.dtype)


@dataclass
class FirstAxis:
    """The first image's share of the linear binning of its samples: what stays the same while the
    second image moves (the registration's fixed image, over a whole pyramid level)."""

    rows: torch.Tensor  # flat index of each sample's lower bin row in one B x B table: k0 * B
    index: torch.Tensor  # the same in its region's table: rows + region * B^2 (rows itself without regions)
    frac: torch.Tensor  # fractional bin coordinate a - k0
    lower: torch.Tensor  # sample weight * (1 - frac): the share of row k0
    upper: torch.Tensor  # sample weight * frac: the share of row k0 + 1


def first_axis(a, bins: int, weights: torch.Tensor | None = None, region=None) -> FirstAxis:
    """:class:`FirstAxis` of flat bin coordinates ``a`` (optional per-sample ``weights``, region ids).

    ``a`` may itself be a FirstAxis (its regions kept): ``weights`` then multiply its own (the linear
    stage bins its fixed samples once and weights them by their overlap at every evaluation)."""
    if isinstance(a, FirstAxis):
        if region is not None:
            raise ValueError("first_axis(): a FirstAxis holds its regions; bin the coordinates with region= instead")
        return a if weights is None else dataclasses.replace(a, lower=weights * a.lower, upper=weights * a.upper)
    k0, fa = _corners(a, bins)
    rows = k0 * bins
    rest = 1 - fa
    return FirstAxis(rows, rows if region is None else rows + region * (bins * bins), fa,
                     rest if weights is None else weights * rest, fa if weights is None else weights * fa)


def joint_histogram(a, b: torch.Tensor, bins: int, weights: torch.Tensor | None = None):
    """Linear (partial-volume) joint histogram H (B x B), normalised to sum 1.

    ``a``, ``b`` are flat bin coordinates in [0, B-1]; ``weights`` optional per-sample mask weights.
    H_kl = (1/N) sum_x m_x e_k(a_x) e_l(b_x), N = sum m.
    """
    H = joint_counts(a, b, bins, weights)[0]
    n = H.sum() if weights is None else weights.sum()
    return H / n


def joint_counts(a, b: torch.Tensor, bins: int, weights: torch.Tensor | None = None, region=None, n_regions: int = 1):
    """Unnormalised linear joint histograms, one B x B table per region: (R, B, B).

    ``a``: the first axis's bin coordinates, or their :class:`FirstAxis` (which then holds the
    regions; ``weights``, if given, multiply its own). ``region`` (flat long tensor, one region
    id per sample) scatters each sample into its region's table; ``None`` puts every sample in
    one table (R = 1). One ``index_add_`` per bilinear corner, whatever R.
    """
    f = first_axis(a, bins, weights, region)
    l0, fb = _corners(b, bins)
    idx = f.index + l0
    gb = 1 - fb
    H = torch.zeros(n_regions * bins * bins, dtype=fb.dtype, device=fb.device)
    H.index_add_(0, idx, f.lower * gb)
    H.index_add_(0, idx + 1, f.lower * fb)
    H.index_add_(0, idx + bins, f.upper * gb)
    H.index_add_(0, idx + bins + 1, f.upper * fb)
    return H.reshape(n_regions, bins, bins)


def smooth(H: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """P = S H S^T (S symmetric, so this is also the adjoint C = S Phi S)."""
    return S @ H @ S.T


def d2_bilinear(C: torch.Tensor, a, b: torch.Tensor, region=None) -> torch.Tensor:
    """Derivative along the second axis of the bilinear interpolant of C at (a, b).

    This is the exact derivative of the linear-binning histogram energy with
    respect to the second bin coordinate (docs/method.md §4.1). ``C`` is one B x B
    table, read by every sample, or (R > 1, B, B) tables, read at each sample's region:
    ``region``, or the regions ``a`` holds when it is a :class:`FirstAxis` (else the
    first axis's bin coordinates).
    """
    bins = C.shape[-1]
    f = first_axis(a, bins, region=region)
    l0, _ = _corners(b, bins)
    Cf = C.reshape(-1)
    i = (f.index if Cf.numel() > bins * bins else f.rows) + l0
    return (1 - f.frac) * (Cf[i + 1] - Cf[i]) + f.frac * (Cf[i + bins + 1] - Cf[i + bins])


def region_index(shape, regions, device=None) -> torch.Tensor:
    """Flat region id of every voxel of a grid cut into ``regions[k]`` equal blocks along axis k.

    Blocks are placed by relative position ((i + 0.5) / n along each axis), so the same
    region is the same part of the field of view at every pyramid level and on grids of
    another size.
    """
    ids = None
    for n, r in zip(shape, regions):
        k = torch.floor((torch.arange(n, dtype=torch.float64, device=device) + 0.5) * r / n).long().clamp(max=r - 1)
        ids = k if ids is None else (ids[..., None] * r + k)
    return ids.reshape(-1)


def entropy_terms(P: torch.Tensor, eps: float):
    """Floored joint and marginal tables (P~, P~1, P~2) of docs/method.md §2.4."""
    Pt = P + eps
    return Pt, Pt.sum(1), Pt.sum(0)


def parzen_joint_histogram(x, y: torch.Tensor, ranges, S: torch.Tensor, weights: torch.Tensor | None = None):
    """The Parzen joint table P = S H S^T of flat samples ``x`` (first axis) and ``y`` (second):
    bin coordinates on ``ranges`` ((lo1, hi1), (lo2, hi2)), linear binning (optional per-sample
    ``weights``), smoothing by ``S = smoothing_matrix(bins, parzen_sigma)``; sums to 1
    (docs/method.md §2.2-2.4). ``x`` may be given binned, as its :class:`FirstAxis` (without
    weights). The registration's energy builds the same table from the same functions (with its
    fixed image's binning kept per level, and per-region tables).
    """
    bins = S.shape[0]
    (lo1, hi1), (lo2, hi2) = ranges
    a = x if isinstance(x, FirstAxis) else bin_coordinates(x, lo1, hi1, bins)[0]
    b, _, _ = bin_coordinates(y, lo2, hi2, bins)
    return smooth(joint_histogram(a, b, bins, weights), S)


# MI, KL and cross-entropy of joint tables: the only place they are written. Each takes one
# table (B, B) or a stack (..., B, B) and sums over the last two axes; ``eps`` floors P first
# (P~ = P + eps, docs/method.md §2.4); 0 = P is already floored (no zero cell: ln 0).
def _floored(P: torch.Tensor, eps: float) -> torch.Tensor:
    return P + eps if eps else P


def mutual_information(P: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """MI in nats: sum P~ ln(P~ / (P~1 P~2)), with P~1, P~2 the marginals of P~ itself."""
    Pt = _floored(P, eps)
    P1 = Pt.sum(-1, keepdim=True)
    P2 = Pt.sum(-2, keepdim=True)
    return (Pt * (torch.log(Pt) - torch.log(P1) - torch.log(P2))).sum((-2, -1))


def sample_mi(x: torch.Tensor, y: torch.Tensor, ranges, S: torch.Tensor, eps: float = 1e-12) -> float:
    """MI (nats) of paired flat samples ``x``, ``y`` through the one Parzen joint table (the checks' measure:
    a mirrored moving image, a training pair shifted)."""
    return float(mutual_information(parzen_joint_histogram(x, y, ranges, S), eps))


def kl_divergence(P: torch.Tensor, logQ: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """KL(P~ || Q~) in nats, Q~ (floored, see :func:`floor_prior`) given as its log."""
    Pt = _floored(P, eps)
    return (Pt * (torch.log(Pt) - logQ)).sum((-2, -1))


def cross_entropy(P: torch.Tensor, logQ: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """-sum P~ ln Q~ in nats (= KL(P~ || Q~) + H(P~)), Q~ given as its log."""
    return -(_floored(P, eps) * logQ).sum((-2, -1))


def floor_prior(Q, eta: float):
    """Q~ = (Q + eta)/(1 + B^2 eta): floor then renormalise (docs/method.md §3), each table of a stack
    (..., B, B) on its own; a tensor or a numpy array."""
    return (Q + eta) / (1.0 + Q.shape[-2] * Q.shape[-1] * eta)
