"""Sampling and warping on a voxel grid: identity grids, the data terms' sample points,
n-linear interpolation at displaced coordinates and image gradients. (The regulariser is
in :mod:`priorreg.regularizer`, pyramid resampling in :mod:`priorreg.pyramid`, Jacobian
determinants in :mod:`priorreg.jacobian`.)

Fields are tensors of shape (d, *spatial) holding **physical** displacements in
mm along the array axes (component k moves along array axis k), on the fixed
grid, pull-back: fixed voxel x samples the moving image at x + u(x).
All functions are written once for 2D and 3D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def row_slabs(shape, max_voxels: int) -> list:
    """(lo, hi) ranges of a grid's first axis, each of at most ``max_voxels`` voxels of ``shape`` (at least
    one row): whole-grid work a slab at a time (resampling, the Jacobian, a field interpolated back)."""
    rows = max(1, max_voxels // max(1, math.prod(shape[1:])))
    return [(lo, min(shape[0], lo + rows)) for lo in range(0, shape[0], rows)]


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
    return random_subset(n, int(max_samples), seed).to(device)


def random_subset(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of k of range(n), drawn at random (CPU generator fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=gen)[:k]).values


def paired_samples(fixed, moving, weights, limit: int, seed: int, func: str):
    """Flat float64 (fixed, moving) intensities at the voxels of the 0/1 mask ``weights`` (every voxel
    when None), at most ``limit`` of them, drawn at random (fixed by ``seed``)."""
    f = fixed.reshape(-1).double()
    m = moving.reshape(-1).double()
    if weights is not None:
        inside = torch.nonzero(weights.reshape(-1) > 0).squeeze(1)
        if inside.numel() == 0:
            raise ValueError(f"{func}: the mask is empty")
        f, m = f[inside], m[inside]
    if f.numel() > limit:
        pick = random_subset(f.numel(), limit, seed).to(f.device)
        f, m = f[pick], m[pick]
    return f, m


def thin_points(points, shape, fraction: float, seed: int = 0):
    """A random ``fraction`` of ``points`` (sorted flat indices, or None for every voxel of
    ``shape``), fixed by ``seed``; ``points`` itself when ``fraction`` >= 1."""
    if fraction >= 1.0:
        return points
    n = math.prod(shape) if points is None else int(points.numel())
    pick = random_subset(n, max(1, int(round(fraction * n))), seed)
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
    out = grid_sample(img, grid.to(img.dtype), mode)
    return out[0, 0] if squeeze else out[0]


SPLIT_MIN_POINTS = 32_768  # fewer points are sampled as one batch item: splitting costs more than it gains


def grid_sample(img: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``F.grid_sample`` of ``img`` (1, C, *S) at ``grid`` (1, *S_out, d) (border replication,
    align_corners=True): (1, C, *S_out).

    PyTorch's 3D kernel on a CPU gives each batch item one thread, so a single image was sampled on
    one core. Here the points are split into one batch item per thread, the image expanded (a view,
    not a copy): the same values, twice as fast on two cores (benchmarks/README.md, "Whole-process speed").
    """
    d, n = grid.shape[-1], grid[0, ..., 0].numel()
    parts = torch.get_num_threads() if d == 3 and img.device.type == "cpu" else 1
    if parts < 2 or n < SPLIT_MIN_POINTS:
        return F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=True)
    m = -(-n // parts)
    flat = grid.reshape(n, d)
    if m * parts != n:
        flat = torch.cat([flat, flat.new_zeros(m * parts - n, d)])
    out = F.grid_sample(img.expand(parts, *img.shape[1:]), flat.reshape(parts, m, 1, 1, d), mode=mode,
                        padding_mode="border", align_corners=True)  # (parts, C, m, 1, 1)
    C = img.shape[1]
    out = out.reshape(parts, C, m).transpose(0, 1).reshape(C, parts * m)[:, :n]
    return out.reshape(1, C, *grid.shape[1:-1])


def displaced_coords(u: torch.Tensor, spacing) -> torch.Tensor:
    """Voxel coordinates x + u(x)/h of a physical field u (d, *S)."""
    d = u.shape[0]
    h = torch.as_tensor(spacing, dtype=u.dtype, device=u.device).reshape(d, *([1] * d))
    return identity_grid(u.shape[1:], u.dtype, u.device) + u / h


def gradient(image: torch.Tensor, spacing) -> torch.Tensor:
    """Central-difference gradient in intensity/mm, shape (d, *S) (one-sided at edges)."""
    d = image.dim()
    return torch.stack(torch.gradient(image, spacing=[float(s) for s in spacing], dim=list(range(d))))
