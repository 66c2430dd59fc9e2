"""The regulariser: the Tikhonov (membrane) and bending terms on physical fields, their
stencils, and the DCT in which both are diagonal, so the solver's semi-implicit step
(I + tau*A) u = rhs is one forward and one inverse transform (docs/method.md §2.5, §5.2).

Fields are tensors (d, *S) of physical displacements in mm (see :mod:`priorreg.spatial`);
the boundary is Neumann throughout. Written once for 2D and 3D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- stencils
def tikhonov(u: torch.Tensor, spacing) -> torch.Tensor:
    """R(u) = (1/N) * 1/2 * sum_x sum_c sum_k (D+_k u_c)^2, D+ forward differences / h_k.

    Differences are only taken where the neighbour exists (Neumann boundary),
    N = number of voxels, so R is a dimensionless mean (docs/method.md §2.5).
    """
    d = u.shape[0]
    n = u[0].numel()
    total = u.new_zeros(())
    for k in range(d):
        dk = torch.diff(u, dim=k + 1) / float(spacing[k])
        total = total + (dk * dk).sum()
    return 0.5 * total / n


def neg_laplacian(u: torch.Tensor, spacing) -> torch.Tensor:
    """L u = sum_k (D+_k)^T D+_k u: the exact gradient of sum 1/2 |D+ u|^2 (Neumann)."""
    d = u.shape[0]
    out = torch.zeros_like(u)
    for k in range(d):
        h2 = float(spacing[k]) ** 2
        dk = torch.diff(u, dim=k + 1) / h2
        pad = [0, 0] * d
        # (D+)^T d at i = d[i-1] - d[i], with d[-1] = d[n-1] = 0.
        idx = 2 * (d - 1 - k)
        pad_lo, pad_hi = list(pad), list(pad)
        pad_lo[idx] = 1
        pad_hi[idx + 1] = 1
        out = out + F.pad(dk, pad_lo) - F.pad(dk, pad_hi)
    return out


# ----------------------------------------------------------------------------- DCT solve
def _twiddle(n: int, dim: int, ndim: int, sign: float, like: torch.Tensor) -> torch.Tensor:
    k = torch.arange(n, dtype=like.dtype, device=like.device)
    t = torch.polar(torch.ones_like(k), sign * math.pi * k / (2 * n))
    return t.reshape([n if i == dim else 1 for i in range(ndim)])


def dct_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised DCT-II along ``dim``: X_k = 2 sum_n x_n cos(pi k (2n+1) / 2N).

    With y = [x, reversed x] (length 2N), FFT(y)_k = e^{i pi k / 2N} X_k, so one
    real FFT of the mirrored sequence gives the DCT (scipy's type-2, norm=None).
    """
    n = x.shape[dim]
    Y = torch.fft.rfft(torch.cat([x, torch.flip(x, dims=[dim])], dim=dim), dim=dim)
    Y = Y.narrow(dim, 0, n)
    return (Y * _twiddle(n, dim, x.dim(), -1.0, x)).real


