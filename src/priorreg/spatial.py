"""Spatial operators on tensors: warping, image gradients, the Tikhonov term,
its DCT solve, pyramid resampling and Jacobian determinants.

Fields are tensors of shape (d, *spatial) holding **physical** displacements in
mm along the array axes (component k moves along array axis k), on the fixed
grid, pull-back: fixed voxel x samples the moving image at x + u(x).
All functions are written once for 2D and 3D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def identity_grid(shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """Voxel index coordinates, shape (d, *shape)."""
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def sample_points(shape, max_samples: int, seed: int = 0, device=None, min_fraction: float = 0.0):
    """Sorted flat indices of ``max_samples`` voxels of a grid (but at least ``min_fraction``
    of them), drawn at random (fixed by ``seed``: the same subset at every iteration, so the
    line search compares like with like), or None (every voxel) when ``max_samples`` is 0
    or the grid has no more voxels than that.
    """
    n = math.prod(shape)
    if max_samples:
        max_samples = max(int(max_samples), int(round(min_fraction * n)))
    if not max_samples or n <= max_samples:
        return None
    return _random_subset(n, int(max_samples), seed).to(device)


def _random_subset(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of k of range(n), drawn at random (CPU generator fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=gen)[:k]).values


def thin_points(points, shape, fraction: float, seed: int = 0):
    """A random ``fraction`` of ``points`` (sorted flat indices, or None for every voxel of
    ``shape``), fixed by ``seed``; ``points`` itself when ``fraction`` >= 1."""
    if fraction >= 1.0:
        return points
    n = math.prod(shape) if points is None else int(points.numel())
    pick = _random_subset(n, max(1, int(round(fraction * n))), seed)
    if points is None:
        return pick
    return points[pick.to(points.device)]


class Samples:
    """Where a data term reads the images: every voxel of a grid (``points`` None) or a fixed
    subset of flat voxel indices (``sample_points``). Shared by the histogram and MIND terms.
    """

    def __init__(self, shape, spacing, points=None, dtype=torch.float32, device=None):
        self.shape = tuple(shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.points = points
        d = len(self.shape)
        self.n = math.prod(self.shape) if points is None else int(points.numel())
        if points is not None:
            self._base = identity_grid(self.shape, dtype, device).reshape(d, -1)[:, points]
            self._h = torch.as_tensor(self.spacing, dtype=dtype, device=device).reshape(d, 1)

    def mask_weights(self, mask, dtype):
        """(weights at the samples or None, their total): a data term's sample weights from a
        0/1 mask on the grid (None: every sample counts 1). Refuses a mask that misses every sample."""
        if mask is None:
            return None, float(self.n)
        w = self.at(mask.reshape(-1)).to(dtype)
        total = float(w.sum())
        if total <= 0:
            raise ValueError("no sample has a non-zero mask weight")
        return w, total

    def at(self, flat: torch.Tensor) -> torch.Tensor:
        """Values (..., n_grid) at the samples: (..., n)."""
        return flat if self.points is None else flat[..., self.points]

    def coords(self, u: torch.Tensor) -> torch.Tensor:
        """Moving-image voxel coordinates of the samples: (d, *S), or (d, n, 1[, 1]) for a subset."""
        if self.points is None:
            return displaced_coords(u, self.spacing)
        d = u.shape[0]
        c = self._base + u.reshape(d, -1)[:, self.points] / self._h
        return c.reshape(d, -1, *([1] * (d - 1)))

    def to_grid(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample vectors (d, n...) onto the grid (d, *S); zero at voxels that are no sample."""
        d = v.shape[0]
        if self.points is None:
            return v.reshape(d, *self.shape)
        out = torch.zeros((d, math.prod(self.shape)), dtype=v.dtype, device=v.device)
        out[:, self.points] = v.reshape(d, -1)
        return out.reshape(d, *self.shape)


