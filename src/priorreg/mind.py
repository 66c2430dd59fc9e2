"""MIND-SSC: a local, modality-independent structure descriptor, and its SSD data term.

MIND (Heinrich et al., MedIA 2012) describes each voxel by how similar small patches
around it are to one another, which depends on local structure, not on the intensity
mapping between modalities. The self-similarity-context variant (SSC, MICCAI 2013) compares
pairs of patches centred on the six (3D) or four (2D) neighbours at distance ``dilation``
that lie on different axes: 12 channels in 3D, 4 in 2D. Two images of the same anatomy
in different modalities have close descriptors, so the sum of squared descriptor
differences is a *local* similarity: every voxel has its own target, where one global
joint histogram gives only a shared intensity mapping. The term plugs into the solver
beside the histogram terms (``RegistrationOptions.mind_weight``).

Written once for 2D and 3D. No code is taken from other implementations.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from . import spatial


def _box(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of each channel of ``images`` (C, *S) over a (2 radius + 1)^d box, edges replicated:
    one axis at a time, as sums of shifted views (a third of the additions of a 3 x 3 x 3 pool)."""
    if radius <= 0:
        return images
    d, k = images.dim() - 1, 2 * radius + 1
    x = F.pad(images[None], [radius] * (2 * d), mode="replicate")[0]
    for ax in range(1, d + 1):
        n = x.shape[ax] - 2 * radius
        total = x.narrow(ax, 0, n).clone()
        for j in range(1, k):
            total += x.narrow(ax, j, n)
        x = total
    return x.div_(k**d)


def ssc_pairs(ndim: int, dilation: int = 1) -> list:
    """The SSC neighbour pairs: neighbours +-dilation along different axes (4 in 2D, 12 in 3D)."""
    neigh = []
    for ax in range(ndim):
        for s in (-1, 1):
            o = [0] * ndim
            o[ax] = s * dilation
            neigh.append(tuple(o))
    axis = {o: next(k for k, v in enumerate(o) if v) for o in neigh}
    return [(a, b) for a, b in itertools.combinations(neigh, 2) if axis[a] != axis[b]]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 1) -> torch.Tensor:
    """MIND-SSC descriptor of a 2D or 3D image: shape (C, *S), values in (0, 1].

    For each pair (a, b) of ``ssc_pairs``: D(x) = box mean over a (2 radius + 1)^d patch of
    (I(x + a) - I(x + b))^2; then MIND = exp(-(D - min_c D) / V) with V the mean of
    D - min_c D over the channels (the local noise/contrast estimate, clamped to
    [1e-3, 1e3] times its image mean so flat regions do not divide by zero).
    """
    if image.dim() not in (2, 3):
        raise ValueError(f"mind_ssc: need a 2D or 3D image, got {image.dim()}D")
    pairs = ssc_pairs(image.dim(), dilation)
    r = dilation
    padded = F.pad(image[None, None], [r] * (2 * image.dim()), mode="replicate")[0, 0]  # once, edges replicated
    shifted = {o: padded[tuple(slice(r + k, r + k + n) for k, n in zip(o, image.shape))] for o in {o for p in pairs for o in p}}
    # One channel at a time into one (C, *S) tensor, then in place: a 1 mm brain's 12 channels are 180 MB,
    # and stacking, padding and pooling them whole held four such copies at once (the same values).
    D = torch.empty((len(pairs), *image.shape), dtype=image.dtype, device=image.device)
    for c, (a, b) in enumerate(pairs):
        D[c] = _box((shifted[a] - shifted[b]).square_()[None], radius)[0]
    D.sub_(D.min(0, keepdim=True).values)
    V = D.mean(0, keepdim=True)
    m = float(V.mean())
    V = V.clamp(min=max(m * 1e-3, 1e-12), max=max(m * 1e3, 1e-12))
    return D.neg_().div_(V).exp_()


PCA_MAX_VOXELS = 2**20  # per image: the covariance of 12 channels is settled long before a million voxels
PCA_CHUNK = 2**16  # voxels per float64 block of the covariance sums


def _pooled_covariance(images, step: int) -> torch.Tensor:
    """Channel covariance (C x C, float64) of every ``step``-th voxel of each (C, *S) image, pooled, summed
    block by block: a float64 copy of the samples was 180 MB on a 1 mm brain, beside both descriptors."""
    C = images[0].shape[0]
    total = torch.zeros(C, dtype=torch.float64, device=images[0].device)
    outer = torch.zeros((C, C), dtype=torch.float64, device=images[0].device)
    n = 0
    for m in images:
        x = m.reshape(C, -1)[:, ::step]
        for start in range(0, x.shape[1], PCA_CHUNK):
            block = x[:, start:start + PCA_CHUNK].double()
            total += block.sum(1)
            outer += block @ block.T
            n += block.shape[1]
    mean = total / n
    return outer / n - torch.outer(mean, mean)