def idct_axis(X: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact inverse of :func:`dct_axis`: rebuild FFT(y) (its N-th entry is 0) and invert."""
    n = X.shape[dim]
    Y = X * _twiddle(n, dim, X.dim(), 1.0, X)
    shape = list(X.shape)
    shape[dim] = 1
    Y = torch.cat([Y, torch.zeros(shape, dtype=Y.dtype, device=Y.device)], dim=dim)
    return torch.fft.irfft(Y, n=2 * n, dim=dim).narrow(dim, 0, n)


def laplacian_eigenvalues(shape, spacing, dtype=torch.float32, device=None) -> torch.Tensor:
    """mu_k = sum_d (2 - 2 cos(pi k_d / n_d)) / h_d^2: the DCT eigenvalues of L (Neumann)."""
    mu = torch.zeros(shape, dtype=dtype, device=device)
    d = len(shape)
    for ax, (n, h) in enumerate(zip(shape, spacing)):
        k = torch.arange(n, dtype=dtype, device=device)
        e = (2 - 2 * torch.cos(math.pi * k / n)) / float(h) ** 2
        mu = mu + e.reshape([n if i == ax else 1 for i in range(d)])
    return mu


MATMUL_DCT_MAX = 320  # axes up to this length use a dense DCT matrix (BLAS), longer ones the FFT


class DCTBasis:
    """The (unnormalised, scipy type-2) DCT of fields on one grid, along all spatial axes.

    Short axes use a cached dense matrix: one BLAS product per axis, about 3x faster
    than the FFT of the mirrored sequence on CPU for brain-sized grids (and fast on
    GPU); longer axes fall back to :func:`dct_axis`. ``weights`` are the Parseval
    factors: sum_x u(x)^2 = sum_k weights_k * U_k^2 for U = forward(u).
    """

    def __init__(self, shape, dtype, device=None):
        self.shape = tuple(int(n) for n in shape)
        self.d = len(self.shape)
        self.fwd, self.inv = [], []
        w = torch.ones(self.shape, dtype=dtype, device=device)
        for ax, n in enumerate(self.shape):
            if n <= MATMUL_DCT_MAX:
                k = torch.arange(n, dtype=torch.float64)[:, None]
                i = torch.arange(n, dtype=torch.float64)[None, :]
                C = 2.0 * torch.cos(math.pi * k * (2 * i + 1) / (2 * n))
                # Exact inverse of the unnormalised DCT-II: x_i = (X_0/2 + sum_k X_k cos(..)) / n.
                Ci = torch.cos(math.pi * k.T * (2 * i.T + 1) / (2 * n)) / n
                Ci[:, 0] *= 0.5
                self.fwd.append(C.to(dtype=dtype, device=device))
                self.inv.append(Ci.to(dtype=dtype, device=device))
            else:
                self.fwd.append(None)
                self.inv.append(None)
            wk = torch.full((n,), 1.0 / (2 * n), dtype=dtype, device=device)
            wk[0] = 1.0 / (4 * n)
            w = w * wk.reshape([n if j == ax else 1 for j in range(self.d)])
        self.weights = w

    def _apply(self, x, mats, fallback):
        # x: (c, *shape); axis a of the grid is tensor dim a + 1. Each product reads x in place as
        # (before, n, after), so no axis is moved (moving it made a strided copy: 2.8x slower).
        for ax in range(self.d):
            M = mats[ax]
            if M is None:
                x = fallback(x, ax + 1)
                continue
            n = self.shape[ax]
            after = math.prod(self.shape[ax + 1:])
            if after == 1:
                x = (x.reshape(-1, n) @ M.T).reshape(x.shape)
            else:
                x = torch.matmul(M, x.reshape(-1, n, after)).reshape(x.shape)
        return x

    def _per_component(self, x, mats, fallback):
        # One component at a time: on a 1 mm brain a whole field is 44 MB, above the 32 MB past which
        # glibc maps every allocation fresh from the kernel (page faults: 2.3 of 7.5 CPU s per 10
        # solves); a component's 15 MB blocks are reused from the heap (1.0 s, the same values).
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            out[c] = self._apply(x[c:c + 1], mats, fallback)[0]
        return out

    def forward(self, x):
        return self._per_component(x, self.fwd, dct_axis)

    def inverse(self, X):
        return self._per_component(X, self.inv, idct_axis)

    def solve(self, rhs, tau, spectrum):
        """(I + tau*A)^{-1} rhs with A's eigenvalues ``spectrum``; returns (u, U = forward(u))."""
        return self.solve_coefficients(self.forward(rhs), tau, spectrum)

    def solve_coefficients(self, R, tau, spectrum):
        """:meth:`solve` given R = forward(rhs) (R is overwritten): the solver's steps share forward DCTs."""
        U = R.div_(1.0 + tau * spectrum)
        return self.inverse(U), U




# ----------------------------------------------------------------------------- the regulariser
@dataclass
class Tikhonov:
    """Quadratic smoothness prior, diagonal in the DCT basis (Neumann boundary):

        weight * R(u) + bending * B(u),  R = 1/2 mean |grad u|^2 (membrane),
                                          B = 1/2 mean |L u|^2   (bending, thin plate)

    with L the discrete negative Laplacian (physical spacing). The membrane term alone
    is the paper's regulariser; the bending term penalises curvature instead of slope,
    so a field pinned only at edges is interpolated smoothly between them (the B-spline
    peers get this from their basis). Both are solved exactly by the semi-implicit DCT
    step: the solver needs only ``spectrum``.
    """

    weight: float
    spacing: tuple
    bending: float = 0.0
    name: str = field(default="R", init=False)
    _cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def value(self, u):
        """R(u), the membrane term (unweighted)."""
        return float(tikhonov(u, self.spacing))

    def values(self, u) -> dict:
        """Unweighted term values by name: R and, when used, B."""
        out = {"R": self.value(u)}
        if self.bending:
            Lu = neg_laplacian(u, self.spacing)
            out["B"] = float(0.5 * (Lu * Lu).sum() / u[0].numel())
        return out

    def values_from_dct(self, U, basis) -> dict:
        """Same as ``values`` from the field's DCT coefficients U (Parseval; no stencils):
        sum over components and voxels of u A u = sum_k weights_k mu_k^p sum_c U_ck^2 (p = 1 for R, 2 for B)."""
        w_R, w_B = self._parseval(basis, U)
        sq = U.square().sum(0)
        n = sq.numel()
        out = {"R": float(0.5 * (sq * w_R).sum() / n)}
        if self.bending:
            out["B"] = float(0.5 * (sq * w_B).sum() / n)
        return out

    def _parseval(self, basis, U) -> tuple:
        """(weights mu, weights mu^2) of ``basis``, computed once per basis (the line search asks every try)."""
        if self._cache is None or self._cache[0] is not basis:
            mu = laplacian_eigenvalues(basis.shape, self.spacing, U.dtype, U.device)
            w_R = mu * basis.weights
            self._cache = (basis, w_R, w_R * mu if self.bending else None)
        return self._cache[1:]

    def total(self, values: dict) -> float:
        return self.weight * values["R"] + self.bending * values.get("B", 0.0)

    def force(self, u):
        """N_grid * d(weight R + bending B)/du = weight L u + bending L L u."""
        Lu = neg_laplacian(u, self.spacing)
        out = self.weight * Lu
        if self.bending:
            out = out + self.bending * neg_laplacian(Lu, self.spacing)
        return out

    def spectrum(self, shape, dtype, device):
        """Eigenvalues of the regulariser's operator in the DCT basis: weight mu + bending mu^2."""
        mu = laplacian_eigenvalues(shape, self.spacing, dtype, device)
        return self.weight * mu + self.bending * mu * mu