def sample(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` (shape (*S) or (C, *S)) at voxel coordinates ``coords`` (d, *S_out).

    n-linear (``mode='bilinear'``, trilinear in 3D) or nearest interpolation;
    coordinates outside the image are clamped to its box (border replication),
    so every fixed voxel always has a sample (docs/method.md §2.1).
    """
    d = coords.shape[0]
    squeeze = image.dim() == d
    img = image[None, None] if squeeze else image[None]
    shape = image.shape[-d:]
    # grid_sample wants normalised coordinates with the last axis ordered (x, y[, z]),
    # i.e. array axes reversed; align_corners=True puts -1/+1 on corner voxel centres.
    norm = [2.0 * coords[k] / max(shape[k] - 1, 1) - 1.0 for k in range(d)]
    grid = torch.stack(norm[::-1], dim=-1)[None]
    out = F.grid_sample(img, grid.to(img.dtype), mode=mode, padding_mode="border", align_corners=True)
    return out[0, 0] if squeeze else out[0]


def displaced_coords(u: torch.Tensor, spacing) -> torch.Tensor:
    """Voxel coordinates x + u(x)/h of a physical field u (d, *S)."""
    d = u.shape[0]
    h = torch.as_tensor(spacing, dtype=u.dtype, device=u.device).reshape(d, *([1] * d))
    return identity_grid(u.shape[1:], u.dtype, u.device) + u / h


def gradient(image: torch.Tensor, spacing) -> torch.Tensor:
    """Central-difference gradient in intensity/mm, shape (d, *S) (one-sided at edges)."""
    d = image.dim()
    return torch.stack(torch.gradient(image, spacing=[float(s) for s in spacing], dim=list(range(d))))


# ----------------------------------------------------------------------------- Tikhonov
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


def dctn(x: torch.Tensor, dims) -> torch.Tensor:
    for dim in dims:
        x = dct_axis(x, dim)
    return x


def idctn(x: torch.Tensor, dims) -> torch.Tensor:
    for dim in dims:
        x = idct_axis(x, dim)
    return x


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
        # x: (c, *shape); axis a of the grid is tensor dim a + 1.
        for ax in range(self.d):
            M = mats[ax]
            if M is None:
                x = fallback(x, ax + 1)
            else:
                x = torch.movedim(torch.movedim(x, ax + 1, -1) @ M.T, -1, ax + 1)
        return x

    def forward(self, x):
        return self._apply(x, self.fwd, dct_axis)

    def inverse(self, X):
        return self._apply(X, self.inv, idct_axis).contiguous()

    def solve(self, rhs, tau, spectrum):
        """(I + tau*A)^{-1} rhs with A's eigenvalues ``spectrum``; returns (u, U = forward(u))."""
        U = self.forward(rhs) / (1.0 + tau * spectrum)
        return self.inverse(U), U

    def quadratic(self, U, spectrum):
        """sum over components and voxels of u A u, from U = forward(u)."""
        return (U * U * (spectrum * self.weights)).sum()


def solve_implicit(rhs: torch.Tensor, tau_lambda: float, mu: torch.Tensor) -> torch.Tensor:
    """Solve (I + tau_lambda*A) u = rhs per component by DCT (docs/method.md §5.2), where
    ``mu`` holds A's DCT eigenvalues (``laplacian_eigenvalues`` for A = L)."""
    dims = list(range(1, rhs.dim()))
    return idctn(dctn(rhs, dims) / (1.0 + tau_lambda * mu), dims)


# ----------------------------------------------------------------------------- pyramid
def gaussian_blur(image: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur (std in voxels per axis, 0 = none), edge-replicating."""
    d = image.dim()
    x = image[None, None]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    for ax, s in enumerate(sigmas):
        if s <= 0:
            continue
        r = max(1, int(math.ceil(3.0 * s)))
        t = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
        g = torch.exp(-0.5 * (t / s) ** 2)
        g = g / g.sum()
        kshape = [1] * d
        kshape[ax] = 2 * r + 1
        pad = [0, 0] * d
        pad[2 * (d - 1 - ax)] = r
        pad[2 * (d - 1 - ax) + 1] = r
        x = conv(F.pad(x, pad, mode="replicate"), g.reshape(1, 1, *kshape))
    return x[0, 0]


def downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Blur with std 0.5*factor voxels, then keep every factor-th voxel from index 0."""
    if factor == 1:
        return image
    img = gaussian_blur(image, [0.5 * factor] * image.dim())
    sl = tuple(slice(0, None, factor) for _ in range(image.dim()))
    return img[sl].contiguous()


def upsample_field(u: torch.Tensor, shape, ratio: float) -> torch.Tensor:
    """Resample a physical field from a coarse grid to a finer one.

    Fine voxel i sits at coarse coordinate i/ratio (both grids start at index 0).
    The field is in mm, so its values need no rescaling.
    """
    d = u.shape[0]
    coords = identity_grid(shape, u.dtype, u.device) / ratio
    return sample(u, coords)


# ----------------------------------------------------------------------------- Jacobian
def jacobian_determinant(u: torch.Tensor, spacing) -> torch.Tensor:
    """det(I + grad u) of the map x -> x + u(x), central differences, physical units."""
    d = u.shape[0]
    rows = []
    for c in range(d):
        g = gradient(u[c], spacing)  # (d, *S): d u_c / d x_k
        rows.append(g)
    J = torch.stack(rows)  # (c, k, *S)
    J = J.movedim(0, -1).movedim(0, -1)  # (*S, c, k)
    J = J + torch.eye(d, dtype=u.dtype, device=u.device)
    return torch.linalg.det(J)