def principal_channels(a: torch.Tensor, b: torch.Tensor, k: int):
    """Project two descriptor images (C, *S) onto the k principal directions of their joint
    channel covariance (both images' voxels pooled; on images of more than ``PCA_MAX_VOXELS``
    voxels, every n-th voxel). The projection is orthonormal, so squared descriptor
    differences are kept up to the variance of the discarded directions (all of them for k = C)."""
    C = a.shape[0]
    step = -(-a[0].numel() // PCA_MAX_VOXELS)  # ceil: 1 up to PCA_MAX_VOXELS voxels
    evecs = torch.linalg.eigh(_pooled_covariance((a, b), step)).eigenvectors
    W = evecs[:, -k:].T.to(a.dtype)  # (k, C), largest last
    proj = lambda m: (W @ m.reshape(C, -1)).reshape(k, *m.shape[1:])
    return proj(a), proj(b)


class MindEnergy:
    """E = w * 1/2 mean_x 1/C sum_c (M_c^mov(x + u(x)) - M_c^fix(x))^2 over the samples.

    Descriptors are computed once per level on the fixed and on the (unwarped) moving image;
    the moving descriptor is interpolated at x + u, as the histogram terms interpolate the
    image. The force is N_grid * dE/du with the interpolated central-difference gradient of
    the descriptor (``force="practical"``, the default here and in the histogram terms: one image
    gradient per channel, computed once per level), or the derivative of the n-linear
    interpolant (``"exact"``, by autograd: the true gradient of the discrete energy). The
    descriptor is rough at the voxel scale, so the two differ more than they do for an
    image; the line search accepts only steps that lower J either way.

    ``channels`` > 0 keeps that many principal components of the descriptors
    (:func:`principal_channels`): each iteration interpolates one image per channel plus d
    gradient images per channel, so 12 channels in 3D cost about 4x what 3 do.

    Same interface as :class:`~priorreg.energy.JointHistogramEnergy` (``evaluate``,
    ``value``, ``force``), so the solver treats both alike.
    """

    name = "MIND"

    def __init__(
        self,
        fixed,
        moving,
        spacing,
        weight: float,
        mask=None,
        points=None,
        radius: int = 1,
        dilation: int = 1,
        channels: int = 0,
        force: str = "practical",
    ):
        if force not in ("practical", "exact"):
            raise ValueError(f"force must be 'practical' or 'exact', got {force!r}")
        self.force_mode = force
        self.weight = float(weight)
        self.spacing = tuple(float(s) for s in spacing)
        self.shape = tuple(fixed.shape)
        Mf = mind_ssc(fixed, radius, dilation)
        self.moving_desc = mind_ssc(moving, radius, dilation)
        if channels and channels < Mf.shape[0]:
            Mf, self.moving_desc = principal_channels(Mf, self.moving_desc, channels)
        self.C = Mf.shape[0]
        n_grid = math.prod(self.shape)
        self.samples = spatial.Samples(fixed.shape, self.spacing, points, fixed.dtype, fixed.device)
        self.fixed_desc = self.samples.at(Mf.reshape(self.C, -1))
        del Mf  # before the gradients: the fixed descriptor is needed at the samples only
        self.moving_grad = self._gradients() if force == "practical" else None
        self.weights, n_weight = self.samples.mask_weights(mask, fixed.dtype)
        self.n_weight = n_weight
        self.n_ratio = n_grid / n_weight
        self._state = None

    def _gradients(self) -> torch.Tensor:
        """The moving descriptor's gradient (C*d, *S), filled channel by channel (a list then a cat held it twice)."""
        d = len(self.shape)
        out = torch.empty((self.C * d, *self.shape), dtype=self.moving_desc.dtype, device=self.moving_desc.device)
        for c, channel in enumerate(self.moving_desc):
            out[c * d:(c + 1) * d] = spatial.gradient(channel, self.spacing)
        return out

    def _residual(self, u):
        coords = self.samples.coords(u)
        w = spatial.sample(self.moving_desc, coords).reshape(self.C, -1)
        return coords, w.sub_(self.fixed_desc)  # in place: a 1 mm brain's samples are 44 MB a channel set

    def value(self, u):
        coords, r = self._residual(u)
        sq = (r * r).sum(0)
        if self.weights is not None:
            sq = sq * self.weights
        e = 0.5 * float(sq.double().sum()) / (self.n_weight * self.C)
        self._state = (u, coords, r)
        return {self.name: e}, self.weight * e

    def force(self, u):
        d = u.shape[0]
        if self.force_mode == "exact":
            uu = u.detach().requires_grad_(True)
            _, r = self._residual(uu)
            w = r.detach() if self.weights is None else r.detach() * self.weights
            f = torch.autograd.grad(r, uu, grad_outputs=w * (self.weight * self.n_ratio / self.C))[0]
            return f.detach()
        if self._state is None or self._state[0] is not u:
            self.value(u)
        _, coords, r = self._state
        g = spatial.sample(self.moving_grad, coords).reshape(self.C, d, -1)
        f = g.mul_(r[:, None]).sum(0)  # (d, n); in place: C x d sampled channels are the level's largest temporary
        if self.weights is not None:
            f = f * self.weights
        f = f * (self.weight * self.n_ratio / self.C)
        return self.samples.to_grid(f)

    def evaluate(self, u, with_force: bool = True):
        values, total = self.value(u)
        return values, total, (self.force(u) if with_force else None)
