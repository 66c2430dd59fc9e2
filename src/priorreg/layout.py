"""One voxel layout per grid: the registration runs on the images' arrays reordered (axes permuted and
flipped: exact, no interpolation) so that array axis k runs along world axis d-1-k, forwards (the layout
SimpleITK gives an image of identity direction); the field is put back on the fixed image's own layout.

The stages index arrays by voxel: the pyramid keeps every f-th voxel from index 0, the histogram and MIND
samples and the regional blocks are drawn in array order, and the deformable stage starts from the linear
field when the moving image shares the fixed grid (:func:`priorreg.prealign.after_prealign`). Without one
layout, the same images stored with other axis orders or signs (a NIfTI with qfac -1, a sagittal export,
a DICOM converter's choice) took other paths and gave fields up to 16 mm apart."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .image import Image


@dataclasses.dataclass(frozen=True)
class Layout:
    """canonical array axis j = original axis ``perm[j]``, reversed where ``flip[j]``."""

    perm: tuple
    flip: tuple

    @property
    def identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm))) and not any(self.flip)

    def array(self, a: np.ndarray) -> np.ndarray:
        """A scalar array (d axes) of the original grid on the canonical one."""
        a = np.transpose(a, self.perm)
        return np.ascontiguousarray(np.flip(a, [j for j, f in enumerate(self.flip) if f]))

    def array_back(self, a: np.ndarray) -> np.ndarray:
        a = np.flip(a, [j for j, f in enumerate(self.flip) if f])
        return np.ascontiguousarray(np.transpose(a, np.argsort(self.perm)))

    def field(self, u: np.ndarray) -> np.ndarray:
        """A field (d, *shape) along the original array axes, as one along the canonical axes."""
        return np.stack([(-1.0 if f else 1.0) * self.array(u[k]) for k, f in zip(self.perm, self.flip)])

    def field_back(self, u: np.ndarray) -> np.ndarray:
        out = np.empty((len(self.perm), *self.array_back(u[0]).shape))
        for j, (k, f) in enumerate(zip(self.perm, self.flip)):
            out[k] = (-1.0 if f else 1.0) * self.array_back(u[j])
        return out

    def vector(self, v):
        """Per-axis values (blocks per axis), reordered."""
        return None if v is None else tuple(v[k] for k in self.perm)

    def vector_back(self, v) -> tuple:
        """Per-axis values of the canonical grid (a level's shape, spacing) along the original axes."""
        out = [None] * len(self.perm)
        for j, k in enumerate(self.perm):
            out[k] = v[j]
        return tuple(out)


def layout_of(img: Image) -> Layout:
    """The reordering that brings ``img``'s array axes nearest to world axes d-1, ..., 0, each forwards."""
    d = img.ndim
    D = np.asarray(img.direction)
    # canonical axis j lies along world axis d-1-j: pick the original axis closest to it (one each)
    perm = max(itertools.permutations(range(d)), key=lambda p: sum(abs(D[d - 1 - j, k]) for j, k in enumerate(p)))
    flip = tuple(bool(D[d - 1 - j, k] < 0) for j, k in enumerate(perm))
    return Layout(tuple(perm), flip)


def relaid(img: Image, lay: Layout) -> Image:
    """``img`` on its canonical layout: the same world samples."""
    if lay.identity or img.volume is not None:
        return img
    D, sp, n = np.asarray(img.direction), np.asarray(img.spacing), img.shape
    origin = np.asarray(img.origin, float).copy()
    for k, f in zip(lay.perm, lay.flip):
        if f:  # index 0 of a reversed axis is the original's last voxel
            origin += D[:, k] * sp[k] * (n[k] - 1)
    direction = np.stack([(-1.0 if f else 1.0) * D[:, k] for k, f in zip(lay.perm, lay.flip)], axis=1)
    return Image(lay.array(img.array), tuple(sp[list(lay.perm)]), tuple(origin), direction)


def on_one_layout(inp):
    """(``inp`` with both images, the mask, the initial field and the regional blocks on the canonical layout,
    the fixed image's Layout to map the field back, or None where it is unchanged). Single slices and a prior
    with regional tables (blocks of the fixed array as it was trained) keep their layout."""
    fix, mov = inp.fixed, inp.moving
    if fix.volume is not None or mov.volume is not None or (inp.prior is not None and inp.prior.n_regions > 1):
        return inp, None
    lf, lm = layout_of(fix), layout_of(mov)
    work = dataclasses.replace(
        inp, fixed=relaid(fix, lf), moving=relaid(mov, lm), mask=None if inp.mask is None else lf.array(inp.mask),
        initial_field=None if inp.initial_field is None else lf.field(np.asarray(inp.initial_field, dtype=float)),
        local_regions=lf.vector(inp.local_regions))
    return work, (None if lf.identity else lf)
